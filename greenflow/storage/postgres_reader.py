"""The PostgreSQL store's reads: `PostgresReader` answers the `FlowStore` read
operations (the store binds them as its own methods, like the LMDB store does), each one
short query on the store's connection, long listings a page at a time; it also keeps the
single node's route cache, which the store's commits and expiry update."""
from __future__ import annotations

from collections import OrderedDict
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Optional

import psycopg

from greenflow.errors import StoreError
from greenflow.storage.interface import assemble_journal, load_checkpoint, load_result
from greenflow.storage.partitions import session_partition
from greenflow.storage.postgres_schema import _msg

if TYPE_CHECKING:
    from greenflow.storage.postgres_store import PostgresStore

_ROUTE_CACHE = 65536
_PAGE = 512          # rows per read of a long listing (short transactions, bounded memory)

#: The store operations each reader answers (bound onto the store by name).
READS = ("header_blob", "checkpoint", "logic_blob", "journal", "journal_with_times",
         "snapshot", "header_blobs", "checkpoints", "flow_count", "has_flow", "inbox",
         "payload", "flows_to_wake", "outbox", "timers", "result", "results",
         "result_blobs", "client", "bytes_used")
ROUTE_READS = ("route",)
TABLE_READS = ("table_get", "table_items", "table_count", "meta")


def run_reconnecting(lock: Any, connection: Callable[[], psycopg.Connection],
                     fn: Callable[[psycopg.Connection], Any], what: str, path: str) -> Any:
    """``fn(connection())`` under ``lock``, again once on a fresh connection if the first
    one broke (for reads and short statements, which a lost connection leaves undone).
    Any other error, or a second break, is a `StoreError` naming ``what`` and the store."""
    with lock:
        for attempt in (0, 1):
            conn = connection()
            try:
                return fn(conn)
            except psycopg.OperationalError as exc:
                if attempt or not conn.broken:
                    raise StoreError(f"{what} in the PostgreSQL store {path} failed: "
                                     f"{_msg(exc)}") from None
            except psycopg.Error as exc:
                raise StoreError(f"{what} in the PostgreSQL store {path} failed: "
                                 f"{_msg(exc)}") from None
    raise AssertionError("unreachable")


