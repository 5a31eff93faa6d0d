"""``greenflow cluster up|status``: a party served by several worker processes on
PostgreSQL (docs/cluster.md). Needs ``pip install '.[cluster]' in greenflow's checkout``."""
from __future__ import annotations

import json
import os
import signal
import threading
import time
from typing import Optional

import click

from greenflow.cli.errors import CliError, NotANodeDirectory, UsageProblem
from greenflow.storage import is_postgres, store_url
from greenflow.storage.store_guard import release_lock

DATABASE_FILE = "database"   # DIR/cluster/database: the URL `cluster up` used
_SECONDS = click.FloatRange(min=0, min_open=True)
GONE_FOR_GOOD_S = 600.0   # `cluster status` leaves out workers gone longer than this


def _database(base_dir: str, database: Optional[str]) -> str:
    if database:
        return database
    path = os.path.join(base_dir, "cluster", DATABASE_FILE)
    if os.path.exists(path):
        with open(path, encoding="utf-8") as fh:
            url = fh.read(64 * 1024 + 1).strip()
        if len(url) > 64 * 1024 or not is_postgres(url):
            raise CliError(f"{path} does not hold a PostgreSQL URL (as `greenflow cluster up` "
                           "writes it): pass --database, or start the cluster again")
        return url
    url = store_url(base_dir)
    if is_postgres(url):
        return url
    raise CliError(f"{base_dir} names no PostgreSQL database: pass --database, set `store` "
                   "in node.toml, or start it with `greenflow cluster up`")


@click.group("cluster")
def command() -> None:
    """A party's clustered node: worker processes sharing one PostgreSQL database."""


@command.command("up")
@click.option("--dir", "base_dir", required=True, type=click.Path(file_okay=False, exists=True),
              help="The party's node directory (from `greenflow network bootstrap` or `node init`).")
@click.option("--workers", default=2, show_default=True, type=click.IntRange(1, 64))
@click.option("--database", default=None,
              help="postgresql://... of an existing server; default: start one in DIR/postgres.")
@click.option("--lease", default=5.0, show_default=True, type=_SECONDS,
              help="Lease time, seconds: more than twice --renew.")
@click.option("--renew", default=1.0, show_default=True, type=_SECONDS,
              help="Lease renewal interval, seconds.")
@click.option("--log-level", default="INFO", show_default=True,
              type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"],
                                case_sensitive=False),
              help="What the workers write to DIR/cluster/<worker>.log.")
@click.option("--new-store", is_flag=True,
              help="Start with an empty store where a cluster of DIR ran before and its "
                   "store is gone (else refused: its flows would be forgotten unseen).")
@click.option("--restart/--no-restart", default=True, show_default=True,
              help="Start a worker that exited again (after 1 s, 2 s, 4 s...; not one that "
                   "exited with status 0, nor one that exited 5 times within 2 minutes).")
