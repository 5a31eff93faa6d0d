"""`FlowRuntime`: one flow in memory, and everything flow code can ask of the node.

The runtime owns the flow's greenlet, its journal and replay cursor, its session table
(inside the `Checkpoint`), its inbox of accepted-but-unconsumed frames and the frames
it produced since the last commit. Every API call a flow makes lands here and goes
one of two ways:

* *replaying* (the cursor is inside the journal): the request is compared with the
  recorded entry and answered from it, with no I/O; a mismatch parks the flow
  (`NonDeterminismError`, raised by the runtime, not into flow code);
* *live*: the request is decided now, journalled, and, if it must wait, handed to the
  scheduler through `greenflow.runtime.traps`.

Outcomes are interpreted the same way in both modes, so errors replay too.
"""
from __future__ import annotations

import logging
import random as _random
import sys
import uuid as _uuid
from collections import deque
from datetime import datetime, timezone
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Callable, Optional, Protocol

from greenflow import serialization, wire
from greenflow.runtime import replay_safe
from greenflow.runtime.checkpoint import CLOSED, NEW, OPEN, Checkpoint, SessionState
from greenflow.errors import (FlowError, FlowException, FlowTimeout, NotSerializable, ReceiveTypeError,
                     SessionRefused, UnexpectedFlowEnd, UnknownFlow)
from greenflow.runtime.journal import OK, Entry, Kind, Outcome
from greenflow.messages import CONFIRM, DATA, END, ERROR, INFO_REQ, INIT, REFUSED, REJECT, Frame
from greenflow.party import Party
from greenflow.flows.registry import app_name_of, initiating_info, qualified_name
from greenflow.flows.session import FlowSession, PeerFlowInfo
from greenflow.runtime.traps import Diverged, FlowGreenlet, Unwind, flow_greenlet, switch_to_scheduler

replay_safe.install()   # uuid4, os.urandom, random, time.time ... replay inside flows

if TYPE_CHECKING:
    from greenflow.flows.flow_logic import FlowLogic


class Ended:
    """How a flow's run comes back to the scheduler (the first item of what its main
    returns) and how the scheduler ends it: named once, for the runtime, the scheduler's
    ending and the replay check."""

    __slots__ = ()
    DONE = "done"          # (DONE, result)
    FAILED = "failed"      # (FAILED, exception)
    UNWOUND = "unwound"    # (UNWOUND, why): kill, hibernation, power cut
    DIVERGED = "diverged"  # (DIVERGED,): replay disagreed with the journal; parked
    KILLED = "killed"      # (KILLED,)


_END_REASON = {Ended.DONE: "ended", Ended.FAILED: "failed", Ended.KILLED: "was killed"}


class FlowHost(Protocol):
    """What a flow's runtime needs from the scheduler that runs it (the scheduler
    implements it). Declared here so that the runtime, below the state machine and
    storage, never imports them."""

    identity: Party
    services: Any
    clock: Any
    store: Any
    limits: Any
    idle_greenlets: list

    def progress_changed(self, rt: "FlowRuntime", step: Optional[str]) -> None: ...

    def take_decoded(self, data: bytes) -> Any: ...

    def stored_payload(self, fid: str, sid: str, seq: int) -> bytes: ...

MAX_PAYLOAD_BYTES = 8 * 1024 * 1024
# A sent payload up to this size is kept in its journal entry, so that a replay sending
# something else can say which field changed (larger ones are named by digest only).
KEEP_SENT_PAYLOAD = 4096


def type_name(expected: Any) -> str:
    # Interned: it is part of every pending receive's key, i.e. held once per waiting flow
    # (a builtin type's __qualname__ is a new string each time it is read).
    if isinstance(expected, tuple):
        return sys.intern("(" + ", ".join(type_name(t) for t in expected) + ")")
    return sys.intern(getattr(expected, "__qualname__", None) or repr(expected))


class InboxItem:
    """An accepted frame waiting to be consumed; ``persisted`` once it is in the store."""

    __slots__ = ("frame", "persisted")

    def __init__(self, frame: Frame, persisted: bool) -> None:
        self.frame = frame
        self.persisted = persisted


NO_INBOX: MappingProxyType = MappingProxyType({})   # read-only: replaced by a dict on first use


def appended(seq: list | tuple, item: Any) -> list:
    """``seq`` with ``item`` added: the list itself, or a new one in place of the shared
    empty tuple the runtime's per-flow collections start as."""
    if seq:
        seq.append(item)  # type: ignore[union-attr]
        return seq  # type: ignore[return-value]
    return [item]


