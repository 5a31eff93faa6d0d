"""greenflow: durable multi-party business flows in plain sequential Python.

Flows are ordinary blocking code on greenlets; every suspension is checkpointed into
LMDB and a restart resumes each flow by replaying its journal. The public API (see
API.md) is re-exported here and only here.
"""
from __future__ import annotations

import os as _os

# In a source checkout cli/, samples/ and benchmarks/ sit beside this package; installed,
# setup.cfg maps them inside it. Either way they import as greenflow.cli, greenflow.samples...
_root = _os.path.dirname(_os.path.dirname(_os.path.abspath(__file__)))
if not _os.path.isdir(_os.path.join(_os.path.dirname(__file__), "samples")) \
        and _os.path.isfile(_os.path.join(_root, "samples", "__init__.py")):
    __path__.append(_root)  # type: ignore[name-defined]  # noqa: F821

from .errors import (FlowError, FlowException, FlowKilled, FlowTimeout, NonDeterminismError,
                     NotSerializable, NotStartable, ReceiveTypeError, SessionRefused,
                     UnexpectedFlowEnd, UnknownFlow, WireFormatError)
from .flow_logic import FlowLogic
from .node import FlowHandle, FlowInfo, Node
from .party import Party
from .progress import ProgressTracker, Step
from .registry import initiated_by, initiating_flow, startable
from .session import FlowSession, PeerFlowInfo
from .status import FlowStatus
from .wire import serializable

__version__ = "0.1.0"

__all__ = [
    "FlowError", "FlowException", "FlowHandle", "FlowInfo", "FlowKilled", "FlowLogic",
    "FlowSession", "FlowStatus", "FlowTimeout", "Node", "NonDeterminismError",
    "NotSerializable", "NotStartable", "Party", "PeerFlowInfo", "ProgressTracker",
    "ReceiveTypeError", "SessionRefused", "Step", "UnexpectedFlowEnd", "UnknownFlow", "WireFormatError",
    "initiated_by", "initiating_flow", "serializable", "startable",
]
