"""One flow in memory: its greenlet (`traps`, the only module that switches greenlets),
its journal and replay (`journal`, `flow_runtime`), the checkpoint format, code
fingerprints, the clock, and stack snapshots for diagnostics (`snapshots`).

Imports the vocabulary and `greenflow.flows`; it reaches storage and the scheduler only
through the host object it is given (see `flow_runtime.FlowHost`).
"""
