"""A flow's sessions: opening them, what it sends and receives on them, how it tells
its peers it ended. Part of `FlowRuntime` (it inherits `Conversation`); the state it
works on (the checkpoint's session table, ``out``, ``inbox``) is the runtime's.

Frames are built here and wait in ``out`` for the flow's next commit: a session's last
message that has not left yet also carries its END (one frame, not two), and a peer
that has ended its side is sent none.
"""
from __future__ import annotations

import sys
from collections import deque
from typing import Any, Optional

from greenflow import wire
from greenflow.errors import (FlowError, FlowException, FlowTimeout, NotSerializable, ReceiveTypeError,
                              SessionRefused, UnexpectedFlowEnd, UnknownFlow, UnknownParty)
from greenflow.flows.registry import app_name_of, initiating_info, qualified_name
from greenflow.flows.session import FlowSession, PeerFlowInfo
from greenflow.messages import (ASKS_INFO, CONFIRM, DATA, END, ERROR, INFO_REQ, INIT, REFUSED, REJECT,
                                EndReason, Frame, exception_text)
from greenflow.log_limits import clip
from greenflow.party import MAX_NAME_BYTES, Party, name_fits
from greenflow.runtime.checkpoint import (CLOSED, NEW, OPEN, PEER_ENDED_ITS_FLOW, RETIRED_RECV_SEQ,
                                         SessionState)
from greenflow.runtime.flow_types import NO_INBOX, Ended, Outgoing, duration
from greenflow.runtime.journal import OK, Kind, Outcome

MAX_PAYLOAD_BYTES = 8 * 1024 * 1024
#: The reasons of an END that says the peer's flow simply ended (`retire_ended_sessions`).
_PLAIN_END = ("", EndReason.ENDED)
# A sent payload up to this size is kept in its journal entry, so that a replay sending
# something else can say which field changed (larger ones are named by digest only).
KEEP_SENT_PAYLOAD = 4096


def type_name(expected: Any) -> str:
    # Interned: it is part of every pending receive's key, i.e. held once per waiting flow
    # (a builtin type's __qualname__ is a new string each time it is read). Remembered
    # per type, as every receive asks (a program has few; the memo is bounded anyway).
    try:
        name = _TYPE_NAMES.get(expected)
    except TypeError:   # unhashable: not a type, isinstance() will say so
        name = None
    if name is None:
        try:   # checked when first seen, before the flow waits: after, the message is taken
            isinstance(None, expected)
        except TypeError as exc:
            raise TypeError(f"receive() checks the payload with isinstance(): pass a type, a "
                            f"tuple of types or a union of types, not {expected!r} "
                            f"({exc})") from None
        name = _type_name(expected)
        if len(_TYPE_NAMES) < 1024:
            try:
                _TYPE_NAMES[expected] = name
            except TypeError:
                pass
    return name


_TYPE_NAMES: dict = {}


def _type_name(expected: Any) -> str:
    if isinstance(expected, tuple):
        return sys.intern("(" + ", ".join(_type_name(t) for t in expected) + ")")
    return sys.intern(getattr(expected, "__qualname__", None) or repr(expected))



# Per flow class, computed once: what it initiates under (protocol, version, app), and
# the (version, app) it tells a peer. Bounded by the classes the node runs.
_INITIATING: dict[type, tuple[str, int, str]] = {}
_OWN_INFO: dict[type, tuple[int, str]] = {}

_END_REASON = {Ended.DONE: EndReason.ENDED, Ended.FAILED: EndReason.FAILED,
               Ended.KILLED: EndReason.KILLED}


