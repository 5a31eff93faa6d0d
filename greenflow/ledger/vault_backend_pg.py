"""The vault and the notary of a clustered party: several workers, one PostgreSQL.

A single node's `Vault` keeps its unconsumed states and soft locks in memory: only its
own flows change them. A clustered party's workers share one store, so here

- **states**: every worker's vault takes in what the others recorded before it answers
  a query or selects (`SharedVault._refresh`: the keys of ``vault_states`` and the
  ``vault_locks`` rows in one read; only the new states are fetched and decoded). A
  worker's own recorded and consumed states that its round has not committed yet stay as
  its flows left them. Recording and consuming are writes of the flow's group commit, as
  on a single node, so they are fenced with the flow's checkpoint.
- **soft locks** are rows (``vault_locks``: state ref -> flow id, and the database's time
  when it was taken) inserted with ``ON CONFLICT DO NOTHING`` in their own short
  transaction when a flow selects or locks: the database decides which of two flows on
  two workers gets a state; the loser picks other states. A lock is inserted only while
  the state is still unconsumed in the database (or recorded by this worker's round). It
  goes in the commit of its flow's end, as on a single node. A lock whose flow has no
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

Vault feeds (`Vault.track_by`) see only the states recorded through the worker they are
opened on.
"""
from __future__ import annotations

import itertools
import logging
import random
import threading
import time
from typing import Any, Callable, Iterator, Optional, Sequence

import psycopg
from psycopg import sql

from greenflow.errors import StoreError
from greenflow.ledger import vault_query as vq
from greenflow.ledger.notary import NotaryService
from greenflow.ledger.states import StateAndRef, StateRef
from greenflow.ledger.vault import (StatesLocked, Vault, _ref_from_key, _unpack, ref_key)

__all__ = ["STALE_LOCK_S", "SharedNotaryService", "SharedRows", "SharedVault"]

log = logging.getLogger("greenflow.ledger.vault")

#: A soft lock whose flow has no checkpoint after this long was taken by a flow that
#: never committed (its worker died in that round): it no longer holds the state.
STALE_LOCK_S = 30.0
_SEQ_BLOCK = 1000

# One statement, one snapshot: every unconsumed state's key (36 bytes each, in one value:
# no row per state to build) and every lock.
_SNAPSHOT = ("SELECT 's', string_agg(key, ''::bytea), NULL FROM app_rows "
             "WHERE tbl = 'vault_states' "
             "UNION ALL SELECT 'l', key, value FROM app_rows WHERE tbl = 'vault_locks'")
_KEY = 36
_FETCH = "SELECT key, value FROM app_rows WHERE tbl = 'vault_states' AND key = ANY(%s)"
_LOCK = """WITH want AS (SELECT k FROM unnest(%(keys)s::bytea[]) AS k ORDER BY k),
ins AS (INSERT INTO app_rows (tbl, key, value)
        SELECT 'vault_locks', w.k, %(tag)s::bytea
               || int8send((extract(epoch FROM clock_timestamp()) * 1000000)::bigint)
          FROM want w
         WHERE w.k = ANY(%(pending)s::bytea[])
            OR EXISTS (SELECT 1 FROM app_rows s WHERE s.tbl = 'vault_states' AND s.key = w.k)
        ON CONFLICT (tbl, key) DO NOTHING RETURNING key)
SELECT key FROM ins
UNION ALL
SELECT key FROM app_rows WHERE tbl = 'vault_locks' AND key = ANY(%(keys)s::bytea[])
   AND substring(value FROM 1 FOR %(n)s) = %(tag)s::bytea"""
# Locks of flows that never committed a checkpoint, taken more than %s seconds ago.
_STALE = """DELETE FROM app_rows a WHERE a.tbl = 'vault_locks' AND length(a.value) > 9
   AND ('x' || encode(substring(a.value FROM length(a.value) - 7), 'hex'))::bit(64)::bigint
       < (extract(epoch FROM clock_timestamp()) - %s) * 1000000
   AND NOT EXISTS (SELECT 1 FROM flows f WHERE f.fid = convert_from(
       substring(a.value FROM 1 FOR length(a.value) - 9), 'UTF8'))
RETURNING key"""
_CLAIM = """INSERT INTO app_rows (tbl, key, value)
SELECT 'notary_consumed', k, %(tid)s FROM unnest(%(keys)s::bytea[]) AS k ORDER BY k
ON CONFLICT (tbl, key) DO NOTHING"""
_CLAIMED = "SELECT key, value FROM app_rows WHERE tbl = 'notary_consumed' AND key = ANY(%s)"


