"""Stopping what a ``greenflow cluster up`` of a directory left running
(``greenflow cluster down``): the ``cluster up`` itself, if it still runs (it stops its
workers and its server), else workers that outlived it (killed with -9), then the
PostgreSQL server it started in the directory. Only processes whose command line names
this directory are signalled: a pid file of a process long gone may name another."""
from __future__ import annotations

import glob
import os
import signal
import time
from typing import Optional

from greenflow.cluster.launcher import PG_DIR
from greenflow.cluster.process import cluster_dir


def _cmdline(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return fh.read().replace(b"\0", b" ")
    except OSError:
        return b""


def _pid_in(path: str) -> Optional[int]:
    try:
        with open(path, encoding="utf-8") as fh:
            return int(fh.read(32).strip() or "x")
    except (OSError, ValueError):
        return None


def _gone(pids: list[int], timeout: float) -> list[int]:
    """Waits until ``pids`` have exited or ``timeout``; those still running."""
    end = time.monotonic() + timeout
    left = list(pids)
    while left and time.monotonic() < end:
        time.sleep(0.1)
        left = [p for p in left if _cmdline(p)]
    return left


def stop_leftovers(node_dir: str, timeout: float = 60.0) -> list[str]:
    """Stop them; what was done, for the operator."""
    node_dir = os.path.abspath(node_dir)
    mine = node_dir.encode()
    said: list[str] = []
    up = _pid_in(os.path.join(cluster_dir(node_dir), "up.lock"))
    if up is not None and up != os.getpid() and b"greenflow" in _cmdline(up) \
            and b" cluster up " in _cmdline(up) + b" ":
        os.kill(up, signal.SIGTERM)
        left = _gone([up], timeout)
        said.append(f"stopped `greenflow cluster up` (process {up})" if not left else
                    f"`greenflow cluster up` (process {up}) did not stop within {timeout:.0f}s")
    workers = []
    for path in sorted(glob.glob(os.path.join(cluster_dir(node_dir), "*.pid"))):
        pid = _pid_in(path)
        cmd = _cmdline(pid) if pid is not None else b""
        if pid is not None and b"greenflow.cluster.process" in cmd and mine in cmd:
            os.kill(pid, signal.SIGTERM)
            workers.append(pid)
    left = _gone(workers, timeout)
    for pid in left:   # a worker that does not stop in time: its leases lapse anyway
        os.kill(pid, signal.SIGKILL)
    if workers:
        said.append(f"stopped {len(workers) - len(left)} worker(s)"
                    + (f", killed {len(left)} that did not stop within {timeout:.0f}s"
                       if left else ""))
    from greenflow.storage.pg_server import PgServer
    pg = PgServer(os.path.join(node_dir, PG_DIR))
    if pg.initialised() and pg.running():
        pg.stop()
        said.append(f"stopped the PostgreSQL server in {pg.data}")
    return said
