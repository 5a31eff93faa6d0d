"""The node's durable store on PostgreSQL (psycopg 3): the same `FlowStore` as the LMDB
store, for a node that shares one database with other nodes or with the workers of a
clustered node.

Each node directory gets its own schema (``gf_`` + a hash of its absolute path, unless
the URL names one with ``?schema=``), holding one table per concept:

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
| meta     | name                         | value (the format record)   |
| leases   | part                         | owner, epoch, expires_at    |

``part`` is `partitions.partition_of` of the row's flow: a clustered worker lists only the
flows of the partitions it owns, and fences its commits on their leases.

**One commit, one transaction, one round trip.** A `Batch` is first folded in memory into
the final state of each key (the last write of a key wins; `drop_flow` forgets what the
batch wrote for that flow before it and deletes what is stored), then sent as one
statement per table and kind (``unnest`` of arrays: a round's thousand headers are one
INSERT), all in pipeline mode between BEGIN and COMMIT. The batch's order semantics hold:
a flow dropped then started again in one batch ends started; a `put_header` is written
only if the flow's start record is stored or started earlier in the batch (not dropped
since), else refused and logged, as in the LMDB store.

**Fencing.** Given ``owned`` (partition -> epoch, from the cluster's leases), every commit
first calls ``gf_fence`` in the same transaction: it locks the lease rows of the
partitions the batch's flow state touches (``FOR SHARE``, so a takeover waits for the
commit) and raises if any is not (``owner``, that epoch). The transaction is rolled back
and `Fenced` raised: a worker that lost a partition never commits for it again.
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
import re
import struct
import threading
import time
from typing import Any, Callable, Iterator, Optional
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import psycopg
from psycopg import pq, sql
from psycopg.adapt import Dumper

from greenflow.errors import Fenced, StoreError, StoreLocked, StoreMissing
from greenflow.storage import interface as I
from greenflow.storage.interface import Batch, assemble_journal, load_checkpoint, load_result
from greenflow.storage.partitions import PARTITIONS, partition_of, session_partition

log = logging.getLogger("greenflow.store")

FORMAT_KEY = "greenflow.store-format"
FORMAT_VALUE = b"greenflow-store-postgres 1"
_PAGE = 512          # rows per read of a long listing (short transactions, bounded memory)
_FENCE_STATE = "GF409"

_SCHEMA_SQL = """
CREATE TABLE IF NOT EXISTS meta (name text COLLATE "C" PRIMARY KEY, value bytea NOT NULL);
CREATE TABLE IF NOT EXISTS flows (fid text COLLATE "C" PRIMARY KEY, part smallint NOT NULL,
    header bytea NOT NULL);
CREATE INDEX IF NOT EXISTS flows_part ON flows (part, fid);
CREATE TABLE IF NOT EXISTS logic (fid text COLLATE "C" PRIMARY KEY, part smallint NOT NULL,
    blob bytea NOT NULL);
CREATE TABLE IF NOT EXISTS journal (fid text COLLATE "C", start integer, part smallint NOT NULL,
    chunk bytea NOT NULL, PRIMARY KEY (fid, start));
CREATE TABLE IF NOT EXISTS frames (fid text COLLATE "C" PRIMARY KEY, part smallint NOT NULL,
    blob bytea NOT NULL);
CREATE TABLE IF NOT EXISTS wake (fid text COLLATE "C" PRIMARY KEY, part smallint NOT NULL);
CREATE TABLE IF NOT EXISTS inbox (fid text COLLATE "C", sid text COLLATE "C", seq bigint,
    part smallint NOT NULL, data bytea NOT NULL, PRIMARY KEY (fid, sid, seq));
CREATE INDEX IF NOT EXISTS inbox_part ON inbox (part);
CREATE TABLE IF NOT EXISTS payloads (fid text COLLATE "C", sid text COLLATE "C", seq bigint,
    part smallint NOT NULL, data bytea NOT NULL, PRIMARY KEY (fid, sid, seq));
CREATE TABLE IF NOT EXISTS outbox (peer text COLLATE "C", sid text COLLATE "C",
    to_responder boolean, seq bigint, part smallint NOT NULL, data bytea NOT NULL,
    PRIMARY KEY (peer, sid, to_responder, seq));
CREATE TABLE IF NOT EXISTS routes (peer text COLLATE "C", sid text COLLATE "C",
    peer_role smallint, value bytea NOT NULL, expires double precision,
    PRIMARY KEY (peer, sid, peer_role));
CREATE INDEX IF NOT EXISTS routes_expires ON routes (expires) WHERE expires IS NOT NULL;
CREATE TABLE IF NOT EXISTS timers (deadline_us bigint, fid text COLLATE "C",
    part smallint NOT NULL, PRIMARY KEY (deadline_us, fid));
