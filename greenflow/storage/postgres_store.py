"""The node's durable store on PostgreSQL (psycopg 3): the same `FlowStore` as the LMDB
store, for a node that shares one database with other nodes or with the workers of a
clustered node.

Each party gets its own schema (``gf_`` + a hash of its public key, so every worker and
every copy of its directory finds the same one, on any machine; a store made by earlier
versions, named by a hash of the directory's absolute path, is still found; the URL may
name one with ``?schema=``). The schema records the party it belongs to (``meta``), and
a node or worker of another party is refused it. One table per concept:

| table    | key                          | other columns               |
|----------|------------------------------|-----------------------------|
| flows    | fid                          | part, header                |
| logic    | fid                          | part, blob                  |
| journal  | fid, start                   | part, chunk                 |
| frames   | fid                          | part, blob (snapshot)       |
| wake     | fid                          | part                        |
| inbox    | fid, sid, seq                | part, data                  |
| payloads | fid, sid, seq                | part, data                  |
| outbox   | peer, sid, to_responder, seq | part, data                  |
| routes   | peer, sid, peer_role         | value, expires              |
| timers   | deadline_us, fid             | part                        |
| results  | fid                          | part, record, expires       |
| clients  | client_id                    | fid, expires                |
| app_rows | tbl, key                     | value (vault, notary ...)   |
| meta     | name                         | value (format, party)       |
| leases   | part                         | owner, epoch, expires_at    |

``part`` is `partitions.partition_of` of the row's flow: a clustered worker lists only the
flows of the partitions it owns, and fences its commits on their leases.

**One commit, one transaction, one round trip.** A `Batch` is first folded in memory into
the final state of each key (the last write of a key wins; `drop_flow` forgets what the
batch wrote for that flow before it and deletes what is stored), then sent as one call of
the schema's ``gf_commit`` function: one array argument per column per kind of write
(encoded straight to PostgreSQL's binary array format), one statement per kind inside it
(``unnest`` of the arrays: a round's thousand headers are one INSERT), one implicit
transaction, one round trip. The batch's order semantics hold:
a flow dropped then started again in one batch ends started; a `put_header` is written
only if the flow's start record is stored or started earlier in the batch (not dropped
since), else refused and logged, as in the LMDB store.

**Fencing.** Given ``owned`` (partition -> epoch, from the cluster's leases), every commit
first calls ``gf_fence`` in the same transaction: it takes a shared advisory lock per
partition the batch's flow state touches (a takeover bumps the epoch holding them
exclusively: `greenflow.cluster.leases`) and raises if any is not (``owner``, that
epoch). The transaction is rolled back and `Fenced` raised: a worker that lost a
partition never commits for it again.
Delivering into another flow's inbox (``put_inbox``, ``put_payload``) and sending
(outbox) are not fenced: a worker may deliver to any partition.

Without ``owned`` (one node: the default) the store owns every partition, checks no
lease, and holds a session advisory lock on its schema so a second process opening the
same node is refused (`StoreLocked`), like the LMDB store's file lock.
"""
from __future__ import annotations

import hashlib
import logging
import os
import struct
import threading
import time
from typing import Callable, Optional
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import psycopg
from psycopg import sql

from greenflow.errors import Fenced, FlowError, StoreError, StoreLocked, StoreMissing
from greenflow.storage.interface import Batch
from greenflow.storage.partitions import PARTITIONS, partition_of
from greenflow.storage.postgres_batch import _Array, _ArrayDumper, _Plan
from greenflow.storage.postgres_party import claim_party, mark_party, refuse_second_store
from greenflow.storage.postgres_reader import (READS, ROUTE_READS, TABLE_READS, PostgresReader,
                                               RouteReader, TableReader)
from greenflow.storage.postgres_schema import (_COMMIT_CALL, _COMMIT_FUNCTION, _FENCE_STATE,
                                               _FUNCTION_HASH, _FUNCTION_KEY, _SCHEMA_SQL, _msg)