class PostgresReader:
    """The reads of one `PostgresStore`, on its connection and under its lock: flows,
    inboxes, outbox, timers, results. `one`, `rows` and `pages` are its collaborators'
    way to the database too."""

    def __init__(self, store: "PostgresStore") -> None:
        self.store = store

    def one(self, query: str, params: tuple) -> Optional[Any]:
        rows = self.rows(query, params)
        return rows[0][0] if rows else None

    def rows(self, query: str, params: tuple) -> list[tuple]:
        store = self.store
        return run_reconnecting(store._lock, store._connection,
                                lambda conn: conn.execute(query, params).fetchall(),
                                "read", store.path)

    def parts(self) -> Optional[list[int]]:
        """The partitions listings are limited to (None: all)."""
        owned = self.store.owned
        if owned is None:
            return None
        return sorted(owned())

    def pages(self, base: str, keys: tuple[str, ...], params: tuple = (),
               where: str = "", part: bool = True, reverse: bool = False,
               start_after: Optional[tuple] = None) -> Iterator[tuple]:
        """Rows of ``base`` (a SELECT of ``keys`` first, then the rest) in key order, a
        page per short query: a long listing neither pins a snapshot nor fills memory.
        ``start_after``: keys strictly past these only."""
        parts = self.parts() if part else None
        conds = [where] if where else []
        args: list = list(params)
        if parts is not None:
            conds.append("part = ANY(%s)")
            args.append(parts)
        after: Optional[tuple] = start_after
        keycols = "(" + ", ".join(keys) + ")" if len(keys) > 1 else keys[0]
        cmp, order = ("<", " DESC") if reverse else (">", "")
        while True:
            c = list(conds)
            a = list(args)
            if after is not None:
                marks = ", ".join(["%s"] * len(keys))
                c.append(f"{keycols} {cmp} ({marks})" if len(keys) > 1 else f"{keys[0]} {cmp} %s")
                a.extend(after)
            q = base + (" WHERE " + " AND ".join(c) if c else "") + \
                f" ORDER BY {', '.join(k + order for k in keys)} LIMIT {_PAGE}"
            rows = self.rows(q, tuple(a))
            yield from rows
            if len(rows) < _PAGE:
                return
            after = rows[-1][:len(keys)]

    # -- flows
    def header_blob(self, fid: str) -> Optional[bytes]:
        v = self.one("SELECT header FROM flows WHERE fid = %s", (fid,))
        return bytes(v) if v is not None else None

    def checkpoint(self, fid: str) -> Optional[Any]:
        raw = self.header_blob(fid)
        return load_checkpoint(raw) if raw is not None else None

    def logic_blob(self, fid: str) -> Optional[bytes]:
        v = self.one("SELECT blob FROM logic WHERE fid = %s", (fid,))
        return bytes(v) if v is not None else None

    def journal(self, fid: str, length: int) -> list:
        return self.journal_with_times(fid, length)[0]

    def journal_with_times(self, fid: str, length: int) -> tuple[list, list[Optional[float]]]:
        rows = self.rows("SELECT start, chunk FROM journal WHERE fid = %s ORDER BY start", (fid,))
        return assemble_journal(fid, ((s, bytes(c)) for s, c in rows), length)

    def snapshot(self, fid: str) -> Any:
        from greenflow import serialization
        v = self.one("SELECT blob FROM frames WHERE fid = %s", (fid,))
        return serialization.loads(bytes(v)) if v is not None else None

    def header_blobs(self, reverse: bool = False, after: Optional[str] = None,
                     party_wide: bool = False) -> Iterator[tuple[str, bytes]]:
        for fid, header in self.pages("SELECT fid, header FROM flows", ("fid",),
                                       part=not party_wide, reverse=reverse,
                                       start_after=(after,) if after is not None else None):
            yield fid, bytes(header)

    def checkpoints(self) -> Iterator[tuple[str, Any]]:
        for fid, blob in self.header_blobs():
            yield fid, load_checkpoint(blob)

    def flow_count(self) -> int:
        parts = self.parts()
        if parts is None:
            return int(self.one("SELECT count(*) FROM flows", ()))
        return int(self.one("SELECT count(*) FROM flows WHERE part = ANY(%s)", (parts,)))

    def has_flow(self, fid: str) -> bool:
        return self.one("SELECT 1 FROM flows WHERE fid = %s", (fid,)) is not None

    # -- inbox, payloads, wake
    def inbox(self, fid: str) -> list[tuple[str, int, bytes]]:
        rows = self.rows("SELECT sid, seq, data FROM inbox WHERE fid = %s ORDER BY sid, seq",
                         (fid,))
        return [(s, int(q), bytes(d)) for s, q, d in rows]

    def payload(self, fid: str, sid: str, seq: int) -> Optional[bytes]:
        v = self.one("SELECT data FROM payloads WHERE fid = %s AND sid = %s AND seq = %s",
                      (fid, sid, seq))
        return bytes(v) if v is not None else None

    def flows_to_wake(self) -> set[str]:
        parts = self.parts()
        if parts is None:
            rows = self.rows("SELECT fid FROM wake UNION SELECT DISTINCT fid FROM inbox", ())
        else:
            rows = self.rows("SELECT fid FROM wake WHERE part = ANY(%s) UNION "
                             "SELECT DISTINCT fid FROM inbox WHERE part = ANY(%s)", (parts, parts))
        return {r[0] for r in rows}

    # -- outbox, routes, timers
    def outbox(self, peer: Optional[str] = None) -> Iterator[tuple[str, bytes]]:
        where, params = ("peer = %s", (peer,)) if peer is not None else ("", ())
        for p, _s, _r, _q, data in self.pages(
                "SELECT peer, sid, to_responder, seq, data FROM outbox",
                ("peer", "sid", "to_responder", "seq"), params, where):
            yield p, bytes(data)

    def timers(self) -> Iterator[tuple[float, str]]:
        for d, fid in self.pages("SELECT deadline_us, fid FROM timers", ("deadline_us", "fid")):
            yield d / 1_000_000, fid

    # -- results and clients
    def result(self, fid: str) -> Optional[dict]:
        v = self.one("SELECT record FROM results WHERE fid = %s", (fid,))
        return load_result(bytes(v)) if v is not None else None

    def results(self) -> Iterator[tuple[str, dict]]:
        for fid, rec in self.result_blobs():
            yield fid, load_result(rec)

    def result_blobs(self, reverse: bool = False, after: Optional[str] = None
                     ) -> Iterator[tuple[str, bytes]]:
        for fid, rec in self.pages("SELECT fid, record FROM results", ("fid",), part=False,
                                    reverse=reverse,
                                    start_after=(after,) if after is not None else None):
            yield fid, bytes(rec)

    def client(self, client_id: str) -> Optional[str]:
        return self.one("SELECT fid FROM clients WHERE client_id = %s", (client_id,))

    def bytes_used(self) -> int:
        """The size of this store's tables and indexes (for metrics)."""
        return int(self.one(
            "SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0) FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = %s "
            "AND c.relkind = 'r'", (self.store.schema,)))