CREATE TABLE IF NOT EXISTS results (fid text COLLATE "C" PRIMARY KEY, part smallint NOT NULL,
    record bytea NOT NULL, expires double precision);
CREATE INDEX IF NOT EXISTS results_expires ON results (expires) WHERE expires IS NOT NULL;
CREATE TABLE IF NOT EXISTS clients (client_id text COLLATE "C" PRIMARY KEY,
    fid text NOT NULL, expires double precision);
CREATE INDEX IF NOT EXISTS clients_expires ON clients (expires) WHERE expires IS NOT NULL;
CREATE TABLE IF NOT EXISTS app_rows (tbl text COLLATE "C", key bytea, value bytea NOT NULL,
    PRIMARY KEY (tbl, key));
CREATE TABLE IF NOT EXISTS leases (part integer PRIMARY KEY, owner text,
    epoch bigint NOT NULL DEFAULT 0, expires_at timestamptz);
CREATE OR REPLACE FUNCTION gf_fence(parts integer[], epochs bigint[], who text)
RETURNS void LANGUAGE plpgsql AS $fence$
DECLARE bad integer[];
BEGIN
    PERFORM 1 FROM leases WHERE part = ANY(parts) FOR SHARE;
    SELECT array_agg(w.p ORDER BY w.p) INTO bad
      FROM unnest(parts, epochs) AS w(p, e) LEFT JOIN leases l ON l.part = w.p
     WHERE l.part IS NULL OR l.owner IS DISTINCT FROM who OR l.epoch <> w.e;
    IF bad IS NOT NULL THEN
        RAISE EXCEPTION 'partitions % are not owned by % at the epochs it holds', bad, who
              USING ERRCODE = 'GF409';
    END IF;
