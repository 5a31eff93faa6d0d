"""The vault of a clustered party: several workers, one PostgreSQL (its notary:
`greenflow.ledger.notary_backend_pg`).

A single node's `Vault` keeps its unconsumed states and soft locks in memory: only its
own flows change them. A clustered party's workers share one store, so here

- **states**: every worker's vault takes in what the others recorded before it answers
  a query or selects (`SharedVault._refresh`). The first read takes the keys of
  ``vault_states`` and the ``vault_locks`` rows (only the new states are fetched and
  decoded); every later one reads only the change log (``vault_changes``, written by
  triggers on those rows, each row under its transaction id) for the transactions that
  committed since the previous read's snapshot, with the rows' values now. A
  worker's own recorded and consumed states that its round has not committed yet stay as
  its flows left them. Recording and consuming are writes of the flow's group commit, as
  on a single node, so they are fenced with the flow's checkpoint.
- **soft locks** are rows (``vault_locks``: state ref -> flow id, and the database's time
  when it was taken) inserted with ``ON CONFLICT DO NOTHING`` in their own short
  transaction when a flow selects or locks: the database decides which of two flows on
  two workers gets a state; the loser picks other states. A lock is inserted only while
  the state is still unconsumed in the database (or recorded by this worker's round). It
  goes in the commit of its flow's end, as on a single node, with every other lock row
  of the flow's id (taken by a run of it that never committed). A lock whose flow has no
  checkpoint and that is older than `STALE_LOCK_S` is stale (its worker died before the
  flow's first commit) and is deleted by whichever worker next looks.
- **the notary's uniqueness**: before a clustered notary signs, it claims the
  transaction's inputs in one short transaction (``notary_consumed`` rows inserted with
  ``ON CONFLICT DO NOTHING``, then read back): an input already claimed by another
  transaction is a double spend, whichever worker claimed it. A claim is durable before
  the signature leaves; asking again with the same transaction gets the same answer.
- **query indexes**: sequence numbers come from a database sequence, a block at a time,
  and state type ids from a short transaction under an advisory lock, so two workers never
  write the same index key.

- **feeds** (`Vault.track_by`): every state the party records or consumes, whichever
  worker recorded it, read from the change log while a feed is open
  (`greenflow.ledger.vault_feed_pg`).
"""
from __future__ import annotations

import logging
import time
from typing import Any, Optional, Sequence

import psycopg
from psycopg import sql

from greenflow.ledger import vault_query as vq
from greenflow.ledger.app_db import AppDb
from greenflow.ledger.states import StateAndRef, StateRef
from greenflow.ledger import vault_pg_sql as sql_
from greenflow.ledger.shared_rows import SharedRows
from greenflow.ledger.vault import Vault, _ref_from_key, _unpack, ref_key
from greenflow.ledger.vault_feed_pg import SharedFeeds
from greenflow.ledger.vault_indexes import VaultIndexes
from greenflow.ledger.vault_locks_pg import _LOST, _SharedLocks, _lock_fid

__all__ = ["STALE_LOCK_S", "SharedNotaryService", "SharedRows", "SharedVault"]

log = logging.getLogger("greenflow.ledger.vault")

#: A soft lock whose flow has no checkpoint after this long was taken by a flow that
#: never committed (its worker died in that round): it no longer holds the state.
STALE_LOCK_S = 30.0
_SEQ_BLOCK = 1000

_CHANGES_KEPT_S = 300.0
_FULL_AFTER_S = 60.0
_PRUNE = "DELETE FROM vault_changes WHERE at < clock_timestamp() - make_interval(secs => %s)"
_KEY = 36



_NOT_READ = object()


