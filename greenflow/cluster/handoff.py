"""Frames and acknowledgements that reached the wrong worker, handed to the right one.

Any worker of a clustered party may receive any frame from another party (they all
accept connections on the party's address). A frame's partition is computed from the
frame alone (`greenflow.storage.partitions.session_partition` of its session id: every
row of a session lives in the partition of the flow that opened it, and a responder's id
is derived into that same partition). A worker that does not own that partition writes
the frame into ``handoff`` (``ON CONFLICT DO NOTHING``: a re-sent frame is one row),
commits, and only then acknowledges it to the sender; it then wakes the owner with
``NOTIFY``. The owner (LISTEN, with a polling fallback for a lost notification or a
partition it has just taken over) gives the frame to its scheduler like any arriving
frame; the row is deleted once the scheduler has committed the frame's effect and
acknowledges it, so a worker that dies in between leaves the row for the next owner.
Delivery stays at least once; the scheduler's per-session sequence numbers make
processing exactly once.

Acknowledgements from peers come back on the sending worker's own connection when the
peer speaks the transport's reply path, else on whatever connection the peer holds to
the party, so they may land on a worker other than the sender: those are handed over the
same way (``kind`` 1), so the sending worker stops re-sending them.

A worker that owns no partition (starting up, or one worker too many) files the flows
started through it the same way (``kind`` 2, `START`): the owner of the row's partition
starts the flow under the id the row names (once: a flow already there is not started
again) and deletes the row.
"""
from __future__ import annotations

import logging
import select
import threading
import time
from dataclasses import dataclass
from typing import Callable, Iterable, Optional

from greenflow.cluster.leases import _ident

log = logging.getLogger("greenflow.cluster.handoff")

FRAME, ACK = 0, 1
#: A flow start filed by a worker that owns no partition: ``sid`` is the flow id (in the
#: row's partition), ``peer`` the client id or "", ``data`` the serialized flow.
START = 2
CHANNEL_PREFIX = "gf_handoff_"
#: A row given to the scheduler and not acknowledged within this time is given again
#: (the scheduler dropped it unacknowledged: early, or held while draining).
REDELIVER_AFTER = 10.0
#: Rows read per poll: bounded memory however far behind the owner is.
BATCH = 1000
#: A handed-over frame its owner never takes (the scheduler drops it unacknowledged every
#: time: a session that does not exist, say) is deleted after this long, with a warning:
#: the sender was acknowledged, so it would otherwise stay for ever.
MAX_AGE_S = 24 * 3600.0


def schema_sql(schema: str) -> list[str]:
    s = _ident(schema)
    return [
        f"CREATE SCHEMA IF NOT EXISTS {s}",
        f"CREATE TABLE IF NOT EXISTS {s}.handoff (part smallint NOT NULL, kind smallint NOT NULL, "
        f"peer text COLLATE \"C\" NOT NULL, sid text COLLATE \"C\" NOT NULL, "
        f"to_responder boolean NOT NULL, seq bigint NOT NULL, data bytea, "
        f"at timestamptz NOT NULL DEFAULT clock_timestamp(), "
        f"PRIMARY KEY (part, kind, peer, sid, to_responder, seq))",
    ]


def channel(schema: str) -> str:
    return CHANNEL_PREFIX + schema


@dataclass(frozen=True)
class Row:
    part: int
    kind: int
    peer: str
    msg_id: tuple[str, bool, int]
    data: Optional[bytes]

    @property
    def key(self) -> tuple:
        return (self.part, self.kind, self.peer) + self.msg_id


def ensure_schema(conn, schema: str) -> None:
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"greenflow-handoff:{schema}",))
        for stmt in schema_sql(schema):
            conn.execute(stmt)


def _connection_lost(exc: BaseException) -> bool:
    """Whether ``exc`` is the database connection's end (not a statement refused)."""
    import psycopg
    return isinstance(exc, psycopg.OperationalError)