END
$fence$;
"""

# ---------------------------------------------------------------------------- statements
_DROP = """WITH d AS (SELECT unnest(%b::text[]) AS f),
 a AS (DELETE FROM flows USING d WHERE fid = d.f), b AS (DELETE FROM logic USING d WHERE fid = d.f),
 c AS (DELETE FROM journal USING d WHERE fid = d.f), e AS (DELETE FROM frames USING d WHERE fid = d.f),
 g AS (DELETE FROM wake USING d WHERE fid = d.f), h AS (DELETE FROM inbox USING d WHERE fid = d.f)
 DELETE FROM payloads USING d WHERE fid = d.f"""
_DEL_INBOX = ("DELETE FROM inbox WHERE (fid, sid, seq) IN "
              "(SELECT * FROM unnest(%b::text[], %b::text[], %b::bigint[]))")
_DEL_OUTBOX = ("DELETE FROM outbox WHERE (peer, sid, to_responder, seq) IN "
               "(SELECT * FROM unnest(%b::text[], %b::text[], %b::boolean[], %b::bigint[]))")
_DEL_TIMER = ("DELETE FROM timers WHERE (deadline_us, fid) IN "
              "(SELECT * FROM unnest(%b::bigint[], %b::text[]))")
_DEL_WAKE = "DELETE FROM wake WHERE fid = ANY(%b::text[])"
_DEL_APP = ("DELETE FROM app_rows WHERE (tbl, key) IN "
            "(SELECT * FROM unnest(%b::text[], %b::bytea[]))")
_PUT_LOGIC = ("INSERT INTO logic (fid, part, blob) SELECT * FROM unnest(%b::text[], "
              "%b::smallint[], %b::bytea[]) ON CONFLICT (fid) DO UPDATE SET blob = EXCLUDED.blob")
_PUT_HEADER_CHECKED = (
    "INSERT INTO flows (fid, part, header) SELECT t.f, t.p, t.h FROM unnest(%b::text[], "
    "%b::smallint[], %b::bytea[]) AS t(f, p, h) WHERE EXISTS (SELECT 1 FROM logic l WHERE "
    "l.fid = t.f) ON CONFLICT (fid) DO UPDATE SET header = EXCLUDED.header")
_PUT_HEADER = ("INSERT INTO flows (fid, part, header) SELECT * FROM unnest(%b::text[], "
               "%b::smallint[], %b::bytea[]) ON CONFLICT (fid) DO UPDATE SET header = EXCLUDED.header")
_PUT_JOURNAL = ("INSERT INTO journal (fid, start, part, chunk) SELECT * FROM unnest(%b::text[], "
                "%b::integer[], %b::smallint[], %b::bytea[]) "
                "ON CONFLICT (fid, start) DO UPDATE SET chunk = EXCLUDED.chunk")
_PUT_FRAMES = ("INSERT INTO frames (fid, part, blob) SELECT * FROM unnest(%b::text[], "
               "%b::smallint[], %b::bytea[]) ON CONFLICT (fid) DO UPDATE SET blob = EXCLUDED.blob")
_PUT_WAKE = ("INSERT INTO wake (fid, part) SELECT * FROM unnest(%b::text[], %b::smallint[]) "
             "ON CONFLICT (fid) DO NOTHING")
_PUT_INBOX = ("INSERT INTO inbox (fid, sid, seq, part, data) SELECT * FROM unnest(%b::text[], "
              "%b::text[], %b::bigint[], %b::smallint[], %b::bytea[]) "
              "ON CONFLICT (fid, sid, seq) DO UPDATE SET data = EXCLUDED.data")
_PUT_PAYLOAD = _PUT_INBOX.replace("inbox", "payloads")
_PUT_OUTBOX = ("INSERT INTO outbox (peer, sid, to_responder, seq, part, data) SELECT * FROM "
               "unnest(%b::text[], %b::text[], %b::boolean[], %b::bigint[], %b::smallint[], "
               "%b::bytea[]) ON CONFLICT (peer, sid, to_responder, seq) "
               "DO UPDATE SET data = EXCLUDED.data")
_PUT_ROUTE = ("INSERT INTO routes (peer, sid, peer_role, value, expires) SELECT * FROM "
              "unnest(%b::text[], %b::text[], %b::smallint[], %b::bytea[], %b::float8[]) "
              "ON CONFLICT (peer, sid, peer_role) DO UPDATE SET value = EXCLUDED.value, "
              "expires = EXCLUDED.expires")
_PUT_TIMER = ("INSERT INTO timers (deadline_us, fid, part) SELECT * FROM unnest(%b::bigint[], "
              "%b::text[], %b::smallint[]) ON CONFLICT DO NOTHING")
_PUT_RESULT = ("INSERT INTO results (fid, part, record, expires) SELECT * FROM "
               "unnest(%b::text[], %b::smallint[], %b::bytea[], %b::float8[]) ON CONFLICT (fid) "
               "DO UPDATE SET record = EXCLUDED.record, expires = EXCLUDED.expires")
_PUT_CLIENT = ("INSERT INTO clients (client_id, fid, expires) SELECT t.c, t.f, NULL FROM "
               "unnest(%b::text[], %b::text[]) AS t(c, f) ON CONFLICT (client_id) "
               "DO UPDATE SET fid = EXCLUDED.fid, expires = NULL")
_EXPIRE_CLIENT = ("UPDATE clients SET expires = t.e FROM unnest(%b::text[], %b::float8[]) "
                  "AS t(c, e) WHERE client_id = t.c")
_PUT_APP = ("INSERT INTO app_rows (tbl, key, value) SELECT * FROM unnest(%b::text[], "
            "%b::bytea[], %b::bytea[]) ON CONFLICT (tbl, key) DO UPDATE SET value = EXCLUDED.value")


# The commit's steps, in the order that keeps a batch's semantics: drops, deletes, checked
# headers (against what was stored before this batch's start records), start records,
# everything else. Each runs only when the batch has rows for it.
_STEPS: list[tuple[str, str]] = [
    ("drop", _DROP), ("del_inbox", _DEL_INBOX), ("del_outbox", _DEL_OUTBOX),
    ("del_timer", _DEL_TIMER), ("del_wake", _DEL_WAKE), ("del_app", _DEL_APP),
    ("header_checked", _PUT_HEADER_CHECKED), ("logic", _PUT_LOGIC), ("header", _PUT_HEADER),
    ("journal", _PUT_JOURNAL), ("frames", _PUT_FRAMES), ("wake", _PUT_WAKE),
    ("inbox", _PUT_INBOX), ("payload", _PUT_PAYLOAD), ("outbox", _PUT_OUTBOX),
    ("route", _PUT_ROUTE), ("timer", _PUT_TIMER), ("result", _PUT_RESULT),
    ("client", _PUT_CLIENT), ("expire_client", _EXPIRE_CLIENT), ("app", _PUT_APP),
]
_PLACEHOLDER = re.compile(r"%b::([a-z0-9]+)\[\]")
#: step -> (index of its first argument in gf_commit's array arguments, their SQL types)
_ARGS: dict[str, tuple[int, list[str]]] = {}
_n = 0
for _name, _sql in _STEPS:
    _types = _PLACEHOLDER.findall(_sql)
    _ARGS[_name] = (_n, _types)
    _n += len(_types)
_NARGS = _n


def _commit_function() -> str:
    """``gf_commit``: a whole batch in one statement (one round trip, one implicit
    transaction), its arrays NULL for steps the batch has no rows for. Returns the flow
    ids whose checked header was refused (no start record)."""
    params = ["fence_parts integer[]", "fence_epochs bigint[]", "fence_owner text"]
    body = ["IF fence_parts IS NOT NULL THEN",
            "    PERFORM gf_fence(fence_parts, fence_epochs, fence_owner);", "END IF;"]
    for name, stmt in _STEPS:
        first, types = _ARGS[name]
        names = [f"a{first + i}" for i in range(len(types))]
        params += [f"{n} {t}[]" for n, t in zip(names, types)]
        it = iter(names)
        sql_ = _PLACEHOLDER.sub(lambda m: next(it), stmt)
        body.append(f"IF {names[0]} IS NOT NULL THEN")
        if name == "header_checked":
            body.append(f"    SELECT array_agg(t.f) INTO refused FROM unnest({names[0]}) AS t(f) "
                        "WHERE NOT EXISTS (SELECT 1 FROM logic l WHERE l.fid = t.f);")
        body += [f"    {sql_};", "END IF;"]
    return ("CREATE OR REPLACE FUNCTION gf_commit(" + ", ".join(params) + ")\n"
            "RETURNS text[] LANGUAGE plpgsql AS $commit$\nDECLARE refused text[];\nBEGIN\n"
            + "\n".join(body) + "\nRETURN refused;\nEND\n$commit$;\n")


# Sent by a RawCursor ($n placeholders): psycopg does not parse a query this long each time.
_COMMIT_CALL = ("SELECT gf_commit($1::integer[], $2::bigint[], $3::text, " + ", ".join(
    f"${4 + i}::{t}[]" for i, t in enumerate(
        t for _, (_, ts) in sorted(_ARGS.items(), key=lambda kv: kv[1][0]) for t in ts)) + ")")


def _us(t: float) -> int:
    return max(0, int(t * 1_000_000))


class _Plan:
    """A batch folded into the final state of every key it writes (see the module doc)."""

    __slots__ = ("drops", "logic", "headers", "journal", "frames", "wake", "inbox", "payloads",
                 "outbox", "routes", "timers", "results", "clients", "client_exp", "app",
                 "started", "refused", "fenced_parts")

    def __init__(self, ops: list[tuple]) -> None:
        self.drops: set[str] = set()
        self.logic: dict[str, bytes] = {}
        self.headers: dict[str, tuple[bytes, bool]] = {}   # fid -> (blob, checked)
        self.journal: dict[str, dict[int, bytes]] = {}
        self.frames: dict[str, bytes] = {}
        self.wake: dict[str, bool] = {}
        self.inbox: dict[str, dict[tuple[str, int], Optional[bytes]]] = {}
        self.payloads: dict[str, dict[tuple[str, int], bytes]] = {}
        self.outbox: dict[tuple[str, str, bool, int], Optional[bytes]] = {}
        self.routes: dict[tuple[str, str, int], tuple[bytes, Optional[float]]] = {}
        self.timers: dict[tuple[int, str], bool] = {}
        self.results: dict[str, tuple[bytes, Optional[float]]] = {}
        self.clients: dict[str, str] = {}
        self.client_exp: dict[str, float] = {}
        self.app: dict[tuple[str, bytes], Optional[bytes]] = {}
        self.started: set[str] = set()      # start record written in this batch, not dropped since
        self.refused: list[str] = []
        self.fenced_parts: set[str] = set()  # flow ids whose partitions the commit must own
        for op in ops:
            self._add(op)

    def _add(self, op: tuple) -> None:
        code = op[0]
        if code == I.PUT_HEADER:
            fid = op[1]
            if fid in self.started:
                self.headers[fid] = (op[2], False)
            elif fid in self.drops:
                self.headers.pop(fid, None)
                self.refused.append(fid)
            else:
                self.headers[fid] = (op[2], True)
            self.fenced_parts.add(fid)
        elif code == I.APPEND_JOURNAL:
            self.journal.setdefault(op[1], {})[op[2]] = op[3]
            self.fenced_parts.add(op[1])
        elif code == I.PUT_OUTBOX:
            self.outbox[(op[1], op[2], bool(op[3]), op[4])] = op[5]
        elif code == I.DELETE_OUTBOX:
            self.outbox[(op[1], op[2], bool(op[3]), op[4])] = None
        elif code == I.START_FLOW:
            fid = op[1]
            self.logic[fid] = op[2]
            self.started.add(fid)
            self.fenced_parts.add(fid)
        elif code == I.PUT_SNAPSHOT:
            self.frames[op[1]] = op[2]
            self.fenced_parts.add(op[1])
        elif code == I.SET_WAKE:
            self.wake[op[1]] = bool(op[2])
            self.fenced_parts.add(op[1])
        elif code == I.PUT_INBOX:
            self.inbox.setdefault(op[1], {})[(op[2], op[3])] = op[4]
        elif code == I.DELETE_INBOX:
            self.inbox.setdefault(op[1], {})[(op[2], op[3])] = None
            self.fenced_parts.add(op[1])
        elif code == I.PUT_PAYLOAD:
            self.payloads.setdefault(op[1], {})[(op[2], op[3])] = op[4]
        elif code == I.PUT_ROUTE:
            self.routes[(op[1], op[2], op[3])] = (op[4], op[5])
        elif code == I.PUT_TIMER:
            self.timers[(_us(op[1]), op[2])] = True
            self.fenced_parts.add(op[2])
        elif code == I.DELETE_TIMER:
            self.timers[(_us(op[1]), op[2])] = False
            self.fenced_parts.add(op[2])
        elif code == I.DROP_FLOW:
            fid = op[1]
            self.drops.add(fid)
            self.started.discard(fid)
            for d in (self.logic, self.headers, self.journal, self.frames, self.wake,
                      self.inbox, self.payloads):
                d.pop(fid, None)
            self.fenced_parts.add(fid)
        elif code == I.PUT_HEADER_UNCHECKED:
            self.headers[op[1]] = (op[2], False)
            self.fenced_parts.add(op[1])
        elif code == I.PUT_RESULT:
            self.results[op[1]] = (op[2], op[3])
            self.fenced_parts.add(op[1])
        elif code == I.PUT_CLIENT:
            self.clients[op[1]] = op[2]
            self.client_exp.pop(op[1], None)
        elif code == I.EXPIRE_CLIENT:
            self.client_exp[op[1]] = op[2]
        elif code == I.TABLE_PUT:
            self.app[(op[1], bytes(op[2]))] = op[3]
        elif code == I.TABLE_DELETE:
            self.app[(op[1], bytes(op[2]))] = None
        else:
            raise StoreError(f"unknown batch operation {op!r}")

    def arguments(self) -> list[Any]:
        """gf_commit's array arguments (None where the batch has nothing for a step)."""
        args: list[Any] = [None] * _NARGS
        P = partition_of

        def put(step: str, rows: list[tuple]) -> None:
            if rows:
                first, types = _ARGS[step]
                for k, (t, col) in enumerate(zip(types, zip(*rows))):
                    args[first + k] = _Array(t, col)

        if self.drops:
            put("drop", [(f,) for f in self.drops])
        put("del_inbox", [(f, s, q) for f, rows in self.inbox.items()
                          for (s, q), v in rows.items() if v is None])
        put("del_outbox", [k for k, v in self.outbox.items() if v is None])
        put("del_timer", [k for k, v in self.timers.items() if not v])
        put("del_wake", [(f,) for f, on in self.wake.items() if not on])
        put("del_app", [k for k, v in self.app.items() if v is None])
        put("header_checked", [(f, P(f), b) for f, (b, c) in self.headers.items() if c])
        put("logic", [(f, P(f), b) for f, b in self.logic.items()])
        put("header", [(f, P(f), b) for f, (b, c) in self.headers.items() if not c])
        put("journal", [(f, s, P(f), c) for f, chunks in self.journal.items()
                        for s, c in chunks.items()])
        put("frames", [(f, P(f), b) for f, b in self.frames.items()])
        put("wake", [(f, P(f)) for f, on in self.wake.items() if on])
        put("inbox", [(f, s, q, P(f), v) for f, rows in self.inbox.items()
                      for (s, q), v in rows.items() if v is not None])
        put("payload", [(f, s, q, P(f), v) for f, rows in self.payloads.items()
                        for (s, q), v in rows.items()])
        put("outbox", [(p, s, r, q, _outbox_part(s, r), v)
                       for (p, s, r, q), v in self.outbox.items() if v is not None])
        put("route", [(p, s, r, v, e) for (p, s, r), (v, e) in self.routes.items()])
        put("timer", [(d, f, P(f)) for (d, f), v in self.timers.items() if v])
        put("result", [(f, P(f), b, e) for f, (b, e) in self.results.items()])
        put("client", list(self.clients.items()))
        put("expire_client", list(self.client_exp.items()))
        put("app", [(t, k, v) for (t, k), v in self.app.items() if v is not None])
        return args


