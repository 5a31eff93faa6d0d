"""The DBOS peer: the same workloads written as DBOS workflows on a SQLite system
database, run in worker processes like every other variant. Imported only inside
those workers, so the suites work without ``dbos`` installed.

DBOS runs every workflow on an OS thread; on SQLite a workflow blocked in
``DBOS.recv`` is woken by a poller (``notification_listener_polling_interval_sec``,
1 s by default). The throughput runs lower it to 0.01 s so DBOS is not measured
waiting for its poll; the other runs keep DBOS's defaults.
"""
from __future__ import annotations

import gc
import logging
import os
import threading
import time
from typing import Any, Callable, Optional

from greenflow.benchmarks.common import child_progress, mem, percentile, scratch_dir

THROUGHPUT_POLL_S = 0.01


def installed() -> bool:
    import importlib.util
    return importlib.util.find_spec("dbos") is not None


class _Workflows:
    """The workflows, registered once per process (before ``DBOS.launch``)."""

    def __init__(self, DBOS: Any) -> None:
        self.entered = 0
        self.lock = threading.Lock()
        wf = self

        @DBOS.workflow()
        def gf_pong(ping_id: str) -> None:
            n = DBOS.recv("m")
            for _ in range(n):
                x = DBOS.recv("m")
                DBOS.send(ping_id, x + 1, "m")

        @DBOS.workflow()
        def gf_ping(n: int) -> int:
            peer = DBOS.start_workflow(gf_pong, DBOS.workflow_id)
            DBOS.send(peer.workflow_id, n, "m")
            total = 0
            for i in range(n):
                DBOS.send(peer.workflow_id, i, "m")
                total += DBOS.recv("m")
            return total

        @DBOS.workflow()
        def gf_held(i: int) -> Any:
            with wf.lock:
                wf.entered += 1
            v = DBOS.recv("m", timeout_seconds=86_400)
            return None if v is None else v + 1

        self.ping, self.pong, self.held = gf_ping, gf_pong, gf_held


def open_dbos(base: str, poll_interval: Optional[float] = None) -> tuple[Any, _Workflows]:
    os.makedirs(base, exist_ok=True)
    os.chdir(base)
    from dbos import DBOS
    logging.getLogger("dbos").setLevel(logging.WARNING)
    config: dict = {"name": "gfbench", "system_database_url": f"sqlite:///{base}/dbos.sqlite",
                    "run_admin_server": False, "log_level": "WARNING"}
    if poll_interval is not None:
        config["notification_listener_polling_interval_sec"] = poll_interval
    DBOS(config=config)  # type: ignore[arg-type]
    wfs = _Workflows(DBOS)
    DBOS.launch()
    return DBOS, wfs


def _wait(cond: Callable[[], bool], timeout: float = 600) -> None:
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            raise TimeoutError("DBOS did not get there in time")
        time.sleep(0.005)


def sqlite_bytes(base: str) -> int:
    total = 0
    for f in os.listdir(base):
        if f.startswith("dbos.sqlite"):
            total += os.stat(os.path.join(base, f)).st_size
    return total


# ====================================================================== workers
def w_pingpong(concurrencies: list[int], budget: float, rounds: int = 1,
               poll_interval: float = THROUGHPUT_POLL_S) -> dict:
    """Waves of C ping-pong workflow pairs; latency from start to the initiator's end."""
    DBOS, wf = open_dbos(scratch_dir("dbos-tp"), poll_interval)
    clock = time.perf_counter
    expected = sum(i + 1 for i in range(rounds))
    for h in [DBOS.start_workflow(wf.ping, rounds) for _ in range(2)]:
        h.get_result()
    results: dict[str, Any] = {}
    for c in concurrencies:
        lat: list[float] = []
        flows = bad = 0
        t0 = clock()
        while True:
            ts = clock()
            hs = [DBOS.start_workflow(wf.ping, rounds) for _ in range(c)]
            ends: dict[int, float] = {}
            for i, h in enumerate(hs):
                h.future.add_done_callback(lambda _f, i=i: ends.__setitem__(i, clock()))
            bad += sum(1 for h in hs if h.get_result() != expected)
            lat.extend(ends[i] - ts for i in range(len(hs)))
            flows += c
            elapsed = clock() - t0
            child_progress(f"DBOS c={c}: {flows:,} flows, {flows / elapsed:,.1f}/s")
            if elapsed >= budget:
                break
        results[str(c)] = {"flows": flows, "seconds": elapsed, "flows_per_s": flows / elapsed,
                           "wrong_results": bad, "p50_ms": percentile(lat, 50) * 1e3,
                           "p99_ms": percentile(lat, 99) * 1e3}
    results["threads_at_end"] = threading.active_count()
    results["poll_interval_s"] = poll_interval
    return results


