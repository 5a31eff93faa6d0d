"""A node's flow results: the record of a finished flow, waiting for one (on the
scheduler, or by polling the shared store for a flow another worker runs), a flow's
status, and `FlowHandle`, which holds only an id and reaches them through its node."""
from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, Any, Optional

from greenflow import serialization
from greenflow.errors import FlowError, FlowKilled, NodeClosed, StoreError, UnknownFlow
from greenflow.log_limits import clip
from greenflow.node.flow_views import shown_status
from greenflow.runtime.flow_runtime import rebuild_flow_exception
from greenflow.statemachine.events import Call
from greenflow.status import FlowStatus

if TYPE_CHECKING:
    from greenflow.node.node import Node


class NotCheckpointed:
    """A live part of a node (the node, a handle, a test network's node) that a flow
    must not hold across a suspension: pickling one says what to hold instead, rather than
    failing on whatever it holds (the node's key pair)."""

    __slots__ = ()
    #: What a flow holds instead, said by the error.
    hold_instead = "reach the node through self.services"

    def __reduce_ex__(self, protocol: Any) -> Any:
        raise TypeError(f"a {type(self).__name__} is never checkpointed with a flow (it is "
                        f"a live part of a running node): {self.hold_instead}")


class FlowHandle(NotCheckpointed):
    """A started flow. Holds only the id and the node, so re-attach with
    ``node.handle(id)`` after a restart."""

    hold_instead = "hold its id (handle.id) and ask the node for the result"

    __slots__ = ("node", "id", "earlier")   # one per started flow, often thousands at once

    def __init__(self, node: "Node", flow_id: str, earlier: bool = False) -> None:
        self.node = node
        self.id = flow_id
        #: True when a start found its client id taken: this flow was started before,
        #: perhaps by another client, and this start started nothing.
        self.earlier = earlier

    def __repr__(self) -> str:
        return f"FlowHandle({self.id})"

    def result(self, timeout: Optional[float] = None) -> Any:
        """The flow's return value, or its error raised here. On a real node this waits
        (`TimeoutError` after ``timeout``); on MockNetwork an unfinished flow raises
        `FlowError` at once, since nothing else would run it."""
        return self.node._result(self.id, timeout)

    @property
    def status(self) -> FlowStatus:
        return self.node._status(self.id)


