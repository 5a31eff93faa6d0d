"""Answering a vault query from the indexes: candidates, filters, sorting and paging; the
same over a node directory's store, read-only (`read_vault`)."""
from __future__ import annotations

import base64
from heapq import merge
from typing import Any, Callable, Iterable, Optional

from greenflow.party import Party
from greenflow.ledger.states import ContractState, StateAndRef, StateRef, UniqueIdentifier
from greenflow.ledger.vault_index import (_SEQ, IndexReader, _dt, _lid_bytes, _us, consumed_us,
                                          external_prefix, load_class, type_prefix, unpack_entry)
from greenflow.ledger.vault_types import (DEFAULT_PAGE_SIZE, Page, PageSpecification,
                                          QueryCriteria, Sort, StateMetadata, StateStatus,
                                          VaultQueryError, _short)


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
        for name, value, cls in (("criteria", c, QueryCriteria), ("paging", paging, PageSpecification),
                                 ("sorting", sort, Sort)):
            if not isinstance(value, cls) and (value is not None or cls is QueryCriteria):
                raise VaultQueryError(f"{name} is a {cls.__name__}, not {_short(value)}")
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
            if num < 0:
                raise ValueError(num)
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

