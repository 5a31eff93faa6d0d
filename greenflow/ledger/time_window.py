"""`TimeWindow`: when a transaction may be notarised (Corda's ``TimeWindow``).

A ledger has no clock every party trusts, so a transaction that depends on time (a
deadline, an expiry, an interest date) names a window and its notary, the one party
whose signature everybody already relies on, signs only while its own clock is inside
it. Contracts then read ``tx.time_window`` knowing the notary has vouched for it: a
contract cannot look at a clock itself, since every party re-runs it later, at another
time, and must reach the same verdict.

``from_time`` is inclusive and ``until_time`` exclusive, as in Corda; either may be
open. Times are timezone-aware and kept in UTC, so every node hashes the same bytes
into the transaction id.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Optional

from greenflow.wire import register_wire_type
from greenflow.ledger.errors import TransactionVerificationError

__all__ = ["TimeWindow"]


def _utc(value: Any, what: str) -> Optional[datetime]:
    if value is None:
        return None
    if type(value) is not datetime:
        raise TypeError(f"a time window's {what} is a datetime, not {type(value).__name__}")
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"a time window's {what} must be timezone-aware (e.g. "
                         f"datetime.now(timezone.utc) or a flow's self.now()), got {value!r}")
    return value.astimezone(timezone.utc)


@dataclass(frozen=True)
class TimeWindow:
    """The interval in which the notary may sign: ``[from_time, until_time)``."""

    from_time: Optional[datetime] = None
    until_time: Optional[datetime] = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "from_time", _utc(self.from_time, "from_time"))
        object.__setattr__(self, "until_time", _utc(self.until_time, "until_time"))
        problem = self._problem()
        if problem:
            raise ValueError(problem)

    # ------------------------------------------------------------------ constructors
    @classmethod
    def between(cls, from_time: datetime, until_time: datetime) -> TimeWindow:
        return cls(from_time, until_time)

    @classmethod
    def starting(cls, from_time: datetime) -> TimeWindow:
        """Open-ended: valid from ``from_time`` on."""
        return cls(from_time, None)

    @classmethod
    def until(cls, until_time: datetime) -> TimeWindow:
        """Valid up to (not including) ``until_time``."""
        return cls(None, until_time)

    @classmethod
    def around(cls, at: datetime, tolerance: timedelta) -> TimeWindow:
        """``at`` give or take ``tolerance`` (Corda's ``withTolerance``)."""
        return cls(at - tolerance, at + tolerance)

    # ------------------------------------------------------------------ reading
    def contains(self, instant: datetime) -> bool:
        """Whether ``instant`` (timezone-aware) falls inside the window."""
        at = _utc(instant, "instant")
        assert at is not None
        if self.from_time is not None and at < self.from_time:
            return False
        return self.until_time is None or at < self.until_time

    @property
    def midpoint(self) -> Optional[datetime]:
        """The middle of a closed window (None when a bound is open): the best single
        time a contract can assume the transaction happened at."""
        if self.from_time is None or self.until_time is None:
            return None
        return self.from_time + (self.until_time - self.from_time) / 2

    def describe(self) -> str:
        start = self.from_time.isoformat() if self.from_time else "-inf"
        end = self.until_time.isoformat() if self.until_time else "+inf"
        return f"[{start}, {end})"

    def __str__(self) -> str:
        return f"TimeWindow{self.describe()}"

    def check_shape(self) -> None:
        """Refuse a window a peer could send malformed (decoding skips the constructor)."""
        problem = self._problem()
        if problem:
            raise TransactionVerificationError(f"malformed transaction: {problem}")

    def _problem(self) -> Optional[str]:
        for what in ("from_time", "until_time"):
            value = getattr(self, what, None)
            if value is not None and (type(value) is not datetime or value.tzinfo is None
                                      or value.utcoffset() is None):
                return f"time window {what} is not a timezone-aware datetime: {value!r}"
        if self.from_time is None and self.until_time is None:
            return "a time window needs at least one bound"
        if (self.from_time is not None and self.until_time is not None
                and self.from_time >= self.until_time):
            return (f"time window {self.describe()} is empty (from_time must come before "
                    "until_time)")
        return None


register_wire_type(TimeWindow)
