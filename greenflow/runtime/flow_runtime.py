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

Assembled by concern: this module holds the journal, replay and greenlet; what a flow
does on its sessions is `greenflow.runtime.conversation`, the values it records are
`greenflow.runtime.recorded`; the vocabulary they share is `flow_types` (re-exported
here, as are the session helpers other modules import from here).
"""
from __future__ import annotations

import logging
import sys
import threading
from collections import deque
from types import AsyncGeneratorType, CoroutineType, GeneratorType, MappingProxyType
from typing import TYPE_CHECKING, Any, Callable, Optional

from greenflow.runtime import replay_safe
from greenflow.runtime.checkpoint import NEW, Checkpoint, SessionState
from greenflow.errors import FlowError
from greenflow.flows.progress import ProgressTracker
from greenflow.runtime.fingerprint import with_class
from greenflow.runtime.journal import Entry, Kind
from greenflow.messages import Frame
from greenflow.party import Party
from greenflow.runtime.conversation import (KEEP_SENT_PAYLOAD, MAX_PAYLOAD_BYTES,
                                            Conversation, rebuild_flow_exception, rejection,
                                            type_name)
from greenflow.runtime.flow_types import (NO_INBOX, Ended, FlowHost, InboxItem, InboxQueue, Outgoing,
                                          Resume, appended)
from greenflow.runtime.recorded import RecordedValues
from greenflow.runtime.traps import Diverged, FlowGreenlet, Unwind, flow_greenlet, switch_to_scheduler

__all__ = ["FlowRuntime", "Ended", "FlowHost", "InboxItem", "NO_INBOX", "appended",
           "rejection", "rebuild_flow_exception", "type_name", "MAX_PAYLOAD_BYTES",
           "KEEP_SENT_PAYLOAD"]

replay_safe.install()   # uuid4, os.urandom, random, time.time ... replay inside flows

if TYPE_CHECKING:
    from greenflow.flows.flow_logic import FlowLogic

#: What ``call()`` returns when it was written as a generator or ``async def``: its body
#: never ran (a flow is plain blocking Python, suspended by the runtime, not by ``yield``
#: or ``await``), so the flow fails saying so rather than storing what it returned.
_NOT_PLAIN = frozenset((GeneratorType, CoroutineType, AsyncGeneratorType))


def own_body(flow: "FlowLogic", result: Any) -> bool:
    """Whether ``result``, a generator or coroutine, is ``flow.call()``'s own body (its
    ``call`` has a yield or is async, so none of it ran), not one it made and returned:
    a value like any other, which a sub-flow hands back and a flow's result cannot hold."""
    code = getattr(result, "gi_code", None) or getattr(result, "cr_code", None) \
        or getattr(result, "ag_code", None)
    return code is getattr(getattr(type(flow), "call", None), "__code__", code)


def not_plain(flow: "FlowLogic", result: Any) -> FlowError:
    """The error of a flow whose ``call()`` returned ``result``, a generator or coroutine."""
    if type(result) is not AsyncGeneratorType:
        result.close()   # (a coroutine never awaited would warn when collected)
    how = ("an async def" if type(result) is CoroutineType else
           "an async generator" if type(result) is AsyncGeneratorType else
           "a generator (it has a yield)")
    cls = type(flow)
    return FlowError(f"{cls.__module__}.{cls.__qualname__}.call is {how}, so none of it ran: "
                     "flow code is plain blocking Python (send and receive suspend the flow "
                     "themselves); remove the yield or async")


