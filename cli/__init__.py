"""The ``greenflow`` command line (installed as ``greenflow.cli``).

`greenflow.cli.main` holds the root group and the list of command modules; each
command lives in its own module (`run`, `bench`, `checkpoints`, ...). `flow_args` turns
``module:FlowClass`` and ``NAME=VALUE`` text into a flow, for every place that starts
flows from outside the process.
"""