class FlowResults:
    """Results and waiting for one node; `Node` delegates ``handle``, ``_record``,
    ``_result`` and ``_status`` here."""

    def __init__(self, node: "Node") -> None:
        self.node = node

    def handle(self, flow_id: str) -> FlowHandle:
        node = self.node
        self.check_open(flow_id)
        if flow_id not in node.scheduler.resident and not self._has_result(flow_id):
            try:
                cp, filed = self.checkpoint_or_filed(flow_id)
            except Exception:  # noqa: BLE001 - a damaged checkpoint: the flow is there
                return FlowHandle(node, flow_id)
            # Read the result again: a flow that ended between the two reads had its
            # checkpoint dropped in the commit that stored its result.
            if cp is None and filed is None and not self._has_result(flow_id):
                raise UnknownFlow(f"no flow {clip(flow_id)} on node {node.party.name}")
        return FlowHandle(node, flow_id)

    def _has_result(self, fid: str) -> bool:
        try:
            return self.node.store.result(fid) is not None
        except StoreError:
            raise
        except Exception:  # noqa: BLE001 - a damaged record is still a record of the flow
            return True

    def checkpoint_or_filed(self, fid: str) -> tuple[Optional[Any], Optional[str]]:
        """``fid``'s stored checkpoint, or on a clustered worker the flow class of its
        start while that waits, filed, for the worker that will run it
        (`Node.filed_start`); (None, None) when neither. The owner commits the start
        before it deletes the filing, so the store is read again when no filing is
        found: a flow started in between is not taken for an unknown one."""
        node = self.node
        cp = node.store.checkpoint(fid)
        if cp is not None or node.filed_start is None:
            return cp, None
        flow_class = node.filed_start(fid)
        if flow_class is not None:
            return None, flow_class
        return node.store.checkpoint(fid), None

    def check_open(self, fid: str) -> None:
        """Handles outlive their node object (a restart opens a new one): say so, rather
        than let the closed store raise from inside LMDB."""
        if self.node._closed:
            raise NodeClosed(f"node {self.node.party.name} is closed; to reach flow {fid} after "
                             "a restart, re-attach with node.handle(id) on the reopened node")

    def record(self, fid: str) -> Optional[dict]:
        self.check_open(fid)
        rec = self.node.scheduler.recent_results.get(fid)
        if rec is not None:
            return rec
        try:
            return self.node.store.result(fid)
        except StoreError:
            raise
        except Exception as exc:  # a damaged record: said as such, not as a bug
            raise FlowError(f"the stored result of flow {fid} on {self.node.party.name} cannot "
                            f"be read ({type(exc).__name__}: {exc}): the record is damaged") from exc

    def result(self, fid: str, timeout: Optional[float]) -> Any:
        return unpack_result(fid, self.settled(fid, timeout))

    def settled(self, fid: str, timeout: Optional[float]) -> dict:
        """The record of ``fid``'s end, waiting for it up to ``timeout``. What this raises
        (`TimeoutError`, `NodeClosed`, `StoreError`) is never the flow's own outcome, which
        `unpack_result` raises from the record."""
        timeout = _timeout(timeout)
        rec = self.record(fid)
        if rec is None:
            if not self.node.threaded:
                raise FlowError(f"flow {fid} on {self.node.party.name} has not finished "
                                f"(status {self.status(fid)}); run the network")
            rec = self.wait(fid, timeout)
        return rec

    def wait(self, fid: str, timeout: Optional[float]) -> dict:
        node = self.node
        if node.runs_flow is not None and not node.runs_flow(fid):
            return self.poll(fid, timeout)
        box: dict[str, dict] = {}
        done = threading.Event()

        def finished(r: dict) -> None:
            box["r"] = r
            done.set()

        def register() -> None:
            rec = self.record(fid)
            if rec is not None:
                box["r"] = rec
                done.set()
            else:
                node.scheduler.when_finished(fid, finished)

        node.on_scheduler(register)
        if not done.wait(timeout):
            # Given up: unregistered, or a client asking again and again (RPC polls with a
            # wait) would leave one waiter per ask until the flow ends (~1.5 KB each).
            if not node.closed:
                node.scheduler.post(Call(lambda: node.scheduler.forget_waiter(fid, finished)))
            raise TimeoutError(f"flow {fid} did not finish within {timeout}s")
        if box["r"] is None:
            raise NodeClosed(f"node {node.party.name} closed while waiting for flow {fid}; "
                             "re-attach with node.handle(id) once it is reopened")
        return box["r"]

    def poll(self, fid: str, timeout: Optional[float]) -> dict:
        """The result of a flow another worker of the party runs: its record appears in the
        shared store when it ends (polled: nothing here is told when it does)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        pause = 0.02
        while True:
            rec = self.record(fid)
            if rec is not None:
                return rec
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"flow {fid} did not finish within {timeout}s")
            time.sleep(pause if deadline is None else
                       max(0.0, min(pause, deadline - time.monotonic())))
            pause = min(pause * 2, 0.5)

    def status(self, fid: str) -> FlowStatus:
        rec = self.record(fid)
        if rec is not None:
            return rec["status"]
        rt = self.node.scheduler.resident.get(fid)
        if rt is not None:
            return rt.cp.status
        try:
            cp, filed = self.checkpoint_or_filed(fid)
        except Exception:  # noqa: BLE001 - a damaged checkpoint: parked (`info_unreadable`)
            return FlowStatus.HOSPITALIZED
        if cp is not None:
            return shown_status(cp, resident=False)
        if filed is not None:
            return FlowStatus.RUNNABLE   # filed, to be started by its partition's owner
        rec = self.record(fid)   # it ended since the first read: dropped with its result stored
        if rec is not None:
            return rec["status"]
        raise UnknownFlow(f"no flow {clip(fid)} on node {self.node.party.name}")


def unpack_result(fid: str, rec: dict) -> Any:
    status = rec["status"]
    if status == FlowStatus.COMPLETED:
        return rec["value"]
    if status == FlowStatus.KILLED:
        raise FlowKilled(f"flow {fid} ({rec['flow_class']}) was killed")
    if rec.get("flow_exception") is not None:
        exc = rebuild_flow_exception(*rec["flow_exception"])
        fields = rec.get("flow_exception_fields")
        if fields is not None:
            try:   # the flow's own attributes of it, from this node's own store
                exc.__dict__.update(serialization.loads(fields))
            except Exception:  # noqa: BLE001 - a class changed since: the message stands
                pass
        raise exc
    exc = None
    if rec.get("exc") is not None:
        try:
            exc = serialization.loads(rec["exc"])
        except Exception:
            exc = None
    if isinstance(exc, Exception):
        raise exc
    # Not SystemExit, KeyboardInterrupt or the like: raised in the caller they would stop
    # its program or thread (an RPC request's), as if it had been asked to, not the flow.
    raise FlowError(f"flow {fid} ({rec['flow_class']}) failed: {rec.get('error')}")


def _timeout(timeout: Any) -> Optional[float]:
    """``result()``'s timeout as a wait takes it: None, inf or more than a wait can take
    wait for ever (they overflowed the wait); anything else is a number of seconds from 0
    (NaN waited not at all and said "within nans", a str failed a comparison)."""
    if timeout is None:
        return None
    if type(timeout) is bool or not isinstance(timeout, (int, float)):
        raise TypeError(f"result(timeout=...) takes a number of seconds or None, got "
                        f"{type(timeout).__qualname__}")
    if timeout != timeout or timeout < 0:
        raise ValueError(f"result(timeout=...) takes a number of seconds from 0, got {timeout!r}")
    return None if timeout > threading.TIMEOUT_MAX else float(timeout)   # (inf too)
