"""Starting flows on a node: checking and checkpointing each new flow, idempotent client
ids, handing starts a clustered worker cannot run to another worker, and waiting until
the start is durably recorded."""
from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, Optional

from greenflow import serialization
from greenflow.errors import FlowError, NodeClosed
from greenflow.flows.context import current_runtime_or_none
from greenflow.flows.flow_logic import FlowLogic
from greenflow.flows.registry import qualified_name
from greenflow.flows.start_records import encode_start
from greenflow.node.results import FlowHandle
from greenflow.runtime.checkpoint import Checkpoint

if TYPE_CHECKING:
    from greenflow.node.node import Node


class FlowStarter:
    """`Node.start_flow` and `Node.start_flows` for one node."""

    def __init__(self, node: "Node") -> None:
        self.node = node
        # Client id -> [lock, holders]: a start with a client id holds its id's lock from
        # looking the id up until its start is durable, so concurrent starts under one id
        # (a client's retries) start one flow; the others then find it.
        self._client_locks: dict[str, list] = {}
        self._client_locks_guard = threading.Lock()

    def start(self, items: list[tuple[FlowLogic, Optional[str]]]) -> list[FlowHandle]:
        node = self.node
        if node._closed:
            raise NodeClosed(f"node {node.party.name} is closed")
        rt = current_runtime_or_none()
        if rt is not None:
            # The node's scheduler runs the calling flow: it would wait for itself.
            raise FlowError(f"start_flow was called inside flow {rt.flow_id} "
                            f"({rt.cp.flow_class}) on node {node.party.name}: a flow runs "
                            "another one as a sub-flow (self.sub_flow(...)); start flows from "
                            "outside a flow")
        if node.scheduler.draining:
            raise FlowError(f"node {node.party.name} is draining: no new flows are started "
                            "until draining is turned off")
        if node.forward_starts is not None:
            forwarded = node.forward_starts(items)
            if forwarded is not None:
                return [FlowHandle(node, fid) for fid in forwarded]
        held = self._hold_clients(sorted({cid for _, cid in items if cid is not None}))
        try:
            return self._start_here(items)
        finally:
            self._release_clients(held)

    def _start_here(self, items: list[tuple[FlowLogic, Optional[str]]]) -> list[FlowHandle]:
        node = self.node
        prepared = []
        handles: list[FlowHandle] = []
        seen_clients: dict[str, str] = {}
        names: dict[type, str] = {}   # flow class -> its qualified name, within this call
        new_flow_id = node.new_flow_id
        now = node.clock.now()        # one start time for the flows started together
        for flow, client_id in items:
            cls = type(flow)
            name = names.get(cls)
            if name is None:
                if not isinstance(flow, FlowLogic):
                    raise TypeError(f"start_flow takes a FlowLogic instance, got {cls.__qualname__}")
                name = names[cls] = qualified_name(cls)
            if client_id is not None:
                existing = seen_clients.get(client_id) or node.store.client(client_id)
                if existing is not None:
                    handles.append(FlowHandle(node, existing, earlier=True))
                    continue
            fid = new_flow_id()
            if client_id is not None:
                seen_clients[client_id] = fid
            try:
                blob = encode_start(flow) or serialization.dumps(flow)
            except Exception as exc:
                raise FlowError(f"{name} cannot be checkpointed: {exc}") from exc
            prepared.append((Checkpoint(fid, name, client_id=client_id, started_at=now), blob, flow))
            handles.append(FlowHandle(node, fid))
        if prepared:
            self.start_prepared(prepared)
        return handles

    def _hold_clients(self, ids: list[str]) -> list[tuple[str, list]]:
        """Take the locks of ``ids`` (sorted: two starts never wait for each other's)."""
        with self._client_locks_guard:
            entries = []
            for cid in ids:
                entry = self._client_locks.setdefault(cid, [threading.Lock(), 0])
                entry[1] += 1
                entries.append((cid, entry))
        for _, entry in entries:
            entry[0].acquire()
        return entries

    def _release_clients(self, entries: list[tuple[str, list]]) -> None:
        with self._client_locks_guard:
            for cid, entry in entries:
                entry[0].release()
                entry[1] -= 1
                if not entry[1]:
                    del self._client_locks[cid]

    def start_prepared(self, prepared: list) -> None:
        """Record checkpointed starts ((checkpoint, blob, flow) triples) and return once
        they are committed (a clustered worker files forwarded starts through here)."""
        node = self.node
        sched = node.scheduler
        if not node.threaded:
            for cp, blob, flow in prepared:
                sched.record_start(cp, blob, flow)
            sched.commit()   # durable now; they run at the next round (MockNetwork.run_network)
            return
        done = threading.Event()
        sched.start_flows(prepared, done.set)
        deadline = time.monotonic() + 120
        while not done.wait(0.25):
            if sched.dead:   # its commits stopped (e.g. a full disk): the start is not durable
                raise sched.commit_error or FlowError(f"node {node.party.name} has stopped")
            if time.monotonic() > deadline:
                raise TimeoutError(f"node {node.party.name} did not record the start within 120s")
        if sched.commit_error is not None:
            raise sched.commit_error