# ---------------------------------------------------------------------------- arrays
# psycopg's generic list dumper inspects every element to choose a type; a commit sends
# a few dozen arrays, so they are encoded here, straight to PostgreSQL's binary array
# format (one dimension, lower bound 1), for the element type the statement declares.
_ARRAY_HEAD = struct.Struct("!iiiii")
_I32 = struct.Struct("!i")
# element type -> (element oid, array oid, encoder of one non-null element)
_ELEMENTS: dict[str, tuple[int, int, Callable[[Any], bytes]]] = {
    "text": (25, 1009, lambda v: v.encode()),
    "bytea": (17, 1001, bytes),
    "bigint": (20, 1016, struct.Struct("!q").pack),
    "integer": (23, 1007, struct.Struct("!i").pack),
    "smallint": (21, 1005, struct.Struct("!h").pack),
    "boolean": (16, 1000, lambda v: b"\x01" if v else b"\x00"),
    "float8": (701, 1022, struct.Struct("!d").pack),
}


class _Array:
    """A column of values for one ``unnest`` argument, of SQL element type ``kind``."""

    __slots__ = ("kind", "values")

    def __init__(self, kind: str, values: tuple) -> None:
        self.kind = kind
        self.values = values


class _ArrayDumper(Dumper):
    format = pq.Format.BINARY

    def get_key(self, obj: Any, format: Any) -> Any:
        return (type(obj), obj.kind)

    def upgrade(self, obj: Any, format: Any) -> "Dumper":
        d = _ArrayDumper(type(obj))
        d.oid = _ELEMENTS[obj.kind][1]
        return d

    def dump(self, obj: Any) -> bytes:
        elem_oid, _, enc = _ELEMENTS[obj.kind]
        vals = obj.values
        parts = [b""]
        nulls = 0
        pack = _I32.pack
        for v in vals:
            if v is None:
                nulls = 1
                parts.append(b"\xff\xff\xff\xff")
            else:
                b = enc(v)
                parts.append(pack(len(b)))
                parts.append(b)
        parts[0] = _ARRAY_HEAD.pack(1, nulls, elem_oid, len(vals), 1)
        return b"".join(parts)


