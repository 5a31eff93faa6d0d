"""Vault queries: criteria, sorting, paging and tracking over a node's states.

``services.vault.query_by(QueryCriteria(...), PageSpecification(...), Sort(...))`` returns a
`Page`; ``track_by`` returns a `DataFeed`: that page plus a `Feed` of `VaultUpdate`s.
`read_vault` runs the same queries over a node directory's store, read-only, beside a
running node (``greenflow vault query``).

The store keeps indexes so that a query by state type, linear id or external id reads
only the states it names, never the whole vault:

| table             | key                                   | value                        |
|-------------------|---------------------------------------|------------------------------|
| vault_by_type     | type id (2 bytes) + sequence (8 bytes) | state ref, recorded time (µs) |
| vault_by_linear   | linear uuid (16 bytes) + sequence     | state ref, recorded time, type id |
| vault_by_external | external id \\0 sequence               | state ref, recorded time, type id |
| vault_types       | type name (module:Class)              | its type id                  |
| vault_consumed    | state ref (the vault's own)           | consuming transaction id, consumed time (µs) |

The sequence number counts states in the order this vault recorded them: every index
lists a key's states oldest first, and it is the default sort and the cursor. Keys grow
with it, so recording a state appends to the end of each index (cheap in an ordered store,
unlike a write at a random place), and entries are kept small (a type id, no notary: that comes
from the state's transaction when a query asks for it), since every recorded state
writes one; whether a state is consumed is the vault's own record of it.
"""
from __future__ import annotations

import base64
import enum
import importlib
import os
import struct
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass
from datetime import datetime, timezone
from heapq import merge
from typing import Any, Callable, Iterable, Iterator, Optional, Sequence

from greenflow.errors import FlowError
from greenflow.party import Party
from greenflow.ledger.states import ContractState, StateAndRef, StateRef, UniqueIdentifier

__all__ = [
    "DEFAULT_PAGE_SIZE", "MAX_PAGE_SIZE", "DataFeed", "Feed", "Page", "PageSpecification",
    "QueryCriteria", "Sort", "StateMetadata", "StateStatus", "VaultQueryError", "VaultUpdate",
    "read_vault",
]

DEFAULT_PAGE_SIZE = 200
MAX_PAGE_SIZE = 10_000
_SEQ = struct.Struct(">Q")
_REC = struct.Struct(">Q")  # recorded time, µs (0: unknown)
INDEX_DBS = ("vault_by_type", "vault_by_linear", "vault_by_external", "vault_types")


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