class FlowRuntime(Conversation, RecordedValues):
    # Slots: a node may hold millions of these.
    __slots__ = ("sched", "cp", "flow_id", "logic", "journal", "cursor", "committed", "dropped",
                 "subflows",
                 "session_counter", "greenlet", "pending", "out", "inbox", "consumed",
                 "external", "io_refused", "diverged", "dirty", "routed",
                 "base", "fresh", "external_done", "start_blob", "user_frame", "progress_stale",
                 "nd", "raw", "stored_at", "chunks", "inboxed", "wake_stored")

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
        # How many stored entries a live flow has let go of from the front of ``journal``
        # (`forget_stored`): entry i of the list is entry dropped + i of the stored journal.
        self.dropped = 0
        self.subflows: list["FlowLogic"] | tuple = ()   # sub-flows running below logic
        self.session_counter = 0
        self.greenlet: Optional[FlowGreenlet] = None
        self.pending: Optional[Entry] = None
        # The four per-flow collections below are empty for nearly every waiting flow, so
        # they start (and fall back) as shared immutable empties and become real lists or
        # a dict only when something goes in: ~300 B less per resident flow.
        self.out: list[Outgoing] | tuple = ()
        self.inbox: dict[str, deque[InboxItem]] | MappingProxyType = NO_INBOX
        self.consumed: list[tuple[str, int]] | tuple = ()   # persisted inbox items consumed
        self.external: Optional[tuple[Callable, tuple]] = None
        self.external_done: Optional[tuple] = None   # result that came while not resident
        self.io_refused: Optional[str] = None
        self.diverged: Optional[str] = None
        self.dirty = True
        self.routed = 0                   # cp.sessions[:routed] have their route stored
        # The checkpoint header as last staged (before the first commit: AT_START, the
        # starting state), and the frames accepted since: enough to put the flow back to
        # its committed state without losing an acknowledged frame.
        self.base: Optional[bytes | str] = None   # header bytes, or checkpoint.AT_START
        self.start_blob: Optional[bytes] = None   # start object not yet in the store
        # What the store holds of the flow beyond its header, when known (a flow started
        # here): the start indexes of its journal chunks (None: unknown) and whether any
        # inbox row or payload was written. Its drop then deletes just those, no scans.
        self.chunks: Optional[tuple[int, ...]] = None
        self.inboxed = True
        # Whether the store holds the flow's wake flag (None: unknown, e.g. a flow read
        # back from the store): a commit writes the flag only when it changes, not a
        # delete of a flag that is not there with every commit of a waiting flow.
        self.wake_stored: Optional[bool] = None
        self.user_frame: Any = None               # while suspended: see suspend()
        self.fresh: list[Frame] | tuple = ()
        # The progress path (cp.progress_step) is out of date: worked out at the flow's
        # next commit (`refresh_progress`) rather than at every step its trackers take,
        # unless someone is listening to progress.
        self.progress_stale = False
        self.nd: Optional[replay_safe.FlowEntropy] = None  # this run's randomness and clock
        self.raw = False   # True while greenflow runs live-only code for the flow
        self.stored_at: Optional[int] = None   # hash of the code locations last stored (stacks)

    def inbox_queue(self, sid: str, peer_unread: Optional[list] = None) -> deque:
        """The (writable) queue of frames waiting for ``sid``, created if needed;
        ``peer_unread`` counts what the session's peer has waiting unread (`InboxQueue`)."""
        inbox = self.inbox
        if not inbox:
            inbox = self.inbox = {}
        q = inbox.get(sid)
        if q is None:
            q = inbox[sid] = InboxQueue(peer_unread)
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
        if e.kind == replay_safe.CLOCK or e.kind == Kind.VERSIONED:
            # Passed over: clock readings only the first run made (its greenflow-internal,
            # live-only code; the flow's own readings were consumed already), and the
            # markers of `versioned` calls the code no longer makes (a change retired once
            # every flow from before it is gone: the marker chose the path that is left).
            while e.kind == replay_safe.CLOCK or e.kind == Kind.VERSIONED:
                self.cursor += 1
                if self.cursor >= len(journal):
                    return None
                e = journal[self.cursor]
        if not e.matches(kind, key) and not (
                # The type a receive asks for changed (widened, say `int` to `(int, str)`):
                # the payload's isinstance check decides, when it is read (`receive`).
                kind == e.kind == Kind.RECEIVE and key[:2] == e.key[:2]):
            from greenflow.runtime.divergence import explain_request, reordered_only
            if not (kind == e.kind == Kind.SEND and key[:2] == e.key[:2] and payload is not None
                    and e.sent is not None and reordered_only(e.sent, payload)):
                self._diverge(explain_request(self, self.cursor, e, kind, key, payload))
        self.cursor += 1
        return e

    def diverge_on_clock(self, e: Entry) -> None:
        """Replay reads the clock where the first run made the request ``e`` instead."""
        from greenflow.runtime.divergence import explain_request
        self._diverge(explain_request(self, self.cursor, e, Kind.CLOCK, ()))

    def record(self, kind: str, key: tuple, live: Callable[..., tuple],
               payload: Optional[bytes] = None, args: tuple = ()) -> tuple:
        """A request that does not suspend: answered from the journal on replay, decided
        by ``live(*args)`` and journalled otherwise. ``live`` sees the real clock and
        randomness (its outcome is what gets recorded); ``args`` spare a per-call closure
        on the hot paths (a send)."""
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
            outcome = live(*args)
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
        e = self._replay_next(kind, key) if self.cursor < len(self.journal) else None
        if e is not None and e.outcome is not None:
            return e.outcome
        if self.io_refused is not None:
            self.check_io_allowed()
        if e is None:
            e = Entry(kind, key, None, deadline)
            self.journal.append(e)
            self.cursor += 1
            self.cp.suspension_count += 1
        if session is not None and (session.state == NEW or kind == Kind.INFO):
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

    def forget_stored(self) -> None:
        """Let go of the journal entries the store holds, once the flow runs live (its
        cursor at the journal's end): only a replay reads them, and a replay starts from
        a runtime loaded from the store. A resident flow so holds only what its next
        commit writes, not its whole history (~1 KB per round trip of ping-pong)."""
        k = self.committed
        del self.journal[:k]
        self.cursor -= k
        self.committed = 0
        self.dropped += k
        nd = self.nd
        if nd is not None:   # (its clock position is a cursor: kept behind the cursor)
            nd.clock_at -= k

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
            if type(result) in _NOT_PLAIN and own_body(self.logic, result):
                raise not_plain(self.logic, result)
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
        except KeyboardInterrupt as exc:
            if threading.current_thread() is threading.main_thread():
                # The process's Ctrl-C (signals reach the main thread only), landed while
                # this flow ran inline there: not the flow's to fail with.
                return (Ended.INTERRUPTED, exc)
            return (Ended.FAILED, exc)   # raised by the flow itself, on a node's own thread
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
            fp = self.cp.fingerprint
            if fp is not None and not self.replaying:   # (a replay runs today's code)
                self.cp.fingerprint = with_class(fp, type(flow))
            result = flow.call()
            if type(result) in _NOT_PLAIN and own_body(flow, result):
                raise not_plain(flow, result)
            return result
        finally:
            self.subflows.pop()  # type: ignore[union-attr]
            self.on_progress(None)

    # ------------------------------------------------------------------ context
    def flow_stack(self) -> list["FlowLogic"]:
        """The flow and the sub-flows it is running, outermost first."""
        return [self.logic, *self.subflows]

    @property
    def logger(self) -> logging.LoggerAdapter:
        # Made per use, not kept: a slot for it would cost every resident flow 8 bytes,
        # and the adapter would hold the runtime in a cycle.
        return _FlowLogger(self)

    def on_progress(self, tracker: Any) -> None:
        """A tracker took a step, or a sub-flow ended (~40 times per trade). With nobody
        listening (`progress_wanted`), or while the flow replays, only noted: the path is
        worked out once, when the flow's checkpoint is staged (`refresh_progress`), not at
        every step. A replay so leaves the stored path as it was until the flow is live
        again, and listeners hear only live changes, none twice. A flow being unwound
        (evicted, killed) takes no step: its sub-flows' ends there are not progress."""
        if self.io_refused is not None:
            return
        if not self.replaying and self.sched.progress_wanted():
            self.refresh_progress()
        else:
            self.progress_stale = True

    def refresh_progress(self) -> None:
        """Work out the progress path (``cp.progress_step``) and tell the listeners when
        it changed. A plain tracker's label is read off its field, with no property call
        or list of the stack (a subclass may define `label` its own way)."""
        self.progress_stale = False
        labels = []
        for f in (self.logic, *self.subflows):
            t = f.__dict__.get("_gf_tracker")
            if t is None:
                continue
            if type(t) is ProgressTracker:
                if t._current is not _UNSTARTED:
                    labels.append(t._current.label)
            elif t.label is not None:
                labels.append(t.label)
        step = " / ".join(labels) if labels else None
        if step is not None and len(step) > MAX_PROGRESS_PATH:   # sub-flows nested deep
            step = "... " + step[-(MAX_PROGRESS_PATH - 4):]       # (the innermost step shows)
        if step != self.cp.progress_step:
            self.cp.progress_step = step
            # A step that clears (a tracked sub-flow ended, the flow has no step of its
            # own) is not told: listeners take None for the flow's end.
            if step is not None and self.sched.progress_listeners and not self.replaying:
                self.sched.progress_changed(self, step)


_UNSTARTED = ProgressTracker.UNSTARTED
#: The longest progress path a checkpoint keeps (labels are at most 1,000 characters
#: each, but sub-flows may nest deep).
MAX_PROGRESS_PATH = 4_000


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
