"""What a node shows of its flows: `FlowInfo` rows for listings and JSON-ready checkpoint
dumps. Kept apart from `Node` so the node, RPC and console read a checkpoint or result
record into a listing entry in one place; `FlowViews` is the node's reader of them."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Optional

from greenflow import serialization
from greenflow.errors import NotHere, UnknownFlow
from greenflow.log_limits import clip
from greenflow.runtime import snapshots as frames_mod
from greenflow.runtime.checkpoint import Checkpoint
from greenflow.runtime.journal import describe
from greenflow.statemachine import stacks
from greenflow.status import FlowStatus
from greenflow.storage import open_store
from greenflow.storage.interface import FlowStore
from greenflow.storage.partitions import partition_of

if TYPE_CHECKING:
    from greenflow.node.node import Node


@dataclass(frozen=True)
class FlowInfo:
    id: str
    flow_class: str
    status: FlowStatus
    progress_step: Optional[str]
    suspended_on: Optional[str]
    resident: bool
    error: Optional[str]
    #: On a clustered node: the worker that runs the flow (None on a single node).
    worker: Optional[str] = None


class FlowViews:
    """A node's listings and dumps, read on its scheduler (callers go through
    `Node.flows`, `Node.flow_info` and `Node.checkpoints_dump`)."""

    def __init__(self, node: "Node") -> None:
        self.node = node

    def act_here(self, fid: str) -> str:
        """``fid``, for an action (kill, retry) this node takes on it. A clustered worker
        acts only on flows of the partitions it runs: for another worker's flow it said
        done (and even showed the flow KILLED or COMPLETED from its own memory) while the
        owner ran the flow on to another end. Refused with `NotHere`, naming the owner."""
        node = self.node
        if node.runs_flow is None or node.runs_flow(fid):
            return fid
        listing = node.party_listing
        owner = rpc = None
        if listing is not None:
            try:
                owner = listing.owners().get(partition_of(fid))
                if owner is not None and listing.rpc_of is not None:
                    rpc = listing.rpc_of(owner)
            except Exception:  # noqa: BLE001 - the database unreachable: refused, unnamed
                pass
        me = listing.me if listing is not None else node.party.name
        if owner == me:   # taken over, not served yet: this worker's next generation
            owner = rpc = None
        where = (f"worker {owner}" + (f" (RPC at {rpc})" if rpc else "") if owner else
                 "another worker, or this one soon (its partition is changing hands: "
                 "retry in a moment)")
        raise NotHere(f"flow {fid} runs on {where}, not on {me}: nothing was done here; "
                      "send the request there", owner, rpc)

    def nothing_done(self, fid: str) -> bool:
        """False for an action that did nothing (`Node.kill_flow`, `retry_flow`), after
        `UnknownFlow` if ``fid`` is unknown: a mistyped id and an ended flow were both a
        plain False."""
        self.node.flow_info(fid)
        return False

    def flow_info(self, fid: str) -> FlowInfo:
        node = self.node
        rt = node.scheduler.resident.get(fid)
        if rt is not None:
            return info_from_checkpoint(rt.cp, True)
        rec = node.results.record(fid)
        if rec is not None:
            return info_from_result(fid, rec)
        try:
            cp, filed = node.results.checkpoint_or_filed(fid)
        except Exception as exc:  # noqa: BLE001 - a damaged record: this flow only
            return info_unreadable(fid, exc)
        if cp is not None:
            return info_from_checkpoint(cp, False)
        if filed is not None:   # filed for another worker, not started yet
            return FlowInfo(fid, filed, FlowStatus.RUNNABLE, None, None, False, None)
        raise UnknownFlow(f"no flow {clip(fid)} on node {node.party.name}")

    def flows(self) -> list[FlowInfo]:
        store, sched = self.node.store, self.node.scheduler
        out: dict[str, FlowInfo] = {}
        resident = sched.resident
        for fid, raw in store.header_blobs():
            rt = resident.get(fid)
            if rt is not None:
                out[fid] = info_from_checkpoint(rt.cp, True)
                continue
            out[fid] = stored_info(fid, raw)
        for fid, rt in resident.items():
            if fid not in out:
                out[fid] = info_from_checkpoint(rt.cp, True)
        for fid, rec in store.results():
            if fid not in out:
                out[fid] = info_from_result(fid, rec)
        for fid, rec in sched.recent_results.items():
            if fid not in out:
                out[fid] = info_from_result(fid, rec)
        return list(out.values())

    def dump(self) -> list[dict]:
        sched = self.node.scheduler
        return dump_store(self.node.store, set(sched.resident),
                          lambda fid: stacks.snapshot(sched, fid))


def read_checkpoints(base_dir: str) -> list[dict]:
    """`Node.checkpoints_dump` of a node directory, read-only and without starting the
    node: nothing is recovered, replayed or written (safe beside a running node, from
    another process). Whether a running node holds a flow in memory is not on disk:
    each entry's ``status`` is the stored one (SUSPENDED for a waiting flow, never
    HIBERNATED) and its ``resident`` is None."""
    store = open_store(base_dir, readonly=True)
    try:
        return dump_store(store, None)
    finally:
        store.close()


def dump_store(store: FlowStore, resident: Optional[set[str]],
               frames_of: Optional[Callable[[str], Any]] = None,
               rows: Optional[Iterable[tuple[str, bytes]]] = None) -> list[dict]:
    """The dump of ``rows`` (stored headers ``(fid, blob)``; None: every one).
    ``resident``: the flows in memory, or None where that is not known (read offline)."""
    return list(dump_entries(store, resident, frames_of, rows))


def dump_entries(store: FlowStore, resident: Optional[set[str]],
                 frames_of: Optional[Callable[[str], Any]] = None,
                 rows: Optional[Iterable[tuple[str, bytes]]] = None) -> Iterator[dict]:
    """`dump_store`'s entries one at a time: a tool printing a million of them holds one."""
    for fid, raw in (store.header_blobs() if rows is None else rows):
        try:
            cp: Checkpoint = serialization.loads(raw)
        except Exception as exc:
            yield {"flow_id": fid, "status": "UNREADABLE", "error": f"{type(exc).__name__}: {exc}",
                   "frames": [], "sessions": []}
            continue
        here = None if resident is None else fid in resident
        status = cp.status if here is None else shown_status(cp, here)
        try:
            snap = frames_of(fid) if frames_of is not None else store.snapshot(fid)
        except Exception as exc:
            snap = [{"function": "?", "file": "?", "line": 0,
                     "locals": {"error": f"snapshot unreadable: {exc}"}}]
        yield {
            "flow_id": fid, "flow_class": cp.flow_class, "status": status.value,
            "progress_step": cp.progress_step, "suspended_on": suspended_on(cp),
            "error": cp.error, "resident": here,
            "suspension_count": cp.suspension_count, "journal_entries": cp.journal_len,
            "started_at": cp.started_at, "fingerprint": cp.fingerprint,
            "sessions": [{"id": s.sid, "counterparty": s.counterparty.name,
                          "role": "initiator" if s.initiator else "responder",
                          "protocol": s.protocol, "state": ("new", "open", "closed")[s.state],
                          "sent": s.send_seq, "received": s.received,
                          "peer_ended": s.peer_ended} for s in cp.sessions.values()],
            "frames": frames_mod.public(snap),
        }


