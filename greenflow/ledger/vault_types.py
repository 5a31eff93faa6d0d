"""The vocabulary of vault queries: criteria, paging, sorting, the page a query returns
and the update a tracked query hands out (`greenflow.ledger.vault_query` has the whole
picture)."""
from __future__ import annotations

import enum
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Callable, Optional, Sequence

from greenflow.errors import FlowError
from greenflow.party import Party
from greenflow.ledger.states import ContractState, StateAndRef, StateRef, UniqueIdentifier

DEFAULT_PAGE_SIZE = 200
MAX_PAGE_SIZE = 10_000


class VaultQueryError(FlowError):
    """A query the vault cannot answer as asked: more results than the default page holds
    without a `PageSpecification`, a page size out of range, a bad cursor or sort key."""


class StateStatus(enum.Enum):
    UNCONSUMED = "UNCONSUMED"
    CONSUMED = "CONSUMED"
    ALL = "ALL"


@dataclass(frozen=True)
class QueryCriteria:
    """Which states: every field given must hold (lists mean any of their values).

    ``state_type`` includes subclasses. ``linear_ids`` take `UniqueIdentifier`s or their
    uuids; ``recorded_after``/``recorded_before`` bound the time this vault recorded the
    state (UTC datetimes); ``where`` is any predicate of the state (evaluated last, only
    on states the indexes and the other criteria let through)."""

    state_type: type = ContractState
    status: StateStatus = StateStatus.UNCONSUMED
    linear_ids: Optional[Sequence[Any]] = None
    external_ids: Optional[Sequence[str]] = None
    participants: Optional[Sequence[Party]] = None
    notaries: Optional[Sequence[Party]] = None
    recorded_after: Optional[datetime] = None
    recorded_before: Optional[datetime] = None
    where: Optional[Callable[[Any], bool]] = None

    def __post_init__(self) -> None:
        if not (isinstance(self.state_type, type) and issubclass(self.state_type, ContractState)):
            raise VaultQueryError(f"state_type must be a ContractState class, not {self.state_type!r}")
        if not isinstance(self.status, StateStatus):
            object.__setattr__(self, "status", _status(self.status))
        # Each list checked here: a bare value (a str is iterable, letter by letter) or a
        # name where a Party belongs would otherwise match nothing, silently, or fail
        # deep in the query.
        for name, ok, what in (
                ("linear_ids", lambda x: isinstance(x, (UniqueIdentifier, uuid.UUID, str)),
                 "UniqueIdentifiers, UUIDs or their text"),
                ("external_ids", lambda x: type(x) is str, "str"),
                ("participants", lambda x: type(x) is Party, "Party objects"),
                ("notaries", lambda x: type(x) is Party, "Party objects")):
            value = getattr(self, name)
            if value is None:
                continue
            if not isinstance(value, (list, tuple, set, frozenset)):
                raise VaultQueryError(f"{name} is a list of {what}, not {_short(value)}")
            bad = next((x for x in value if not ok(x)), _NONE)
            if bad is not _NONE:
                raise VaultQueryError(f"{name} is a list of {what}; it holds {_short(bad)}")
        for name in ("recorded_after", "recorded_before"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, datetime):
                raise VaultQueryError(f"{name} is a datetime (UTC when it has no time zone), "
                                      f"not {_short(value)}")
        if self.where is not None and not callable(self.where):
            raise VaultQueryError(f"where is a function of the state, not {_short(self.where)}")


_NONE = object()


def _short(value: Any) -> str:
    """A value in an error message: its type and at most 100 characters of it."""
    text = repr(value)
    return f"{type(value).__qualname__} {text[:100]}{'...' if len(text) > 100 else ''}"


def _status(value: Any) -> StateStatus:
    try:
        return value if isinstance(value, StateStatus) else StateStatus(str(value).upper())
    except ValueError:
        raise VaultQueryError(f"status is one of unconsumed, consumed, all; not {value!r}") from None


@dataclass(frozen=True)
class PageSpecification:
    """Page ``page_number`` (from 1) of ``page_size`` states, or, with ``cursor`` (a page's
    ``next_cursor``), the ``page_size`` states after it. A cursor in the default order
    (recorded order) stays right while states are added; a page number may shift."""

    page_number: int = 1
    page_size: int = DEFAULT_PAGE_SIZE
    cursor: Optional[str] = None

    def __post_init__(self) -> None:
        if self.cursor is not None and type(self.cursor) is not str:
            raise VaultQueryError(f"cursor is a page's next_cursor (a str), not {_short(self.cursor)}")
        if type(self.page_size) is not int or not 1 <= self.page_size <= MAX_PAGE_SIZE:
            raise VaultQueryError(f"page_size is between 1 and {MAX_PAGE_SIZE:,}, not {self.page_size!r}")
        if type(self.page_number) is not int or self.page_number < 1:
            raise VaultQueryError(f"page_number counts from 1, not {self.page_number!r}")


@dataclass(frozen=True)
class Sort:
    """Order by ``key``: ``recorded_time`` (the default: the order this vault recorded the
    states), ``consumed_time``, ``state_ref``, or a dotted attribute path of the state
    (``amount.quantity``, ``linear_id.external_id``)."""

    key: str = "recorded_time"
    descending: bool = False

    def __post_init__(self) -> None:
        if type(self.key) is not str or not self.key:
            raise VaultQueryError(f"a sort key is a name (recorded_time, consumed_time, state_ref "
                                  f"or a dotted attribute path), not {_short(self.key)}")
        if type(self.descending) is not bool:
            raise VaultQueryError(f"descending is True or False, not {_short(self.descending)}")


@dataclass(frozen=True)
class StateMetadata:
    ref: StateRef
    contract_state_class_name: str
    recorded_time: Optional[datetime]
    consumed_time: Optional[datetime]
    status: StateStatus
    notary: Optional[str]  # the notary's key, hex
    lock_id: Optional[str] = None


@dataclass(frozen=True)
class Page:
    """One page of results: the states, their metadata, how many match in all, and the
    cursor of the next page (None on the last)."""

    states: tuple[StateAndRef, ...]
    states_metadata: tuple[StateMetadata, ...]
    total_states_available: int
    next_cursor: Optional[str]
    page_number: int
    page_size: int


@dataclass(frozen=True)
class VaultUpdate:
    """States a recorded transaction consumed and produced, as far as a tracked query
    selects them."""

    consumed: tuple[StateAndRef, ...]
    produced: tuple[StateAndRef, ...]