log = logging.getLogger("greenflow.store")

FORMAT_KEY = "greenflow.store-format"
FORMAT_VALUE = b"greenflow-store-postgres 1"
#: The meta records of the party a store belongs to: its name and public key.
#: The files of a node directory that hold its identity (see `greenflow.node.identity`).
_NAME_FILE, _KEY_FILE = "identity.name", "identity.key"


def path_schema(node_dir: str) -> str:
    """The schema earlier versions gave the node in ``node_dir``: a hash of its path."""
    digest = hashlib.sha256(os.path.abspath(node_dir).encode()).hexdigest()[:24]
    return f"gf_{digest}"


def party_schema(public_key: bytes) -> str:
    """The schema of the party whose public key is ``public_key``."""
    return "gf_" + hashlib.sha256(b"greenflow party store\0" + public_key).hexdigest()[:24]


def node_party(node_dir: str) -> Optional[tuple[str, bytes]]:
    """(name, public key) of the node in ``node_dir``; None where it has none yet."""
    from greenflow.keys import load_keypair
    try:
        with open(os.path.join(node_dir, _NAME_FILE), encoding="utf-8") as fh:
            name = fh.read(1025).strip()
        key = load_keypair(os.path.join(node_dir, _KEY_FILE)).public_key
    except (OSError, ValueError, FlowError):
        return None
    return (name, key) if name else None


def schema_for(node_dir: str, dsn: Optional[str] = None) -> str:
    """The schema of the node in ``node_dir``: its party's (`party_schema`), or, where
    the server at ``dsn`` holds a store made by an earlier version under the directory's
    path and none under the party's key, that one. A directory without an identity (yet)
    is named by its path."""
    party = node_party(node_dir)
    by_path = path_schema(node_dir)
    if party is None:
        return by_path
    by_key = party_schema(party[1])
    if dsn is not None and not _has_store(dsn, by_key) and _has_store(dsn, by_path):
        log.info("the store of %s is the schema %s, named by the directory's path by an "
                 "earlier version (now: %s, named by the party)", node_dir, by_path, by_key)
        return by_path
    return by_key


def _has_store(dsn: str, schema: str) -> bool:
    try:
        with psycopg.connect(dsn, autocommit=True, connect_timeout=10) as conn:
            return conn.execute("SELECT to_regclass(%s) IS NOT NULL",
                                (f'"{schema}".meta',)).fetchone()[0]
    except psycopg.Error:   # the caller's own connection says why
        return False


