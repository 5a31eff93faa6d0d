"""The executor: performs the actions a transition returned, for one flow.

In-memory effects happen at once (a resumed flow joins the run queue, a frame joins
the inbox); durable effects are left for the scheduler's next group commit; I/O
(acknowledgements, external work) waits until after that commit. Nothing a peer can
observe happens before the state that caused it is durable.
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from greenflow.statemachine.actions import (ACCEPT, ACK, ARM_TIMER, CONSUME, CUT, DROP, PEER_ENDED,
                                            RESUME, RUN_EXTERNAL, SEND_INFO, WAIT, describe)
from greenflow.runtime.flow_runtime import NO_INBOX, FlowRuntime, InboxItem, Resume, appended
from greenflow.messages import END, ERROR, REJECT, EndReason, carries_message
from greenflow.status import FlowStatus
from greenflow.statemachine import transitions
from greenflow.statemachine.transitions import end_reason

if TYPE_CHECKING:
    from greenflow.party import Party
    from greenflow.statemachine.scheduler import Scheduler

log = logging.getLogger("greenflow.executor")

_RUNNABLE, _SUSPENDED = FlowStatus.RUNNABLE, FlowStatus.SUSPENDED


def execute(sched: "Scheduler", rt: FlowRuntime, actions: list, sender: "Party | None" = None) -> None:
    # A frame accepted and consumed by the same decision (a flow waiting on it, nothing
    # buffered before it) goes straight from ACCEPT to CONSUME, never into the inbox.
    #
    # The scheduler's bookkeeping for the common actions (`Scheduler.resume_later`,
    # `hold_for_commit`, `ack_after_commit`) is done inline: a method call fewer per
    # action, several per message.
    taken = None
    for a in actions:
        op = a[0]
        if op == RESUME:
            entry = rt.pending
            if entry is not None:
                entry.outcome = a[1]
                rt.pending = None
            rt.cp.status = _RUNNABLE
            sched.run_queue.append(Resume(rt, a[1]))   # resume_later
            rt.dirty = True
        elif op == WAIT:
            rt.cp.status = _SUSPENDED
            rt.dirty = True
        elif op == ACCEPT:
            f = a[1]
            st = rt.cp.sessions[f.sid]
            st.recv_seq = f.seq + 1
            rt.fresh = appended(rt.fresh, f)
            if f.info is not None and st.peer_info is None:
                st.peer_info = tuple(f.info)
            if carries_message(f):
                if not rt.inbox.get(f.sid) and (CONSUME, f.sid) in actions:
                    taken = f
                else:
                    rt.inbox_queue(f.sid, sched.unread_from(st.counterparty.name)).append(
                        InboxItem(f, False))
            rt.dirty = True
            sched.touched[rt.flow_id] = rt  # hold_for_commit: acknowledged once this commit holds it
        elif op == CONSUME:
            sid = a[1]
            if taken is not None and taken.sid == sid:
                f, taken = taken, None
            else:
                q = rt.inbox[sid]
                item = q.popleft()
                if not q:
                    del rt.inbox[sid]  # type: ignore[attr-defined]
                    if not rt.inbox:
                        rt.inbox = NO_INBOX
                f = item.frame
                if item.persisted:
                    rt.consumed = appended(rt.consumed, (f.sid, f.seq))
            kind = f.kind
            if kind == END or kind == ERROR or kind == REJECT:
                st = rt.cp.sessions[f.sid]
                st.peer_ended = (end_reason(f.reason) if kind == END else
                                 end_reason(EndReason.FAILED) if kind == ERROR
                                 else "rejected the session")
            elif f.ends:
                rt.cp.sessions[f.sid].peer_ending = end_reason(f.reason)
            rt.dirty = True
        elif op == ACK:
            if sender is not None:   # ack_after_commit
                acks = sched.post_acks.get(sender.name)
                if acks is None:
                    sched.post_acks[sender.name] = [a[1]]
                else:
                    acks.append(a[1])
        elif op == PEER_ENDED:
            st = rt.cp.sessions[a[1]]
            st.peer_ended, st.peer_ending = st.peer_ending, None
            rt.dirty = True
        elif op == SEND_INFO:
            st = rt.cp.sessions[a[1]]
            if not st.sent_info:
                rt.emit_confirm(st)
            rt.dirty = True
        elif op == ARM_TIMER:
            sched.arm_timer(rt, a[1])
        elif op == RUN_EXTERNAL:
            sched.start_external_after_commit(rt)
        elif op == CUT:
            f = a[1]
            st = rt.cp.sessions[f.sid]
            if a[2]:
                most = _size(transitions.MAX_UNREAD_PER_PEER)
                sched.peer_log.warning(
                    f"unread {st.counterparty.name}", "%s: %s has more than %s waiting unread "
                    "on all its sessions here; session %s of flow %s (%s), where its next "
                    "message would wait too, is ended", sched.identity.name,
                    st.counterparty.name, most, f.sid, rt.flow_id, rt.cp.flow_class)
                theirs = f"{most} sent to it on all sessions"
                ours = f"{most} on all its sessions that waited unread"
            else:
                most = (f"{transitions.MAX_UNREAD_MESSAGES:,} messages or "
                        f"{_size(transitions.MAX_UNREAD_BYTES)}")
                log.warning("%s: flow %s (%s): %s sent more than %s that the flow had not read "
                            "on session %s; the session is ended", sched.identity.name,
                            rt.flow_id, rt.cp.flow_class, st.counterparty.name, most, f.sid)
                theirs, ours = f"{most} sent to it", f"{most} the flow had not read"
            rt.cut_session(st, f"ended the session: more than {theirs} were unread",
                           f"sent more than {ours}, so the session was ended")
            rt.dirty = True
            sched.touched[rt.flow_id] = rt
        elif op == DROP:
            log.debug("%s: flow %s dropped a frame: %s", sched.identity.name, rt.flow_id, a[1])
        else:
            raise TypeError(f"unknown action {describe(a)}; please file a bug")


def _size(n: int) -> str:
    return f"{n >> 20} MiB" if n % (1 << 20) == 0 else f"{n:,} bytes"