class Conversation:
    """`FlowRuntime`'s session methods."""

    __slots__ = ()

    def _initiating(self) -> tuple[str, int, str]:
        if not self.subflows:   # the common case, answered per flow class once
            hit = _INITIATING.get(type(self.logic))
            if hit is not None:
                return hit
            info = initiating_info(type(self.logic))
            if info is not None:
                hit = _INITIATING[type(self.logic)] = (info[0], info[1],
                                                        app_name_of(type(self.logic)))
                return hit
        stack = self.flow_stack()
        for f in reversed(stack):
            info = initiating_info(type(f))
            if info is not None:
                return info[0], info[1], app_name_of(type(f))
        top = type(stack[-1]).__qualname__
        raise FlowError(f"{top}.initiate_flow: no @initiating_flow class on the sub-flow "
                        "stack, so the peer would not know which responder to start")

    def _idle_deadline(self, st: SessionState) -> Optional[float]:
        """A responder waiting on the peer that started it, with no timeout of its own,
        waits at most the node's ``responder_idle_timeout`` (`greenflow.statemachine.limits`)."""
        limits = self.sched.limits
        idle = limits.responder_idle_timeout if limits is not None else None
        if idle is None or st.sid != self.cp.invoker_sid:
            return None
        return self._deadline(idle)

    def new_session(self, party: Party) -> FlowSession:
        if not isinstance(party, Party):
            raise TypeError(f"initiate_flow() takes a Party, got {type(party).__qualname__}")
        if not name_fits(party.name):   # (a name from a peer's transaction, say)
            raise ValueError(f"initiate_flow(): no network has a party named "
                             f"{clip(party.name, 60)} (a name is 1 to {MAX_NAME_BYTES} bytes "
                             "of UTF-8)")
        proto, version, app = self._initiating()
        self.session_counter += 1
        sid = f"{self.flow_id}.{self.session_counter}"
        st = self.cp.sessions.get(sid)
        if st is None:
            if self.cursor < len(self.journal):
                # Replayed, and not in the checkpoint: it ended on both sides and was
                # retired from it (`retire_ended_sessions`).
                self.retired_session(sid, party)
            else:
                if not self.sched.reaches(party.name):
                    self.session_counter -= 1
                    raise UnknownParty(f"initiate_flow(): no party named {clip(party.name, 60)} "
                                       f"on the network of {self.sched.identity.name}: its "
                                       "frames could never be delivered")
                self.cp.sessions[sid] = SessionState(sid, party, True, proto, version, app)
        elif st.counterparty != party and self.replaying:
            from greenflow.runtime.divergence import explain_session
            self._diverge(explain_session(self, self.session_counter, st.counterparty, party))
        return FlowSession(sid, party)

    def _session(self, session: FlowSession) -> SessionState:
        st = self.cp.sessions.get(session.sid)
        if st is None:
            st = self.retired_session(session.sid, session.counterparty)
        if st is None:
            raise FlowError(f"{session!r} does not belong to flow {self.cp.flow_class} "
                            f"({self.flow_id}); sessions cannot be shared between flows")
        return st

    def cut_session(self, st: SessionState, to_peer: str, here: str) -> None:
        """End a session whose peer sent more than it may have waiting unread: the peer is
        told (an END with ``to_peer`` as its reason); this flow reads what it holds, then
        sees the end (``here``); every later frame on it is dropped and acknowledged."""
        st.recv_seq = RETIRED_RECV_SEQ
        if st.state == OPEN:
            self._emit(st, END, reason=to_peer)
        st.state = CLOSED
        if st.peer_ended is None:
            st.peer_ended = here
            st.peer_ending = None

    def retired_session(self, sid: str, party: Party) -> Optional[SessionState]:
        """A session this flow opened that left its checkpoint (`retire_ended_sessions`),
        back as what it was: its peer's end not seen yet, no more frames taken. None
        when ``sid`` is no session this flow has opened."""
        prefix, _, n = sid.rpartition(".")
        if prefix != self.flow_id or not n.isdigit() or not 0 < int(n) <= self.session_counter:
            return None
        st = self.cp.sessions[sid] = SessionState(sid, party, True, "", 0, "", OPEN,
                                                  recv_seq=RETIRED_RECV_SEQ,
                                                  info_requested=True,
                                                  peer_ending=PEER_ENDED_ITS_FLOW)
        return st

    def retire_ended_sessions(self) -> None:
        """Take the sessions this flow opened whose peer ended its flow, unseen by this
        one yet (its last message carried the END, or a plain END waits in the inbox),
        out of the checkpoint: a flow that opens one session after another (a sub-flow
        per counterparty, in a loop) re-encoded every session it ever had at each
        commit. Nothing is lost: a later send, receive or close on one, or a replay
        reaching its opening, brings it back as it was (`retired_session`): the next
        receive sees the end, a send before that goes out and is dropped by the ended
        peer, as on a session kept; a frame on it is dropped and acknowledged. Only the
        peer's flow version and app are not kept: `counterparty_flow_info` on one raises
        `UnexpectedFlowEnd`. A session whose end the flow has seen stays (a send on it is
        refused)."""
        pending = self.pending
        waited = pending.key[0] if pending is not None and pending.key else None
        sessions = self.cp.sessions
        inbox = self.inbox
        busy = {o.frame.sid for o in self.out} if self.out else ()
        for sid, st in list(sessions.items()):
            if not st.initiator or st.peer_ended is not None or sid == waited or sid in busy:
                continue
            q = inbox.get(sid) if inbox else None
            if q:   # only the peer's plain END, not consumed yet
                f = q[0].frame
                if len(q) != 1 or f.kind != END or f.reason not in _PLAIN_END:
                    continue
                if q[0].persisted:
                    self.consumed = [*self.consumed, (sid, f.seq)]
                del inbox[sid]  # type: ignore[attr-defined]
                if not inbox:
                    self.inbox = inbox = NO_INBOX
            elif st.peer_ending != PEER_ENDED_ITS_FLOW:
                continue
            del sessions[sid]

    def _emit(self, st: SessionState, kind: int, payload: Optional[bytes] = None,
              reason: str = "", error: Optional[tuple] = None) -> None:
        if kind == END and self._end_on_last(st, reason):
            return
        info = None
        if not st.initiator and not st.sent_info:
            cls = type(self.logic)
            info = _OWN_INFO.get(cls)
            if info is None:
                info = _OWN_INFO[cls] = (self._own_version(), self._own_app())
            st.sent_info = True
        if st.state == NEW:
            if kind != DATA and kind != INIT:
                return  # never opened: nothing to tell the peer
            frame = Frame(INIT, st.sid, True, st.send_seq, payload, st.protocol, st.version,
                          st.app, None, reason)
            st.state = OPEN
        else:   # positional: a frame is built per message
            frame = Frame(kind, st.sid, st.initiator, st.send_seq, payload, "", 0, "", info,
                          reason, error)
        st.send_seq += 1
        out = self.out
        if out:
            out.append(Outgoing(st.counterparty, frame))   # type: ignore[union-attr]
        else:
            self.out = [Outgoing(st.counterparty, frame)]

    def _end_on_last(self, st: SessionState, reason: str) -> bool:
        """Mark the session's last frame, if it carries a message and has not left yet
        (it waits for this flow's next commit), as also ending the session: one frame
        instead of a message and an END."""
        sid = st.sid
        for o in reversed(self.out):
            frame = o.frame
            if frame.sid == sid:
                if frame.payload is None or frame.ends or frame.kind not in (DATA, INIT):
                    return False
                frame.ends = True
                frame.reason = reason
                return True
        return False

    def _open_for(self, kind: str, st: SessionState) -> None:
        """Before waiting on a session: a lazy one sends its initiation now (a receive-
        first initiation carries no payload); asking for the peer's flow info sends a
        request for it unless it is known or already asked for."""
        if kind == Kind.INFO:
            if st.peer_info is None and not st.info_requested:
                st.info_requested = True
                if st.state == NEW:
                    self._emit(st, INIT, None, reason=ASKS_INFO)
                else:
                    self._emit(st, INFO_REQ)
        elif st.state == NEW:
            self._emit(st, INIT, None)

    def emit_confirm(self, st: SessionState) -> None:
        """Responder: answer a flow-info request with our version and app."""
        self._emit(st, CONFIRM)

    def _own_version(self) -> int:
        info = initiating_info(type(self.logic))
        responder_of = getattr(type(self.logic), "_gf_initiated_by", None)
        if responder_of is not None:
            v = getattr(type(self.logic), "_gf_version", None)
            return v if isinstance(v, int) else 1
        return info[1] if info else 1

    def _own_app(self) -> str:
        return app_name_of(type(self.logic))

    def send(self, session: FlowSession, payload: Any) -> None:
        st = self._session(session)
        try:
            data = wire.encode(payload)
        except NotSerializable as exc:
            raise NotSerializable(f"{self.cp.flow_class} cannot send to {st.counterparty.name}: "
                                  f"{exc}") from None
        if len(data) > MAX_PAYLOAD_BYTES:
            raise NotSerializable(
                f"{self.cp.flow_class} cannot send {len(data)} bytes to {st.counterparty.name}: "
                f"payloads are limited to {MAX_PAYLOAD_BYTES} bytes")

        out = self.record(Kind.SEND, (st.sid, st.counterparty.name, wire.digest(data)),
                          self._send_live, data, (st, data))
        if out is not OK and out[0] == Outcome.END:
            raise UnexpectedFlowEnd(
                f"{self.cp.flow_class} cannot send to {st.counterparty.name}: the session "
                f"has ended ({out[1]})")

    def _send_live(self, st: SessionState, data: bytes) -> tuple:
        if st.peer_ended is not None or st.state == CLOSED:
            return (Outcome.END, st.peer_ended or "closed by this flow")
        self._emit(st, DATA, data)
        return OK

    def receive(self, session: FlowSession, expected: Any, timeout: Optional[float]) -> Any:
        st = self._session(session)
        tname = type_name(expected)
        if timeout is not None:
            timeout = duration(timeout, "receive(timeout=...)")
        if st.state == CLOSED and st.peer_ended is None and not self.replaying:
            # Closed by this flow: as `send` refuses. (It waited for good when the peer then
            # just ended, which sends no END to a side that closed; or took a late reply.)
            raise UnexpectedFlowEnd(f"{self.cp.flow_class} cannot receive from "
                                    f"{st.counterparty.name}: the session has ended (closed "
                                    "by this flow)")

        out = self.suspend(Kind.RECEIVE, (st.sid, st.counterparty.name, tname),
                           deadline=self._deadline(timeout) if timeout is not None
                           else self._idle_deadline(st), session=st)
        kind = out[0]
        peer = st.counterparty.name
        if kind == Outcome.DATA or kind == Outcome.STORED:
            try:
                payload = (self.sched.take_decoded(out[1]) if kind == Outcome.DATA else
                           wire.decode(self.sched.stored_payload(self.flow_id, st.sid, out[1])))
            except Exception as exc:  # e.g. the peer runs another version of its class
                raise ReceiveTypeError(f"{self.cp.flow_class} received an undecodable payload "
                                       f"from {peer}: {exc}") from None
            if not isinstance(payload, expected):
                from greenflow.runtime.divergence import check_narrowed
                check_narrowed(self, tname, payload)
                raise ReceiveTypeError(
                    f"{self.cp.flow_class} expected to receive {tname} from {peer} but got "
                    f"{type(payload).__qualname__}")
            return payload
        if kind == Outcome.END:
            raise UnexpectedFlowEnd(
                f"{peer} {out[1]} while {self.cp.flow_class} expected to receive {tname} "
                f"from it")
        if kind == Outcome.ERROR:
            raise rebuild_flow_exception(out[1], out[2], out[3], st.sid)
        if kind == Outcome.REJECT:
            raise rejection(peer, st.protocol, out[1])
        if kind == Outcome.TIMEOUT and timeout is None:   # the node's responder idle timeout
            raise FlowTimeout(
                f"{self.cp.flow_class} gave up waiting to receive {tname} from {peer}: nothing "
                "came within the node's responder_idle_timeout")
        if kind == Outcome.TIMEOUT:
            raise FlowTimeout(f"{self.cp.flow_class} timed out after {timeout}s waiting to "
                              f"receive {tname} from {peer}")
        raise FlowError(f"internal error: unknown receive outcome {kind!r}; please file a bug")

    def close(self, session: FlowSession) -> None:
        st = self._session(session)

        def live() -> tuple:
            if st.state == OPEN:
                self._emit(st, END, reason=EndReason.CLOSED)
            st.state = CLOSED
            return OK

        self.record(Kind.CLOSE, (st.sid, st.counterparty.name), live)

    def flow_info(self, session: FlowSession) -> PeerFlowInfo:
        st = self._session(session)

        out = self.suspend(Kind.INFO, (st.sid, st.counterparty.name), session=st)
        if out[0] == Outcome.REJECT:
            raise rejection(st.counterparty.name, st.protocol, out[1])
        if out[0] == Outcome.END:
            raise UnexpectedFlowEnd(f"{st.counterparty.name} {out[1]} before telling its "
                                    "flow version")
        return PeerFlowInfo(*out[1])

    # ------------------------------------------------------------------ ending
    def end_frames(self, outcome: tuple) -> None:
        """Tell every peer with an open session how this flow ended.

        A FlowException the flow raised itself goes to every open session. One that came
        from a peer and was not caught goes only to the session that started this flow
        (up the invocation chain); every other peer just sees the session end, so one
        party's error never leaks to an unrelated party.
        """
        kind = outcome[0]
        exc = outcome[1] if kind == Ended.FAILED else None
        from_sid = getattr(exc, "_gf_from_session", None) if exc is not None else None
        inbox = self.inbox
        for st in self.cp.sessions.values():
            if st.state != OPEN or st.peer_ended is not None or st.peer_ending is not None \
                    or (inbox and _peer_end_waiting(inbox.get(st.sid))):
                st.state = CLOSED   # nothing to tell a peer that has ended its side
                continue
            if isinstance(exc, FlowException) and (from_sid is None or st.sid == self.cp.invoker_sid):
                if from_sid is not None and st.sid == from_sid:
                    self._emit(st, END, reason=EndReason.FAILED)
                else:
                    eid = exc.ensure_error_id()
                    self._emit(st, ERROR, error=(qualified_name(type(exc)), exception_text(exc),
                                                 eid))
            else:
                self._emit(st, END, reason=_END_REASON.get(kind, EndReason.ENDED))
            st.state = CLOSED