class _Prefetched(AppDb):
    """An `AppDb` that answers, for the keys of one prefetch, from that read: on a
    worker, asking whether a transaction (or a consumed marker) is there is a round trip
    each, and recording a transaction asks that of every transaction and output."""

    def __init__(self, base: AppDb) -> None:
        self.__dict__.update(base.__dict__)
        self.known: Optional[dict[bytes, Optional[bytes]]] = None

    def _read(self, key: bytes) -> Any:
        """The prefetched raw value (None: not there), or _NOT_READ when the prefetch
        did not cover ``key`` or this process has written it since."""
        known = self.known
        if known is not None and key in known and key not in self._cache:
            return known[key]
        return _NOT_READ

    def get(self, key: bytes, default: Any = None) -> Any:
        raw = self._read(key)
        if raw is _NOT_READ:
            return super().get(key, default)
        return default if raw is None else self.decode(raw)

    def has(self, key: bytes) -> bool:
        raw = self._read(key)
        return super().has(key) if raw is _NOT_READ else raw is not None

    __contains__ = has


class _SharedIndexes(VaultIndexes):
    """States and types numbered party-wide, so every worker's index entries agree."""

    def index_state(self, batch: Any, sar: StateAndRef, key: bytes, recorded_us: int) -> None:
        cls = type(sar.state)
        if cls not in self.type_keys:
            tname = vq.type_name(cls)
            if tname not in self.type_ids:
                self.type_ids[tname] = self.vault._shared_type_id(tname)
                self.types.add(tname)
        if self.vault._seq_left <= 0:
            start = self.vault._rows.run("numbering vault states", lambda c: c.execute(
                "SELECT nextval('vault_seq')").fetchone()[0])
            self.next_seq, self.vault._seq_left = int(start), _SEQ_BLOCK
        self.vault._seq_left -= 1
        super().index_state(batch, sar, key, recorded_us)

    def known_types(self, wanted: str = "") -> set[str]:
        """Also the types another worker recorded first (the party's type table), read
        only when ``wanted`` is not known here yet: not a round trip per query."""
        with self.vault._lock:
            if wanted and wanted not in self.types and "greenflow." + wanted not in self.types:
                self.types.update(self.index.type_ids())
            return set(self.types)