class FlowRuntime:
    # Slots: a node may hold millions of these.
    __slots__ = ("sched", "cp", "flow_id", "logic", "journal", "cursor", "committed", "subflows",
                 "session_counter", "greenlet", "pending", "out", "inbox", "consumed",
                 "external", "io_refused", "diverged", "dirty", "routed",
                 "base", "fresh", "external_done", "start_blob", "user_frame", "_logger",
                 "nd", "raw")

    def __init__(self, sched: FlowHost, cp: Checkpoint, logic: "FlowLogic",
                 journal: list[Entry]) -> None:
        self.sched = sched
        self.cp = cp
        self.flow_id = cp.flow_id
        self.logic = logic
        self.journal = journal
        self.cursor = 0
        # Entries [0, committed) are stored in journal chunks (with their outcomes).
        self.committed = len(journal) - (1 if journal and journal[-1].outcome is None else 0)
        self.subflows: list["FlowLogic"] | tuple = ()   # sub-flows running below logic
        self.session_counter = 0
        self.greenlet: Optional[FlowGreenlet] = None
        self.pending: Optional[Entry] = None
        # The four per-flow collections below are empty for nearly every waiting flow, so
        # they start (and fall back) as shared immutable empties and become real lists or
        # a dict only when something goes in: ~300 B less per resident flow.
        self.out: list[tuple[Party, Frame]] | tuple = ()
        self.inbox: dict[str, deque[InboxItem]] | MappingProxyType = NO_INBOX
        self.consumed: list[tuple[str, int]] | tuple = ()   # persisted inbox items consumed
        self.external: Optional[tuple[Callable, tuple]] = None
        self.external_done: Optional[tuple] = None   # result that came while not resident
        self.io_refused: Optional[str] = None
        self.diverged: Optional[str] = None
        self.dirty = True
        self.routed = 0                   # cp.sessions[:routed] have their route stored
        # The checkpoint header as last staged (before the first commit: a clone of the
        # starting state), and the frames accepted since: enough to put the flow back to
        # its committed state without losing an acknowledged frame.
        self.base: Optional[bytes | Checkpoint] = None
        self.start_blob: Optional[bytes] = None   # start object not yet in the store
        self.user_frame: Any = None               # while suspended: see suspend()
        self.fresh: list[Frame] | tuple = ()
        self._logger: Optional[logging.LoggerAdapter] = None
        self.nd: Optional[replay_safe.FlowEntropy] = None  # this run's randomness and clock
        self.raw = False   # True while greenflow runs live-only code for the flow

    def inbox_queue(self, sid: str) -> deque:
        """The (writable) queue of frames waiting for ``sid``, created if needed."""
        inbox = self.inbox
        if not inbox:
            inbox = self.inbox = {}
        q = inbox.get(sid)
        if q is None:
            q = inbox[sid] = deque()
        return q

    # ------------------------------------------------------------------ state
    @property
    def replaying(self) -> bool:
        return self.cursor < len(self.journal)

    def check_io_allowed(self) -> None:
        if self.io_refused is not None:
            raise FlowError(f"flow {self.flow_id} is being unwound ({self.io_refused}): "
                            "framework calls are refused; do no I/O in finally blocks")

    def _diverge(self, message: str) -> None:
        self.diverged = message
        self.io_refused = "diverged from its journal"
        raise Diverged(message)

    def _replay_next(self, kind: str, key: tuple, payload: Optional[bytes] = None) -> Optional[Entry]:
        journal = self.journal
        if self.cursor >= len(journal):
            return None
        e = journal[self.cursor]
        if e.kind == replay_safe.CLOCK:
            # Clock readings only the first run made (its greenflow-internal, live-only
            # code) are passed over; the flow's own readings were consumed already.
            while e.kind == replay_safe.CLOCK:
                self.cursor += 1
                if self.cursor >= len(journal):
                    return None
                e = journal[self.cursor]
        if not e.matches(kind, key):
            from greenflow.runtime.divergence import explain_request
            self._diverge(explain_request(self, self.cursor, e, kind, key, payload))
        self.cursor += 1
        return e

    def diverge_on_clock(self, e: Entry) -> None:
        """Replay reads the clock where the first run made the request ``e`` instead."""
        from greenflow.runtime.divergence import explain_request
        self._diverge(explain_request(self, self.cursor, e, Kind.CLOCK, ()))

    def record(self, kind: str, key: tuple, live: Callable[[], tuple],
               payload: Optional[bytes] = None) -> tuple:
        """A request that does not suspend: answered from the journal on replay, decided
        by ``live()`` and journalled otherwise. ``live()`` sees the real clock and
        randomness (its outcome is what gets recorded)."""
        e = self._replay_next(kind, key, payload)
        if e is not None:
            if e.outcome is None:
                from greenflow.runtime.divergence import explain_request
                self._diverge(explain_request(self, self.cursor - 1, e, kind, key, payload,
                                              waiting=True))
            return e.outcome  # type: ignore[return-value]
        self.check_io_allowed()
        self.raw = True
        try:
            outcome = live()
        finally:
            self.raw = False
        self.journal.append(Entry(kind, key, outcome, None,
                                  payload if payload is not None
                                  and len(payload) <= KEEP_SENT_PAYLOAD else None))
        self.cursor += 1
        return outcome

    def suspend(self, kind: str, key: tuple, deadline: Optional[float] = None,
                session: Optional[SessionState] = None,
                external: Optional[tuple] = None) -> tuple:
        """A request that may wait: hand it to the scheduler unless replay answers it.

        Live (also when replay reaches the pending request), a lazy ``session`` is opened
        first and an ``external`` call is handed over; plain arguments rather than
        closures, since whatever this frame holds stays alive while the flow waits.
        """
        e = self._replay_next(kind, key)
        if e is not None and e.outcome is not None:
            return e.outcome
        self.check_io_allowed()
        if e is None:
            e = Entry(kind, key, None, deadline)
            self.journal.append(e)
            self.cursor += 1
            self.cp.suspension_count += 1
        if session is not None:
            self._open_for(kind, session)
        if external is not None:
            self.external = external
        # The caller of the public API (FlowSession.receive & co. -> FlowRuntime.receive ->
        # here): the innermost frame of the flow's own code. Frame snapshots start from it
        # rather than from the greenlet's top frame, so the runtime's own frames below it
        # are never materialised as frame objects (about 1 KB per resident flow).
        self.user_frame = sys._getframe(3)
        try:
            return switch_to_scheduler(self, e)
        finally:
            self.user_frame = None

    # ------------------------------------------------------------------ running
    def start_greenlet(self) -> FlowGreenlet:
        """A greenlet for this flow (a pooled one of a finished flow, or a new one); start
        it with ``switch(runtime)``."""
        self.cursor = 0
        self.nd = None    # replay from the top: the flow's values come again from the start
        self.session_counter = 0
        self.subflows = ()
        self.greenlet = flow_greenlet(self, getattr(self.sched, "idle_greenlets", None))
        return self.greenlet

    def _main(self) -> tuple:
        try:
            result = self.logic.call()
            if self.cursor < len(self.journal) and self.diverged is None \
                    and any(e.kind != replay_safe.CLOCK for e in self.journal[self.cursor:]):
                from greenflow.runtime.divergence import explain_end
                self.diverged = explain_end(self, None)
                return (Ended.DIVERGED,)
            return (Ended.DONE, result)
        except Diverged:
            return (Ended.DIVERGED,)
        except Unwind as u:
            return (Ended.UNWOUND, u.why)
        except BaseException as exc:  # noqa: BLE001 - the flow's failure is its result
            if self.diverged is not None:
                return (Ended.DIVERGED,)
            if self.replaying and isinstance(exc, Exception):
                # Failing before the pending point is a divergence, unless the journal
                # itself recorded the cause (then the same exception is the outcome).
                from greenflow.runtime.divergence import explain_end
                self.diverged = explain_end(self, exc)
                return (Ended.DIVERGED,)
            return (Ended.FAILED, exc)
        finally:
            self.subflows = ()

    def sub_flow(self, flow: "FlowLogic") -> Any:
        from greenflow.flows.flow_logic import FlowLogic
        if not isinstance(flow, FlowLogic):
            raise FlowError(f"sub_flow() takes a FlowLogic instance, got {type(flow).__qualname__}")
        self.subflows = appended(self.subflows, flow)
        try:
            return flow.call()
        finally:
            self.subflows.pop()  # type: ignore[union-attr]
            self.on_progress(None)

    # ------------------------------------------------------------------ context
    def flow_stack(self) -> list["FlowLogic"]:
        """The flow and the sub-flows it is running, outermost first."""
        return [self.logic, *self.subflows]

    @property
    def logger(self) -> logging.LoggerAdapter:
        if self._logger is None:
            self._logger = _FlowLogger(self)
        return self._logger

    def on_progress(self, tracker: Any) -> None:
        labels = []
        for f in self.flow_stack():
            t = f.__dict__.get("_gf_tracker")
            if t is not None and t.label is not None:
                labels.append(t.label)
        step = " / ".join(labels) if labels else None
        if step != self.cp.progress_step:
            self.cp.progress_step = step
            if not self.replaying:
                self.sched.progress_changed(self, step)

    def _initiating(self) -> tuple[str, int, str]:
        stack = self.flow_stack()
        for f in reversed(stack):
            info = initiating_info(type(f))
            if info is not None:
                return info[0], info[1], app_name_of(type(f))
        top = type(stack[-1]).__qualname__
        raise FlowError(f"{top}.initiate_flow: no @initiating_flow class on the sub-flow "
                        "stack, so the peer would not know which responder to start")

    # ------------------------------------------------------------------ recorded values
    def now(self) -> datetime:
        out = self.record(Kind.NOW, (), lambda: (Outcome.OK, datetime.fromtimestamp(
            self.sched.clock.now(), tz=timezone.utc)))
        return out[1]

    def random(self) -> _random.Random:
        out = self.record(Kind.RANDOM, (), lambda: (Outcome.OK, _random.SystemRandom().getrandbits(64)))
        return _random.Random(out[1])

    def uuid(self) -> _uuid.UUID:
        out = self.record(Kind.UUID, (), lambda: (Outcome.OK, _uuid.uuid4()))
        return out[1]

    def versioned(self, change_id: str) -> bool:
        """True where the flow runs code written after ``change_id`` was introduced.

        A flow that was already past this point under the old code replays with False
        (its journal has no marker here), so old checkpoints keep replaying the old path;
        a live run records a marker and takes the new path, also on every later replay.
        """
        if self.cursor < len(self.journal):
            j = self.cursor
            while j < len(self.journal) - 1 and self.journal[j].kind == replay_safe.CLOCK:
                j += 1   # clock readings before the marker only the first run made
            e = self.journal[j]
            if e.kind == Kind.VERSIONED and e.key == (change_id,):
                self.cursor = j + 1
                return True
            return False
        self.check_io_allowed()
        self.journal.append(Entry(Kind.VERSIONED, (change_id,), OK))
        self.cursor += 1
        return True

    def side_effect(self, fn: Callable, *args: Any) -> Any:
        out = self.record(Kind.SIDE_EFFECT, (_callable_name(fn),), lambda: _call_checked(fn, args))
        return _unwrap(out)

    def service_call(self, name: str, call: Callable[[], Any]) -> Any:
        out = self.record(Kind.SERVICE, (name,), lambda: _call_checked(call, ()))
        return _unwrap(out)

    def run_external(self, fn: Callable, *args: Any) -> Any:
        out = self.suspend(Kind.EXTERNAL, (_callable_name(fn),), external=(fn, args))
        return _unwrap(out)

    def sleep(self, seconds: float) -> None:
        seconds = float(seconds)
        if seconds < 0:
            raise ValueError(f"sleep() takes a non-negative duration, got {seconds}")
        self.suspend(Kind.SLEEP, (seconds,), deadline=self._deadline(seconds))

    def _deadline(self, seconds: float) -> Optional[float]:
        # Only computed live: on replay the recorded deadline stands.
        return None if self.replaying else self.sched.clock.now() + seconds

    def _idle_deadline(self, st: SessionState) -> Optional[float]:
        """A responder waiting on the peer that started it, with no timeout of its own,
        waits at most the node's ``responder_idle_timeout`` (`greenflow.statemachine.limits`)."""
        limits = self.sched.limits
        idle = limits.responder_idle_timeout if limits is not None else None
        if idle is None or st.sid != self.cp.invoker_sid:
            return None
        return self._deadline(idle)

    # ------------------------------------------------------------------ sessions
    def new_session(self, party: Party) -> FlowSession:
        if not isinstance(party, Party):
            raise TypeError(f"initiate_flow() takes a Party, got {type(party).__qualname__}")
        proto, version, app = self._initiating()
        self.session_counter += 1
        sid = f"{self.flow_id}.{self.session_counter}"
        st = self.cp.sessions.get(sid)
        if st is None:
            self.cp.sessions[sid] = SessionState(sid, party, True, proto, version, app)
        elif st.counterparty != party and self.replaying:
            from greenflow.runtime.divergence import explain_session
            self._diverge(explain_session(self, self.session_counter, st.counterparty, party))
        return FlowSession(sid, party)

    def _session(self, session: FlowSession) -> SessionState:
        st = self.cp.sessions.get(session.sid)
        if st is None:
            raise FlowError(f"{session!r} does not belong to flow {self.cp.flow_class} "
                            f"({self.flow_id}); sessions cannot be shared between flows")
        return st

    def _emit(self, st: SessionState, kind: int, payload: Optional[bytes] = None,
              reason: str = "", error: Optional[tuple] = None) -> None:
        if kind == END and self._end_on_last(st, reason):
            return
        info = None
        if not st.initiator and not st.sent_info:
            info = (self._own_version(), self._own_app())
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
            out.append((st.counterparty, frame))   # type: ignore[union-attr]
        else:
            self.out = [(st.counterparty, frame)]

    def _end_on_last(self, st: SessionState, reason: str) -> bool:
        """Mark the session's last frame, if it carries a message and has not left yet
        (it waits for this flow's next commit), as also ending the session: one frame
        instead of a message and an END."""
        sid = st.sid
        for _peer, frame in reversed(self.out):
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
                    self._emit(st, INIT, None, reason="info")
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

        def live() -> tuple:
            if st.peer_ended is not None or st.state == CLOSED:
                return (Outcome.END, st.peer_ended or "closed by this flow")
            self._emit(st, DATA, data)
            return OK

        out = self.record(Kind.SEND, (st.sid, st.counterparty.name, wire.digest(data)), live, data)
        if out[0] == Outcome.END:
            raise UnexpectedFlowEnd(
                f"{self.cp.flow_class} cannot send to {st.counterparty.name}: the session "
                f"has ended ({out[1]})")

    def receive(self, session: FlowSession, expected: Any, timeout: Optional[float]) -> Any:
        st = self._session(session)
        tname = type_name(expected)
        if timeout is not None and timeout < 0:
            raise ValueError("receive timeout must be >= 0")

        out = self.suspend(Kind.RECEIVE, (st.sid, st.counterparty.name, tname),
                           deadline=self._deadline(timeout) if timeout is not None
                           else self._idle_deadline(st), session=st)
        kind = out[0]
        peer = st.counterparty.name
        if kind == Outcome.DATA or kind == Outcome.STORED:
            try:
                payload = (self.sched.take_decoded(out[1]) if kind == Outcome.DATA else
                           wire.decode(self.sched.stored_payload(self.flow_id, st.sid, out[1])))
            except Exception as exc:  # validated on arrival; cannot normally happen
                raise ReceiveTypeError(f"{self.cp.flow_class} received an undecodable payload "
                                       f"from {peer}: {exc}") from None
            if not isinstance(payload, expected):
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
                self._emit(st, END, reason="closed the session")
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
                    self._emit(st, END, reason="failed")
                else:
                    eid = exc.ensure_error_id()
                    self._emit(st, ERROR, error=(qualified_name(type(exc)), str(exc), eid))
            else:
                self._emit(st, END, reason=_END_REASON.get(kind, "ended"))
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
    exc = cls.__new__(cls)
    exc.args = (message,)
    exc.error_id = error_id
    exc._gf_from_session = sid  # type: ignore[attr-defined]
    return exc