def _peer_end_waiting(q: Optional[deque]) -> bool:
    """Whether the peer's end of the session (END, ERROR, REJECT, or a last message
    carrying its END) has arrived, though the flow has not consumed it."""
    if q:
        for item in q:
            f = item.frame
            if f.ends or f.kind == END or f.kind == ERROR or f.kind == REJECT:
                return True
    return False


def rejection(peer: str, protocol: str, reason: str) -> FlowError:
    """The error a rejected session raises: the peer refused it under a limit of its own
    (`SessionRefused`), or it has nothing to answer it with (`UnknownFlow`)."""
    if reason.startswith(REFUSED):
        return SessionRefused(f"{peer} refused the session for {protocol}: {reason[len(REFUSED):]}")
    return UnknownFlow(f"{peer} has no flow registered to answer {protocol}: {reason}")


def rebuild_flow_exception(cls_name: str, message: str, error_id: int,
                           sid: Optional[str] = None) -> FlowException:
    """Recreate a peer's FlowException without running any constructor. Only classes
    already imported here are used (importing a module named by a peer would run code)."""
    cls: type = FlowException
    mod_name, _, qual = cls_name.rpartition(".")
    mod = sys.modules.get(mod_name)
    if mod is not None:
        obj: Any = mod
        for part in qual.split("."):
            obj = getattr(obj, part, None)
            if obj is None:
                break
        if isinstance(obj, type) and issubclass(obj, FlowException):
            cls = obj
    try:
        exc = cls.__new__(cls)
    except TypeError:   # a __new__ that needs arguments (a FlowException that is also an
        # ExceptionGroup): rebuilt as a plain FlowException, as an unknown class is
        exc = FlowException.__new__(FlowException)
    exc.args = (message,)
    exc.error_id = error_id
    exc._gf_from_session = sid  # type: ignore[attr-defined]
    return exc