class SharedRows:
    """A connection of its own to the party's schema, for the short transactions the
    shared vault and notary take outside the group commit (a lock must be decided by the
    database now, not when the round commits)."""

    def __init__(self, store: Any) -> None:
        self.dsn: str = store.dsn
        self.schema: str = store.schema
        self.path: str = getattr(store, "path", self.schema)
        self._conn: Optional[psycopg.Connection] = None
        self._lock = threading.Lock()

    def _connection(self) -> psycopg.Connection:
        conn = self._conn
        if conn is None or conn.closed or conn.broken:
            if conn is not None:
                conn.close()
            conn = psycopg.connect(self.dsn, autocommit=True, connect_timeout=10)
            conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(self.schema)))
            self._conn = conn
        return conn

    def run(self, what: str, fn: Callable[[psycopg.Connection], Any]) -> Any:
        """``fn(connection)``, again once on a fresh connection if the first was broken."""
        with self._lock:
            for attempt in (0, 1):
                try:
                    return fn(self._connection())
                except psycopg.OperationalError as exc:
                    conn = self._conn
                    if attempt or conn is None or not conn.broken:
                        raise StoreError(f"{what} in the PostgreSQL store {self.path} failed: "
                                         f"{exc}") from None
                except psycopg.Error as exc:
                    raise StoreError(f"{what} in the PostgreSQL store {self.path} failed: "
                                     f"{exc}") from None
        raise AssertionError("unreachable")

    def close(self) -> None:
        with self._lock:
            conn, self._conn = self._conn, None
            if conn is not None:
                conn.close()


def _lock_fid(value: bytes) -> str:
    return bytes(value).split(b"\0", 1)[0].decode("utf-8", "replace")