def _outbox_part(sid: str, to_responder: bool) -> int:
    # The sending flow's partition when this side initiated the session; a responder's
    # frames are filed under the session's initiator (the flow id in the session id).
    return session_partition(sid)


def schema_for(node_dir: str) -> str:
    """The schema of the node in ``node_dir``: a hash of its absolute path."""
    digest = hashlib.sha256(os.path.abspath(node_dir).encode()).hexdigest()[:24]
    return f"gf_{digest}"


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


def _redact(url: str) -> str:
    parts = urlsplit(url)
    if parts.password:
        netloc = parts.netloc.replace(":" + parts.password + "@", ":***@")
        parts = parts._replace(netloc=netloc)
    return urlunsplit(parts)


class PostgresStore:
    """A node's store in one schema of a PostgreSQL database (see the module doc).

    ``owner``/``owned``: a clustered worker's name and the partitions it holds (partition
    -> lease epoch, asked at every commit and listing); None: one node owning all."""

    def __init__(self, dsn: str, schema: str, *, owner: Optional[str] = None,
                 owned: Optional[Callable[[], dict[int, int]]] = None, sync: bool = True,
                 readonly: bool = False, create: bool = True) -> None:
        if not schema or len(schema) > 63 or not schema.replace("_", "a").isalnum() \
                or schema[0].isdigit():
            raise StoreError(f"bad PostgreSQL schema name {schema!r}: letters, digits and _ "
                             "only, at most 63, not starting with a digit")
        if owned is not None and not owner:
            raise StoreError("a PostgreSQL store that owns partitions needs an owner name")
        self.dsn = dsn
        self.schema = schema
        self.path = f"{_redact(dsn)} (schema {schema})"
        self.readonly = readonly
        self.owner = owner
        self.owned = owned
        self.sync = sync
        self.commits = 0
        self._lock = threading.RLock()
        self._conn: Optional[psycopg.Connection] = None
        self._tables: set[str] = set()
        self._locked = False
        self._connect(create=create)

    @classmethod
    def for_node(cls, node_dir: str, url: str, *, sync: bool = True, readonly: bool = False,
                 create: bool = True, owner: Optional[str] = None,
                 owned: Optional[Callable[[], dict[int, int]]] = None) -> "PostgresStore":
        """The store of the node in ``node_dir`` on the server at ``url`` (its schema from
        the URL's ``?schema=``, else from the directory's absolute path)."""
        dsn, schema = split_url(url)
        return cls(dsn, schema or schema_for(node_dir), owner=owner, owned=owned, sync=sync,
                   readonly=readonly, create=create)

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
                self._create(conn)
            conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(self.schema)))
            if not self.sync:
                conn.execute("SET synchronous_commit TO off")
            fmt = conn.execute("SELECT value FROM meta WHERE name = %s",
                               (FORMAT_KEY,)).fetchone()
            if fmt is None or bytes(fmt[0]) != FORMAT_VALUE:
                raise StoreError(f"the PostgreSQL schema {self.path} is not a greenflow store "
                                 f"of this version (format record {fmt and bytes(fmt[0])!r})")
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
            conn.execute(_commit_function())
            conn.execute("INSERT INTO meta VALUES (%s, %s) ON CONFLICT DO NOTHING",
                         (FORMAT_KEY, FORMAT_VALUE))

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
        """Apply ``batch`` in one transaction (one round trip: pipeline mode)."""
        if self.readonly:
            raise StoreError(f"the store {self.path} is open read-only")
        if not batch.ops:
            self.commits += 1
            return
        plan = _Plan(batch.ops)
        if plan.app:
            unknown = {t for t, _ in plan.app} - self._tables
            if unknown:
                raise StoreError(f"commit to the store {self.path} refused (nothing of it was "
                                 f"applied): table(s) {', '.join(sorted(unknown))} were never "
                                 "opened (open_table)")
        fence = self._fence(plan) if self.owned is not None else None
        args = [*(fence or (None, None, None)), *plan.arguments()]
        with self._lock:
            conn = self._connection()
            try:
                row = psycopg.RawCursor(conn).execute(_COMMIT_CALL, args).fetchone()
            except psycopg.Error as exc:
                if getattr(exc, "sqlstate", None) == _FENCE_STATE:
                    raise Fenced(f"store {self.path}: commit refused: {_msg(exc)}") from None
                raise StoreError(f"commit to the PostgreSQL store {self.path} failed (nothing "
                                 f"of it was applied): {_msg(exc)}") from None
            except (struct.error, TypeError, ValueError, AttributeError) as exc:
                raise StoreError(f"commit to the PostgreSQL store {self.path} failed (nothing "
                                 f"of it was applied): a value of the batch cannot be stored: "
                                 f"{exc}") from None
        self.commits += 1
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
        """Delete results, routes and client ids whose time passed (at most ``limit``)."""
        if self.readonly:
            return 0
        done = 0
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
                            f"WHERE expires < %s ORDER BY expires LIMIT %s)",
                            (before, limit - done))
                        done += cur.rowcount
            except psycopg.Error as exc:
                raise StoreError(f"expiry in the PostgreSQL store {self.path} failed: "
                                 f"{_msg(exc)}") from None
        return done

    # ------------------------------------------------------------------ reads
    def _one(self, query: str, params: tuple) -> Optional[Any]:
        rows = self._all(query, params)
        return rows[0][0] if rows else None

    def _all(self, query: str, params: tuple) -> list[tuple]:
        with self._lock:
            for attempt in (0, 1):
                conn = self._connection()
                try:
                    return conn.execute(query, params).fetchall()
                except psycopg.OperationalError as exc:
                    if attempt or not conn.broken:
                        raise StoreError(f"read from the PostgreSQL store {self.path} failed: "
                                         f"{_msg(exc)}") from None
                except psycopg.Error as exc:
                    raise StoreError(f"read from the PostgreSQL store {self.path} failed: "
                                     f"{_msg(exc)}") from None
        raise AssertionError("unreachable")

    def _parts(self) -> Optional[list[int]]:
        """The partitions listings are limited to (None: all)."""
        if self.owned is None:
            return None
        return sorted(self.owned())

    def _pages(self, base: str, keys: tuple[str, ...], params: tuple = (),
               where: str = "", part: bool = True, reverse: bool = False) -> Iterator[tuple]:
        """Rows of ``base`` (a SELECT of ``keys`` first, then the rest) in key order, a
        page per short query: a long listing neither pins a snapshot nor fills memory."""
        parts = self._parts() if part else None
        conds = [where] if where else []
        args: list = list(params)
        if parts is not None:
            conds.append("part = ANY(%s)")
            args.append(parts)
        after: Optional[tuple] = None
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
            rows = self._all(q, tuple(a))
            yield from rows
            if len(rows) < _PAGE:
                return
            after = rows[-1][:len(keys)]

    # -- flows
    def header_blob(self, fid: str) -> Optional[bytes]:
        v = self._one("SELECT header FROM flows WHERE fid = %s", (fid,))
        return bytes(v) if v is not None else None

    def checkpoint(self, fid: str) -> Optional[Any]:
        raw = self.header_blob(fid)
        return load_checkpoint(raw) if raw is not None else None

    def logic_blob(self, fid: str) -> Optional[bytes]:
        v = self._one("SELECT blob FROM logic WHERE fid = %s", (fid,))
        return bytes(v) if v is not None else None

    def journal(self, fid: str, length: int) -> list:
        return self.journal_with_times(fid, length)[0]

    def journal_with_times(self, fid: str, length: int) -> tuple[list, list[Optional[float]]]:
        rows = self._all("SELECT start, chunk FROM journal WHERE fid = %s ORDER BY start", (fid,))
        return assemble_journal(fid, ((s, bytes(c)) for s, c in rows), length)

    def snapshot(self, fid: str) -> Any:
        from greenflow import serialization
        v = self._one("SELECT blob FROM frames WHERE fid = %s", (fid,))
        return serialization.loads(bytes(v)) if v is not None else None

    def header_blobs(self, reverse: bool = False) -> Iterator[tuple[str, bytes]]:
        for fid, header in self._pages("SELECT fid, header FROM flows", ("fid",),
                                       reverse=reverse):
            yield fid, bytes(header)

    def checkpoints(self) -> Iterator[tuple[str, Any]]:
        for fid, blob in self.header_blobs():
            yield fid, load_checkpoint(blob)

    def flow_count(self) -> int:
        parts = self._parts()
        if parts is None:
            return int(self._one("SELECT count(*) FROM flows", ()))
        return int(self._one("SELECT count(*) FROM flows WHERE part = ANY(%s)", (parts,)))

    def has_flow(self, fid: str) -> bool:
        return self._one("SELECT 1 FROM flows WHERE fid = %s", (fid,)) is not None

    # -- inbox, payloads, wake
    def inbox(self, fid: str) -> list[tuple[str, int, bytes]]:
        rows = self._all("SELECT sid, seq, data FROM inbox WHERE fid = %s ORDER BY sid, seq",
                         (fid,))
        return [(s, int(q), bytes(d)) for s, q, d in rows]

    def payload(self, fid: str, sid: str, seq: int) -> Optional[bytes]:
        v = self._one("SELECT data FROM payloads WHERE fid = %s AND sid = %s AND seq = %s",
                      (fid, sid, seq))
        return bytes(v) if v is not None else None

    def flows_to_wake(self) -> set[str]:
        parts = self._parts()
        if parts is None:
            rows = self._all("SELECT fid FROM wake UNION SELECT DISTINCT fid FROM inbox", ())
        else:
            rows = self._all("SELECT fid FROM wake WHERE part = ANY(%s) UNION "
                             "SELECT DISTINCT fid FROM inbox WHERE part = ANY(%s)", (parts, parts))
        return {r[0] for r in rows}

    # -- outbox, routes, timers
    def outbox(self, peer: Optional[str] = None) -> Iterator[tuple[str, bytes]]:
        where, params = ("peer = %s", (peer,)) if peer is not None else ("", ())
        for p, _s, _r, _q, data in self._pages(
                "SELECT peer, sid, to_responder, seq, data FROM outbox",
                ("peer", "sid", "to_responder", "seq"), params, where):
            yield p, bytes(data)

    def route(self, peer: str, sid: str, peer_role: int) -> Optional[bytes]:
        v = self._one("SELECT value FROM routes WHERE peer = %s AND sid = %s AND peer_role = %s",
                      (peer, sid, peer_role))
        return bytes(v) if v is not None else None

    def timers(self) -> Iterator[tuple[float, str]]:
        for d, fid in self._pages("SELECT deadline_us, fid FROM timers", ("deadline_us", "fid")):
            yield d / 1_000_000, fid

    # -- results and clients
    def result(self, fid: str) -> Optional[dict]:
        v = self._one("SELECT record FROM results WHERE fid = %s", (fid,))
        return load_result(bytes(v)) if v is not None else None

    def results(self) -> Iterator[tuple[str, dict]]:
        for fid, rec in self.result_blobs():
            yield fid, load_result(rec)

    def result_blobs(self, reverse: bool = False) -> Iterator[tuple[str, bytes]]:
        for fid, rec in self._pages("SELECT fid, record FROM results", ("fid",), part=False,
                                    reverse=reverse):
            yield fid, bytes(rec)

    def client(self, client_id: str) -> Optional[str]:
        return self._one("SELECT fid FROM clients WHERE client_id = %s", (client_id,))

    def meta(self, name: str) -> Optional[bytes]:
        v = self._one("SELECT value FROM meta WHERE name = %s", (name,))
        return bytes(v) if v is not None else None

    # -- app tables
    def open_table(self, name: str) -> None:
        if not name or "\0" in name:
            raise ValueError(f"bad table name {name!r}")
        self._tables.add(name)

    def table_get(self, name: str, key: bytes) -> Optional[bytes]:
        v = self._one("SELECT value FROM app_rows WHERE tbl = %s AND key = %s", (name, bytes(key)))
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
            rows = self._all(f"SELECT key, value FROM app_rows WHERE {' AND '.join(conds)} "
                             f"ORDER BY key {order} LIMIT {_PAGE}", tuple(args))
            for k, v in rows:
                yield bytes(k), bytes(v)
            if len(rows) < _PAGE:
                return
            last = bytes(rows[-1][0])

    def table_count(self, name: str) -> int:
        return int(self._one("SELECT count(*) FROM app_rows WHERE tbl = %s", (name,)))

    def bytes_used(self) -> int:
        """The size of this store's tables and indexes (for metrics)."""
        return int(self._one(
            "SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0) FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = %s "
            "AND c.relkind = 'r'", (self.schema,)))

    # -- for tools and tests
    def drop_schema(self) -> None:
        """Delete this store's schema and everything in it (tests, ``--new-store``)."""
        with self._lock:
            conn = self._connection()
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(
                sql.Identifier(self.schema)))


def _successor(prefix: bytes) -> Optional[bytes]:
    """The smallest byte string greater than every string starting with ``prefix``."""
    p = bytearray(prefix)
    while p:
        if p[-1] < 0xFF:
            p[-1] += 1
            return bytes(p)
        p.pop()
    return None


def _msg(exc: BaseException) -> str:
    diag = getattr(exc, "diag", None)
    primary = getattr(diag, "message_primary", None) if diag is not None else None
    return primary or str(exc).strip() or type(exc).__name__


__all__ = ["PostgresStore", "schema_for", "split_url", "PARTITIONS", "partition_of"]