# ---------------------------------------------------------------------------- tracking
class Feed:
    """The updates of a tracked query, in the order they were recorded. An update is
    handed out only once its transaction is durable in the store. Read with `poll`
    (what is there now), `next` (wait up to ``timeout``), or by iterating (waits)."""

    def __init__(self, criteria: QueryCriteria, store: Any, on_close: Callable[["Feed"], None]) -> None:
        self.criteria = criteria
        self._store = store
        self._on_close = on_close
        self._items: deque[tuple[int, VaultUpdate]] = deque()
        self._cond = threading.Condition()
        self.closed = False

    def _push(self, update: VaultUpdate, stamp: int) -> None:
        with self._cond:
            self._items.append((stamp, update))
            self._cond.notify_all()

    def _ready(self) -> bool:
        return bool(self._items) and self._items[0][0] < self._store.commits

    def poll(self) -> list[VaultUpdate]:
        """Every durable update not handed out yet (possibly none)."""
        out = []
        with self._cond:
            while self._ready():
                out.append(self._items.popleft()[1])
        return out

    def next(self, timeout: Optional[float] = None) -> Optional[VaultUpdate]:
        """The next update, waiting up to ``timeout`` seconds (None: until one comes);
        None when the time is up or the feed is closed."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while not self._ready():
                if self.closed:
                    return None
                left = 0.05 if deadline is None else min(0.05, deadline - time.monotonic())
                if left <= 0:
                    return None
                self._cond.wait(left)  # a commit does not notify: look again shortly
            return self._items.popleft()[1]

    def __iter__(self) -> Iterator[VaultUpdate]:
        while True:
            item = self.next()
            if item is None:
                return
            yield item

    def close(self) -> None:
        with self._cond:
            self.closed = True
            self._cond.notify_all()
        self._on_close(self)


@dataclass
class DataFeed:
    """What `Vault.track_by` returns: the page as it is now and the feed of what changes."""

    snapshot: Page
    updates: Feed


# ---------------------------------------------------------------------------- keys
def seq_key(prefix: bytes, seq: int) -> bytes:
    return prefix + _SEQ.pack(seq)


_TID = struct.Struct(">H")


def type_prefix(tid: int) -> bytes:
    return _TID.pack(tid)


def external_prefix(external_id: str) -> bytes:
    return external_id.encode() + b"\0"


def type_name(cls: type) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


def pack_entry(ref_key: bytes, recorded_us: int, tid: Optional[int] = None) -> bytes:
    """An index entry: the state's ref and recorded time (and, in the linear-id indexes,
    its type id)."""
    entry = ref_key + _REC.pack(recorded_us)
    return entry if tid is None else entry + _TID.pack(tid)


def unpack_entry(raw: bytes) -> tuple[bytes, int, Optional[int]]:
    """(state ref key, recorded µs, type id or None)."""
    rec = _REC.unpack_from(raw, 36)[0]
    return bytes(raw[:36]), rec, (_TID.unpack_from(raw, 44)[0] if len(raw) >= 46 else None)


def consumed_value(tx_id: bytes, when_us: int) -> bytes:
    """The vault's record of a state it consumed: the transaction, then when (µs)."""
    return tx_id + _REC.pack(max(1, when_us))


def consumed_us(value: Optional[bytes]) -> Optional[int]:
    """When a state was consumed, from its record (1: before times were recorded); None
    when there is no record: the state is unconsumed."""
    if value is None:
        return None
    return _REC.unpack_from(value, 32)[0] if len(value) >= 40 else 1


def _us(when: Optional[datetime]) -> Optional[int]:
    if when is None:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return int(when.timestamp() * 1_000_000)


def _dt(us: int) -> Optional[datetime]:
    """A stored time; 0 and 1 mean unknown (recorded before times were kept)."""
    return datetime.fromtimestamp(us / 1_000_000, tz=timezone.utc) if us > 1 else None


def _lid_bytes(value: Any) -> bytes:
    if isinstance(value, UniqueIdentifier):
        return value.id.bytes
    if isinstance(value, uuid.UUID):
        return value.bytes
    if isinstance(value, str):
        try:
            return (UniqueIdentifier.from_string(value).id if "_" in value else uuid.UUID(value)).bytes
        except ValueError:
            pass
    raise VaultQueryError(f"a linear id is a UniqueIdentifier, a UUID or its text, not {value!r}")


def load_class(tname: str) -> Optional[type]:
    """The class a stored type name names (our own records: the module is trusted)."""
    module, _, qual = tname.partition(":")
    try:
        obj: Any = importlib.import_module(module)
        for part in qual.split("."):
            obj = getattr(obj, part)
        return obj if isinstance(obj, type) else None
    except Exception:  # an app no longer installed: its states match no class query
        return None