class RouteReader:
    """`route`, answered from memory where this store is the only writer of the routes
    asked for.

    A single node writing its schema alone (``sole_writer``: not a worker, not a reader
    beside a running node) keeps the routes committed or read (bounded, oldest out) and
    the hashes of every stored route key, which the store's commits and expiry keep
    current. A clustered worker's store (``partitions``: the partitions it acts for, fixed
    for the store's life, its generation's) is the only writer of those partitions'
    routes while it holds them (a route is written with its session's partition fenced,
    see `postgres_batch`): it keeps the hashes of every stored route key, so "no such
    route" for a session of its partitions (a new initiation checked for a duplicate: one
    per responder flow) needs no round trip. A route it has is still read from the
    database (another worker's expiry may have deleted it)."""

    def __init__(self, reader: PostgresReader, sole_writer: bool,
                 partitions: Optional[Callable[[], Iterable[int]]] = None) -> None:
        self.reader = reader
        self.sole_writer = sole_writer
        self.partitions = partitions
        self._parts: Optional[frozenset[int]] = None
        self._route_cache: "OrderedDict[tuple, bytes]" = OrderedDict()
        self._route_keys: Optional[set[int]] = None

    def remember_routes(self, routes: dict) -> None:
        """Routes a commit just stored (key -> (value, expiry)), for `route` to answer."""
        keys = self._route_keys
        for k, (v, _e) in routes.items():
            if self.sole_writer:
                self._remember_route(k, v)
            if keys is not None:
                keys.add(hash(k))

    def forget_routes(self) -> None:
        """After an expiry: expired routes must read as gone."""
        self._route_cache.clear()

    def route(self, peer: str, sid: str, peer_role: int) -> Optional[bytes]:
        """Asked for every frame the node's routing cache misses, most of them for
        sessions that do not exist yet (a new initiation is checked for a duplicate): a
        round trip each, unless answered here (see the class doc)."""
        k = (peer, sid, peer_role)
        if self.sole_writer:
            v = self._route_cache.get(k)
            if v is not None:
                return v
            keys = self._route_keys
            if keys is None:
                keys = self._load_route_keys()
            if hash(k) not in keys:
                return None
        elif self.partitions is not None:
            keys = self._route_keys
            if keys is None:
                # The partitions first, then every stored key: a route of them committed
                # before this store opened is in the load, one committed after is this
                # store's own (`remember_routes`).
                self._parts = frozenset(self.partitions())
                keys = self._load_route_keys()
            if session_partition(sid) in self._parts and hash(k) not in keys:  # type: ignore[operator]
                return None
        raw = self.reader.one("SELECT value FROM routes WHERE peer = %s AND sid = %s "
                        "AND peer_role = %s", k)
        if raw is None:
            return None
        v = bytes(raw)
        if self.sole_writer:
            self._remember_route(k, v)
        return v

    def _load_route_keys(self) -> set[int]:
        keys = {hash((p, s, r)) for p, s, r in self.reader.pages(
            "SELECT peer, sid, peer_role FROM routes", ("peer", "sid", "peer_role"), part=False)}
        self._route_keys = keys
        return keys

    def _remember_route(self, k: tuple, v: bytes) -> None:
        cache = self._route_cache
        cache[k] = v
        if len(cache) > _ROUTE_CACHE:
            cache.popitem(last=False)


class TableReader:
    """Reads of named key-value rows: the apps' tables (``app_rows``) and ``meta``."""

    def __init__(self, reader: PostgresReader) -> None:
        self.reader = reader

    def table_get(self, name: str, key: bytes) -> Optional[bytes]:
        v = self.reader.one("SELECT value FROM app_rows WHERE tbl = %s AND key = %s", (name, bytes(key)))
        return bytes(v) if v is not None else None

    def table_items(self, name: str, prefix: bytes = b"", *, after: Optional[bytes] = None,
                    reverse: bool = False) -> Iterator[tuple[bytes, bytes]]:
        prefix = bytes(prefix)
        end = _successor(prefix)
        cmp, order = ("<", "DESC") if reverse else (">", "ASC")
        last = bytes(after) if after is not None else None
        while True:
            conds, args = ["tbl = %s"], [name]
            if prefix:
                conds.append("key >= %s")
                args.append(prefix)
            if end is not None:
                conds.append("key < %s")
                args.append(end)
            if last is not None:
                conds.append(f"key {cmp} %s")
                args.append(last)
            rows = self.reader.rows(f"SELECT key, value FROM app_rows WHERE {' AND '.join(conds)} "
                             f"ORDER BY key {order} LIMIT {_PAGE}", tuple(args))
            for k, v in rows:
                yield bytes(k), bytes(v)
            if len(rows) < _PAGE:
                return
            last = bytes(rows[-1][0])

    def table_count(self, name: str) -> int:
        return int(self.reader.one("SELECT count(*) FROM app_rows WHERE tbl = %s", (name,)))

    def meta(self, name: str) -> Optional[bytes]:
        v = self.reader.one("SELECT value FROM meta WHERE name = %s", (name,))
        return bytes(v) if v is not None else None


def _successor(prefix: bytes) -> Optional[bytes]:
    """The smallest byte string greater than every string starting with ``prefix``."""
    p = bytearray(prefix)
    while p:
        if p[-1] < 0xFF:
            p[-1] += 1
            return bytes(p)
        p.pop()
    return None
