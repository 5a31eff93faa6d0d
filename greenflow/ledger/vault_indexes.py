"""The vault's side of its query indexes (`greenflow.ledger.vault_index`): every state
the vault records is appended to them here, and queries are answered from them by the
`QueryEngine`, which asks back for states, notaries, consumption times and locks."""
from __future__ import annotations

from typing import Any, Callable, Optional

from greenflow.ledger.states import ContractState, LinearState, StateAndRef, StateRef, UniqueIdentifier
from greenflow.ledger.vault_engine import QueryEngine
from greenflow.ledger.vault_holdings import Holdings
from greenflow.ledger.vault_index import (_REC, _SEQ, _TID, INDEX_DBS, IndexReader, consumed_us,
                                         external_prefix, seq_key, type_name, type_prefix)


class VaultIndexes:
    """The index reader and query engine over one store, and what appending needs: the
    type ids given so far and the next sequence number."""

    def __init__(self, store: Any, holdings: Holdings,
                 transaction_of: Callable[[Any], Any], state_of: Callable[[StateRef], Any],
                 consumed_of: Callable[[bytes], Optional[bytes]],
                 lock_of: Callable[[StateRef], Optional[str]]) -> None:
        self.holdings = holdings
        self.transaction_of = transaction_of
        self.state_of = state_of
        for name in INDEX_DBS:
            store.open_table(name)
        self.reader = IndexReader(store)
        self.engine = QueryEngine(self.reader, self.load_state,
                                  lambda rkey: consumed_us(consumed_of(rkey)),
                                  self.notary_key, lock_of)
        self.type_ids = self.reader.type_ids()
        self.types = set(self.type_ids)
        self.type_keys: dict[type, tuple[Any, bytes, bool]] = {}  # class -> (type id, prefix, linear)
        self.next_seq = self.reader.next_seq()

    def backfill(self, writes: Callable[[], Any], ref_key: Callable[[StateRef], bytes]) -> None:
        """A vault recorded before the indexes existed: index what it holds (recorded
        time unknown: 0), once."""
        if not self.types and self.holdings:
            with writes() as batch:
                for sar in self.holdings.all():
                    self.index_state(batch, sar, ref_key(sar.ref), 0)

    def index_state(self, batch: Any, sar: StateAndRef, key: bytes, recorded_us: int) -> None:
        """Append ``sar`` to the type index (and the linear-id indexes, for a
        `LinearState`): every recorded state passes here, so it does little per call."""
        state = sar.state
        seq = self.next_seq
        self.next_seq = seq + 1
        cls = type(state)
        known = self.type_keys.get(cls)
        if known is None:
            tname = type_name(cls)
            tid = self.type_ids.get(tname)
            if tid is None:
                tid = self.type_ids[tname] = max(self.type_ids.values(), default=0) + 1
                self.types.add(tname)
                self.reader.put(batch, "vault_types", tname.encode(), _TID.pack(tid))
            known = self.type_keys[cls] = (tid, type_prefix(tid), issubclass(cls, LinearState))
        tid, prefix, linear = known
        entry = key + _REC.pack(recorded_us)  # see vault_index.pack_entry
        self.reader.put(batch, "vault_by_type", prefix + _SEQ.pack(seq), entry)
        if linear:
            lid = state.linear_id
            if isinstance(lid, UniqueIdentifier):
                entry += _TID.pack(tid)
                self.reader.put(batch, "vault_by_linear", seq_key(lid.id.bytes, seq), entry)
                if lid.external_id is not None:
                    self.reader.put(batch, "vault_by_external",
                                    seq_key(external_prefix(lid.external_id), seq), entry)

    def notary_key(self, ref: StateRef) -> bytes:
        stx = self.transaction_of(ref.tx_id)
        notary = stx.tx.notary if stx is not None else None
        return notary.owning_key if notary is not None else b""

    def load_state(self, ref: StateRef, unconsumed: bool) -> Optional[ContractState]:
        if unconsumed:
            sar = self.holdings.get(ref)
            if sar is not None:
                return sar.state
        found = self.state_of(ref)
        return found.state if found is not None else None
