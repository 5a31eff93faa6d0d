"""greenflow: durable multi-party business flows in plain sequential Python.

Flows are ordinary blocking code on greenlets; every suspension is checkpointed into
LMDB and a restart resumes each flow by replaying its journal. The public API (the
reference is in docs/) is re-exported here and only here.

``greenflow.cli``, ``greenflow.samples`` and ``greenflow.benchmarks`` live in the
repository's top-level ``cli/``, ``samples/`` and ``benchmarks/`` and are mapped into this
package by setup.cfg's ``package_dir``: they import once greenflow is installed (``pip
install .``, or ``pip install -e .`` for a working checkout).
"""
from __future__ import annotations

from greenflow.errors import (FlowError, FlowException, FlowKilled, FlowTimeout, NodeClosed,
                              NonDeterminismError, NotSerializable, NotStartable,
                              ReceiveTypeError, SessionRefused, UnexpectedFlowEnd, UnknownFlow,
                              UnknownParty, WireFormatError)
from greenflow.flows.flow_logic import FlowLogic
from greenflow.node.node import FlowHandle, FlowInfo, Node
from greenflow.party import Party
from greenflow.runtime.snapshots import register_sensitive
from greenflow.flows.progress import ProgressTracker, Step
from greenflow.flows.registry import initiated_by, initiating_flow, startable
from greenflow.flows.session import FlowSession, PeerFlowInfo
from greenflow.status import FlowStatus
from greenflow.wire import serializable

__version__ = "0.1.0"

__all__ = [
    "FlowError", "FlowException", "FlowHandle", "FlowInfo", "FlowKilled", "FlowLogic",
    "FlowSession", "FlowStatus", "FlowTimeout", "Node", "NodeClosed", "NonDeterminismError",
    "NotSerializable", "NotStartable", "Party", "PeerFlowInfo", "ProgressTracker",
    "ReceiveTypeError", "SessionRefused", "Step", "UnexpectedFlowEnd", "UnknownFlow", "UnknownParty",
    "WireFormatError",
    "initiated_by", "initiating_flow", "register_sensitive", "serializable", "startable",
]