def up(base_dir: str, workers: int, database: Optional[str], lease: float, renew: float,
       log_level: str, new_store: bool, restart: bool) -> None:
    """Start PostgreSQL (unless --database) and WORKERS worker processes, start again a
    worker that exits, and stop them all on Ctrl-C, SIGTERM or SIGHUP."""
    try:
        from greenflow.cluster.launcher import Cluster
    except ImportError as exc:
        raise CliError(f"the cluster needs more packages: pip install '.[cluster]' in greenflow's checkout ({exc})")
    from greenflow.errors import FlowError
    from greenflow.network.node_config import ConfigError
    if database is not None:
        _split(database, "--database")
    try:
        cl = Cluster(base_dir, workers=workers, database=database, lease_s=lease,
                     renew_s=renew, log_level=log_level)
    except ConfigError as exc:
        raise NotANodeDirectory(str(exc)) from None
    except (ValueError, FlowError) as exc:
        raise UsageProblem(str(exc)) from None
    held = _hold(cl.node_dir)
    cl.hold_fds = (held,)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):   # (HUP: its terminal closed)
        signal.signal(sig, lambda s, f: stop.set())
    record = os.path.join(cl.node_dir, "cluster", DATABASE_FILE)
    try:
        url = cl.start_database()
        if os.path.exists(record) and not new_store and not cl.schema_exists():
            raise CliError(f"a cluster of {cl.node_dir} ran on a store that is gone (no schema "
                           f"{cl.schema} in the database{' in ' + cl.pg.data if cl.pg else ''}): "
                           "restore the database from a backup, or pass --new-store to start "
                           "with an empty one (its flows are then forgotten)")
        cl.start()
        # Only a database the workers came up on is remembered for `cluster status`; it may
        # hold a password: readable by its owner only.
        from greenflow.storage.plain_files import REPLACE, open_plain
        fd = open_plain(record, REPLACE, 0o600)
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(url + "\n")
        from greenflow.storage.postgres_store import redact
        click.echo(f"{cl.config.name}: {workers} workers up on {redact(url)} (schema {cl.schema})")
        for name, rpc in cl.rpc.items():
            click.echo(f"  {name}: rpc {rpc}, log {cl.node_dir}/cluster/{name}.log")
        pg_retry = 0.0
        while not stop.wait(1.0):
            for line in cl.tend(restart):
                click.echo(line, err=True)
            if len(cl.given_up) == len(cl.procs):
                raise CliError(f"every worker exited; see {cl.node_dir}/cluster/*.log")
            if cl.pg is not None and not cl.pg.reused and time.monotonic() >= pg_retry \
                    and not cl.pg.running() and not stop.is_set():
                # (not while stopping: a Ctrl-C or SIGTERM to the process group reaches
                # the server too, and one started again then would outlive this command)
                # The server this command started died (killed, out of memory): start it
                # again on its port; the workers reconnect on their own.
                try:
                    cl.pg.start()
                    click.echo(f"the cluster's PostgreSQL server stopped; started it again "
                               f"(see {cl.pg.log_file}); the workers reconnect", err=True)
                except FlowError as exc:
                    pg_retry = time.monotonic() + 10.0
                    click.echo(f"the cluster's PostgreSQL server stopped and cannot be "
                               f"started again ({exc}); trying again in 10s", err=True)
    except (TimeoutError, RuntimeError, FlowError) as exc:   # FlowError: the store's own
        raise CliError(str(exc)) from None
    finally:
        cl.stop()
        release_lock(held)
    click.echo("stopped")


def _split(url: str, source: str) -> tuple[str, Optional[str]]:
    """(dsn, schema) of a database URL; a URL that does not parse is refused naming
    where it came from (an option, or the file `cluster up` left)."""
    from greenflow.storage.postgres_store import split_url
    try:
        return split_url(url)
    except ValueError as exc:
        raise UsageProblem(f"{source} is not a PostgreSQL URL ({exc})") from None


def _hold(node_dir: str) -> int:
    """Hold DIR/cluster/up.lock for the life of this `cluster up` (its descriptor, for
    `release_lock`): a second one on the same directory is refused (it would reuse this
    one's database server, and stop it when its own workers fail)."""
    from greenflow.storage.store_guard import take_lock
    os.makedirs(os.path.join(node_dir, "cluster"), exist_ok=True)
    try:
        fd, holder = take_lock(os.path.join(node_dir, "cluster", "up.lock"))
    except OSError as exc:
        raise CliError(str(exc)) from None
    if fd is None:
        if _alive(holder):
            raise CliError(f"a cluster of {node_dir} is already up (`greenflow cluster up`, "
                           f"process {holder}): stop it first")
        pids = os.path.join(node_dir, "cluster", "*.pid")
        raise CliError(f"workers of an earlier `greenflow cluster up` of {node_dir} (process "
                       f"{holder}, gone) are still running: stop them first (kill -TERM each "
                       f"pid in {pids})")
    return fd


