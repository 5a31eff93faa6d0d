"""The lifecycle of a flow, as operators see it."""
from __future__ import annotations

import enum


class FlowStatus(str, enum.Enum):
    """Where a flow stands. Unfinished: RUNNABLE, SUSPENDED, HIBERNATED, HOSPITALIZED;
    finished: COMPLETED, FAILED, KILLED."""

    RUNNABLE = "RUNNABLE"          # has work to do now (just started, or woken)
    SUSPENDED = "SUSPENDED"        # waiting, held in memory
    HIBERNATED = "HIBERNATED"      # waiting, dropped from memory; rebuilt by replay when woken
    HOSPITALIZED = "HOSPITALIZED"  # parked for an operator (e.g. NonDeterminismError)
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    KILLED = "KILLED"

    @property
    def finished(self) -> bool:
        return self in _FINISHED

    def __str__(self) -> str:
        return self.value


# A set of the members: `in` is then one hash lookup, not up to three str comparisons
# (asked on every step of every flow).
_FINISHED = frozenset((FlowStatus.COMPLETED, FlowStatus.FAILED, FlowStatus.KILLED))
