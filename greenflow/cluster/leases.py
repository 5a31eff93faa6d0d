"""Partition leases: which worker of a clustered party owns which partition, and since when.

A clustered party spreads its flows over `PARTITIONS` virtual partitions (a hash of the
flow id). Each partition has one row in ``leases``: its owner, an *epoch* and the time
the lease runs out. Every worker runs one `LeaseManager`, which, once per renew interval,
in PostgreSQL and one transaction per step:

- writes its heartbeat into ``workers`` (that is how workers count each other);
- renews the leases it holds (``owner = me AND epoch = the epoch I took``): a row that
  no longer matches was taken by another worker, and the partition is lost at once;
- releases what it holds beyond its share (about P/N per live worker), so a worker that
  joins gets partitions without anyone's lease running out;
- takes free or expired partitions up to its share; taking one always bumps its epoch.

The epoch is the fence. The store checks, in the same transaction as every commit, that
each partition the commit touches still has the epoch this worker took (Temporal's range
ids work the same way); after another worker took a partition over, the old owner's
commit is refused (`greenflow.errors.Fenced`) however late it arrives. Times are the
database's (``now()``), so the workers' clocks do not need to agree. A worker that cannot
renew (database unreachable, process stalled) gives up its partitions locally once its
own monotonic clock says the lease may have run out: it stops acting for them before
anyone else can take them over, and fencing covers the rest.
"""
from __future__ import annotations

import logging
import math
import os
import socket
import threading
import time
from typing import Callable, Iterable, Optional

from greenflow.errors import StoreError, WorkerNameInUse
from greenflow.storage.partitions import PARTITIONS

log = logging.getLogger("greenflow.cluster.leases")

DEFAULT_LEASE_S = 5.0
DEFAULT_RENEW_S = 1.0

# Own name for the notification channel that tells a worker its leases changed hands.
CHANNEL = "greenflow_leases"

Owned = dict[int, int]  # partition -> epoch held


def schema_sql(schema: str) -> list[str]:
    """The tables leases need, created if absent (the store creates the same ``leases``)."""
    s = _ident(schema)
    return [
        f"CREATE SCHEMA IF NOT EXISTS {s}",
        f"CREATE TABLE IF NOT EXISTS {s}.leases (part int PRIMARY KEY, owner text, "
        f"epoch bigint NOT NULL DEFAULT 0, expires_at timestamptz NOT NULL DEFAULT '-infinity')",
        f"CREATE TABLE IF NOT EXISTS {s}.workers (name text PRIMARY KEY, host text, pid int, "
        f"address text, rpc text, started_at timestamptz NOT NULL DEFAULT now(), "
        f"heartbeat_at timestamptz NOT NULL DEFAULT now(), stopped boolean NOT NULL DEFAULT false, "
        f"serving int NOT NULL DEFAULT 0)",
        f"ALTER TABLE {s}.workers ADD COLUMN IF NOT EXISTS serving int NOT NULL DEFAULT 0",
    ]


def fence_lock_key(schema: str) -> str:
    """The text whose ``hashtext`` keys the fence's advisory locks of ``schema`` (the
    store's ``gf_fence`` builds the same from ``current_schema()``)."""
    return "greenflow-fence:" + schema


def _ident(name: str) -> str:
    """A schema name quoted for SQL; only names we make ourselves get here, but check."""
    if not name or not all(c.isalnum() or c == "_" for c in name):
        raise ValueError(f"schema name {name!r}: use letters, digits and _ only")
    return '"' + name + '"'


def ensure_schema(conn, schema: str, partitions: int = PARTITIONS) -> None:
    """Create the lease and worker tables and one lease row per partition (idempotent)."""
    with conn.transaction():
        # Two workers starting at once would race on CREATE TABLE IF NOT EXISTS (it is not
        # atomic against a concurrent create); one advisory lock per schema serialises them.
        conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"greenflow-schema:{schema}",))
        for stmt in schema_sql(schema):
            conn.execute(stmt)
        conn.execute(
            f"INSERT INTO {_ident(schema)}.leases (part) SELECT g FROM generate_series(0, %s) g "
            f"ON CONFLICT (part) DO NOTHING", (partitions - 1,))


def share(partitions: int, live_workers: int) -> int:
    """How many partitions one worker should hold: ceil(P/N), so the shares cover P."""
    return math.ceil(partitions / max(1, live_workers))


#: The longest lease time: a day (a dead worker's flows wait that long for another).
MAX_LEASE_S = 86_400.0


