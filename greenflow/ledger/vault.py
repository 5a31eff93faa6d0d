"""`Vault` (``services.vault``): what a node knows of the ledger, in its own store.

| database       | key                          | value                                        |
|----------------|------------------------------|----------------------------------------------|
| vault_txs      | transaction id (32 bytes)    | the `SignedTransaction` (wire encoding)       |
| vault_states   | state ref (id + index)       | an unconsumed state of ours (`StateAndRef`)   |
| vault_consumed | state ref                    | id of the transaction that consumed it, and when (µs) |
| vault_locks    | state ref                    | id of the flow that soft-locked it            |
| vault_by_*, vault_types | see `greenflow.ledger.vault_query` | the query indexes (type, linear id, external id) |

Transactions are recorded whole: every dependency a node resolved, and every
transaction it took part in. Only states the node is a participant of enter the
unconsumed index ("relevant" states), and only when the transaction is recorded as
relevant (finality, issuance); dependencies fetched to check a history do not change
what the node holds, as in Corda.

Calls from flows are journaled (`greenflow.node.services.journaled`): a query returns on replay
what it returned live, and a write happens once, in the group commit of the flow's
checkpoint. Reads inside a flow do not see that uncommitted batch, so the indexes flows
read (unconsumed states, locks) live in memory and are rebuilt from LMDB when the node
opens.

Soft locks keep two concurrent flows from selecting the same state: `select` locks
what it picks for the calling flow, and the lock goes when the flow ends (completed,
failed or killed), in the same commit as the flow's result. A second index holds the
unconsumed states nobody has locked, so that `select` with a thousand trades in flight
takes the first free states it meets instead of stepping over every locked one (which
made a busy node's selection quadratic in the number of concurrent flows).
"""
from __future__ import annotations

import logging
import operator
import struct
import threading
from typing import Any, Callable, Iterable, Optional, Sequence, TypeVar, Union

from greenflow import wire
from greenflow.errors import FlowError, FlowException
from greenflow.node.services import journaled, register_service_factory
from greenflow.runtime.traps import current_runtime_or_none
from greenflow.ledger.app_db import AppDb
from greenflow.ledger.crypto import SecureHash
from greenflow.ledger.states import ContractState, StateAndRef, StateRef
from greenflow.ledger.stored_form import module_prefix, unpack
from greenflow.ledger.transactions import SignedTransaction
from greenflow.ledger import vault_query as vq
from greenflow.ledger.vault_indexes import VaultFeeds, VaultIndexes
from greenflow.ledger.vault_locks import SoftLocks, calling_flow, candidates
from greenflow.ledger.vault_query import (DataFeed, Feed, Page, PageSpecification, QueryCriteria, Sort, StateStatus,
                          VaultUpdate)

__all__ = ["DataFeed", "Feed", "InsufficientBalance", "Page", "PageSpecification", "QueryCriteria",
           "Sort", "StateStatus", "StatesLocked", "Vault", "VaultUpdate", "ref_key"]

log = logging.getLogger("greenflow.ledger.vault")

S = TypeVar("S", bound=ContractState)
#: Decoded transactions the vault keeps in memory (the most recently used): ~5 KB each
#: for a trade's, so ~10 MB. The store holds every one; an older one is decoded again
#: when a flow asks for it (a peer resolving history). Bounded at 50,000 like the other
#: tables, a trading node grew by ~24 KB per trade towards ~250 MB.
TX_CACHE = 2_048
_INDEX = struct.Struct(">I")


class InsufficientBalance(FlowException):
    """`Vault.select` could not find enough unlocked, unconsumed states. The message says
    how much was asked, how much is free and how much other flows hold locked."""


class StatesLocked(FlowException):
    """`Vault.soft_lock` was asked for a state another running flow has locked."""


def ref_key(ref: StateRef) -> bytes:
    return ref.tx_id.value + _INDEX.pack(ref.index)


def _ref_from_key(key: bytes) -> StateRef:
    return StateRef(SecureHash(bytes(key[:32])), _INDEX.unpack(key[32:36])[0])


def _pack(obj: Any) -> bytes:
    """The stored form (`greenflow.ledger.stored_form`) of a transaction or a state."""
    if isinstance(obj, SignedTransaction):
        return obj.stored_form()
    if isinstance(obj, StateAndRef):
        return module_prefix((type(obj.state),)) + wire.encode(obj)
    return module_prefix(()) + wire.encode(obj)


_unpack = unpack