def _alive(pid: str) -> bool:
    try:
        os.kill(int(pid), 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:   # another user's: alive
        return True
    return True


@command.command("down")
@click.option("--dir", "base_dir", required=True, type=click.Path(file_okay=False, exists=True))
@click.option("--timeout", default=60.0, show_default=True, type=_SECONDS,
              help="Seconds to wait for each part to stop cleanly.")
def down(base_dir: str, timeout: float) -> None:
    """Stop what `cluster up` of DIR left running: that `cluster up` (it stops its workers
    and server), else workers that outlived it (it was killed with -9), then the
    PostgreSQL server it started in DIR/postgres. Unfinished flows resume at the next
    `cluster up`."""
    from greenflow.cluster.leftovers import stop_leftovers
    said = stop_leftovers(base_dir, timeout)
    for line in said or ["nothing of a cluster of this directory was running"]:
        click.echo(line)


@command.command("status")
@click.option("--dir", "base_dir", required=True, type=click.Path(file_okay=False, exists=True))
@click.option("--database", default=None, help="postgresql://... (default: what `cluster up` used)")
@click.option("--lease", default=5.0, show_default=True, type=_SECONDS,
              help="The lease time the workers use (a worker is live within it).")
@click.option("--json", "as_json", is_flag=True, help="Everything, every worker row included.")
@click.option("--all", "show_all", is_flag=True,
              help="Also list workers gone for more than 10 minutes (e.g. of an earlier run "
                   "with more workers).")
def status(base_dir: str, database: Optional[str], lease: float, as_json: bool,
           show_all: bool) -> None:
    """Workers, the partitions each holds, leases and lag (frames waiting)."""
    import psycopg
    from greenflow.cluster.handoff import pending
    from greenflow.cluster.listing import lease_table
    from greenflow.storage.postgres_store import redact, schema_for
    url = _database(os.path.abspath(base_dir), database)
    dsn, schema = _split(url, "--database" if database else
                         os.path.join(os.path.abspath(base_dir), "cluster", DATABASE_FILE))
    schema = schema or schema_for(os.path.abspath(base_dir), dsn)
    try:
        with psycopg.connect(dsn, autocommit=True, connect_timeout=5) as c:
            workers, leases = lease_table(c, schema, lease)
            handoff = pending(c, schema)
            counts = {}
            for table in ("flows", "inbox", "outbox", "wake", "timers"):
                try:
                    counts[table] = c.execute(f'SELECT count(*) FROM "{schema}".{table}').fetchone()[0]
                except psycopg.Error:
                    counts[table] = None
    except psycopg.Error as exc:
        raise CliError(f"cannot read the cluster's tables at {redact(dsn)}: {exc}")
    held = [l for l in leases if l.owner and l.expires_in > 0]
    import socket
    here = socket.gethostname()

    def live(w: object) -> bool:
        # A worker of this machine whose process is gone is not live, whatever its lease
        # says (killed with -9: its heartbeat counts until the lease runs out).
        return w.live and not (w.host == here and not _alive(str(w.pid)))  # type: ignore[attr-defined]
    doc = {
        "schema": schema,
        "workers": [{"name": w.name, "host": w.host, "pid": w.pid, "live": live(w),
                     "heartbeat_age": round(w.heartbeat_age, 2), "partitions": len(w.partitions),
                     "serving": w.serving if live(w) else 0, "rpc": w.rpc} for w in workers],
        "partitions": {"total": len(leases), "held": len(held),
                       "unowned": len(leases) - len(held),
                       "max_epoch": max((l.epoch for l in leases), default=0)},
        "lag": {"handoff_rows": sum(handoff.values()), "inbox_rows": counts.get("inbox"),
                "outbox_rows": counts.get("outbox"), "flows_to_wake": counts.get("wake")},
        "flows": counts.get("flows"), "timers": counts.get("timers"),
    }
    if as_json:
        click.echo(json.dumps(doc, indent=2))
        return
    click.echo(f"schema {schema}: {doc['partitions']['held']}/{doc['partitions']['total']} "
               f"partitions held, highest epoch {doc['partitions']['max_epoch']}")
    old = [w["name"] for w in doc["workers"]
           if not show_all and not w["live"] and w["heartbeat_age"] > GONE_FOR_GOOD_S]
    for w in doc["workers"]:
        if w["name"] in old:
            continue
        state = "live" if w["live"] else "gone"
        click.echo(f"  {w['name']:<10} {state:<5} pid {w['pid']} on {w['host']}  "
                   f"partitions {w['partitions']:>3} (serving {w['serving']})  "
                   f"heartbeat {w['heartbeat_age']:.1f}s ago  rpc {w['rpc'] or '-'}")
    if old:
        click.echo(f"  ({len(old)} gone for more than {GONE_FOR_GOOD_S // 60:.0f} minutes not "
                   f"listed: {', '.join(old)}; --all lists them)")
    lag = doc["lag"]
    click.echo(f"lag: {lag['handoff_rows']} frames being handed over, {lag['inbox_rows']} in "
               f"inboxes, {lag['outbox_rows']} unacknowledged outbound, "
               f"{lag['flows_to_wake']} flows to wake; {doc['flows']} unfinished flows, "
               f"{doc['timers']} timers")