class SharedVault(Vault):
    """`Vault` for a worker of a clustered party (see the module doc)."""

    def __init__(self, node: Any) -> None:
        self._rows = SharedRows(node.store)
        self._pending_add: dict[bytes, int] = {}    # recorded here, not committed (stamp)
        self._pending_gone: dict[bytes, int] = {}   # consumed here, not committed
        self._seq_left = 0
        self._stale_at = 0.0
        self._local: dict[bytes, tuple[type, StateRef]] = {}   # key -> our unconsumed state
        self._ensure_sequence()
        super().__init__(node)

    # ------------------------------------------------------------------ others' changes
    def _load_locks(self, store: Any) -> None:
        """Locks are rows other workers take too: `_refresh` reads them."""
        self._refresh()

    def _refresh(self) -> None:
        store = self._node.store
        before = store.commits   # what was committed by then is in the read below
        now = time.monotonic()
        sweep = now >= self._stale_at
        if sweep:
            self._stale_at = now + 5.0

        def read(conn: psycopg.Connection) -> tuple[list, list]:
            stale = []
            if sweep:
                stale = conn.execute(_STALE, (STALE_LOCK_S,)).fetchall()
            return stale, conn.execute(_SNAPSHOT).fetchall()

        stale, rows = self._rows.run("reading the vault", read)
        if stale:
            log.warning("vault of %s: released %d soft lock(s) of flows that never committed",
                        self._node.party.name, len(stale))
        for pending in (self._pending_add, self._pending_gone):
            for key in [k for k, stamp in pending.items() if stamp < before]:
                del pending[key]
        states: set[bytes] = set()
        locks: dict[StateRef, str] = {}
        for kind, key, value in rows:
            if kind == "s":
                if key is not None:
                    blob = bytes(key)
                    states = {blob[i:i + _KEY] for i in range(0, len(blob), _KEY)}
            else:
                locks[_ref_from_key(bytes(key))] = _lock_fid(value)
        local = self._local_keys()
        # States gone from the database (consumed by another worker's commit).
        for key in [k for k in local if k not in states and k not in self._pending_add]:
            cls, ref = local.pop(key)
            self._unconsumed.get(cls, {}).pop(ref, None)
            self._free.get(cls, {}).pop(ref, None)
        # States recorded by other workers.
        new = [k for k in states if k not in local and k not in self._pending_gone]
        if new:
            fetched = self._rows.run("reading the vault",
                                     lambda c: c.execute(_FETCH, (new,)).fetchall())
            for key, raw in fetched:
                sar = _unpack(raw)
                self._unconsumed.setdefault(type(sar.state), {})[sar.ref] = sar
                self._free.setdefault(type(sar.state), {})[sar.ref] = sar
                local[bytes(key)] = (type(sar.state), sar.ref)
        # Locks: the database's, which include this worker's own (inserted at once).
        for ref in [r for r, fid in self._locks.items() if locks.get(r) != fid]:
            self._forget_lock(ref)
        for ref, fid in locks.items():
            if self._locks.get(ref) != fid:
                self._add_lock(ref, fid)

    def _local_keys(self) -> dict[bytes, tuple[type, StateRef]]:
        """Key -> (class, ref) of every state in `_unconsumed`, kept up to date by
        `_apply` and `_refresh` (built once: a refresh must not pack every key again)."""
        if not self._local and any(self._unconsumed.values()):
            self._local = {ref_key(ref): (cls, ref) for cls, by_type in self._unconsumed.items()
                           for ref in by_type}
        return self._local

    def _forget_lock(self, ref: StateRef) -> None:
        """`_drop_lock` in memory only (the row is gone already, or goes with its commit)."""
        fid = self._locks.pop(ref, None)
        if fid is None:
            return
        held = self._locks_by_flow.get(fid)
        if held is not None:
            held.discard(ref)
            if not held:
                del self._locks_by_flow[fid]
        for cls, by_type in self._unconsumed.items():
            sar = by_type.get(ref)
            if sar is not None:
                self._free.setdefault(cls, {})[ref] = sar
                break

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
        # last refresh) is consumed all the same: its row goes in this commit.
        if unseen:
            now_us = int(self._node.clock.now() * 1_000_000)
            for key in unseen:
                batch.table_delete("vault_states", key)
                if key not in self._consumed:
                    self._consumed.put(batch, key, vq.consumed_value(stx.id.value, now_us))

    # ------------------------------------------------------------------ soft locks
    def _locked_by_other(self, ref: StateRef, fid: Optional[str]) -> bool:
        owner = self._locks.get(ref)
        return owner is not None and owner != fid   # stale ones: swept by `_refresh`

    def _take(self, refs: Sequence[StateRef], fid: str) -> set[StateRef]:
        """Insert lock rows for ``refs``; those now held by ``fid`` (some may have been
        held by it already)."""
        keys = sorted({ref_key(r) for r in refs})
        if not keys:
            return set()
        tag = fid.encode() + b"\0"
        pending = [k for k in keys if k in self._pending_add]
        rows = self._rows.run("taking soft locks", lambda c: c.execute(
            _LOCK, {"keys": keys, "tag": tag, "pending": pending, "n": len(tag)}).fetchall())
        return {_ref_from_key(bytes(k)) for (k,) in rows}

    def _candidates(self, state_type: type, where: Optional[Callable[[Any], bool]],
                    index: Optional[dict] = None) -> Iterator[StateAndRef]:
        """The free states from a random point of each type's index: flows on two workers
        selecting at once would otherwise both reach for the first free state and one of
        them lose the lock and pick again (a worker's own flows see each other's locks
        in memory and never collide)."""
        if index is not self._free:
            yield from super()._candidates(state_type, where, index)
            return
        for cls, by_type in index.items():
            if issubclass(cls, state_type) and by_type:
                sars = list(by_type.values())
                start = random.randrange(len(sars))
                for sar in itertools.chain(sars[start:], sars[:start]):
                    if where is None or where(sar.state):
                        yield sar

    def _select(self, state_type: type, amount: Any, value_of: Callable[[Any], Any],
                where: Optional[Callable[[Any], bool]], fid: str) -> list[StateAndRef]:
        with self._lock:
            self._refresh()
            for _attempt in range(20):
                picked = self._pick_free(state_type, amount, value_of, where, fid)
                if picked is None:
                    picked = self._pick_scanning(state_type, amount, value_of, where, fid)
                want = [s.ref for s in picked if self._locks.get(s.ref) != fid]
                got = self._take(want, fid)
                for ref in want:
                    # Lost to a flow on another worker, or consumed there: not ours.
                    self._add_lock(ref, fid if ref in got else "(another worker)")
                if all(ref in got for ref in want):
                    return picked
                self._refresh()
            raise StatesLocked(f"{self._node.party.name}: could not lock the states selected "
                               f"for flow {fid}: other workers' flows kept taking them")

    def _soft_lock(self, refs: Sequence[StateRef], fid: str) -> None:
        with self._lock:
            self._refresh()
            want = [r for r in refs if self._locks.get(r) != fid]
            taken = [r for r in want if self._locked_by_other(r, fid)]
            if not taken:
                got = self._take(want, fid)
                taken = [r for r in want if r not in got]
                for ref in got:
                    self._add_lock(ref, fid)
            if taken:
                self._refresh()
                raise StatesLocked(f"{len(taken)} state(s) are locked by other flows: " + ", ".join(
                    f"{r} (flow {self._locks.get(r, '(consumed)')})" for r in taken[:5]))

    def _flow_is_live(self, fid: str) -> bool:
        return True   # whether a lock is stale is decided by `_refresh`'s sweep

    # ------------------------------------------------------------------ query indexes
    def _ensure_sequence(self) -> None:
        def create(conn: psycopg.Connection) -> None:
            with conn.transaction():   # workers opening at once take turns (IF NOT EXISTS races)
                conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 9))",
                             (self._rows.schema,))
                conn.execute(f"CREATE SEQUENCE IF NOT EXISTS vault_seq INCREMENT BY {_SEQ_BLOCK} "
                             f"START WITH {_SEQ_BLOCK}")
        self._rows.run("creating the vault's sequence", create)

    def _index_state(self, batch: Any, sar: StateAndRef, key: bytes, recorded_us: int) -> None:
        cls = type(sar.state)
        if cls not in self._type_keys:
            tname = vq.type_name(cls)
            if tname not in self._type_ids:
                self._type_ids[tname] = self._shared_type_id(tname)
                self._types.add(tname)
        if self._seq_left <= 0:
            start = self._rows.run("numbering vault states", lambda c: c.execute(
                "SELECT nextval('vault_seq')").fetchone()[0])
            self._next_seq, self._seq_left = int(start), _SEQ_BLOCK
        self._seq_left -= 1
        super()._index_state(batch, sar, key, recorded_us)

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


