"""Starting a flow from text: ``module.path:FlowClass`` and ``NAME=VALUE`` arguments.

The command line's name for `greenflow.rpc.flow_start`, where the resolver and the argument
conversion live (the node's RPC uses the same module, so both accept the same names and
refuse with the same messages). Nothing here imports click.
"""
from __future__ import annotations

from greenflow.rpc.flow_start import *  # noqa: F401,F403
from greenflow.rpc.flow_start import __all__  # noqa: F401