# ---------------------------------------------------------------------------- the engine
class IndexReader:
    """Reads the vault's indexes from the store, plus writes made since the last commit
    (``pending``: key -> (value or None, commit stamp) per table), which a flow's own
    round has not committed yet but must see."""

    def __init__(self, store: Any) -> None:
        self.store = store
        self.pending: dict[str, dict[bytes, tuple[Optional[bytes], int]]] = {n: {} for n in INDEX_DBS}
        self._pruned_at = -1

    def put(self, batch: Any, name: str, key: bytes, value: bytes) -> None:
        """Write into the round's batch; reads see it until it commits."""
        batch.table_put(name, key, value)
        if self.store.commits != self._pruned_at:
            self._prune()
        self.pending[name][key] = (value, self._pruned_at)

    def _prune(self) -> None:
        """Forget the writes of rounds that have committed since (the store holds them
        now): once per commit, not once per read or write."""
        committed = self.store.commits
        if committed != self._pruned_at:
            self._pruned_at = committed
            for pend in self.pending.values():
                if pend:
                    for k in [k for k, (_, stamp) in pend.items() if stamp < committed]:
                        del pend[k]

    def _live_pending(self, name: str) -> dict[bytes, tuple[Optional[bytes], int]]:
        pend = self.pending.get(name)
        if pend is None:
            return {}
        self._prune()
        return pend

    def get(self, name: str, key: bytes) -> Optional[bytes]:
        hit = self._live_pending(name).get(key)
        if hit is not None:
            return hit[0]
        return self.store.table_get(name, key)

    def scan(self, name: str, prefix: bytes, after: Optional[bytes] = None) -> list[tuple[bytes, bytes]]:
        """Rows whose key starts with ``prefix`` (and is past ``after``), in key order."""
        rows: dict[bytes, Optional[bytes]] = dict(self.store.table_items(name, prefix, after=after))
        for k, (v, _) in self._live_pending(name).items():
            if k.startswith(prefix) and (after is None or k > after):
                rows[k] = v
        return sorted((k, v) for k, v in rows.items() if v is not None)

    def type_ids(self) -> dict[str, int]:
        """Type name -> type id of every state type this vault has recorded."""
        return {k.decode(): _TID.unpack(v)[0] for k, v in self.scan("vault_types", b"")}

    def type_names(self) -> list[str]:
        return list(self.type_ids())

    def next_seq(self) -> int:
        """One past the highest sequence number in the type index: the last key of each
        type's range (a handful of seeks, whatever the size of the vault)."""
        top = -1
        for tid in self.type_ids().values():
            prefix = type_prefix(tid)
            for k, _ in self.store.table_items("vault_by_type", prefix, reverse=True):
                top = max(top, _SEQ.unpack(k[len(prefix):len(prefix) + 8])[0])
                break
        return top + 1


