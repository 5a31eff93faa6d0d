"""Starting a clustered party on one machine: a local PostgreSQL (unless one is given)
and N worker processes. What ``greenflow cluster up`` and the failover tests use."""
from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from typing import Optional

from greenflow.cluster.leases import DEFAULT_LEASE_S, DEFAULT_RENEW_S, check_timing
from greenflow.cluster.listing import lease_table
from greenflow.cluster.process import DATABASE_ENV, cluster_dir, postgres_url
from greenflow.network.network_map import format_address
from greenflow.network.node_config import NodeConfig
from greenflow.storage.partitions import PARTITIONS
from greenflow.storage.plain_files import open_plain_file

PG_DIR = "postgres"
#: `Cluster.tend` stops restarting a worker that exited this many times within
#: `RESTART_WINDOW_S` (it fails at its start: a setting, the database, a disk).
RESTART_LIMIT = 5
RESTART_WINDOW_S = 120.0
#: What a worker says when it stopped because its database would not take it for now
#: (full of connections, starting up or restarting, down): started again without a limit,
#: at most every `DATABASE_AWAY_PAUSE_S`, since it is no fault of the worker's. (Fifteen
#: seconds of connections refused once stopped a worker for good.)
DATABASE_AWAY = ("too many clients", "the database system is", "connection refused",
                 "could not connect", "connection timeout", "cannot connect to the postgresql",
                 "cannot reach the cluster's database", "server closed the connection",
                 "remaining connection slots")
DATABASE_AWAY_PAUSE_S = 30.0