class Vault:
    """Transactions and our states, with two collaborators: `SoftLocks` (who holds
    which state, and what is free to select) and `VaultIndexes` (the query indexes and
    engine), plus the open feeds (`VaultFeeds`). The clustered vault swaps in its own
    kinds of them (``_locks_class``, ``_indexes_class``, ``_feeds_class``)."""
    _locks_class: type[SoftLocks] = SoftLocks
    _indexes_class: type[VaultIndexes] = VaultIndexes
    _feeds_class: type[VaultFeeds] = VaultFeeds

    def __init__(self, node: Any) -> None:
        self._node = node
        self._me = node.party.owning_key
        self._lock = threading.RLock()
        store = node.store
        self._txs = AppDb(store, "vault_txs", _pack, _unpack, max_cached=TX_CACHE)
        self._consumed = AppDb(store, "vault_consumed", lambda v: v, bytes)
        store.open_table("vault_states")
        store.open_table("vault_locks")
        # Complete in-memory indexes: exact state class -> ref -> state, and the locks.
        self._unconsumed: dict[type, dict[StateRef, StateAndRef]] = {}
        self._free: dict[type, dict[StateRef, StateAndRef]] = {}  # unconsumed, not locked
        self._soft = self._locks_class(self)
        self._locks = self._soft.locks    # the same dicts, read by the console and engine
        self._locks_by_flow = self._soft.by_flow
        for _, raw in store.table_items("vault_states"):
            sar = _unpack(raw)
            self._unconsumed.setdefault(type(sar.state), {})[sar.ref] = sar
            self._free.setdefault(type(sar.state), {})[sar.ref] = sar
        self._indexes = self._indexes_class(self, store)
        self._index, self._engine = self._indexes.index, self._indexes.engine
        self._types = self._indexes.types   # type names known (the JSON query checks them)
        self._feeds = self._feeds_class(self)
        self._indexes.index_existing()
        self._soft.load(store)
        node.scheduler.add_flow_end_listener(self._soft.flow_ended)

    def _refresh(self) -> None:
        """Take in what other processes sharing the store changed (a clustered party's
        other workers: see `vault_backend_pg`); one process alone has nothing to take."""

    # ------------------------------------------------------------------ transactions
    @journaled
    def record_transactions(self, stxs: Iterable[SignedTransaction], relevant: bool = True,
                            all_visible: bool = False) -> None:
        """Store verified transactions; with ``relevant``, also take the states they
        create for us (with ``all_visible``, every state they create: an observer's
        choice) into the unconsumed index and mark the inputs they consume.
        Recording the same transaction again changes nothing."""
        with self._lock, self._node.services.writes() as batch:
            for stx in stxs:
                key = stx.id.value
                if not self._txs.has(key):
                    self._txs.put(batch, key, stx)
                if relevant:
                    self._apply(batch, stx, all_visible)

    def _apply(self, batch: Any, stx: SignedTransaction, all_visible: bool = False) -> None:
        tx = stx.tx
        now_us = int(self._node.clock.now() * 1_000_000)
        consumed: list[StateAndRef] = []
        produced: list[StateAndRef] = []
        for ref in tx.inputs:
            key = ref_key(ref)
            for cls, by_type in self._unconsumed.items():
                gone = by_type.pop(ref, None)
                if gone is not None:
                    self._free.get(cls, {}).pop(ref, None)
                    batch.table_delete("vault_states", key)
                    self._consumed.put(batch, key, vq.consumed_value(stx.id.value, now_us))
                    consumed.append(gone)
                    break
        for index, state in enumerate(tx.outputs):
            if not all_visible and not any(p.owning_key == self._me for p in state.participants):
                continue
            ref = StateRef(stx.id, index)
            by_type = self._unconsumed.setdefault(type(state), {})
            key = ref_key(ref)
            if ref in by_type or key in self._consumed:
                continue
            sar = StateAndRef(state, ref)
            by_type[ref] = sar
            if ref not in self._locks:
                self._free.setdefault(type(state), {})[ref] = sar
            batch.table_put("vault_states", key, _pack(sar))
            self._indexes.index_state(batch, sar, key, now_us)
            produced.append(sar)
        if self._feeds and (consumed or produced):
            self._feeds.publish(tx.notary, consumed, produced)

    def transaction(self, tx_id: SecureHash) -> Optional[SignedTransaction]:
        """A recorded transaction (recorded transactions never change or go, so flows
        may read this without a journal entry once they know it is there)."""
        return self._txs.get(tx_id.value)

    def has_transaction(self, tx_id: SecureHash) -> bool:
        return self._txs.has(tx_id.value)

    @journaled
    def missing_transactions(self, tx_ids: Iterable[SecureHash]) -> list[SecureHash]:
        """Those of ``tx_ids`` not recorded here, in the order given."""
        return [t for t in tx_ids if not self._txs.has(t.value)]

    def state(self, ref: StateRef) -> Optional[StateAndRef]:
        """The state ``ref`` names, from the recorded transaction that created it
        (consumed or not); None when that transaction is unknown here."""
        stx = self.transaction(ref.tx_id)
        if stx is None or not 0 <= ref.index < len(stx.tx.outputs):
            return None
        return StateAndRef(stx.tx.outputs[ref.index], ref)

    def notary_of(self, ref: StateRef) -> Any:
        """The notary of the transaction that created ``ref``: the one that must notarise
        any transaction consuming it."""
        stx = self.transaction(ref.tx_id)
        if stx is None:
            raise FlowError(f"state {ref} is unknown here: its transaction was never recorded")
        return stx.tx.notary

    # ------------------------------------------------------------------ queries
    @journaled
    def query(self, state_type: type[S] = ContractState,  # type: ignore[assignment]
              where: Optional[Callable[[S], bool]] = None,
              include_locked: bool = True) -> list[StateAndRef]:
        """Our unconsumed states of ``state_type`` (subclasses included), oldest first."""
        _state_type(state_type, "query", where)
        with self._lock:
            self._refresh()
            return [sar for sar in candidates(self._unconsumed, state_type, where)
                    if include_locked or not self._soft.locked_by_other(sar.ref, None)]

    @journaled
    def query_by(self, criteria: Optional[QueryCriteria] = None, paging: Optional[PageSpecification] = None,
                 sorting: Optional[Sort] = None) -> Page:
        """The states ``criteria`` selects (by default: every unconsumed state), a page
        at a time, with their metadata and the total count. Uses the store's indexes by
        type, linear id and external id, so it reads only the states it may return.
        Without ``paging``, more results than `DEFAULT_PAGE_SIZE` is a `VaultQueryError`
        (results are never cut short silently)."""
        with self._lock:
            self._refresh()
            return self._engine.query(criteria or QueryCriteria(), paging, sorting)

    def track_by(self, criteria: Optional[QueryCriteria] = None, paging: Optional[PageSpecification] = None,
                 sorting: Optional[Sort] = None) -> DataFeed:
        """`query_by` now, and a `Feed` of every later change to states the criteria
        select (for clients and tests outside flows: a feed cannot be checkpointed).
        Close the feed when done."""
        if current_runtime_or_none() is not None:
            raise FlowError("Vault.track_by feeds clients outside flows; a flow uses query_by")
        criteria = criteria or QueryCriteria()
        with self._lock:
            feed = self._feeds.open(criteria)
            try:
                return DataFeed(self._engine.query(criteria, paging, sorting), feed)
            except BaseException:   # a query refused (VaultQueryError): no feed left open
                feed.close()
                raise

    def query_json(self, params: dict) -> dict:
        """`query_by` with text parameters, answered as JSON (``GET /vault/states``:
        see `vault_query.query_params`)."""
        return vq.query_params(self, params)

    def track_json(self, params: dict) -> tuple[dict, Any]:
        """`track_by` with text parameters: the snapshot as JSON and a feed whose
        ``next(timeout)`` gives each update as JSON (``GET /vault/updates``)."""
        return vq.track_params(self, params)

    def is_unconsumed(self, ref: StateRef) -> bool:
        with self._lock:
            self._refresh()
            return any(ref in by_type for by_type in self._unconsumed.values())

    def balance(self, state_type: type[ContractState], amount_of: str = "amount",
                where: Optional[Callable[[Any], bool]] = None) -> int:
        """Sum of ``amount_of`` over our unconsumed states of ``state_type`` (for
        reports outside flows; flows use `query`, which is journaled)."""
        _state_type(state_type, "balance", where)
        with self._lock:
            self._refresh()
            return sum(getattr(sar.state, amount_of)
                       for sar in candidates(self._unconsumed, state_type, where))

    # ------------------------------------------------------------------ soft locks
    @journaled
    def select(self, state_type: type[S], amount: Any, *,
               amount_of: Union[str, Callable[[S], Any]] = "amount",
               where: Optional[Callable[[S], bool]] = None) -> list[StateAndRef]:
        """Pick unlocked unconsumed states of ``state_type`` until their ``amount_of`` (an
        attribute name, or a function of the state) adds up to ``amount`` or more, and
        soft-lock them for the calling flow (`InsufficientBalance` when there is not
        enough). Values are ints or anything that adds and compares with ``amount``, such
        as an `Amount` of one token."""
        fid = calling_flow("Vault.select")
        _state_type(state_type, "select", where)
        if (type(amount) in (int, float) and not amount > 0) or getattr(amount, "quantity", 1) == 0:
            raise ValueError(f"Vault.select takes an amount above zero, not {amount!r}")
        value_of = amount_of if callable(amount_of) else operator.attrgetter(amount_of)
        return self._soft.select(state_type, amount, value_of, where, fid)

    def soft_lock(self, refs: Sequence[StateRef]) -> None:
        """Lock ``refs`` for the calling flow (`StatesLocked` if another flow holds one)."""
        fid = calling_flow("Vault.soft_lock")
        self._soft.soft_lock(_refs(refs, "soft_lock"), fid)

    def release(self, refs: Optional[Sequence[StateRef]] = None) -> None:
        """Release the calling flow's locks on ``refs`` (all of them by default); they go
        by themselves when the flow ends."""
        fid = calling_flow("Vault.release")
        wanted = None if refs is None else _refs(refs, "release")
        with self._lock, self._node.services.writes() as batch:
            held = self._locks_by_flow.get(fid, set())
            for ref in list(held if wanted is None else wanted):
                if self._locks.get(ref) == fid:
                    self._soft.drop(batch, ref)

    def locks(self) -> dict[StateRef, str]:
        """Every soft lock held: state ref -> flow id."""
        with self._lock:
            self._refresh()
            return dict(self._locks)

    def unconsumed_by_type(self) -> tuple[dict[str, list[StateAndRef]], dict[StateRef, str]]:
        """Every unconsumed state by its type's ``module.qualname``, and the soft locks,
        read together under the vault's lock (the operator console's vault page)."""
        with self._lock:
            self._refresh()
            by_type = {f"{t.__module__}.{t.__qualname__}": list(d.values())
                       for t, d in self._unconsumed.items() if d}
            return by_type, dict(self._locks)

    def stored_transaction(self, key: bytes) -> Optional[SignedTransaction]:
        """The transaction stored under ``key`` of the ``vault_txs`` records."""
        return self._txs.get(key)

    def locked_by(self, ref: StateRef) -> Optional[str]:
        """The flow holding ``ref`` locked, if any."""
        return self._locks.get(ref)

    def locks_of(self, flow_id: str) -> set[StateRef]:
        return set(self._locks_by_flow.get(flow_id, ()))

    def __repr__(self) -> str:
        n = sum(len(v) for v in self._unconsumed.values())
        return f"Vault({self._node.party.name}: {n} unconsumed states, {len(self._locks)} locked)"


