"""Clocks: wall time for real nodes, virtual time for MockNetwork.

Flow code reads time only through ``FlowLogic.now()`` (recorded and replayed); the
scheduler uses the clock for durable timers (``sleep``) and receive timeouts, storing
absolute deadlines so a restart wakes flows at their original time.
"""
from __future__ import annotations

import math

from greenflow.runtime.replay_safe import real_time


class Clock:
    def now(self) -> float:
        """Seconds since the epoch."""
        raise NotImplementedError


class SystemClock(Clock):
    def now(self) -> float:
        return real_time()   # never a flow's recorded clock (see replay_safe)


class VirtualClock(Clock):
    """Moves only when told: ``advance(seconds)``."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self._now = start

    def now(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        try:
            finite = math.isfinite(seconds)
        except TypeError:
            raise TypeError(f"advance() takes a number of seconds, got "
                            f"{type(seconds).__qualname__}") from None
        if not finite:   # the clock would stay there: every deadline after it is lost
            raise ValueError(f"advance() takes a finite number of seconds, got {seconds!r}")
        if seconds < 0:
            raise ValueError("time only moves forward")
        self._now += seconds