class Cluster:
    """A party directory served by ``workers`` worker processes."""

    def __init__(self, node_dir: str, *, workers: int = 2, database: Optional[str] = None,
                 lease_s: float = DEFAULT_LEASE_S, renew_s: float = DEFAULT_RENEW_S,
                 log_level: str = "INFO", env: Optional[dict] = None) -> None:
        from greenflow.storage.postgres_store import schema_for, split_url
        if workers < 1:
            raise ValueError("a cluster needs at least one worker")
        # What would stop every worker at its start is refused here, naming the setting,
        # before a database or a process is started.
        check_timing(lease_s, renew_s)
        if not isinstance(logging.getLevelName(str(log_level).upper()), int):
            raise ValueError(f"unknown log level {log_level!r}: one of DEBUG, INFO, WARNING, "
                             "ERROR, CRITICAL")
        self.node_dir = os.path.abspath(node_dir)
        self.config = NodeConfig.load(self.node_dir)
        if database is not None:
            postgres_url(self.node_dir, database)
        self.n = workers
        self.database = database
        self.lease_s, self.renew_s = lease_s, renew_s
        self.log_level = log_level
        self.env = env
        self.pg = None
        self.url: Optional[str] = database
        self.schema = split_url(database)[1] if database else None
        self.schema = self.schema or schema_for(self.node_dir, split_url(database)[0]
                                                if database else None)
        self.procs: dict[str, subprocess.Popen] = {}
        self.rpc: dict[str, str] = {}
        self._log_start: dict[str, tuple[int, int]] = {}   # where each worker's run begins
        self._exits: dict[str, list[float]] = {}   # when each worker exited (monotonic)
        self._away: dict[str, int] = {}   # exits in a row for want of the database
        self._due: dict[str, float] = {}           # worker -> when `tend` starts it again
        self.given_up: set[str] = set()            # exited, and left stopped
        #: Descriptors the workers inherit: `cluster up`'s lock on the directory, held
        #: so by workers that outlive it (it killed with -9) until they stop too.
        self.hold_fds: tuple[int, ...] = ()

    @property
    def dsn(self) -> str:
        from greenflow.storage.postgres_store import split_url
        assert self.url is not None
        return split_url(self.url)[0]

    def schema_exists(self) -> bool:
        """Whether the party's schema holds a store (its flows table)."""
        import psycopg

        from greenflow.errors import StoreError
        from greenflow.storage.postgres_store import redact
        try:
            with psycopg.connect(self.dsn, autocommit=True, connect_timeout=10) as c:
                return c.execute("SELECT 1 FROM information_schema.tables WHERE table_schema = "
                                 "%s AND table_name = 'flows'", (self.schema,)).fetchone() is not None
        except psycopg.Error as exc:
            raise StoreError(f"cannot reach the cluster's database at {redact(self.dsn)}: "
                             f"{str(exc).strip()}") from None

    def start_database(self) -> str:
        if self.url is None:
            from greenflow.storage.pg_server import PgServer
            self.pg = PgServer(os.path.join(self.node_dir, PG_DIR))
            self.pg.start()
            self.url = self.pg.url
            from greenflow.storage.postgres_store import schema_for, split_url
            if split_url(self.url)[1] is None:   # a store of an earlier version, by path?
                self.schema = schema_for(self.node_dir, self.dsn)
        return self.url

    def start(self, wait: float = 60.0) -> "Cluster":
        self.start_database()
        os.makedirs(cluster_dir(self.node_dir), exist_ok=True)
        for i in range(1, self.n + 1):
            self.start_worker(f"w{i}")
        self.wait_ready(wait)
        return self

    def start_worker(self, name: str) -> subprocess.Popen:
        from greenflow.network.bootstrap import free_port
        if name not in self.rpc:
            host, port = self.config.rpc_address
            if self.rpc or self.procs:   # (not one given to a worker that has not bound it yet)
                port = free_port(host, {port} | {int(a.rsplit(":", 1)[1])
                                                 for a in self.rpc.values()})
            self.rpc[name] = format_address((host, port))
        cmd = [sys.executable, "-m", "greenflow.cluster.process", "--dir", self.node_dir,
               "--name", name, "--rpc-address", self.rpc[name],
               "--lease", str(self.lease_s), "--renew", str(self.renew_s),
               "--log-level", self.log_level]
        self._log_start[name] = tuple(_size(self._file(name, ext)) for ext in ("log", "out"))
        os.makedirs(cluster_dir(self.node_dir), exist_ok=True)   # (removed while up?)
        out = open_plain_file(self._file(name, "out"), "ab")
        env = dict(os.environ if self.env is None else self.env)
        env[DATABASE_ENV] = self.url or ""   # not in argv, which `ps` shows anyone
        p = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env,
                             start_new_session=True, pass_fds=self.hold_fds)
        out.close()
        self.procs[name] = p
        return p

    def tend(self, restart: bool = True) -> list[str]:
        """Look after the workers once (``cluster up`` does every second): a worker that
        exited is started again under its name after a pause that doubles with each recent
        exit (1 s, 2 s, ...), and takes its share of the partitions back as the workers
        rebalance; meanwhile the others hold them. One that exited with status 0 (stopped
        on purpose), or `RESTART_LIMIT` times within `RESTART_WINDOW_S`, is left stopped.
        Returns what to tell the operator."""
        said: list[str] = []
        now = time.monotonic()
        for name, p in self.procs.items():
            if name in self.given_up:
                continue
            due = self._due.get(name)
            if due is not None:
                if now >= due:
                    del self._due[name]
                    try:
                        said.append(f"worker {name} started again (process "
                                    f"{self.start_worker(name).pid})")
                    except OSError as exc:   # e.g. its log file cannot be made: try later
                        self._due[name] = now + 5.0
                        said.append(f"worker {name} cannot be started again: {exc}; trying "
                                    "again in 5s")
                continue
            if p.poll() is None:
                continue
            why = self.last_error(name)
            told = (f"worker {name} exited with status {p.returncode}" + (f": {why}" if why else "")
                    + f" (see {self._file(name, 'log')})")
            if restart and p.returncode != 0 and why is not None \
                    and any(s in why.lower() for s in DATABASE_AWAY):
                away = self._away[name] = self._away.get(name, 0) + 1
                pause = min(DATABASE_AWAY_PAUSE_S, float(2 ** (away - 1)))
                self._due[name] = now + pause
                said.append(f"{told}; its database would not take it: starting it again in "
                            f"{pause:.0f}s, for as long as that lasts (the other workers hold "
                            "its partitions meanwhile)")
                continue
            self._away.pop(name, None)
            exits = [t for t in self._exits.get(name, ()) if now - t < RESTART_WINDOW_S] + [now]
            self._exits[name] = exits
            if not restart or p.returncode == 0 or len(exits) >= RESTART_LIMIT:
                self.given_up.add(name)
                reason = ("" if not restart else "; stopped on purpose" if p.returncode == 0
                          else f"; it exited {len(exits)} times within {RESTART_WINDOW_S:.0f}s")
                said.append(f"{told}; not started again{reason}: the other workers take its "
                            "partitions over")
            else:
                pause = float(2 ** (len(exits) - 1))
                self._due[name] = now + pause
                said.append(f"{told}; starting it again in {pause:.0f}s (the other workers "
                            "hold its partitions meanwhile)")
        return said

    def _file(self, name: str, ext: str) -> str:
        return os.path.join(cluster_dir(self.node_dir), f"{name}.{ext}")

    def last_error(self, name: str) -> Optional[str]:
        """Why worker ``name``'s current process stopped, in its own words: the last error
        it logged, or the last line it printed (a worker that could not even be made
        reports on stderr); None if it said nothing. Only what this process wrote counts:
        the files are appended to across restarts."""
        log_at, out_at = self._log_start.get(name, (0, 0))
        records: list[str] = []
        for line in _tail(self._file(name, "log"), log_at):
            if line[:1].isspace() and records:   # a message's continuation line
                records[-1] += " " + line.strip()
            else:
                records.append(line.strip())
        errors = [r for r in records if " ERROR " in r or " CRITICAL " in r]
        if errors:
            return errors[-1].split(": ", 1)[-1]
        printed = [ln.strip() for ln in _tail(self._file(name, "out"), out_at) if ln.strip()]
        return printed[-1] if printed else None

    def status(self):
        import psycopg
        with psycopg.connect(self.dsn, autocommit=True, connect_timeout=5) as c:
            return lease_table(c, self.schema, self.lease_s)

    def wait_ready(self, timeout: float = 60.0, workers: Optional[set[str]] = None) -> None:
        """Until every running worker is live and the live ones hold all partitions. Live
        means the running process itself: a restarted worker's row still shows its
        predecessor for a lease time, while the new process may not even have set up its
        signal handlers yet (a SIGTERM then would not be a clean stop)."""
        want = workers if workers is not None else \
            {n for n, p in self.procs.items() if p.poll() is None}
        end = time.monotonic() + timeout
        last = None
        while time.monotonic() < end:
            for n, p in self.procs.items():
                if n in want and p.poll() is not None:
                    why = self.last_error(n)
                    raise RuntimeError(f"worker {n} exited with status {p.returncode}"
                                       + (f": {why}" if why else "")
                                       + f"; see {self._file(n, 'log')}")
            try:
                ws, _ = self.status()
                live = {w.name: w for w in ws if w.live}
                held = sum(len(live[n].partitions) for n in want if n in live)
                last = {n: (len(live[n].partitions), live[n].serving) if n in live else None
                        for n in want}
                if want <= set(live) and held == PARTITIONS and \
                        all(live[n].partitions and live[n].serving == len(live[n].partitions)
                            and live[n].pid == self.procs[n].pid for n in want):
                    return
            except Exception as exc:  # the tables are not there yet
                last = exc
            time.sleep(0.2)
        raise TimeoutError(f"the cluster in {self.node_dir} was not ready after {timeout}s: {last}")

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        os.kill(self.procs[name].pid, sig)

    def stop(self, timeout: float = 30.0) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                try:
                    p.send_signal(signal.SIGTERM)
                except ProcessLookupError:
                    pass
        for n, p in self.procs.items():
            try:
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        if self.pg is not None:
            if not self.pg.reused:   # a server this run found running is not its to stop
                self.pg.stop()
            self.pg = None

    def __enter__(self) -> "Cluster":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def _size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


def _tail(path: str, start: int, limit: int = 64 * 1024) -> list[str]:
    """The lines of ``path`` written after byte ``start`` (at most the last ``limit``
    bytes of them)."""
    try:
        with open(path, "rb") as fh:
            end = fh.seek(0, os.SEEK_END)
            fh.seek(max(start, end - limit))
            return fh.read().decode("utf-8", "replace").splitlines()
    except OSError:
        return []