class QueryEngine:
    """Answers `QueryCriteria` from an `IndexReader`; ``load_state(ref, unconsumed)``
    gives the state a ref names; ``lock_of(ref)`` the flow holding it (or None)."""

    def __init__(self, reader: IndexReader, load_state: Callable[[StateRef, bool], Optional[ContractState]],
                 consumed_at: Callable[[bytes], Optional[int]], notary_of: Callable[[StateRef], bytes],
                 lock_of: Callable[[StateRef], Optional[str]] = lambda ref: None) -> None:
        self.reader = reader
        self.load_state = load_state
        self.consumed_at = consumed_at  # ref key -> consumed µs, or None while unconsumed
        self.notary_of = notary_of      # ref -> the notary key of its transaction (b"": none)
        self.lock_of = lock_of

    def _candidates(self, c: QueryCriteria) -> Iterable[tuple[int, bytes, int, str]]:
        """(sequence, ref key, recorded µs, type name) of every state the index for ``c``
        names, oldest first."""
        r = self.reader
        names = {tid: tname for tname, tid in r.type_ids().items()}
        streams: list[list[tuple[int, bytes, int, str]]] = []

        def rows(db: str, prefix: bytes, tname: str = "") -> list:
            n = len(prefix)
            out = []
            for k, v in r.scan(db, prefix):
                ref, rec, tid = unpack_entry(v)
                out.append((_SEQ.unpack(k[n:n + 8])[0], ref, rec, tname or names.get(tid, "?")))
            return out

        if c.linear_ids is not None:
            for lid in c.linear_ids:
                streams.append(rows("vault_by_linear", _lid_bytes(lid)))
        elif c.external_ids is not None:
            for ext in c.external_ids:
                streams.append(rows("vault_by_external", external_prefix(str(ext))))
        else:
            for tid, tname in names.items():
                cls = load_class(tname)
                if cls is not None and issubclass(cls, c.state_type):
                    streams.append(rows("vault_by_type", type_prefix(tid), tname))
        seen: set[bytes] = set()
        for row in merge(*streams):
            if row[1] not in seen:
                seen.add(row[1])
                yield row

    def query(self, c: QueryCriteria, paging: Optional[PageSpecification] = None,
              sort: Optional[Sort] = None) -> Page:
        from greenflow.ledger.vault import _ref_from_key  # noqa: PLC0415  (the vault imports this module)
        sort = sort or Sort()
        by_seq = sort.key == "recorded_time"
        after_us, before_us = _us(c.recorded_after), _us(c.recorded_before)
        notaries = None if c.notaries is None else {p.owning_key for p in c.notaries}
        parties = None if c.participants is None else {p.owning_key for p in c.participants}
        needs_state = (parties is not None or c.where is not None or c.linear_ids is not None
                       or c.external_ids is not None or not by_seq)
        rows = []  # (seq, ref, meta, state or None)
        for seq, rkey, rec, tname in self._candidates(c):
            con = self.consumed_at(rkey) or 0
            if c.status is StateStatus.UNCONSUMED and con:
                continue
            if c.status is StateStatus.CONSUMED and not con:
                continue
            if after_us is not None and rec < after_us or before_us is not None and rec >= before_us:
                continue
            ref = _ref_from_key(rkey)
            if notaries is not None and self.notary_of(ref) not in notaries:
                continue
            state = None
            if needs_state:
                state = self.load_state(ref, not con)
                if state is None or not isinstance(state, c.state_type):
                    continue
                if parties is not None and not any(p.owning_key in parties for p in state.participants):
                    continue
                if c.where is not None and not c.where(state):
                    continue
            rows.append((seq, ref, (rec, con, tname), state))
        if not by_seq:
            try:
                rows.sort(key=lambda row: (self._sort_value(sort.key, row), row[0]))
            except TypeError as exc:
                raise VaultQueryError(f"cannot sort by {sort.key!r}: the states' values do not "
                                      f"compare ({exc})") from None
        if sort.descending:
            rows.reverse()
        total = len(rows)
        explicit = paging is not None
        paging = paging or PageSpecification()
        if not explicit and total > paging.page_size:
            raise VaultQueryError(
                f"{total:,} states match, more than the default page of {DEFAULT_PAGE_SIZE}: "
                "pass a PageSpecification (page_number and page_size, or a cursor) to page through them")
        start = (paging.page_number - 1) * paging.page_size
        if paging.cursor is not None:
            start = self._after_cursor(paging.cursor, rows, by_seq, sort.descending)
        chunk = rows[start:start + paging.page_size]
        end = start + len(chunk)
        next_cursor = None
        if end < total and chunk:
            next_cursor = _cursor(f"s{chunk[-1][0]}" if by_seq else f"o{end}")
        states, metas = [], []
        for seq, ref, (rec, con, tname), state in chunk:
            if state is None:
                state = self.load_state(ref, not con)
            states.append(StateAndRef(state, ref))
            metas.append(StateMetadata(ref, tname, _dt(rec), _dt(con),
                                       StateStatus.CONSUMED if con else StateStatus.UNCONSUMED,
                                       self.notary_of(ref).hex() or None, self.lock_of(ref)))
        return Page(tuple(states), tuple(metas), total, next_cursor, paging.page_number, paging.page_size)

    @staticmethod
    def _sort_value(key: str, row: tuple) -> Any:
        seq, ref, (rec, con, _t), state = row
        if key == "consumed_time":
            return con
        if key == "state_ref":
            return (ref.tx_id.value, ref.index)
        value: Any = state
        for part in key.split("."):
            if part.startswith("_"):
                raise VaultQueryError(f"cannot sort by private attribute {key!r}")
            try:
                value = getattr(value, part)
            except AttributeError:
                raise VaultQueryError(f"cannot sort by {key!r}: {type(state).__qualname__} has no "
                                      f"{part!r}") from None
        if isinstance(value, (StateRef, UniqueIdentifier, Party)):
            value = str(value)
        return value

    @staticmethod
    def _after_cursor(cursor: str, rows: list, by_seq: bool, descending: bool) -> int:
        try:
            text = base64.urlsafe_b64decode(cursor.encode()).decode()
            kind, num = text[0], int(text[1:])
        except Exception:
            raise VaultQueryError(f"bad cursor {cursor!r}: pass a page's next_cursor as it was") from None
        if kind == "o" and not by_seq:
            return num
        if kind == "s" and by_seq:
            for i, row in enumerate(rows):
                if (row[0] < num) if descending else (row[0] > num):
                    return i
            return len(rows)
        raise VaultQueryError("that cursor belongs to a query with another sort order")