class HandoffWriter:
    """The receiving side: durable before acknowledged. One connection, guarded by a lock
    (the transport's thread and the scheduler's may both hand frames over)."""

    def __init__(self, dsn: str, schema: str) -> None:
        self.dsn, self.schema = dsn, schema
        self._conn = None
        self._lock = threading.Lock()
        self.written = 0

    def _connect(self):
        import psycopg
        if self._conn is None or self._conn.closed or self._conn.broken:
            self._conn = psycopg.connect(self.dsn, autocommit=True, connect_timeout=5)
            ensure_schema(self._conn, self.schema)
        return self._conn

    def put(self, rows: Iterable[Row]) -> int:
        """Write ``rows`` in one transaction and notify their partitions' owners. Returns
        how many were new. Raises on a database error: the caller must then not
        acknowledge them (the sender re-sends)."""
        rows = list(rows)
        if not rows:
            return 0
        s = _ident(self.schema)
        cols = list(zip(*[(r.part, r.kind, r.peer, r.msg_id[0], r.msg_id[1], r.msg_id[2], r.data)
                          for r in rows]))
        with self._lock:
            try:
                new = self._insert(s, cols)
            except Exception as exc:
                if self._conn is not None:
                    self._conn.close()
                    self._conn = None
                if not _connection_lost(exc):
                    raise
                # A connection the server ended while it idled (a restart: AdminShutdown on
                # its first use) took nothing: once more on a new one. The same rows written
                # twice are one (ON CONFLICT DO NOTHING), so an attempt that did reach the
                # table costs nothing either.
                try:
                    new = self._insert(s, cols)
                except Exception:
                    if self._conn is not None:
                        self._conn.close()
                        self._conn = None
                    raise
        self.written += new
        return new

    def _insert(self, s: str, cols: list) -> int:
        conn = self._connect()
        # One statement (one round trip, one implicit transaction): the rows, and a
        # notification naming the partitions of those that were new, sent when it commits.
        return conn.execute(
            f"WITH ins AS (INSERT INTO {s}.handoff (part, kind, peer, sid, "
            f"to_responder, seq, data) SELECT * FROM unnest(%s::smallint[], "
            f"%s::smallint[], %s::text[], %s::text[], %s::boolean[], %s::bigint[], "
            f"%s::bytea[]) ON CONFLICT DO NOTHING RETURNING part) "
            f"SELECT (SELECT count(*) FROM ins), (SELECT pg_notify(%s, "
            f"string_agg(DISTINCT part::text, ',')) FROM ins HAVING count(*) > 0)",
            [list(c) for c in cols] + [channel(self.schema)]).fetchone()[0]

    def filed_start(self, fid: str, part: int) -> Optional[bytes]:
        """The serialized flow of the start of ``fid`` filed in partition ``part`` and
        not started yet (its row is deleted once the start is committed), or None."""
        s = _ident(self.schema)
        with self._lock:
            try:
                row = self._connect().execute(
                    f"SELECT data FROM {s}.handoff WHERE part = %s AND kind = %s AND sid = %s "
                    f"LIMIT 1", (part, START, fid)).fetchone()
            except Exception:
                if self._conn is not None:
                    self._conn.close()
                    self._conn = None
                raise
        return None if row is None else bytes(row[0])

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None


