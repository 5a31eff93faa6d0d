"""Transitions: given a flow's state and an event, decide what happens.

Pure decisions: they read the checkpoint, the inbox and the pending request and return
a list of actions (see `greenflow.statemachine.actions`: plain tuples). They import no
lmdb, dill, greenlet or sockets, so they are tested by looking at the actions they
return.
"""
from __future__ import annotations

from collections import deque
from typing import Optional

from greenflow.statemachine.actions import (ACCEPT, ACK, ARM_TIMER, CONSUME, CUT, DROP, JUST_WAIT,
                                            PEER_ENDED, RESUME, RUN_EXTERNAL_ACTION, SEND_INFO,
                                            WAIT_ACTION)
from greenflow.runtime.checkpoint import PEER_ENDED_ITS_FLOW, Checkpoint
from greenflow.runtime.journal import OK, TIMEOUT, Entry, Kind, Outcome
from greenflow.messages import (ASKS_INFO, CONFIRM, DATA, END, ERROR, FRAME_COST, INFO_REQ, INIT,
                                REJECT, EndReason, Frame, carries_message)

_RECEIVE, _SLEEP, _INFO, _EXTERNAL = Kind.RECEIVE, Kind.SLEEP, Kind.INFO, Kind.EXTERNAL

#: The most messages, and payload bytes, a peer may have waiting unread in one session:
#: a peer that sends more before the flow reads them gets its session ended (`CUT`), so
#: no peer can make one session hold more. A sender's burst arrives whole before the
#: reader runs again, so the count leaves room for streams of small messages (~250 B of
#: memory each besides the payload).
MAX_UNREAD_MESSAGES = 100_000
MAX_UNREAD_BYTES = 64 << 20
#: What one peer may have waiting unread on all its sessions of a node together: the
#: payloads plus `FRAME_COST` per message (their memory). Past it, the session a further
#: message would wait in is ended, as above: without it a peer could fill every session
#: it may open (`max_inbound_sessions`) to the per-session bound.
MAX_UNREAD_PER_PEER = 256 << 20
_DATA_OUTCOME = Outcome.DATA


def frame_outcome(frame: Frame) -> tuple:
    """The journal outcome a consumed frame gives a waiting ``receive``."""
    kind = frame.kind
    if kind == DATA or kind == INIT:
        # The sequence number names the payload should it be stored aside (`payloads`).
        return (_DATA_OUTCOME, frame.payload, frame.seq)
    if kind == END:
        return (Outcome.END, end_reason(frame.reason))
    if kind == ERROR:
        assert frame.error is not None
        return (Outcome.ERROR,) + tuple(frame.error)
    if kind == REJECT:
        return (Outcome.REJECT, frame.reason)
    raise ValueError(f"unknown frame kind {frame.kind}")


#: How a flow words its peer's end (``SessionState.peer_ended``, `UnexpectedFlowEnd`),
#: per `EndReason` on the wire; an unknown word is shown as it came.
_END_REASONS = {EndReason.ENDED: PEER_ENDED_ITS_FLOW, EndReason.FAILED: "failed",
                EndReason.KILLED: "was killed", EndReason.CLOSED: "closed the session"}


def end_reason(reason: str) -> str:
    return _END_REASONS.get(reason, reason or _END_REASONS[EndReason.ENDED])


def on_suspend(cp: Checkpoint, inbox: dict[str, deque], entry: Entry, now: float,
               external_done: Optional[tuple] = None) -> list:
    """The flow has just asked for ``entry``: answer it now or wait. ``external_done`` is
    an external call's result that arrived while the flow was out of memory."""
    kind = entry.kind
    if kind == _RECEIVE:
        sid = entry.key[0]
        q = inbox.get(sid)
        if q:
            return [(CONSUME, sid), (RESUME, frame_outcome(q[0].frame))]
        st = cp.sessions[sid]
        if st.peer_ended is not None:
            return [(RESUME, (Outcome.END, st.peer_ended))]
        if st.peer_ending is not None:   # its last message carried its END
            return [(PEER_ENDED, sid), (RESUME, (Outcome.END, st.peer_ending))]
        return _wait_until(entry, now, TIMEOUT)
    if kind == _SLEEP:
        return _wait_until(entry, now, OK)
    if kind == _INFO:
        sid = entry.key[0]
        st = cp.sessions[sid]
        if st.peer_info is not None:
            return [(RESUME, (Outcome.OK, tuple(st.peer_info)))]
        q = inbox.get(sid)
        if q and q[0].frame.kind == REJECT:
            return [(CONSUME, sid), (RESUME, frame_outcome(q[0].frame))]
        if st.peer_ended is not None:
            return [(RESUME, (Outcome.END, st.peer_ended))]
        if st.peer_ending is not None:   # (a retired session: its peer's info is not kept)
            return [(PEER_ENDED, sid), (RESUME, (Outcome.END, st.peer_ending))]
        return JUST_WAIT
    if kind == _EXTERNAL:
        if external_done is not None:
            return [(RESUME, external_done)]
        return [RUN_EXTERNAL_ACTION, WAIT_ACTION]
    raise ValueError(f"unknown suspension kind {kind!r}")


