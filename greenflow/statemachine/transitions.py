"""Transitions: given a flow's state and an event, decide what happens.

Pure decisions: they read the checkpoint, the inbox and the pending request and return
a list of actions (see `greenflow.statemachine.actions`). They import no lmdb, dill, greenlet or
sockets, so they are tested by looking at the actions they return.
"""
from __future__ import annotations

from collections import deque
from typing import Optional

from greenflow.statemachine.actions import Accept, Ack
from greenflow.statemachine.actions import ArmTimer, Consume, Drop, PeerEnded, Resume, RunExternal, SendInfo, Wait
from greenflow.runtime.checkpoint import Checkpoint
from greenflow.runtime.journal import OK, TIMEOUT, Entry, Kind, Outcome
from greenflow.messages import CONFIRM, DATA, END, ERROR, INFO_REQ, INIT, REJECT, Frame, carries_message


def frame_outcome(frame: Frame) -> tuple:
    """The journal outcome a consumed frame gives a waiting ``receive``."""
    if frame.kind in (DATA, INIT):
        # The sequence number names the payload should it be stored aside (`payloads`).
        return (Outcome.DATA, frame.payload, frame.seq)
    if frame.kind == END:
        return (Outcome.END, end_reason(frame.reason))
    if frame.kind == ERROR:
        assert frame.error is not None
        return (Outcome.ERROR,) + tuple(frame.error)
    if frame.kind == REJECT:
        return (Outcome.REJECT, frame.reason)
    raise ValueError(f"unknown frame kind {frame.kind}")


def end_reason(reason: str) -> str:
    return {"ended": "ended its flow", "failed": "failed", "was killed": "was killed",
            "closed the session": "closed the session"}.get(reason, reason or "ended its flow")


def on_suspend(cp: Checkpoint, inbox: dict[str, deque], entry: Entry, now: float,
               external_done: Optional[tuple] = None) -> list:
    """The flow has just asked for ``entry``: answer it now or wait. ``external_done`` is
    an external call's result that arrived while the flow was out of memory."""
    kind = entry.kind
    if kind == Kind.RECEIVE:
        sid = entry.key[0]
        q = inbox.get(sid)
        if q:
            return [Consume(sid), Resume(frame_outcome(q[0].frame))]
        st = cp.sessions[sid]
        if st.peer_ended is not None:
            return [Resume((Outcome.END, st.peer_ended))]
        if st.peer_ending is not None:   # its last message carried its END
            return [PeerEnded(sid), Resume((Outcome.END, st.peer_ending))]
        return _wait_until(entry, now, TIMEOUT)
    if kind == Kind.SLEEP:
        return _wait_until(entry, now, OK)
    if kind == Kind.INFO:
        sid = entry.key[0]
        st = cp.sessions[sid]
        if st.peer_info is not None:
            return [Resume((Outcome.OK, tuple(st.peer_info)))]
        q = inbox.get(sid)
        if q and q[0].frame.kind == REJECT:
            return [Consume(sid), Resume(frame_outcome(q[0].frame))]
        if st.peer_ended is not None:
            return [Resume((Outcome.END, st.peer_ended))]
        return [Wait()]
    if kind == Kind.EXTERNAL:
        if external_done is not None:
            return [Resume(external_done)]
        return [RunExternal(), Wait()]
    raise ValueError(f"unknown suspension kind {kind!r}")


def _wait_until(entry: Entry, now: float, due_outcome: tuple) -> list:
    if entry.deadline is None:
        return [Wait()]
    if entry.deadline <= now:
        return [Resume(due_outcome)]
    return [ArmTimer(entry.deadline), Wait()]


def on_frame(cp: Checkpoint, inbox: dict[str, deque], pending: Optional[Entry],
             frame: Frame) -> list:
    """A peer's frame for one of this flow's sessions has arrived."""
    st = cp.sessions.get(frame.sid)
    if st is None:
        return [Drop(f"no session {frame.sid} in flow {cp.flow_id}"), Ack(frame.msg_id)]
    if frame.seq < st.recv_seq:
        return [Drop(f"duplicate {frame.describe()}"), Ack(frame.msg_id)]
    if frame.seq > st.recv_seq:
        return [Drop(f"out-of-order {frame.describe()} (expected #{st.recv_seq}); "
                     "the sender will re-send")]
    actions: list = [Accept(frame), Ack(frame.msg_id)]
    if frame.kind == INFO_REQ or (frame.kind == INIT and frame.reason == "info"):
        actions.append(SendInfo(frame.sid))   # the initiator asked who answers it
    if not carries_message(frame):
        # A bare initiation, a flow-info request or a confirmation: no message to consume,
        # but a confirmation answers the initiator's waiting counterparty_flow_info().
        if frame.kind == CONFIRM and pending is not None and pending.kind == Kind.INFO \
                and pending.key[0] == frame.sid and frame.info is not None:
            actions.append(Resume((Outcome.OK, tuple(frame.info))))
        return actions
    if pending is not None and pending.key and pending.key[0] == frame.sid and not inbox.get(frame.sid):
        if pending.kind == Kind.RECEIVE:
            actions += [Consume(frame.sid), Resume(frame_outcome(frame))]
        elif pending.kind == Kind.INFO:
            if frame.info is not None:
                actions.append(Resume((Outcome.OK, tuple(frame.info))))
            elif frame.kind == REJECT:
                actions += [Consume(frame.sid), Resume(frame_outcome(frame))]
    return actions


def same_deadline(a: float, b: float) -> bool:
    """Timer keys store deadlines in whole microseconds, so a deadline read back from the
    store after a restart differs from the journal's float by up to a microsecond."""
    return abs(a - b) < 2e-6


def on_timer(pending: Optional[Entry], deadline: float) -> list:
    """A timer fell due: it matters only if the flow still waits on that deadline."""
    if pending is None or pending.deadline is None or not same_deadline(pending.deadline, deadline):
        return []
    if pending.kind == Kind.RECEIVE:
        return [Resume(TIMEOUT)]
    if pending.kind == Kind.SLEEP:
        return [Resume(OK)]
    return []


def on_external_done(pending: Optional[Entry], outcome: tuple) -> list:
    if pending is None or pending.kind != Kind.EXTERNAL:
        return [Drop("external result for a flow no longer waiting on it")]
    return [Resume(outcome)]