class HandoffReader:
    """The owning side: a thread that LISTENs, reads the rows of the partitions this
    worker owns and gives them to ``deliver(rows)``; `consumed` deletes rows once their
    effect is committed. Rows given and not consumed are not given again before
    `REDELIVER_AFTER` seconds."""

    def __init__(self, dsn: str, schema: str, owned: Callable[[], dict[int, int]],
                 deliver: Callable[[list[Row]], None], *, poll_s: float = 1.0,
                 redeliver_after: float = REDELIVER_AFTER, max_age_s: float = MAX_AGE_S) -> None:
        self.dsn, self.schema = dsn, schema
        self.owned, self.deliver = owned, deliver
        self.poll_s, self.redeliver_after = poll_s, redeliver_after
        self.max_age_s = max_age_s
        self._next_sweep = 0.0
        self.expired = 0
        self._given: dict[tuple, float] = {}   # row key -> monotonic time given
        self._done: list[tuple] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._kick = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._conn = None
        self._listen = None
        self.delivered = 0
        self.deleted = 0
        self.notifications = 0
        self.polls = 0

    # -- from other threads ------------------------------------------------------------
    def consumed(self, keys: Iterable[tuple]) -> None:
        """These rows' effect is committed: delete them (on the reader's thread, soon)."""
        with self._lock:
            self._done.extend(keys)
        self._kick.set()

    def poke(self) -> None:
        """Look now (e.g. partitions were just gained)."""
        self._kick.set()

    def given(self, key: tuple) -> bool:
        with self._lock:
            return key in self._given

    # -- the thread ------------------------------------------------------------------------
    def start(self) -> "HandoffReader":
        self._thread = threading.Thread(target=self._run, name="handoff-reader", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._kick.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._close_connections()

    def _close_connections(self) -> None:
        """Close both connections, whatever state they are in (the next round opens new ones)."""
        for c in (self._conn, self._listen):
            if c is not None:
                try:
                    c.close()
                except Exception:  # noqa: BLE001 - already broken: nothing more to do with it
                    pass
        self._conn = self._listen = None

    def _connect(self):
        import psycopg
        if self._conn is None or self._conn.closed or self._conn.broken:
            self._conn = psycopg.connect(self.dsn, autocommit=True, connect_timeout=5)
            ensure_schema(self._conn, self.schema)
        if self._listen is None or self._listen.closed or self._listen.broken:
            self._listen = psycopg.connect(self.dsn, autocommit=True, connect_timeout=5)
            self._listen.execute(f'LISTEN "{channel(self.schema)}"')
        return self._conn

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._connect()
                self.round()
                self._wait()
            except Exception as exc:  # the database went away: retry, bounded
                log.warning("handoff reader: %s: %s", type(exc).__name__, exc)
                self._close_connections()
                self._stop.wait(min(self.poll_s, 1.0))

    def _wait(self) -> None:
        """Until a notification, a kick, or the poll interval (the fallback)."""
        deadline = time.monotonic() + self.poll_s
        listen = self._listen
        while not self._stop.is_set():
            if self._kick.is_set():
                self._kick.clear()
                return
            left = deadline - time.monotonic()
            if left <= 0:
                return
            # The LISTEN connection's socket becomes readable on a notification; the kick
            # event is checked every 50 ms at most.
            r, _, _ = select.select([listen.pgconn.socket], [], [], min(left, 0.05))
            if r:
                got = list(listen.notifies(timeout=0, stop_after=1000))
                if got:
                    self.notifications += len(got)
                    return

    def round(self) -> int:
        """Delete consumed rows, then give the owned partitions' new rows. Returns how many
        rows were given."""
        conn = self._connect()
        s = _ident(self.schema)
        with self._lock:
            done, self._done = self._done, []
            for k in done:
                self._given.pop(k, None)
        owned = self.owned()
        self.polls += 1
        now = time.monotonic()
        if owned and now >= self._next_sweep:
            self._next_sweep = now + min(60.0, self.max_age_s / 2)
            cur = conn.execute(
                f"DELETE FROM {s}.handoff WHERE part = ANY(%s::smallint[]) AND "
                f"at < clock_timestamp() - %s::interval", (sorted(owned), f"{self.max_age_s} seconds"))
            if cur.rowcount:
                self.expired += cur.rowcount
                log.warning("handoff: deleted %d frames nobody took in %.0fs (for sessions "
                            "this party does not have)", cur.rowcount, self.max_age_s)
        with self._lock:
            # Given rows of a partition no longer owned are forgotten: the next owner reads them.
            for k in [k for k, t in self._given.items()
                      if k[0] not in owned or now - t > self.redeliver_after]:
                del self._given[k]
        if done:
            cols = [list(c) for c in zip(*done)]
        if not owned:
            if done:
                conn.execute(f"DELETE FROM {s}.handoff WHERE (part, kind, peer, sid, "
                             f"to_responder, seq) IN (SELECT * FROM unnest(%s::smallint[], "
                             f"%s::smallint[], %s::text[], %s::text[], %s::boolean[], "
                             f"%s::bigint[]))", cols)
                self.deleted += len(done)
            return 0
        if done:
            # The consumed rows' delete and the next read in one statement (one round
            # trip, one transaction); the read sees the table as it was before the
            # delete, so the deleted rows are left out by hand.
            rows = conn.execute(
                f"WITH d AS (DELETE FROM {s}.handoff WHERE (part, kind, peer, sid, "
                f"to_responder, seq) IN (SELECT * FROM unnest(%s::smallint[], "
                f"%s::smallint[], %s::text[], %s::text[], %s::boolean[], %s::bigint[])) "
                f"RETURNING part, kind, peer, sid, to_responder, seq) "
                f"SELECT h.part, h.kind, h.peer, h.sid, h.to_responder, h.seq, h.data "
                f"FROM {s}.handoff h WHERE h.part = ANY(%s::smallint[]) AND NOT EXISTS "
                f"(SELECT 1 FROM d WHERE (d.part, d.kind, d.peer, d.sid, d.to_responder, "
                f"d.seq) = (h.part, h.kind, h.peer, h.sid, h.to_responder, h.seq)) "
                f"ORDER BY h.at, h.seq LIMIT %s",
                cols + [sorted(owned), BATCH + len(self._given)]).fetchall()
            self.deleted += len(done)
        else:
            rows = conn.execute(
                f"SELECT part, kind, peer, sid, to_responder, seq, data FROM {s}.handoff "
                f"WHERE part = ANY(%s::smallint[]) ORDER BY at, seq LIMIT %s",
                (sorted(owned), BATCH + len(self._given))).fetchall()
        out = []
        with self._lock:
            for part, kind, peer, sid, to_resp, seq, data in rows:
                r = Row(part, kind, peer, (sid, to_resp, seq),
                        bytes(data) if data is not None else None)
                if r.key in self._given:
                    continue
                self._given[r.key] = now
                out.append(r)
                if len(out) >= BATCH:
                    break
        if out:
            self.delivered += len(out)
            self.deliver(out)
        return len(out)


def pending(conn, schema: str) -> dict[int, int]:
    """Rows waiting per partition (``cluster status``'s lag)."""
    s = _ident(schema)
    try:
        return {p: n for p, n in conn.execute(
            f"SELECT part, count(*) FROM {s}.handoff GROUP BY part")}
    except Exception:
        return {}