def _open_vault(node: Any) -> Vault:
    """A clustered worker's store is shared with the party's other workers: its vault
    is the shared-backend one (`vault_backend_pg.SharedVault`); a node alone keeps this
    one, all in memory."""
    if getattr(node.store, "owned", None) is not None:
        from greenflow.ledger.vault_backend_pg import SharedVault
        return SharedVault(node)
    return Vault(node)


register_service_factory("vault", _open_vault)


def _state_type(state_type: Any, call: str, where: Any = None) -> None:
    # (any class: a mixin the app's states share, or object for every state)
    if not isinstance(state_type, type):
        raise TypeError(f"Vault.{call} takes a class of states (e.g. Cash), not "
                        f"{type(state_type).__qualname__} {state_type!r:.60}")
    if where is not None and not callable(where):
        raise TypeError(f"Vault.{call}'s where is a function of the state, not "
                        f"{type(where).__qualname__} {where!r:.60}")


def _refs(refs: Any, call: str) -> list[StateRef]:
    if isinstance(refs, (StateRef, StateAndRef, str, bytes)):
        raise TypeError(f"Vault.{call} takes a list of StateRef, not one "
                        f"{type(refs).__qualname__}")
    out = list(refs)
    for ref in out:
        if type(ref) is not StateRef:
            raise TypeError(f"Vault.{call} takes StateRefs (a StateAndRef's .ref), not "
                            f"{type(ref).__qualname__}")
    return out
