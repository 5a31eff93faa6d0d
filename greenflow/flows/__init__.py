"""What flow authors touch: `FlowLogic`, `FlowSession`, the registration decorators and
progress tracking.

Imports only the vocabulary at the top of ``greenflow`` (errors, `Party`, the wire
encoding). A flow reaches the runtime that runs it only through `context`: the runtime
sets itself on the flow's greenlet and this package reads it back, so the flow API never
imports the runtime. The public names are re-exported by ``greenflow`` itself.
"""