class SharedNotaryService(NotaryService):
    """`NotaryService` for a worker of a clustered notary: uniqueness decided by the
    database (see the module doc)."""

    def __init__(self, node: Any, validating: bool = False) -> None:
        super().__init__(node, validating=validating)
        self._rows = SharedRows(node.store)

    def _claim(self, inputs: Any, tid: bytes) -> list[str]:
        refs = {ref_key(r): r for r in inputs}
        if not refs:
            return []
        keys = sorted(refs)

        def claim(conn: psycopg.Connection) -> list[str]:
            with conn.transaction():
                conn.execute(_CLAIM, {"tid": tid, "keys": keys})
                rows = conn.execute(_CLAIMED, (keys,)).fetchall()
                conflicts = [f"input {refs[bytes(k)]} was already consumed by transaction "
                             f"{bytes(v).hex()}" for k, v in rows if bytes(v) != tid]
                if conflicts:
                    raise _Conflicts(conflicts)   # rolls back: nothing of this claim stays
                return []

        try:
            return self._rows.run("claiming a transaction's inputs", claim)
        except _Conflicts as exc:
            return exc.conflicts


class _Conflicts(Exception):
    def __init__(self, conflicts: list[str]) -> None:
        super().__init__("; ".join(conflicts))
        self.conflicts = conflicts