def _start_held(DBOS: Any, wf: _Workflows, n: int) -> list[str]:
    ids = []
    for i in range(n):
        ids.append(DBOS.start_workflow(wf.held, i).workflow_id)
        if (i + 1) % 100 == 0:
            child_progress(f"{i + 1:,}/{n:,} workflows started, {wf.entered:,} in recv")
    _wait(lambda: wf.entered >= n)
    return ids


def w_held(n: int) -> dict:
    """N workflows blocked in recv: RSS each, creation rate, threads."""
    DBOS, wf = open_dbos(scratch_dir("dbos-held"))
    warm = _start_held(DBOS, wf, 5)
    for wid in warm:
        DBOS.send(wid, 1, "m")
    for wid in warm:
        DBOS.retrieve_workflow(wid).get_result(polling_interval_sec=0.01)
    time.sleep(0.5)
    wf.entered = 0
    gc.collect()
    before = mem()
    threads0 = threading.active_count()
    t0 = time.perf_counter()
    _start_held(DBOS, wf, n)
    seconds = time.perf_counter() - t0
    time.sleep(1.0)  # let the last ones reach recv's wait
    gc.collect()
    after = mem()
    return {"n": n, "rss_before": before[0], "rss_after": after[0],
            "bytes_per_flow": (after[0] - before[0]) / n,
            "anon_bytes_per_flow": (after[1] - before[1]) / n,
            "create_seconds": seconds, "created_per_s": n / seconds,
            "threads_added": threading.active_count() - threads0}


def w_restart_setup(base: str, n: int) -> dict:
    """Leave N workflows blocked in recv in the SQLite file, then cut the power."""
    DBOS, wf = open_dbos(base)
    empty = sqlite_bytes(base)
    t0 = time.perf_counter()
    ids = _start_held(DBOS, wf, n)
    return {"n": n, "setup_seconds": time.perf_counter() - t0, "trigger_id": ids[0],
            "sqlite_bytes": sqlite_bytes(base), "sqlite_bytes_empty": empty}


def w_restart_measure(base: str, trigger_id: str, n: int) -> dict:
    """Relaunch on that file: launch time, one workflow answering a message, and every
    pending workflow back in recv (DBOS recovers them all at launch)."""
    import dbos  # noqa: F401 - imported before the clock starts
    t0 = time.perf_counter()
    DBOS, wf = open_dbos(base, THROUGHPUT_POLL_S)
    t_launch = time.perf_counter() - t0
    t1 = time.perf_counter()
    DBOS.send(trigger_id, 2, "m")
    result = DBOS.retrieve_workflow(trigger_id).get_result(polling_interval_sec=0.005)
    t_answer = time.perf_counter() - t1
    _wait(lambda: wf.entered >= n)
    t_all = time.perf_counter() - t0
    return {"launch_s": t_launch, "first_answer_s": t_answer, "all_recovered_s": t_all,
            "threads": threading.active_count(), "trigger_ok": result == 3}


TASKS = {"dbos_pingpong": w_pingpong, "dbos_held": w_held,
         "dbos_restart_setup": w_restart_setup, "dbos_restart_measure": w_restart_measure}