def info_from_checkpoint(cp: Checkpoint, resident: bool) -> FlowInfo:
    """An unfinished flow's `FlowInfo`: the one place (node, RPC and console alike) that
    turns a checkpoint into a listing entry."""
    return FlowInfo(cp.flow_id, cp.flow_class, shown_status(cp, resident), cp.progress_step,
                    suspended_on(cp), resident, cp.error)


#: The flow class a listing gives a flow whose stored checkpoint cannot be read.
UNREADABLE_CLASS = "<unreadable>"


def info_unreadable(fid: str, exc: BaseException) -> FlowInfo:
    """A flow whose stored checkpoint cannot be read (a damaged record): it cannot run,
    so it shows as parked, with the reason, until an operator kills it."""
    return FlowInfo(fid, UNREADABLE_CLASS, FlowStatus.HOSPITALIZED, None, None, False,
                    f"checkpoint cannot be read: {type(exc).__name__}: {exc}")


def stored_info(fid: str, raw: bytes) -> FlowInfo:
    """A stored, non-resident checkpoint's listing entry; a damaged one is listed as
    parked, with the reason (`info_unreadable`), so an operator sees it and can kill it."""
    try:
        return info_from_checkpoint(serialization.loads(raw), False)
    except Exception as exc:  # noqa: BLE001 - a damaged record: this flow only
        return info_unreadable(fid, exc)


def info_from_result(fid: str, rec: dict) -> FlowInfo:
    """A finished flow's `FlowInfo`, from its stored result record: the one place (node,
    RPC and console alike) that reads a result record for a listing."""
    return FlowInfo(fid, rec["flow_class"], FlowStatus(rec["status"]), None, None, False,
                    rec.get("error"))


def shown_status(cp: Checkpoint, resident: bool) -> FlowStatus:
    """A stored checkpoint says SUSPENDED; out of memory, that flow is HIBERNATED."""
    if not resident and cp.status == FlowStatus.SUSPENDED:
        return FlowStatus.HIBERNATED
    return cp.status


def suspended_on(cp: Checkpoint) -> Optional[str]:
    if cp.pending is None:
        return None
    kind, key, deadline = cp.pending
    text = describe(kind, key)
    if deadline is not None:
        from datetime import datetime, timezone
        text += f" (until {datetime.fromtimestamp(deadline, tz=timezone.utc).isoformat()})"
    return text