def split_url(url: str) -> tuple[str, Optional[str]]:
    """``url`` without greenflow's own ``schema`` parameter, and that schema (or None)."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    schema = None
    kept = []
    for k, v in query:
        if k == "schema":
            schema = v
        else:
            kept.append((k, v))
            if k == "options" and "search_path=" in v:
                schema = v.split("search_path=", 1)[1].split()[0].split(",")[0]
    return urlunsplit(parts._replace(query=urlencode(kept))), schema


def redact(url: str) -> str:
    """``url`` without its password: for messages and logs."""
    parts = urlsplit(url)
    if parts.password:
        netloc = parts.netloc.replace(":" + parts.password + "@", ":***@")
        parts = parts._replace(netloc=netloc)
    return urlunsplit(parts)


class PostgresStore:
    """A node's store in one schema of a PostgreSQL database (see the module doc).

    ``owner``/``owned``: a clustered worker's name and the partitions it holds (partition
    -> lease epoch, asked at every commit and listing); None: one node owning all.
    ``notify``: a channel to NOTIFY, at each commit that delivers into an inbox, starts a
    flow or sets a wake flag, with those partitions ("3,17"), so other workers LISTENing
    learn of new work without polling."""

    def __init__(self, dsn: str, schema: str, *, owner: Optional[str] = None,
                 owned: Optional[Callable[[], dict[int, int]]] = None, sync: bool = True,
                 readonly: bool = False, create: bool = True,
                 notify: Optional[str] = None,
                 party: Optional[tuple[str, bytes]] = None) -> None:
        if not schema or len(schema) > 63 or not schema.replace("_", "a").isalnum() \
                or schema[0].isdigit():
            raise StoreError(f"bad PostgreSQL schema name {schema!r}: letters, digits and _ "
                             "only, at most 63, not starting with a digit")
        if owned is not None and not owner:
            raise StoreError("a PostgreSQL store that owns partitions needs an owner name")
        self.dsn = dsn
        self.schema = schema
        self.path = f"{redact(dsn)} (schema {schema})"
        self.readonly = readonly
        self.owner = owner
        self.owned = owned
        self.notify = notify
        self.party = party   # (name, public key): the store must be this party's
        self.sync = sync
        self.commits = 0
        self._lock = threading.RLock()
        self._conn: Optional[psycopg.Connection] = None
        self._tables: set[str] = set()
        self._locked = False
        # A single node writing its schema alone (not a worker, not a reader beside a
        # running node) keeps a route cache: see `RouteReader`.
        self._sole_writer = owned is None and not readonly
        # Collaborators: the readers, whose read operations the store binds as its own.
        self.reader = PostgresReader(self)
        self.route_reader = RouteReader(
            self.reader, self._sole_writer,
            owned if owned is not None and not readonly else None)
        self.table_reader = TableReader(self.reader)
        for names, obj in ((READS, self.reader), (ROUTE_READS, self.route_reader),
                           (TABLE_READS, self.table_reader)):
            for name in names:
                setattr(self, name, getattr(obj, name))
        self._connect(create=create)

    @classmethod
    def for_node(cls, node_dir: str, url: str, *, sync: bool = True, readonly: bool = False,
                 create: bool = True, owner: Optional[str] = None,
                 owned: Optional[Callable[[], dict[int, int]]] = None) -> "PostgresStore":
        """The store of the node in ``node_dir`` on the server at ``url`` (its schema from
        the URL's ``?schema=``, else `schema_for`), refused if it is another party's."""
        dsn, schema = split_url(url)
        return cls(dsn, schema or schema_for(node_dir, dsn), owner=owner, owned=owned,
                   sync=sync, readonly=readonly, create=create, party=node_party(node_dir))

    # ------------------------------------------------------------------ connection
    def _connect(self, create: bool = False) -> psycopg.Connection:
        try:
            conn = psycopg.connect(self.dsn, autocommit=True, connect_timeout=10)
        except psycopg.Error as exc:
            raise StoreError(f"cannot connect to the PostgreSQL store {self.path}: "
                             f"{_msg(exc)}") from None
        conn.adapters.register_dumper(_Array, _ArrayDumper)
        try:
            exists = conn.execute(
                "SELECT to_regclass(%s) IS NOT NULL", (f'"{self.schema}".meta',)).fetchone()[0]
            if not exists:
                if self.readonly or not create:
                    raise StoreMissing(
                        f"no node store in the PostgreSQL schema {self.path}: this node "
                        "directory was initialised, so its flows, results and outbox were "
                        "there: restore the schema, or start with --new-store to start empty")
                if self.party is not None:
                    refuse_second_store(conn, self.schema, self.path, self.party)
                self._create(conn)
                if self.party is not None:
                    mark_party(conn, self.schema, self.party)
            conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(self.schema)))
            if not self.sync:
                conn.execute("SET synchronous_commit TO off")
            fmt = conn.execute("SELECT value FROM meta WHERE name = %s",
                               (FORMAT_KEY,)).fetchone()
            if fmt is None or bytes(fmt[0]) != FORMAT_VALUE:
                raise StoreError(f"the PostgreSQL schema {self.path} is not a greenflow store "
                                 f"of this version (format record {fmt and bytes(fmt[0])!r})")
            have = conn.execute("SELECT value FROM meta WHERE name = %s",
                                (_FUNCTION_KEY,)).fetchone()
            if (have is None or bytes(have[0]) != _FUNCTION_HASH) and not self.readonly:
                self._create(conn)      # made by another version: its functions replaced
            if self.party is not None:
                claim_party(conn, self.path, self.party, self.readonly)
            if self.owned is None and not self.readonly:
                # A connection just closed by this process (a node reopened after a power
                # cut in tests) or by a process just killed lets go of the lock when its
                # server backend notices: give it a moment.
                deadline = time.monotonic() + 3.0
                while True:
                    got = conn.execute("SELECT pg_try_advisory_lock(hashtextextended(%s, 7))",
                                       (self.schema,)).fetchone()[0]
                    if got or time.monotonic() > deadline:
                        break
                    time.sleep(0.02)
                self._locked = bool(got)
                if not got:
                    raise StoreLocked(f"the node store {self.path} is in use by another "
                                      "process (it holds the schema's advisory lock)")
        except BaseException:
            conn.close()
            raise
        self._conn = conn
        return conn

    def _create(self, conn: psycopg.Connection) -> None:
        with conn.transaction():
            # Concurrent openers of one schema (workers starting together) take turns.
            conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 8))", (self.schema,))
            conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(
                sql.Identifier(self.schema)))
            conn.execute(sql.SQL("SET LOCAL search_path TO {}").format(
                sql.Identifier(self.schema)))
            conn.execute(_SCHEMA_SQL)
            for (sig,) in conn.execute(
                    "SELECT p.oid::regprocedure::text FROM pg_proc p JOIN pg_namespace n ON "
                    "n.oid = p.pronamespace WHERE n.nspname = %s AND p.proname = 'gf_commit'",
                    (self.schema,)).fetchall():
                conn.execute(f"DROP FUNCTION {sig}")
            conn.execute(_COMMIT_FUNCTION)
            conn.execute("INSERT INTO meta VALUES (%s, %s) ON CONFLICT DO NOTHING",
                         (FORMAT_KEY, FORMAT_VALUE))
            conn.execute("INSERT INTO meta VALUES (%s, %s) ON CONFLICT (name) DO UPDATE "
                         "SET value = EXCLUDED.value", (_FUNCTION_KEY, _FUNCTION_HASH))

    def _connection(self) -> psycopg.Connection:
        conn = self._conn
        if conn is None or conn.closed or conn.broken:
            if conn is not None:
                conn.close()
            self._conn = None
            conn = self._connect()
        return conn

    def close(self) -> None:
        with self._lock:
            conn, self._conn = self._conn, None
            if conn is None:
                return
            if self._locked and not conn.closed and not conn.broken:
                try:   # released now, not when the server notices the connection went
                    conn.execute("SELECT pg_advisory_unlock(hashtextextended(%s, 7))",
                                 (self.schema,))
                except psycopg.Error:
                    pass
            self._locked = False
            conn.close()

    # ------------------------------------------------------------------ writes
    def commit(self, batch: Batch) -> None:
        """Apply ``batch`` in one transaction: one call of ``gf_commit``, one round trip."""
        if self.readonly:
            raise StoreError(f"the store {self.path} is open read-only")
        if not batch.ops:
            self.commits += 1
            return
        try:
            plan = _Plan(batch.ops)
        except (struct.error, TypeError, ValueError, AttributeError) as exc:
            # (a bug: batches check their rows; the node stops rather than fail every round)
            raise StoreError(f"commit to the PostgreSQL store {self.path} failed (nothing of "
                             f"it was applied): a value of the batch cannot be stored: "
                             f"{exc}") from None
        if plan.app:
            unknown = {t for t, _ in plan.app} - self._tables
            if unknown:
                raise StoreError(f"commit to the store {self.path} refused (nothing of it was "
                                 f"applied): table(s) {', '.join(sorted(unknown))} were never "
                                 "opened (open_table)")
        fence = self._fence(plan) if self.owned is not None else None
        args = [*(fence or (None, None, None)), self.notify, *plan.arguments()]
        with self._lock:
            conn = self._connection()
            try:
                row = psycopg.RawCursor(conn).execute(_COMMIT_CALL, args).fetchone()
            except psycopg.Error as exc:
                if getattr(exc, "sqlstate", None) == _FENCE_STATE:
                    raise Fenced(f"store {self.path}: commit refused: {_msg(exc)}") from None
                if conn.broken:
                    raise StoreError(f"commit to the PostgreSQL store {self.path}: the connection "
                                     f"was lost ({_msg(exc)}); the server may or may not have "
                                     "applied it (a restarted node goes on from what it "
                                     "stored)") from None
                raise StoreError(f"commit to the PostgreSQL store {self.path} failed (nothing "
                                 f"of it was applied): {_msg(exc)}") from None
            except (struct.error, TypeError, ValueError, AttributeError) as exc:
                raise StoreError(f"commit to the PostgreSQL store {self.path} failed (nothing "
                                 f"of it was applied): a value of the batch cannot be stored: "
                                 f"{exc}") from None
        self.commits += 1
        if plan.routes:
            self.route_reader.remember_routes(plan.routes)
        refused = plan.refused + list(row[0] or ())
        for fid in refused:
            log.error("store %s: refused the checkpoint header of flow %s: its start record is "
                      "not in the store (the flow ended or never started); please file a bug",
                      self.path, fid)

    def _fence(self, plan: _Plan) -> tuple[_Array, _Array, str]:
        owned = self.owned() if self.owned is not None else {}
        parts = sorted({partition_of(f) for f in plan.fenced_parts})
        lost = [p for p in parts if p not in owned]
        if lost:
            raise Fenced(f"store {self.path}: commit refused: {self.owner} does not own "
                         f"partition(s) {lost[:10]}")
        return (_Array("integer", tuple(parts)), _Array("bigint", tuple(owned[p] for p in parts)),
                self.owner or "")

    def expire(self, before: float, limit: int = 10_000) -> int:
        """Delete results, routes and client ids whose time passed (at most ``limit``).

        A clustered worker's sweep reaches every partition of the party, so it goes by the
        database's clock where that is earlier than its own: a worker whose clock ran 8
        days ahead deleted the whole party's results and client ids, and clients' retries
        of those ids ran their flows again."""
        if self.readonly:
            return 0
        done = 0
        cutoff = "LEAST(%s, extract(epoch FROM clock_timestamp()))" if self.owner else "%s"
        with self._lock:
            conn = self._connection()
            try:
                with conn.transaction():
                    for table, cols in (("results", "fid"), ("routes", "peer, sid, peer_role"),
                                        ("clients", "client_id")):
                        if done >= limit:
                            break
                        cur = conn.execute(
                            f"DELETE FROM {table} WHERE ({cols}) IN (SELECT {cols} FROM {table} "
                            f"WHERE expires < {cutoff} ORDER BY expires LIMIT %s)",
                            (before, limit - done))
                        done += cur.rowcount
            except psycopg.Error as exc:
                raise StoreError(f"expiry in the PostgreSQL store {self.path} failed: "
                                 f"{_msg(exc)}") from None
        if done:
            self.route_reader.forget_routes()
        return done
    # -- app tables
    def open_table(self, name: str) -> None:
        if not isinstance(name, str) or not name or "\0" in name:
            raise ValueError(f"bad table name {name!r}")
        self._tables.add(name)

    def has_table(self, name: str) -> bool:
        return name in self._tables


    # -- for tools and tests
    def drop_schema(self) -> None:
        """Delete this store's schema and everything in it (tests, ``--new-store``)."""
        with self._lock:
            conn = self._connection()
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(
                sql.Identifier(self.schema)))


__all__ = ["PostgresStore", "redact", "schema_for", "split_url", "PARTITIONS", "partition_of"]
