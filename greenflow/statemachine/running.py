"""Starting and running flows: recording a new flow, making it resident, stepping its
greenlet to the next suspension, progress, and the flows' timers.

Part of the scheduler (`Scheduler` inherits it).
"""
from __future__ import annotations

import heapq
import logging
from typing import Any, Optional

from greenflow.messages import exception_text
from greenflow.statemachine import transitions
from greenflow.runtime.checkpoint import AT_START, Checkpoint
from greenflow.statemachine.executor import execute
from greenflow.runtime.flow_runtime import Ended, FlowRuntime, Resume
from greenflow.status import FlowStatus

_FINISHED = frozenset((FlowStatus.COMPLETED, FlowStatus.FAILED, FlowStatus.KILLED))

log = logging.getLogger("greenflow.scheduler")
#: The least size of the timer heap at which its stale timers are looked for.
TIMERS_BOUND = 4096


class Running:
    """New flows in, and each flow run to its next suspension."""

    def record_start(self, cp: Checkpoint, blob: bytes, logic: Any,
                     route: Optional[tuple[str, str, int]] = None) -> FlowRuntime:
        # Nothing of the flow itself is written yet: it goes into the store at the round's
        # commit if it is still unfinished then (a responder that answers and ends within
        # one round only ever writes its result). The start is durable either way by the
        # time anyone is told: start_flow returns, or the initiation is acknowledged.
        if cp.client_id is not None:
            self.batch.put_client(cp.client_id, cp.flow_id)
        rt = FlowRuntime(self, cp, logic, [])
        rt.start_blob = blob
        rt.chunks, rt.inboxed, rt.wake_stored = (), False, False
        rt.base = AT_START   # nothing stored yet: parked, it goes back to its starting state
        fid = cp.flow_id
        if route is not None:   # a responder: the route of the session that started it
            self.resident[fid] = rt
            self.routes[route] = fid
        else:
            self._make_resident(rt)
        self.touched[fid] = rt
        self.run_queue.append(Resume(rt, None))
        self.stats["flows_started"] += 1
        self._count("started", cp.flow_class)
        return rt

    def _count(self, event: str, flow_class: str) -> None:
        key = (event, flow_class)
        self.flow_counts[key] = self.flow_counts.get(key, 0) + 1

    def _make_resident(self, rt: FlowRuntime) -> None:
        self.resident[rt.flow_id] = rt
        for st in rt.cp.sessions.values():
            if not st.initiator:  # sessions we initiated route by their id (see _deliver)
                self.routes[(st.counterparty.name, st.sid, st.role_of_peer)] = rt.flow_id

    def _step(self, rt: FlowRuntime, value: Any) -> None:
        fid = rt.flow_id
        resident = self.resident
        if rt.cp.status in _FINISHED or resident.get(fid) is not rt:
            return  # finished, or evicted (a newer runtime may stand for the same flow)
        g = rt.greenlet
        # Odd while the flow runs: `greenflow.node.stall_watch` looks for a turn that lasts.
        self.steps += 1
        try:
            if g is None:
                if rt.journal:
                    self.stats["replays"] += 1
                g = rt.start_greenlet()
                res = g.switch(rt)
            else:
                res = g.switch(value)
        finally:
            self.steps += 1
        resident[fid] = resident.pop(fid)  # most recently active last (LRU)
        self.touched[fid] = rt
        if res == ():   # suspended: it waits on rt.pending (traps.switch_to_scheduler)
            res = rt.pending
            done = rt.external_done
            if done is not None:
                rt.external_done = None
            execute(self, rt, transitions.on_suspend(rt.cp, rt.inbox, res, self.clock.now(), done))
        else:
            if res is None:   # ended: the end was handed over in gf_result (traps._serve)
                res, g.gf_result = g.gf_result, None
            if res[0] == Ended.INTERRUPTED:
                # Not the flow's failure: the process is being interrupted. Nothing of
                # this round is committed (as at a power cut); the caller sees the Ctrl-C.
                self.crash()
                raise res[1]
            try:
                self._finish(rt, res)
            except Exception as exc:  # an error while handling the flow's end
                log.exception("%s: ending flow %s failed", self.identity.name, rt.flow_id)
                self._park(rt, f"error while ending the flow ({res[0]}): "
                               f"{type(exc).__name__}: {exception_text(exc)}")

    def progress_wanted(self) -> bool:
        """Whether any progress listener wants every step now. A listener may say it
        does not (``active`` false: the RPC's hub with no stream open); flows then work
        their progress out only when their checkpoints are staged."""
        for fn in self.progress_listeners:
            if getattr(fn, "active", True):
                return True
        return False

    def progress_changed(self, rt: FlowRuntime, step: Optional[str]) -> None:
        for fn in list(self.progress_listeners):
            try:
                fn(rt.flow_id, step)
            except Exception:
                log.exception("progress listener failed")

    #: The size of the timer heap past which its stale timers are dropped (doubling
    #: with what is kept, so the scan costs O(1) per timer armed).
    timers_bound = TIMERS_BOUND

    def arm_timer(self, rt: FlowRuntime, deadline: float) -> None:
        heapq.heappush(self.timers, (deadline, rt.flow_id))
        if len(self.timers) > self.timers_bound:
            self._drop_stale_timers()
        cp = rt.cp
        if cp.timer_at != deadline:
            if cp.timer_at is not None:
                self.batch.delete_timer(cp.timer_at, rt.flow_id)
            cp.timer_at = deadline
            self.batch.put_timer(deadline, rt.flow_id)

    def _drop_stale_timers(self) -> None:
        """The heap keeps a timer until it falls due, also one its flow no longer waits
        on (answered before its deadline, or ended): a flow receiving with a timeout of
        an hour in a loop left one per receive, an hour's worth of them. Dropped here:
        those of flows in memory that wait on another deadline or none, and of flows
        that just ended. A flow out of memory keeps its own (checked when it falls due)."""
        resident, ended, same = self.resident, self.recent_results, transitions.same_deadline
        keep, waiting = [], set()   # (a flow in memory waits on one deadline at most)
        for deadline, fid in self.timers:
            rt = resident.get(fid)
            if rt is None:
                if fid not in ended:
                    keep.append((deadline, fid))
            elif fid not in waiting:
                p = rt.pending
                if p is not None and p.deadline is not None and same(p.deadline, deadline):
                    keep.append((deadline, fid))
                    waiting.add(fid)
        heapq.heapify(keep)
        self.timers = keep
        self.timers_bound = max(TIMERS_BOUND, 2 * len(keep))

    def _fire_due_timers(self) -> bool:
        now = self.clock.now()
        fired = False
        while self.timers and self.timers[0][0] <= now:
            deadline, fid = heapq.heappop(self.timers)
            rt = self.resident.get(fid)
            if rt is None:
                cp = self.store.checkpoint(fid)
                if cp is not None and cp.status == FlowStatus.HOSPITALIZED:
                    if cp.retry_at is not None and cp.retry_at <= now:
                        fired |= self.retry(fid)
                    continue
                if cp is None or cp.pending is None or cp.pending[2] is None \
                        or not transitions.same_deadline(cp.pending[2], deadline):
                    continue
                rt = self._load(fid)
                if rt is None:
                    continue
                # Not replayed yet: it will reach the pending entry and see the deadline passed.
                fired = True
                continue
            actions = transitions.on_timer(rt.pending, deadline)
            if actions:
                execute(self, rt, actions)
                fired = True
        return fired
