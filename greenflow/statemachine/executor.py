"""The executor: performs the actions a transition returned, for one flow.

In-memory effects happen at once (a resumed flow joins the run queue, a frame joins
the inbox); durable effects are left for the scheduler's next group commit; I/O
(acknowledgements, external work) waits until after that commit. Nothing a peer can
observe happens before the state that caused it is durable.
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from greenflow.statemachine.actions import Accept, Ack, ArmTimer, Consume, Drop, PeerEnded, Resume, RunExternal, SendInfo, Wait
from greenflow.runtime.flow_runtime import NO_INBOX, FlowRuntime, InboxItem, appended
from greenflow.messages import END, ERROR, REJECT, carries_message
from greenflow.status import FlowStatus
from greenflow.statemachine.transitions import end_reason

if TYPE_CHECKING:
    from greenflow.party import Party
    from greenflow.statemachine.scheduler import Scheduler

log = logging.getLogger("greenflow.executor")


def execute(sched: "Scheduler", rt: FlowRuntime, actions: list, sender: "Party | None" = None) -> None:
    for a in actions:
        t = type(a)
        if t is Resume:
            entry = rt.pending
            if entry is not None:
                entry.outcome = a.outcome
                rt.pending = None
            rt.cp.status = FlowStatus.RUNNABLE
            sched.resume_later(rt, a.outcome)
            rt.dirty = True
        elif t is Wait:
            rt.cp.status = FlowStatus.SUSPENDED
            rt.dirty = True
        elif t is Accept:
            f = a.frame
            st = rt.cp.sessions[f.sid]
            st.recv_seq = f.seq + 1
            rt.fresh = appended(rt.fresh, f)
            if f.info is not None and st.peer_info is None:
                st.peer_info = tuple(f.info)
            if carries_message(f):
                rt.inbox_queue(f.sid).append(InboxItem(f, False))
            rt.dirty = True
            sched.hold_for_commit(rt)  # acknowledged only once this commit holds it
        elif t is Consume:
            q = rt.inbox[a.sid]
            item = q.popleft()
            if not q:
                del rt.inbox[a.sid]  # type: ignore[attr-defined]
                if not rt.inbox:
                    rt.inbox = NO_INBOX
            f = item.frame
            if item.persisted:
                rt.consumed = appended(rt.consumed, (f.sid, f.seq))
            if f.kind in (END, ERROR, REJECT):
                st = rt.cp.sessions[f.sid]
                st.peer_ended = (end_reason(f.reason) if f.kind == END else
                                 "failed" if f.kind == ERROR else "rejected the session")
            elif f.ends:
                rt.cp.sessions[f.sid].peer_ending = end_reason(f.reason)
            rt.dirty = True
        elif t is PeerEnded:
            st = rt.cp.sessions[a.sid]
            st.peer_ended, st.peer_ending = st.peer_ending, None
            rt.dirty = True
        elif t is SendInfo:
            st = rt.cp.sessions[a.sid]
            if not st.sent_info:
                rt.emit_confirm(st)
            rt.dirty = True
        elif t is Ack:
            if sender is not None:
                sched.ack_after_commit(sender.name, a.msg_id)
        elif t is ArmTimer:
            sched.arm_timer(rt, a.deadline)
        elif t is RunExternal:
            sched.start_external_after_commit(rt)
        elif t is Drop:
            log.debug("%s: flow %s dropped a frame: %s", sched.identity.name, rt.flow_id, a.reason)
        else:
            raise TypeError(f"unknown action {a!r}; please file a bug")