class SharedVault(Vault):
    """`Vault` for a worker of a clustered party (see the module doc)."""
    _locks_class = _SharedLocks
    _indexes_class = _SharedIndexes
    _feeds_class = SharedFeeds

    def __init__(self, node: Any) -> None:
        self._rows = SharedRows(node.store)
        self._pending_add: dict[bytes, int] = {}    # recorded here, not committed (stamp)
        self._pending_gone: dict[bytes, int] = {}   # consumed here, not committed
        self._inputs_known: Optional[frozenset[bytes]] = None    # inputs prefetched ...
        self._inputs_stored: frozenset[bytes] = frozenset()       # ... stored as ours
        self._seq_left = 0
        self._stale_at = 0.0
        self._local: dict[bytes, tuple[type, StateRef]] = {}   # key -> our unconsumed state
        self._snapshot: Optional[str] = None   # of the last read of the vault's rows
        self._full_at = float("-inf")          # monotonic time of the last full read
        self.refreshes = 0
        self.last_read_rows = 0
        self._pruned_at = time.monotonic()
        self._ensure_sequence()
        super().__init__(node)
        self._txs = _Prefetched(self._txs)
        self._consumed = _Prefetched(self._consumed)

    # ------------------------------------------------------------------ fewer round trips
    def _prefetch(self, txs: Sequence[bytes], consumed: Sequence[bytes] = (),
                  inputs: Sequence[bytes] = ()) -> None:
        """Read whether these transactions and consumed markers are stored, and which of
        ``inputs`` (state keys) are stored states of this party, in one round trip, for
        the lookups that follow (until `_forget_prefetch`)."""
        local = self._local_keys()
        unseen = [k for k in inputs if k not in local]
        want = [("vault_txs", k) for k in txs if k not in self._txs._cache] + \
               [("vault_consumed", k) for k in (*consumed, *unseen)
                if k not in self._consumed._cache] + \
               [("vault_states", k) for k in unseen]
        self._inputs_known = frozenset(unseen) if inputs else None
        if not want:
            self._inputs_stored = frozenset()
            return
        rows = self._rows.run("reading the vault", lambda c: c.execute(
            sql_.PREFETCH, ([t for t, _ in want], [k for _, k in want])).fetchall())
        found = {(t, bytes(k)): bytes(v) for t, k, v in rows}
        self._txs.known = {k: found.get((t, k)) for t, k in want if t == "vault_txs"}
        self._consumed.known = {k: found.get((t, k)) for t, k in want if t == "vault_consumed"}
        self._inputs_stored = frozenset(k for t, k in found if t == "vault_states")

    def _forget_prefetch(self) -> None:
        self._txs.known = self._consumed.known = None
        self._inputs_known = None

    def record_transactions(self, stxs: Any, relevant: bool = True,
                            all_visible: bool = False) -> None:
        stxs = list(stxs)
        now = time.monotonic()
        if now - self._pruned_at >= _FULL_AFTER_S:
            # A worker that records and never queries must not let the log grow.
            self._pruned_at = now
            self._rows.run("pruning the vault's change log",
                           lambda c: c.execute(_PRUNE, (_CHANGES_KEPT_S,)))
        with self._lock:
            self._prefetch([stx.id.value for stx in stxs],
                           [ref_key(StateRef(stx.id, i)) for stx in stxs
                            for i in range(len(stx.tx.outputs))] if relevant else (),
                           [ref_key(ref) for stx in stxs for ref in stx.tx.inputs]
                           if relevant else ())
            try:
                super().record_transactions(stxs, relevant, all_visible)
            finally:
                self._forget_prefetch()

    def missing_transactions(self, tx_ids: Any) -> list:
        tx_ids = list(tx_ids)
        with self._lock:
            self._prefetch([t.value for t in tx_ids])
            try:
                return super().missing_transactions(tx_ids)
            finally:
                self._forget_prefetch()

    # ------------------------------------------------------------------ others' changes
    def _can_fold(self) -> bool:
        """Whether the next read may be the change log's alone, so that it can go in the
        lock's statement (`_take` with ``refresh``): not a first or full read, and not
        the stale-lock sweep's turn."""
        now = time.monotonic()
        return (self._snapshot is not None and now - self._full_at < _FULL_AFTER_S
                and now < self._stale_at)

    def _refresh(self) -> None:
        """Take in what the other workers committed: all of it on the first read (and
        once a minute, a safety net), otherwise only the change log's rows written since
        the last read's snapshot, so a refresh costs what changed, not the vault's size."""
        store = self._node.store
        before = store.commits   # what was committed by then is in the read below
        now = time.monotonic()
        sweep = now >= self._stale_at
        if sweep:
            self._stale_at = now + 5.0
        prev = self._snapshot if now - self._full_at < _FULL_AFTER_S else None
        prune = prev is None and self._snapshot is not None

        def read(conn: psycopg.Connection) -> tuple[list, list]:
            stale = []
            if sweep:
                stale = conn.execute(sql_.STALE, (STALE_LOCK_S,)).fetchall()
            if prune:
                conn.execute(_PRUNE, (_CHANGES_KEPT_S,))
            if prev is None:
                return stale, conn.execute(sql_.SNAPSHOT).fetchall()
            return stale, conn.execute(sql_.CHANGES, {"s": prev}).fetchall()

        stale, rows = self._rows.run("reading the vault", read)
        if stale:
            log.warning("vault of %s: released %d soft lock(s) of flows that never committed",
                        self._node.party.name, len(stale))
        self._forget_pending(before)
        self.last_read_rows = len(rows)
        if prev is None:
            self._full_at = now
            self._take_in_all(rows)
        else:
            self._take_in_changes(rows)
        self.refreshes += 1

    def _forget_pending(self, before: int) -> None:
        """What this worker's commits up to ``before`` recorded or consumed is in the
        database, so in a read taken after them."""
        for pending in (self._pending_add, self._pending_gone):
            for key in [k for k, stamp in pending.items() if stamp < before]:
                del pending[key]

    def _take_in_all(self, rows: list) -> None:
        states: set[bytes] = set()
        locks: dict[StateRef, str] = {}
        for kind, key, value in rows:
            if kind == "x":
                self._snapshot = bytes(key).decode()
            elif kind == "s":
                if key is not None:
                    blob = bytes(key)
                    states = {blob[i:i + _KEY] for i in range(0, len(blob), _KEY)}
            else:
                locks[_ref_from_key(bytes(key))] = _lock_fid(value)
        local = self._local_keys()
        # States gone from the database (consumed by another worker's commit).
        for key in [k for k in local if k not in states and k not in self._pending_add]:
            self._gone(key)
        # States recorded by other workers.
        new = [k for k in states if k not in local and k not in self._pending_gone]
        if new:
            fetched = self._rows.run("reading the vault",
                                     lambda c: c.execute(sql_.FETCH, (new,)).fetchall())
            for key, raw in fetched:
                self._seen(bytes(key), raw)
        # Locks: the database's, which include this worker's own (inserted at once).
        for ref in [r for r, fid in self._locks.items() if locks.get(r) != fid]:
            self._soft.forget(ref)
        for ref, fid in locks.items():
            if self._locks.get(ref) != fid:
                self._soft.add(ref, fid)

    def _take_in_changes(self, rows: list) -> None:
        local = self._local_keys()
        for kind, key, value in rows:
            if kind == "x":
                self._snapshot = bytes(key).decode()
                continue
            key = bytes(key)
            if kind == "s":
                if value is None:
                    if key in local and key not in self._pending_add:
                        self._gone(key)
                elif key not in local and key not in self._pending_gone:
                    self._seen(key, value)
            else:
                ref = _ref_from_key(key)
                fid = None if value is None else _lock_fid(value)
                if self._locks.get(ref) != fid:
                    self._soft.forget(ref)
                    if fid is not None:
                        self._soft.add(ref, fid)

    def _gone(self, key: bytes) -> None:
        cls, ref = self._local.pop(key)
        self._unconsumed.get(cls, {}).pop(ref, None)
        self._free.get(cls, {}).pop(ref, None)
        if self._locks.get(ref) == _LOST:
            self._soft.forget(ref)

    def _seen(self, key: bytes, raw: Any) -> None:
        sar = _unpack(raw)
        self._unconsumed.setdefault(type(sar.state), {})[sar.ref] = sar
        if sar.ref not in self._locks:
            self._free.setdefault(type(sar.state), {})[sar.ref] = sar
        self._local[key] = (type(sar.state), sar.ref)

    def _local_keys(self) -> dict[bytes, tuple[type, StateRef]]:
        """Key -> (class, ref) of every state in `_unconsumed`, kept up to date by
        `_apply` and `_refresh` (built once: a refresh must not pack every key again)."""
        if not self._local and any(self._unconsumed.values()):
            self._local = {ref_key(ref): (cls, ref) for cls, by_type in self._unconsumed.items()
                           for ref in by_type}
        return self._local

    def _apply(self, batch: Any, stx: Any, all_visible: bool = False) -> None:
        stamp = self._node.store.commits
        unseen = []
        for ref in stx.tx.inputs:
            key = ref_key(ref)
            self._pending_gone[key] = stamp
            if not any(ref in by_type for by_type in self._unconsumed.values()):
                unseen.append(key)
        outputs = [(ref_key(StateRef(stx.id, i)), type(s), StateRef(stx.id, i))
                   for i, s in enumerate(stx.tx.outputs)]
        for key, _, _ in outputs:
            self._pending_add[key] = stamp
        local = self._local_keys()
        super()._apply(batch, stx, all_visible)
        for ref in stx.tx.inputs:
            local.pop(ref_key(ref), None)
        for key, cls, ref in outputs:
            if ref in self._unconsumed.get(cls, ()):
                local[key] = (cls, ref)
        # An input this worker has not seen yet (recorded by another worker since its
        # last refresh) is consumed all the same: its row goes in this commit. Which of
        # them are this party's states at all was read with the recording's prefetch
        # (another party's input is not ours to mark).
        known = self._inputs_known
        if known is not None:
            unseen = [k for k in unseen if k not in known or k in self._inputs_stored]
        if unseen:
            now_us = int(self._node.clock.now() * 1_000_000)
            for key in unseen:
                batch.table_delete("vault_states", key)
                if key not in self._consumed:
                    self._consumed.put(batch, key, vq.consumed_value(stx.id.value, now_us))

    # ------------------------------------------------------------------ soft locks
    def _take(self, refs: Sequence[StateRef], fid: str) -> set[StateRef]:
        """Insert lock rows for ``refs``; those now held by ``fid`` (some may have been
        held by it already)."""
        keys = sorted({ref_key(r) for r in refs})
        if not keys:
            return set()
        tag = fid.encode() + b"\0"
        pending = [k for k in keys if k in self._pending_add]
        rows = self._rows.run("taking soft locks", lambda c: c.execute(
            sql_.LOCK, {"keys": keys, "tag": tag, "pending": pending, "n": len(tag)}).fetchall())
        return {_ref_from_key(bytes(k)) for (k,) in rows}

    def _take_and_read(self, refs: Sequence[StateRef], fid: str) -> tuple[set[StateRef], list]:
        """`_take` and a refresh (`_can_fold` must hold) in one statement: the refs now
        held by ``fid``, and the change rows for `_take_in_changes` (the caller takes
        them in after noting its locks)."""
        keys = sorted({ref_key(r) for r in refs})
        tag = fid.encode() + b"\0"
        pending = [k for k in keys if k in self._pending_add]
        before = self._node.store.commits   # what was committed by then is in the read
        rows = self._rows.run("taking soft locks", lambda c: c.execute(
            sql_.LOCK_AND_CHANGES, {"keys": keys, "tag": tag, "pending": pending,
                                    "n": len(tag), "s": self._snapshot}).fetchall())
        self._forget_pending(before)
        got = {_ref_from_key(bytes(k)) for kind, k, _ in rows if kind == "k"}
        changes = [r for r in rows if r[0] != "k"]
        self.last_read_rows = len(changes)
        self.refreshes += 1
        return got, changes

    # ------------------------------------------------------------------ query indexes
    def _ensure_sequence(self) -> None:
        def create(conn: psycopg.Connection) -> None:
            with conn.transaction():   # workers opening at once take turns (IF NOT EXISTS races)
                conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 9))",
                             (self._rows.schema,))
                conn.execute(f"CREATE SEQUENCE IF NOT EXISTS vault_seq INCREMENT BY {_SEQ_BLOCK} "
                             f"START WITH {_SEQ_BLOCK}")
                conn.execute(sql_.CHANGE_LOG.replace(
                    "{schema}", sql.Identifier(self._rows.schema).as_string(conn)))
        self._rows.run("creating the vault's sequence", create)

    def _shared_type_id(self, tname: str) -> int:
        """The party-wide id of state type ``tname``, allocated once under a lock."""
        def allocate(conn: psycopg.Connection) -> int:
            with conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 9))",
                             (self.schema_name,))
                row = conn.execute("SELECT value FROM app_rows WHERE tbl = 'vault_types' "
                                   "AND key = %s", (tname.encode(),)).fetchone()
                if row is not None:
                    return vq._TID.unpack(bytes(row[0]))[0]
                ids = [vq._TID.unpack(bytes(v))[0] for (v,) in conn.execute(
                    "SELECT value FROM app_rows WHERE tbl = 'vault_types'").fetchall()]
                tid = max(ids, default=0) + 1
                conn.execute("INSERT INTO app_rows (tbl, key, value) VALUES "
                             "('vault_types', %s, %s)", (tname.encode(), vq._TID.pack(tid)))
                return tid
        return self._rows.run("numbering a vault state type", allocate)

    @property
    def schema_name(self) -> str:
        return self._rows.schema


# Kept importable from here, where the cluster first looked for it.
from greenflow.ledger.notary_backend_pg import SharedNotaryService  # noqa: E402,F401
