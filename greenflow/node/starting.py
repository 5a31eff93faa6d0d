"""Starting flows on a node: checkpointing each new flow and recording the starts
durably, in one commit, before the caller gets their handles."""
from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, Optional

from greenflow import serialization
from greenflow.runtime.checkpoint import Checkpoint
from greenflow.errors import FlowError
from greenflow.flows.flow_logic import FlowLogic
from greenflow.flows.registry import qualified_name
from greenflow.statemachine.ids import new_flow_id
from greenflow.node.results import FlowHandle

if TYPE_CHECKING:
    from greenflow.node.node import Node


class FlowStarter:
    """`Node.start_flow` and `Node.start_flows`."""

    def __init__(self, node: Node) -> None:
        self.node = node

    def start(self, items: list[tuple[FlowLogic, Optional[str]]]) -> list[FlowHandle]:
        if self.node.closed:
            raise FlowError(f"node {self.node.party.name} is closed")
        if self.node.scheduler.draining:
            raise FlowError(f"node {self.node.party.name} is draining: no new flows are started "
                            "until draining is turned off")
        prepared = []
        handles: list[FlowHandle] = []
        seen_clients: dict[str, str] = {}
        for flow, client_id in items:
            if not isinstance(flow, FlowLogic):
                raise TypeError(f"start_flow takes a FlowLogic instance, got {type(flow).__qualname__}")
            if client_id is not None:
                existing = seen_clients.get(client_id) or self.node.store.client(client_id)
                if existing is not None:
                    handles.append(FlowHandle(self.node, existing))
                    continue
            fid = new_flow_id()
            if client_id is not None:
                seen_clients[client_id] = fid
            try:
                blob = serialization.dumps(flow)
            except Exception as exc:
                raise FlowError(f"{qualified_name(type(flow))} cannot be checkpointed: {exc}") from exc
            cp = Checkpoint(fid, qualified_name(type(flow)), client_id=client_id,
                            started_at=self.node.clock.now())
            prepared.append((cp, blob, flow))
            handles.append(FlowHandle(self.node, fid))
        if prepared:
            self.start_prepared(prepared)
        return handles

    def start_prepared(self, prepared: list) -> None:
        sched = self.node.scheduler
        if not self.node.threaded:
            for cp, blob, flow in prepared:
                sched.record_start(cp, blob, flow)
            sched.commit()
            return
        done = threading.Event()
        sched.start_flows(prepared, done.set)
        deadline = time.monotonic() + 120
        while not done.wait(0.25):
            if sched.dead:   # its commits stopped (e.g. a full disk): the start is not durable
                raise sched.commit_error or FlowError(f"node {self.node.party.name} has stopped")
            if time.monotonic() > deadline:
                raise TimeoutError(f"node {self.node.party.name} did not record the start within 120s")
        if sched.commit_error is not None:
            raise sched.commit_error
