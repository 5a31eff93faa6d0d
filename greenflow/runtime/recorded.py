"""What a flow reads from outside, recorded once and replayed: time, randomness, ids,
side effects, service calls, external work, timers and version markers. Part of
`FlowRuntime` (it inherits `RecordedValues`).
"""
from __future__ import annotations

import random as _random
import uuid as _uuid
from datetime import datetime, timezone
from typing import Any, Callable, Optional

from greenflow import serialization
from greenflow.errors import FlowError
from greenflow.messages import exception_text
from greenflow.runtime import replay_safe
from greenflow.runtime.flow_types import duration
from greenflow.runtime.journal import OK, Entry, Kind, Outcome


class RecordedValues:
    """`FlowRuntime`'s recorded-value methods."""

    __slots__ = ()

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
        Once False for a flow, a change id stays False for it (as Temporal's ``patched``
        is remembered): code that asks twice, before and after a suspension the flow was
        checkpointed at, takes the old path both times, not half of each.
        """
        st = replay_safe.run_state(self)   # type: ignore[arg-type]
        if st.old_paths is not None and change_id in st.old_paths:
            return False
        if self.cursor < len(self.journal):
            j = self.cursor
            while j < len(self.journal) - 1 and self.journal[j].kind == replay_safe.CLOCK:
                j += 1   # clock readings before the marker only the first run made
            e = self.journal[j]
            if e.kind == Kind.VERSIONED and e.key == (change_id,):
                self.cursor = j + 1
                return True
            if st.old_paths is None:
                st.old_paths = set()
            st.old_paths.add(change_id)
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
        seconds = duration(seconds, "sleep()")
        self.suspend(Kind.SLEEP, (seconds,), deadline=self._deadline(seconds))

    def _deadline(self, seconds: float) -> Optional[float]:
        # Only computed live: on replay the recorded deadline stands.
        return None if self.replaying else self.sched.clock.now() + seconds


def _callable_name(fn: Callable) -> str:
    return getattr(fn, "__qualname__", None) or type(fn).__qualname__


_ATOMS = serialization.ATOMS


def _plain(value: Any) -> bool:
    """An atom, or a list or tuple of atoms (a query that found nothing, a list of
    names): what pickles whatever it holds, so needs no trial pickle."""
    t = type(value)
    if t in _ATOMS:
        return True
    if t is list or t is tuple:
        for item in value:
            if type(item) not in _ATOMS:
                return False
        return True
    return False


def _call_checked(fn: Callable, args: tuple) -> tuple:
    try:
        value = fn(*args)
    except Exception as exc:  # noqa: BLE001 - recorded and re-raised in the flow
        out: tuple = (Outcome.EXC, exc)
    else:
        out = (Outcome.OK, value)
        if _plain(value):   # pickles whatever it is: no trial pickle (most calls)
            return out
    refused = unrecordable(fn, out)
    # Journaled as the call's outcome: a flow that catches it and goes on replays the
    # same way (raised outside the journal, the call was missing from it, and a replay
    # after a restart or hibernation diverged there).
    return out if refused is None else (Outcome.EXC, refused)


def unrecordable(fn: Callable, out: tuple) -> Optional[FlowError]:
    """Why the outcome ``out`` of calling ``fn`` cannot be journaled (it does not pickle),
    or None. The error is journaled in its place and raised in the flow at its call
    (`run_external` checks on the worker thread, rather than failing the flow's commit)."""
    if out[0] == Outcome.OK and _plain(out[1]):
        return None
    try:
        serialization.dumps(out)
    except Exception as exc:
        return FlowError(f"the result of {_callable_name(fn)} ({type(out[1]).__qualname__}) "
                         f"cannot be checkpointed: {exception_text(exc)}")
    return None


def _unwrap(outcome: tuple) -> Any:
    if outcome[0] == Outcome.EXC:
        raise outcome[1]
    return outcome[1]
