"""The query side of a `Vault`: its indexes by type, linear id and external id, the
engine that answers `Vault.query_by` from them, and the feeds `Vault.track_by` opened.

A collaborator of the vault, so that the clustered vault
(`vault_backend_pg.SharedVault`) can number states and types party-wide in its own
subclass while the vault keeps one way of recording them."""
from __future__ import annotations

from typing import Any, Optional

from greenflow.ledger import vault_query as vq
from greenflow.ledger.states import ContractState, LinearState, StateAndRef, StateRef, UniqueIdentifier
from greenflow.ledger.vault_query import Feed, StateStatus, VaultUpdate

__all__ = ["VaultFeeds", "VaultIndexes"]


class VaultIndexes:
    def __init__(self, vault: Any, store: Any) -> None:
        self.vault = vault
        for name in vq.INDEX_DBS:
            store.open_table(name)
        self.index = vq.IndexReader(store)
        self.engine = vq.QueryEngine(self.index, self.load_state,
                                     lambda rkey: vq.consumed_us(vault._consumed.get(rkey)),
                                     self.notary_key, vault._locks.get)
        self.type_ids = self.index.type_ids()
        self.types = set(self.type_ids)
        self.type_keys: dict[type, tuple] = {}  # class -> (type id, index prefix, linear)
        self.next_seq = self.index.next_seq()

    def known_types(self, wanted: str = "") -> set[str]:
        """The names (``module:Class``) of the state types the vault has states of: the
        only ones a remote query may name (`vault_query.query_params`); ``wanted``, the
        name the query asks for (a shared vault looks further when it is not known)."""
        with self.vault._lock:
            return set(self.types)

    def index_existing(self) -> None:
        """A vault recorded before the indexes existed: index what it holds (recorded
        time unknown: 0), once."""
        from greenflow.ledger.vault import ref_key
        if not self.types and self.vault._unconsumed:
            with self.vault._node.services.writes() as batch:
                for by_type in self.vault._unconsumed.values():
                    for sar in by_type.values():
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
            tname = vq.type_name(cls)
            tid = self.type_ids.get(tname)
            if tid is None:
                tid = self.type_ids[tname] = max(self.type_ids.values(), default=0) + 1
                self.types.add(tname)
                self.index.put(batch, "vault_types", tname.encode(), vq._TID.pack(tid))
            known = self.type_keys[cls] = (tid, vq.type_prefix(tid), issubclass(cls, LinearState))
        tid, prefix, linear = known
        entry = key + vq._REC.pack(recorded_us)  # see vault_query.pack_entry
        self.index.put(batch, "vault_by_type", prefix + vq._SEQ.pack(seq), entry)
        if linear:
            lid = state.linear_id
            if isinstance(lid, UniqueIdentifier):
                entry += vq._TID.pack(tid)
                self.index.put(batch, "vault_by_linear", vq.seq_key(lid.id.bytes, seq), entry)
                if lid.external_id is not None:
                    self.index.put(batch, "vault_by_external",
                                   vq.seq_key(vq.external_prefix(lid.external_id), seq), entry)

    def notary_key(self, ref: StateRef) -> bytes:
        stx = self.vault.transaction(ref.tx_id)
        notary = stx.tx.notary if stx is not None else None
        return notary.owning_key if notary is not None else b""

    def load_state(self, ref: StateRef, unconsumed: bool) -> Optional[ContractState]:
        if unconsumed:
            for by_type in self.vault._unconsumed.values():
                sar = by_type.get(ref)
                if sar is not None:
                    return sar.state
        found = self.vault.state(ref)
        return found.state if found is not None else None


class VaultFeeds:
    """The open `Vault.track_by` feeds, and what each is told when states change."""

    def __init__(self, vault: Any) -> None:
        self.vault = vault
        self.feeds: list[Feed] = []

    def __bool__(self) -> bool:
        return bool(self.feeds)

    def open(self, criteria: Any) -> Feed:
        feed = Feed(criteria, self.vault._node.store, self.close, self.vault._node)
        self.feeds.append(feed)
        return feed

    def close(self, feed: Feed) -> None:
        with self.vault._lock:
            if feed in self.feeds:
                self.feeds.remove(feed)

    def publish(self, notary: Any, consumed: list[StateAndRef], produced: list[StateAndRef]) -> None:
        nkey = notary.owning_key if notary is not None else b""
        stamp = self.vault._node.store.commits
        for feed in list(self.feeds):
            offer(feed, nkey, consumed, produced, stamp)


def offer(feed: Feed, nkey: bytes, consumed: Any, produced: Any, stamp: int) -> None:
    """Give ``feed`` what its criteria select of one transaction's change (``nkey``: its
    notary's key), handed out once the store's commits pass ``stamp``."""
    c = feed.criteria
    gone = tuple(s for s in consumed if vq.update_matches(c, s, nkey))
    new = () if c.status is StateStatus.CONSUMED else tuple(
        s for s in produced if vq.update_matches(c, s, nkey))
    if gone or new:
        feed._push(VaultUpdate(gone, new), stamp)
