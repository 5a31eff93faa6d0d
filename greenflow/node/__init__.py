"""A node: `Node` (one identity, its store, scheduler and services), its identity keys
and the services flows reach through ``self.service_hub``.

Imports everything below it (state machine, storage, runtime, flows, vocabulary); never
the network, RPC or CLI. The names users import from ``greenflow.node`` are re-exported
here.
"""
from __future__ import annotations

from greenflow.node.node import FlowHandle, FlowInfo, Node, read_checkpoints
from greenflow.node.services import ServiceHub, journaled, register_service_factory

__all__ = ["FlowHandle", "FlowInfo", "Node", "ServiceHub", "journaled", "read_checkpoints",
           "register_service_factory"]