def _cursor(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode()


def update_matches(c: QueryCriteria, sar: StateAndRef, notary_key: bytes) -> bool:
    """Whether a state changed by a transaction belongs to a tracked query's updates."""
    state = sar.state
    if not isinstance(state, c.state_type):
        return False
    if c.linear_ids is not None:
        lid = getattr(state, "linear_id", None)
        if not isinstance(lid, UniqueIdentifier) or lid.id.bytes not in {_lid_bytes(x) for x in c.linear_ids}:
            return False
    if c.external_ids is not None:
        lid = getattr(state, "linear_id", None)
        if not isinstance(lid, UniqueIdentifier) or lid.external_id not in set(c.external_ids):
            return False
    if c.notaries is not None and notary_key not in {p.owning_key for p in c.notaries}:
        return False
    if c.participants is not None:
        keys = {p.owning_key for p in c.participants}
        if not any(p.owning_key in keys for p in state.participants):
            return False
    return c.where is None or bool(c.where(state))


# ---------------------------------------------------------------------------- read-only
def read_vault(node_dir: str, criteria: QueryCriteria, paging: Optional[PageSpecification] = None,
               sort: Optional[Sort] = None) -> Page:
    """`Vault.query_by` over the store in ``node_dir``, read-only and without starting the
    node (the store's readers never block its writer, so the node may be running)."""
    from greenflow.storage import open_store
    from greenflow.ledger.vault import _unpack, ref_key

    store = open_store(node_dir, readonly=True)
    try:
        reader = IndexReader(store)   # a table this node never wrote reads as empty

        def load_state(ref: StateRef, unconsumed: bool) -> Optional[ContractState]:
            if unconsumed:
                raw = reader.get("vault_states", ref_key(ref))
                if raw is not None:
                    return _unpack(raw).state
            raw = reader.get("vault_txs", ref.tx_id.value)
            if raw is None:
                return None
            outputs = _unpack(raw).tx.outputs
            return outputs[ref.index] if ref.index < len(outputs) else None

        def notary_of(ref: StateRef) -> bytes:
            raw = reader.get("vault_txs", ref.tx_id.value)
            notary = _unpack(raw).tx.notary if raw is not None else None
            return notary.owning_key if notary is not None else b""

        return QueryEngine(reader, load_state, lambda rkey: consumed_us(reader.get("vault_consumed", rkey)),
                           notary_of).query(criteria, paging, sort)
    finally:
        store.close()


# ---------------------------------------------------------------------------- text forms
def state_class(path: str, known: Iterable[str], import_modules: bool = True) -> type:
    """The state class ``module:Class`` names. A class this vault has recorded states of
    always resolves; another is imported only when ``import_modules`` (the local command
    line may; a remote caller may not make the node import modules)."""
    if not path or path in ("ContractState", "all", "*"):
        return ContractState
    module, sep, qual = path.partition(":")
    if not sep or not module or not qual:
        raise VaultQueryError(f"a state type is given as module:Class, not {path!r}")
    names = set(known)
    for candidate in (path, "greenflow." + path):  # samples.trade:X is greenflow.samples.trade:X
        if candidate in names:
            cls = load_class(candidate)
            if cls is not None:
                return cls
    if not import_modules:
        raise VaultQueryError(f"this vault holds no states of type {path}")
    from greenflow.flows.registry import resolve_module
    try:
        obj: Any = resolve_module(module)
    except Exception as exc:
        raise VaultQueryError(f"cannot import {module!r}: {exc}") from None
    for part in qual.split("."):
        found = getattr(obj, part, None)
        if found is None:
            raise VaultQueryError(f"module {module} has no class {qual!r}")
        obj = found
    if not (isinstance(obj, type) and issubclass(obj, ContractState)):
        raise VaultQueryError(f"{path} is not a ContractState class")
    return obj


def _text(state: Any) -> Optional[str]:
    """The state as its class writes it for people (its own ``__str__``), if it has one."""
    if type(state).__str__ is object.__str__:
        return None
    try:
        return str(state)[:200]
    except Exception:  # noqa: BLE001 - an app's __str__ must not break a listing
        return None


def page_json(page: Page) -> dict:
    """A page as JSON: states as their fields (parties as names, amounts as dicts)."""
    from greenflow.rpc.server import to_json
    return {
        "total": page.total_states_available, "page_number": page.page_number,
        "page_size": page.page_size, "next_cursor": page.next_cursor,
        "states": [{"ref": str(s.ref), "type": m.contract_state_class_name, "status": m.status.value,
                    "recorded_time": m.recorded_time.isoformat() if m.recorded_time else None,
                    "consumed_time": m.consumed_time.isoformat() if m.consumed_time else None,
                    "notary": m.notary, "locked_by": m.lock_id, "state": to_json(s.state),
                    "text": _text(s.state)}
                   for s, m in zip(page.states, page.states_metadata)],
    }


def query_params(vault: Any, params: dict) -> dict:
    """A query given as text parameters (RPC's ``GET /vault/states``): ``type``
    (module:Class, one the vault holds), ``status``, ``linear_id`` and ``external_id``
    (comma-separated), ``page``, ``page_size``, ``cursor``, ``sort``, ``desc``. Returns
    `page_json`. Bad parameters raise `VaultQueryError`."""
    return page_json(vault.query_by(*_parse_params(vault, params)))


def _parse_params(vault: Any, params: dict) -> tuple[QueryCriteria, PageSpecification, Sort]:
    unknown = set(params) - {"type", "status", "linear_id", "external_id", "page", "page_size",
                             "cursor", "sort", "desc"}
    if unknown:
        raise VaultQueryError(f"unknown query parameter(s): {', '.join(sorted(unknown))}")

    def number(name: str, default: int) -> int:
        text = params.get(name)
        try:
            return default if text in (None, "") else int(text)
        except ValueError:
            raise VaultQueryError(f"{name} is a whole number, not {text!r}") from None

    def listed(name: str) -> Optional[list[str]]:
        text = params.get(name)
        return [x for x in str(text).split(",") if x] or None if text else None

    with vault._lock:
        known = sorted(vault._types)
    criteria = QueryCriteria(state_class(params.get("type", ""), known, import_modules=False),
                             _status(params.get("status") or "unconsumed"),
                             linear_ids=listed("linear_id"), external_ids=listed("external_id"))
    paging = PageSpecification(number("page", 1), number("page_size", DEFAULT_PAGE_SIZE),
                               params.get("cursor") or None)
    sort = Sort(params.get("sort") or "recorded_time",
                str(params.get("desc", "")).lower() in ("1", "true", "yes"))
    return criteria, paging, sort


def track_params(vault: Any, params: dict) -> tuple[dict, "JsonFeed"]:
    """`query_params`, tracked: the snapshot page as JSON and a feed of the updates as
    JSON (RPC's ``GET /vault/updates``; the caller closes the feed)."""
    criteria, paging, sort = _parse_params(vault, params)
    feed = vault.track_by(criteria, paging, sort)
    return page_json(feed.snapshot), JsonFeed(feed.updates)


class JsonFeed:
    """A `Feed` whose updates come out as `update_json` documents."""

    def __init__(self, feed: Feed) -> None:
        self.feed = feed

    def next(self, timeout: Optional[float] = None) -> Optional[dict]:
        update = self.feed.next(timeout)
        return None if update is None else update_json(update)

    def close(self) -> None:
        self.feed.close()


def update_json(update: VaultUpdate) -> dict:
    from greenflow.rpc.server import to_json

    def one(s: StateAndRef) -> dict:
        return {"ref": str(s.ref), "type": type_name(type(s.state)), "state": to_json(s.state)}
    return {"consumed": [one(s) for s in update.consumed], "produced": [one(s) for s in update.produced]}