def _callable_name(fn: Callable) -> str:
    return getattr(fn, "__qualname__", None) or type(fn).__qualname__


def _call_checked(fn: Callable, args: tuple) -> tuple:
    try:
        value = fn(*args)
    except Exception as exc:  # noqa: BLE001 - recorded and re-raised in the flow
        out: tuple = (Outcome.EXC, exc)
    else:
        out = (Outcome.OK, value)
    try:
        serialization.dumps(out)
    except Exception as exc:
        raise FlowError(f"the result of {_callable_name(fn)} ({type(out[1]).__qualname__}) "
                        f"cannot be checkpointed: {exc}") from None
    return out


def _unwrap(outcome: tuple) -> Any:
    if outcome[0] == Outcome.EXC:
        raise outcome[1]
    return outcome[1]


class _FlowLogger(logging.LoggerAdapter):
    """Prefixes the flow id and stays quiet while the flow replays (it said it already)."""

    def __init__(self, rt: FlowRuntime) -> None:
        super().__init__(logging.getLogger(f"greenflow.flow.{rt.cp.flow_class}"),
                         {"flow_id": rt.flow_id})
        self.rt = rt

    def process(self, msg: Any, kwargs: Any) -> tuple:
        return f"[{self.rt.flow_id[:8]}] {msg}", kwargs

    def isEnabledFor(self, level: int) -> bool:
        return not self.rt.replaying and self.logger.isEnabledFor(level)
