"""Where suspended flows stand, for dumps: code locations at every commit, locals lazily.

Capturing a flow's locals (reprs, pickled values, redaction) at every suspension cost a
fifth of a short flow's CPU, and nearly every snapshot was overwritten unread. So a
commit records only code locations (`snapshots.locations`), and the locals are taken
when someone can need them:

- when the flow leaves memory (hibernation, a clean close): written with that commit;
- when a dump asks: a resident flow is inspected in memory; a flow on disk whose stored
  snapshot has locations only (its node lost power) is replayed, with no I/O, to its
  pending point in a throwaway runtime, inspected and unwound (the flow is unchanged;
  the stack found is stored with the next commit, for the next dump);
- at every suspension, with the node option ``capture_frames="every_suspension"``, and in
  ``reload_after_suspend`` mode, where every suspended flow leaves memory anyway.

``capture_frames=False`` records nothing.
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Optional, Union

from greenflow import serialization
from greenflow.runtime import snapshots
from greenflow.runtime.flow_runtime import FlowRuntime
from greenflow.runtime.journal import Entry
from greenflow.runtime.traps import Unwind, asked, recycle
from greenflow.status import FlowStatus
from greenflow.storage.interface import Batch

if TYPE_CHECKING:
    from greenflow.statemachine.scheduler import Scheduler

log = logging.getLogger("greenflow.scheduler")

#: ``capture_frames`` value: capture locals at every suspension (the cost of old).
EVERY_SUSPENSION = "every_suspension"
CaptureMode = Union[bool, str]


def check_mode(mode: CaptureMode) -> CaptureMode:
    if mode is True or mode is False or mode == EVERY_SUSPENSION:
        return mode
    raise ValueError(f"capture_frames must be True, False or {EVERY_SUSPENSION!r}, got {mode!r}")


def _eager(sched: "Scheduler") -> bool:
    return sched.capture_frames == EVERY_SUSPENSION or sched.reload_after_suspend


def _put(b: Batch, rt: FlowRuntime, snap: Any) -> None:
    b.put_snapshot(rt.flow_id, serialization.dumps(snap))
    rt.stored_at = None   # locals stored: the next locations are news again


def at_commit(sched: "Scheduler", b: Batch, rt: FlowRuntime) -> None:
    """A suspended flow's snapshot for this commit: its locations (its locals too when
    the node captures eagerly)."""
    if sched.capture_frames:
        eager = _eager(sched)
        snap = snapshots.of_flow(rt, keep_locals=eager)
        if snap is None:
            return
        if eager:
            _put(b, rt, snap)
            return
        at = hash(snap)   # an int, not the tuples: held by every waiting flow
        if at != rt.stored_at:   # else it waits where it waited at its last commit: stored
            _put(b, rt, snap)
            rt.stored_at = at


def before_eviction(sched: "Scheduler", b: Batch, rt: FlowRuntime) -> None:
    """The flow is about to leave memory: keep its locals with the commit in ``b``."""
    if sched.capture_frames and not _eager(sched):
        snap = snapshots.of_flow(rt)
        if snap is not None:
            _put(b, rt, snap)


def at_failure(sched: "Scheduler", b: Batch, rt: FlowRuntime, exc: BaseException) -> None:
    """A flow parked by the hospital: keep the stack where it failed (its greenlet is
    gone, so a dump could show neither locals nor a replay past the failure)."""
    if sched.capture_frames:
        snap = snapshots.at_failure(exc, rt.logic)
        if snap is not None:
            _put(b, rt, snap)


def before_close(sched: "Scheduler") -> None:
    """A clean close: keep the locals of every resident suspended flow whose state is
    committed (one more small commit)."""
    if not sched.capture_frames or _eager(sched) or sched.dead:
        return
    b = Batch()
    for rt in sched.resident.values():
        if not rt.dirty:
            before_eviction(sched, b, rt)
    if b:
        sched.store.commit(b)


def snapshot(sched: "Scheduler", fid: str) -> Any:
    """What a dump shows of ``fid``'s stack (None: nothing recorded)."""
    if not sched.capture_frames:
        return None
    rt = sched.resident.get(fid)
    if rt is not None and rt.greenlet is not None and rt.pending is not None:
        return snapshots.of_flow(rt)
    snap = sched.store.snapshot(fid)
    if snap is not None and not snapshots.has_locals(snap) and rt is None:
        try:
            full = replayed(sched, fid)
        except Exception as exc:  # noqa: BLE001 - a dump shows what it can
            log.debug("%s: cannot replay flow %s for a dump: %s", sched.identity.name, fid, exc)
            full = None
        if full is not None:
            # Kept (with the next commit), so the next dump need not replay it again.
            sched.batch.put_snapshot(fid, serialization.dumps(full))
            return full
    return snap


def replayed(sched: "Scheduler", fid: str) -> Optional[list]:
    """Replay a flow that is on disk only to its pending point, with I/O refused after
    it, and capture its stack; nothing of the flow, the scheduler or the store changes."""
    store = sched.store
    cp = store.checkpoint(fid)
    if cp is None or cp.pending is None or cp.status.finished \
            or cp.status == FlowStatus.HOSPITALIZED:
        return None
    raw = store.logic_blob(fid)
    if raw is None:
        return None
    journal = store.journal(fid, cp.journal_len - 1)
    journal.append(Entry(cp.pending[0], cp.pending[1], None, cp.pending[2]))
    rt = FlowRuntime(sched, cp, serialization.loads(raw), journal)
    g = rt.start_greenlet()
    try:
        if asked(rt, g.switch(rt)) is None:
            return None   # it ended or diverged instead: nothing to show
        return snapshots.of_flow(rt)
    finally:
        rt.io_refused = "inspected for a dump"
        if g and not g.dead:
            try:
                g.throw(Unwind("inspected for a dump"))
            except BaseException:  # noqa: BLE001 - whatever the flow did while unwinding
                pass
        rt.greenlet = None
        recycle(g, sched.idle_greenlets)

