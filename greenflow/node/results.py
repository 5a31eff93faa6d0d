"""A started flow's handle, and its result: from the scheduler's recent results or the
store, waited for on a threaded node, rebuilt into the flow's value or error."""
from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any, Optional

from greenflow import serialization
from greenflow.errors import FlowError, FlowKilled, UnknownFlow
from greenflow.runtime.flow_runtime import rebuild_flow_exception
from greenflow.status import FlowStatus
from greenflow.node.flow_views import shown_status

if TYPE_CHECKING:
    from greenflow.node.node import Node


class FlowHandle:
    """A started flow. Holds only the id and the node, so re-attach with
    ``node.handle(id)`` after a restart."""

    def __init__(self, node: "Node", flow_id: str) -> None:
        self.node = node
        self.id = flow_id

    def __repr__(self) -> str:
        return f"FlowHandle({self.id})"

    def result(self, timeout: Optional[float] = None) -> Any:
        """The flow's return value, or its error raised here. On a real node this waits
        (`TimeoutError` after ``timeout``); on MockNetwork an unfinished flow raises
        `FlowError` at once, since nothing else would run it."""
        return self.node.results.result(self.id, timeout)

    @property
    def status(self) -> FlowStatus:
        return self.node.results.status(self.id)


class FlowResults:
    """The results and statuses of one node's flows (what `FlowHandle` asks)."""

    def __init__(self, node: Node) -> None:
        self.node = node

    def check_open(self, fid: str) -> None:
        """Handles outlive their node object (a restart opens a new one): say so, rather
        than let the closed store raise from inside LMDB."""
        if self.node.closed:
            raise FlowError(f"node {self.node.party.name} is closed; to reach flow {fid} after a "
                            "restart, re-attach with node.handle(id) on the reopened node")

    def record(self, fid: str) -> Optional[dict]:
        self.check_open(fid)
        rec = self.node.scheduler.recent_results.get(fid)
        return rec if rec is not None else self.node.store.result(fid)

    def result(self, fid: str, timeout: Optional[float]) -> Any:
        rec = self.record(fid)
        if rec is None:
            if not self.node.threaded:
                raise FlowError(f"flow {fid} on {self.node.party.name} has not finished "
                                f"(status {self.status(fid)}); run the network")
            rec = self.wait_result(fid, timeout)
        return unpack_result(fid, rec)

    def wait_result(self, fid: str, timeout: Optional[float]) -> dict:
        box: dict[str, dict] = {}
        done = threading.Event()

        def register() -> None:
            rec = self.record(fid)
            if rec is not None:
                box["r"] = rec
                done.set()
            else:
                self.node.scheduler.when_finished(fid, lambda r: (box.__setitem__("r", r), done.set()))

        self.node.on_scheduler(register)
        if not done.wait(timeout):
            raise TimeoutError(f"flow {fid} did not finish within {timeout}s")
        if box["r"] is None:
            raise FlowError(f"node {self.node.party.name} closed while waiting for flow {fid}; "
                            "re-attach with node.handle(id) once it is reopened")
        return box["r"]

    def status(self, fid: str) -> FlowStatus:
        rec = self.record(fid)
        if rec is not None:
            return rec["status"]
        rt = self.node.scheduler.resident.get(fid)
        if rt is not None:
            return rt.cp.status
        cp = self.node.store.checkpoint(fid)
        if cp is None:
            raise UnknownFlow(f"no flow {fid!r} on node {self.node.party.name}")
        return shown_status(cp, resident=False)


def unpack_result(fid: str, rec: dict) -> Any:
    status = rec["status"]
    if status == FlowStatus.COMPLETED:
        return rec["value"]
    if status == FlowStatus.KILLED:
        raise FlowKilled(f"flow {fid} ({rec['flow_class']}) was killed")
    if rec.get("flow_exception") is not None:
        raise rebuild_flow_exception(*rec["flow_exception"])
    exc = None
    if rec.get("exc") is not None:
        try:
            exc = serialization.loads(rec["exc"])
        except Exception:
            exc = None
    if isinstance(exc, BaseException):
        raise exc
    raise FlowError(f"flow {fid} ({rec['flow_class']}) failed: {rec.get('error')}")