def check_timing(lease_s: float, renew_s: float) -> None:
    """Refuse lease timings that cannot hold a lease (`ValueError` naming both): what a
    worker checks before it takes partitions, and a launcher before it starts any."""
    for what, value in (("lease time", lease_s), ("renew interval", renew_s)):
        if not 0 < value <= MAX_LEASE_S:   # (also NaN)
            raise ValueError(f"the {what} is a number of seconds above 0 and at most "
                             f"{MAX_LEASE_S:g}, not {value!r}")
    if not lease_s > 2 * renew_s:
        raise ValueError(f"lease time {lease_s}s must be more than twice the renew "
                         f"interval {renew_s}s, or one slow renewal loses every lease")


class LeaseManager:
    """Holds this worker's leases and keeps them renewed, on a thread of its own.

    ``on_gained(parts)`` and ``on_lost(parts)`` are called (from the lease thread) with a
    dict {partition: epoch} and a set of partitions. ``on_lost`` is called *before* the
    partitions are released in the database, so a worker drops their flows before anyone
    else can take them; a partition lost to another worker or to a missed renewal is
    already gone when it is called (fencing refuses any commit still in flight).
    ``owned()`` is what the store asks on every commit; it is cheap and thread-safe.
    """

    def __init__(self, dsn: str, schema: str, name: str, *,
                 lease_s: float = DEFAULT_LEASE_S, renew_s: float = DEFAULT_RENEW_S,
                 partitions: int = PARTITIONS,
                 on_gained: Optional[Callable[[Owned], None]] = None,
                 on_lost: Optional[Callable[[set[int]], None]] = None,
                 address: Optional[str] = None, rpc: Optional[str] = None,
                 max_take: Optional[int] = None,
                 serving: Optional[Callable[[], int]] = None) -> None:
        check_timing(lease_s, renew_s)
        self.dsn, self.schema, self.name = dsn, schema, name
        self.lease_s, self.renew_s, self.partitions = lease_s, renew_s, partitions
        self.on_gained = on_gained or (lambda parts: None)
        self.on_lost = on_lost or (lambda parts: None)
        self.address, self.rpc = address, rpc
        # Taking every free partition at once would make the first worker up replay the
        # whole party; a cap per tick lets the others join in before that.
        self.max_take = max_take
        #: How many partitions the worker's running generation acts for (heartbeat column).
        self.serving = serving or (lambda: 0)
        self._owned: Owned = {}
        self._lock = threading.Lock()
        self._valid_until = 0.0  # monotonic: past it, what we hold may belong to another
        self._conn = None
        self._thread: Optional[threading.Thread] = None
        self._stop = threading.Event()
        self._wake = threading.Event()
        self.ticks = 0
        self.errors = 0
        self.last_error: Optional[str] = None
        self.live_workers = 0
        self._round_began: Optional[float] = None   # monotonic, while a round runs
        self._stuck_said = 0.0

    # -- what the store and the worker ask -------------------------------------------------
    def owned(self) -> Owned:
        """{partition: epoch} held now (a copy). Empty once the lease may have run out."""
        with self._lock:
            if self._owned and time.monotonic() > self._valid_until:
                return {}
            return dict(self._owned)

    def epoch_of(self, part: int) -> Optional[int]:
        """The epoch ``part`` is held at now, or None (asked per frame: no copy)."""
        with self._lock:
            if self._owned and time.monotonic() > self._valid_until:
                return None
            return self._owned.get(part)

    # -- one tick ---------------------------------------------------------------------------
    def _connect(self):
        import psycopg
        if self._conn is None or self._conn.closed:
            self._conn = psycopg.connect(self.dsn, autocommit=True, connect_timeout=5)
            # A stalled database must not stall the lease thread past the lease itself.
            self._conn.execute(f"SET statement_timeout = {int(self.lease_s * 1000 / 2)}")
            ensure_schema(self._conn, self.schema, self.partitions)
        return self._conn

    def tick(self) -> None:
        """Heartbeat, renew, rebalance: one round. Never raises on a database error (the
        worker keeps running; its leases lapse locally if this keeps failing)."""
        self.ticks += 1
        self._round_began = time.monotonic()
        try:
            self._tick()
            self.last_error = None
        except Exception as exc:  # psycopg.Error, OSError: the database went away
            self.errors += 1
            self.last_error = f"{type(exc).__name__}: {exc}"
            log.warning("worker %s: lease round failed: %s", self.name, self.last_error)
            self._drop_connection()
        finally:
            self._round_began = None
        self._expire_locally()

    def check_stuck(self) -> None:
        """From another thread (the worker's loop): a round waiting on a database that
        does not answer (stopped, or cut off: no error comes, the statement timeout is
        the server's) is said, and the partitions are given up when their lease may have
        run out, without waiting for the round to return. It said nothing for as long as
        the database stalled, and gave the partitions up only once it answered again."""
        began = self._round_began
        now = time.monotonic()
        if began is None or now - began < self.renew_s * 2:
            return
        if now - self._stuck_said >= self.lease_s:
            self._stuck_said = now
            log.warning("worker %s: a lease round has waited %.0f s for the database, which "
                        "does not answer; the partitions held lapse at their lease's end",
                        self.name, now - began)
        self._expire_locally()

    def _drop_connection(self) -> None:
        """Close the lease connection, whatever state it is in (a new one is made next round)."""
        if self._conn is not None:
            try:
                self._conn.close()
            except Exception:  # noqa: BLE001 - already broken: nothing more to do with it
                pass
            self._conn = None

    def _expire_locally(self) -> None:
        with self._lock:
            if not self._owned or time.monotonic() <= self._valid_until:
                return
            lost = set(self._owned)
            self._owned = {}
        log.warning("worker %s: leases not renewed in time, giving up partitions %s",
                    self.name, _ranges(lost))
        self.on_lost(lost)

    def _tick(self) -> None:
        conn = self._connect()
        s = _ident(self.schema)
        lease = f"{self.lease_s} seconds"
        started = time.monotonic()
        self._beat(conn, lease)
        # Renew exactly what we took, at the epoch we took it.
        held = self.owned_raw()
        if held:
            with conn.transaction():
                rows = conn.execute(
                    f"UPDATE {s}.leases l SET expires_at = now() + %s::interval "
                    f"FROM unnest(%s::int[], %s::bigint[]) AS h(part, epoch) "
                    f"WHERE l.part = h.part AND l.epoch = h.epoch AND l.owner = %s "
                    f"RETURNING l.part", (lease, list(held), list(held.values()), self.name)).fetchall()
            kept = {r[0] for r in rows}
            lost = set(held) - kept
            with self._lock:
                for p in lost:
                    self._owned.pop(p, None)
                self._valid_until = started + self.lease_s
            if lost:
                log.warning("worker %s: partitions %s were taken over", self.name, _ranges(lost))
                self.on_lost(lost)
        live = conn.execute(
            f"SELECT count(*) FROM {s}.workers WHERE NOT stopped AND "
            f"heartbeat_at > now() - %s::interval", (lease,)).fetchone()[0]
        self.live_workers = live
        target = share(self.partitions, live)
        held = self.owned_raw()
        if len(held) > target:
            self._release(sorted(held)[target:])
        elif len(held) < target:
            want = target - len(held)
            if self.max_take is not None:
                want = min(want, self.max_take)
            self._take(want, started)

    def _beat(self, conn, lease: str) -> None:
        """The heartbeat: this process's row in ``workers``. A row another process renewed
        within the lease time is left alone (`WorkerNameInUse`): two workers under one name
        would count as one live worker, and the partitions would be shared out wrongly."""
        s = _ident(self.schema)
        with conn.transaction():
            mine = conn.execute(
                f"INSERT INTO {s}.workers AS w (name, host, pid, address, rpc, serving) "
                f"VALUES (%s, %s, %s, %s, %s, %s) "
                f"ON CONFLICT (name) DO UPDATE SET heartbeat_at = now(), host = excluded.host, "
                f"pid = excluded.pid, address = excluded.address, rpc = excluded.rpc, "
                f"serving = excluded.serving, stopped = false "
                f"WHERE w.stopped OR w.heartbeat_at < now() - %s::interval "
                f"OR (w.host IS NOT DISTINCT FROM excluded.host AND w.pid = excluded.pid) "
                f"RETURNING 1", (self.name, socket.gethostname(), os.getpid(), self.address,
                                 self.rpc, self.serving(), lease)).fetchone()
            if mine is None:
                host, pid, age, beat = conn.execute(
                    f"SELECT host, pid, extract(epoch FROM now() - heartbeat_at), heartbeat_at "
                    f"FROM {s}.workers WHERE name = %s", (self.name,)).fetchone()
                raise WorkerNameInUse(f"worker name {self.name!r} is in use by process {pid} on "
                                      f"{host} (heartbeat {float(age):.1f}s ago): each worker "
                                      "of a party needs a name of its own", beat)

    def _claim_name(self) -> None:
        """Wait (at most a lease time) for the row of a gone process of this name (a killed
        worker restarted); refuse at once when another process is renewing it."""
        try:
            conn = self._connect()
        except Exception as exc:  # psycopg.Error, OSError
            from greenflow.storage.postgres_store import redact
            raise StoreError(f"cannot use the cluster's database {redact(self.dsn)} for the "
                             f"leases: {exc}") from exc
        lease = f"{self.lease_s} seconds"
        end = time.monotonic() + self.lease_s + self.renew_s
        first = None
        while True:
            try:
                self._beat(conn, lease)
                return
            except WorkerNameInUse as exc:
                first = exc.heartbeat if first is None else first
                if exc.heartbeat != first or time.monotonic() > end:
                    raise
                log.info("worker %s: waiting for its name's last process to time out (%s)", self.name, exc)
            time.sleep(min(self.renew_s, 0.5))

    def owned_raw(self) -> Owned:
        with self._lock:
            return dict(self._owned)

    def _take(self, want: int, started: float) -> None:
        conn = self._connect()
        s = _ident(self.schema)
        with conn.transaction():
            # SKIP LOCKED: two workers taking at once each get different partitions instead
            # of waiting for each other. Only free or expired rows: a live owner releases
            # its surplus itself, never has it taken away. The fence's advisory lock of each
            # partition, exclusively (commits hold it shared while they check the epoch and
            # write): one with the old owner's commit in flight is left for the next round,
            # and any commit of the old owner's that starts later reads the new epoch and
            # is refused.
            rows = conn.execute(
                f"UPDATE {s}.leases l SET owner = %s, epoch = l.epoch + 1, "
                f"expires_at = now() + %s::interval "
                f"WHERE l.part IN (SELECT c.part FROM (SELECT part FROM {s}.leases "
                f"WHERE owner IS NULL OR expires_at < now() ORDER BY part LIMIT %s "
                f"FOR UPDATE SKIP LOCKED) AS c WHERE pg_try_advisory_xact_lock(hashtext(%s), "
                f"c.part)) RETURNING l.part, l.epoch",
                (self.name, f"{self.lease_s} seconds", want,
                 fence_lock_key(self.schema))).fetchall()
        if not rows:
            return
        gained = {p: e for p, e in rows}
        with self._lock:
            if not self._owned:
                self._valid_until = started + self.lease_s
            self._owned.update(gained)
        log.info("worker %s: took partitions %s", self.name, _ranges(gained))
        self.on_gained(gained)

    def _release(self, parts: list[int]) -> None:
        """Give partitions back: forget them here and drop their flows first, then free
        the rows (at our epoch only; the next owner bumps the epoch when it takes them)."""
        with self._lock:
            given = {p: self._owned.pop(p) for p in parts if p in self._owned}
        if not given:
            return
        self.on_lost(set(given))
        conn = self._connect()
        s = _ident(self.schema)
        with conn.transaction():
            conn.execute(
                f"UPDATE {s}.leases l SET owner = NULL, expires_at = '-infinity' "
                f"FROM unnest(%s::int[], %s::bigint[]) AS h(part, epoch) "
                f"WHERE l.part = h.part AND l.epoch = h.epoch AND l.owner = %s",
                (list(given), list(given.values()), self.name))
        log.info("worker %s: released partitions %s", self.name, _ranges(given))

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> "LeaseManager":
        """Run the first round now (so the caller knows what it holds), then one per renew
        interval on a daemon thread. `WorkerNameInUse` when another live process has the
        name."""
        self._claim_name()
        self.tick()
        self._thread = threading.Thread(target=self._run, name=f"leases-{self.name}", daemon=True)
        self._thread.start()
        return self

    def poke(self) -> None:
        """Run the next round now (e.g. told that a worker joined or left)."""
        self._wake.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.renew_s)
            self._wake.clear()
            if self._stop.is_set():
                break
            self.tick()

    def abandon(self) -> None:
        """Stop renewing and let the leases lapse, as a killed worker does (tests)."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=self.lease_s)
        self._drop_connection()

    def stop(self, release: bool = True) -> None:
        """Stop renewing; with ``release``, hand every partition back and mark this worker
        stopped so the others take over at once instead of after the lease time."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=self.lease_s)
        if release:
            try:
                held = sorted(self.owned_raw())
                if held:
                    self._release(held)
                conn = self._connect()
                conn.execute(f"UPDATE {_ident(self.schema)}.workers SET stopped = true "
                             f"WHERE name = %s", (self.name,))
                conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, self.schema))
            except Exception as exc:
                log.warning("worker %s: could not release its leases (%s); they lapse "
                            "after %ss", self.name, exc, self.lease_s)
        self._drop_connection()


def _ranges(parts: Iterable[int]) -> str:
    """0-3,7,9-11: partitions in a log line without 256 numbers."""
    out: list[str] = []
    run: list[int] = []
    for p in sorted(parts):
        if run and p == run[-1] + 1:
            run.append(p)
            continue
        if run:
            out.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
        run = [p]
    if run:
        out.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
    return ",".join(out)
