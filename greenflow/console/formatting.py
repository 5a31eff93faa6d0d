"""What the console's views share: their limits, the error a bad filter raises, and
timestamps and values as text."""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Optional

from greenflow.status import FlowStatus

PAGE_SIZE = 50
# The flow list reads at most this many stored flows (and as many finished ones),
# newest first; beyond, it says the list is cut.
SCAN_LIMIT = 20_000
MAX_PAGE_SIZE = 500
JOURNAL_LIMIT = 500
REPR_LIMIT = 300

ORDER = [s.value for s in FlowStatus]


def iso(ts: Optional[float]) -> Optional[str]:
    if not ts:
        return None
    return datetime.fromtimestamp(ts, tz=timezone.utc).isoformat(timespec="seconds")


def _repr(value: Any) -> str:
    try:
        text = repr(value)
    except Exception as exc:  # noqa: BLE001 - user __repr__
        text = f"<unrepresentable {type(value).__qualname__}: {exc}>"
    return text if len(text) <= REPR_LIMIT else text[:REPR_LIMIT] + "..."


class FilterError(ValueError):
    """A filter of the flow list that cannot be understood (answered as 400)."""