def _wait_until(entry: Entry, now: float, due_outcome: tuple) -> list:
    deadline = entry.deadline
    if deadline is None:
        return JUST_WAIT
    if deadline <= now:
        return [(RESUME, due_outcome)]
    return [(ARM_TIMER, deadline), WAIT_ACTION]


def on_frame(cp: Checkpoint, inbox: dict[str, deque], pending: Optional[Entry],
             frame: Frame, peer_held: int = 0) -> list:
    """A peer's frame for one of this flow's sessions has arrived. ``peer_held``: what
    the peer has waiting unread on all its sessions here (`MAX_UNREAD_PER_PEER`)."""
    sid, seq = frame.sid, frame.seq
    st = cp.sessions.get(sid)
    if st is None:
        return [(DROP, f"no session {sid} in flow {cp.flow_id}"), (ACK, frame.msg_id)]
    if seq != st.recv_seq:
        if seq < st.recv_seq:
            return [(DROP, f"duplicate {frame.describe()}"), (ACK, frame.msg_id)]
        return [(DROP, f"out-of-order {frame.describe()} (expected #{st.recv_seq}); "
                       "the sender will re-send")]
    kind = frame.kind
    q = inbox.get(sid)
    payload = frame.payload
    if payload is not None:
        if q and _too_much_unread(q, frame):
            return [(CUT, frame, False), (ACK, frame.msg_id)]
        if peer_held + len(payload) + FRAME_COST > MAX_UNREAD_PER_PEER and (
                q or pending is None or pending.kind != _RECEIVE or pending.key[0] != sid):
            return [(CUT, frame, True), (ACK, frame.msg_id)]   # (it would wait unread)
    if kind == DATA and (pending is None or pending.kind == _RECEIVE):   # the common case
        actions: list = [(ACCEPT, frame), (ACK, (sid, frame.to_responder, seq))]
        if pending is not None and pending.kind == _RECEIVE and pending.key[0] == sid \
                and not inbox.get(sid):
            actions.append((CONSUME, sid))
            actions.append((RESUME, (_DATA_OUTCOME, frame.payload, seq)))
        return actions
    actions = [(ACCEPT, frame), (ACK, (sid, frame.to_responder, seq))]
    if kind == INFO_REQ or (kind == INIT and frame.reason == ASKS_INFO):
        actions.append((SEND_INFO, sid))   # the initiator asked who answers it
    if not carries_message(frame):
        # A bare initiation, a flow-info request or a confirmation: no message to consume,
        # but a confirmation answers the initiator's waiting counterparty_flow_info().
        if kind == CONFIRM and pending is not None and pending.kind == _INFO \
                and pending.key[0] == sid and frame.info is not None:
            actions.append((RESUME, (Outcome.OK, tuple(frame.info))))
        return actions
    if pending is not None and pending.key and pending.key[0] == sid and not inbox.get(sid):
        if pending.kind == _RECEIVE:
            actions.append((CONSUME, sid))
            actions.append((RESUME, frame_outcome(frame)))
        elif pending.kind == _INFO:
            if frame.info is not None:
                actions.append((RESUME, (Outcome.OK, tuple(frame.info))))
            elif kind == REJECT:
                actions.append((CONSUME, sid))
                actions.append((RESUME, frame_outcome(frame)))
    return actions


def _too_much_unread(q: deque, frame: Frame) -> bool:
    """Whether ``frame``, buffered behind the messages ``q`` (an `InboxQueue`, which keeps
    count of its payload bytes) holds, would be more than the session may hold unread
    (`MAX_UNREAD_MESSAGES`, `MAX_UNREAD_BYTES`)."""
    if len(q) >= MAX_UNREAD_MESSAGES:
        return True
    return q.payload_bytes + len(frame.payload) > MAX_UNREAD_BYTES   # type: ignore[attr-defined]


def same_deadline(a: float, b: float) -> bool:
    """Timer keys store deadlines in whole microseconds, so a deadline read back from the
    store after a restart differs from the journal's float by up to a microsecond."""
    return abs(a - b) < 2e-6


def on_timer(pending: Optional[Entry], deadline: float) -> list:
    """A timer fell due: it matters only if the flow still waits on that deadline."""
    if pending is None or pending.deadline is None or not same_deadline(pending.deadline, deadline):
        return []
    if pending.kind == _RECEIVE:
        return [(RESUME, TIMEOUT)]
    if pending.kind == _SLEEP:
        return [(RESUME, OK)]
    return []


def on_external_done(pending: Optional[Entry], outcome: tuple) -> list:
    if pending is None or pending.kind != _EXTERNAL:
        return [(DROP, "external result for a flow no longer waiting on it")]
    return [(RESUME, outcome)]
