"""processes: ping-pong between two node *processes* over loopback TCP.

Two node processes (``python -m greenflow.rpc.node_process``, sync commits on, encrypted
TCP transport) are bootstrapped in a scratch directory and driven over RPC:

- flows per second: a closed loop keeping C ``Ping(peer, 1)`` flows in flight on Alice;
  completions are read from Alice's server-sent progress stream and replaced by batch
  starts (``POST /flows`` with ``count``, one durable commit per batch). Latency is from
  the start request to the ``end`` event, so it includes the RPC hops;
- message latency: one ``Ping(peer, R)`` flow doing R sequential ``send_and_receive``
  rounds. Each round is two messages, each committed (fsync) by its receiver before it
  answers; the table gives the round trip and its half, the one-way message latency;
- beside them, the in-process figure of the ``throughput`` suite: two threaded nodes in
  one interpreter joined by an in-process transport (task ``tp_threaded``).

Run: ``python -m benchmarks processes`` (once registered in ``SUITES``) or
``python -m benchmarks.processes [--quick]``.
"""
from __future__ import annotations

import queue
import shutil
import threading
import time
from typing import Any, Optional

from greenflow.benchmarks.common import SuiteResult, Table, percentile, ratio, run_worker, scratch_dir

NAME = "processes"
PING = "samples.ping.Ping"


def _lat(lat: list[float]) -> dict:
    return {"p50_ms": None if not lat else percentile(lat, 50) * 1e3,
            "p99_ms": None if not lat else percentile(lat, 99) * 1e3}


class _Ends:
    """Alice's progress stream on a thread: (flow id, arrival time) of every flow end."""

    def __init__(self, client: Any) -> None:
        self.q: "queue.SimpleQueue[tuple[str, float]]" = queue.SimpleQueue()
        self.ready = threading.Event()
        self.client = client
        # Why the stream ended before the measurement did (the node dropped it: this
        # reader fell more than the node's stream_buffer events behind), or None.
        self.lost: Optional[str] = None
        threading.Thread(target=self._run, daemon=True).start()
        if not self.ready.wait(30):
            raise TimeoutError("no progress stream from Alice")

    def _run(self) -> None:
        clock = time.perf_counter
        try:
            # Ends only: the node need not work out each trade's steps for the reader.
            for event, data in self.client.progress(None, steps=False):
                if event == "status":
                    self.ready.set()
                elif event == "end":
                    self.q.put((data["flow_id"], clock()))
                elif event == "dropped":
                    self.lost = f"the node dropped the benchmark's progress stream: {data.get('reason')}"
                    self.q.put(("", clock()))   # wakes the loop waiting for ends
                    return
        except Exception:  # noqa: BLE001 - the network is closing
            pass

    def check(self) -> None:
        """Raise if ends can no longer arrive: a measurement would stall, then report a
        rate of the flows that ended before (at high concurrency the reader, a Python
        thread, can fall behind the node's stream buffer)."""
        if self.lost is not None:
            raise RuntimeError(f"{self.lost}; measure with a lower concurrency")

    def drain(self) -> None:
        while True:
            try:
                self.q.get_nowait()
            except queue.Empty:
                return


def measure_flows(alice: Any, ends: _Ends, concurrency: int, budget: float,
                  progress: Any = None) -> dict:
    """Closed loop: ``concurrency`` Ping(Bob, 1) flows in flight for ``budget`` seconds."""
    clock = time.perf_counter

    def start(k: int) -> list[str]:
        out = alice.start_flow(PING, {"peer": "Bob", "n": 1}, count=k)
        return out["flow_ids"] if "flow_ids" in out else [out["flow_id"]]

    for fid in start(min(concurrency, 100)):        # warm-up
        alice.result(fid, wait=120)
    time.sleep(0.2)
    ends.drain()
    started: dict[str, float] = {}
    lat: list[float] = []
    t0 = ts = clock()
    for fid in start(concurrency):
        started[fid] = ts
    finished = 0
    stopping = False
    last: Optional[str] = None
    while started:
        fid, te = ends.q.get(timeout=120)
        ends.check()
        done = [(fid, te)]
        while True:
            try:
                done.append(ends.q.get_nowait())
            except queue.Empty:
                break
        k = 0
        for fid, te in done:
            if fid in started:
                lat.append(te - started.pop(fid))
                k += 1
        finished += k
        elapsed = clock() - t0
        stopping = stopping or elapsed >= budget
        if k and not stopping:
            ts = clock()
            ids = start(k)
            for f in ids:
                started[f] = ts
            last = ids[-1]
        if progress is not None and finished % 200 < k:
            progress(f"{finished:,} flows, {finished / max(elapsed, 1e-9):,.0f}/s")
    elapsed = clock() - t0
    wrong = 0
    if last is not None:
        res = alice.result(last, wait=60)
        wrong = int(res.get("result") != 1)
    return {"flows": finished, "seconds": elapsed, "flows_per_s": finished / elapsed,
            "wrong_results": wrong, **_lat(lat)}


def measure_latency(alice: Any, rounds: int) -> dict:
    """One flow of ``rounds`` sequential round trips (the start and end not counted:
    the clock runs between its first and last answer as seen by the flow's progress)."""
    t0 = time.perf_counter()
    out = alice.start_flow(PING, {"peer": "Bob", "n": rounds}, wait=600)
    elapsed = time.perf_counter() - t0
    if out.get("result") != rounds * (rounds + 1) // 2:
        return {"error": f"wrong result {out}"}
    # One more flow with 1 round gives the fixed cost (start over RPC, initiation, end).
    t1 = time.perf_counter()
    alice.start_flow(PING, {"peer": "Bob", "n": 1}, wait=60)
    fixed = time.perf_counter() - t1
    per_round = (elapsed - fixed) / max(rounds - 1, 1)
    return {"rounds": rounds, "seconds": elapsed, "round_trip_ms": per_round * 1e3,
            "message_ms": per_round * 1e3 / 2, "one_round_flow_ms": fixed * 1e3}


def run(ctx: Any) -> SuiteResult:
    from greenflow.testing.node_processes import ProcessNetwork

    quick = ctx.quick
    concs = [1, 100] if quick else [1, 100, 1000]
    budget = 1.0 if quick else 5.0
    rounds = 50 if quick else 500
    steps = len(concs) * 2 + 2
    prog = ctx.progress(NAME, steps)
    root = scratch_dir("processes")
    figures: dict[str, Any] = {"processes": {}, "in_process": {}}
    try:
        prog.step("bootstrap and start two node processes")
        with ProcessNetwork(root, ["Alice", "Bob"], apps=["samples.ping"],
                            log_level="WARNING") as net:
            net.start_all()
            alice = net.client("Alice", timeout=120)
            ends = _Ends(net.client("Alice"))
            prog.finish_step()
            for c in concs:
                prog.step(f"node processes c={c}")
                figures["processes"][str(c)] = measure_flows(alice, ends, c, budget, prog.detail)
                prog.finish_step()
            prog.step(f"message latency, {rounds} rounds")
            figures["latency"] = measure_latency(alice, rounds)
            prog.finish_step()
            figures["transport"] = {n: net.client(n).node_info()["transport"] for n in net.names}
        for c in concs:
            prog.step(f"in-process threaded nodes c={c}")
            figures["in_process"][str(c)] = run_worker(
                "tp_threaded", {"concurrency": c, "budget": budget}, on_line=prog.detail)
            prog.finish_step()
    finally:
        prog.close()
        shutil.rmtree(root, ignore_errors=True)

    tbl = Table("Ping-pong flows per second, Ping(peer, 1) from samples/ping.py, sync commits "
                "(node processes: encrypted TCP on loopback, driven over RPC)",
                ["system", "concurrency", "flows/s", "p50 ms", "p99 ms", "vs in-process"])
    ratios: dict[str, Optional[float]] = {}
    for c in concs:
        ip = figures["in_process"][str(c)]
        pr = figures["processes"][str(c)]
        r = ratio(pr.get("flows_per_s"), ip.get("flows_per_s"))
        ratios[f"processes_vs_in_process@{c}"] = r
        tbl.add("two node processes", c, pr.get("flows_per_s"), pr.get("p50_ms"), pr.get("p99_ms"), r)
        tbl.add("two threaded nodes, one process", c, ip.get("flows_per_s"), ip.get("p50_ms"),
                ip.get("p99_ms"), None)
        if "error" in ip:
            tbl.notes.append(f"in-process c={c}: {str(ip['error']).splitlines()[0][:200]}")
    lt = figures["latency"]
    lat_tbl = Table(f"Message latency between two node processes ({rounds} sequential rounds of "
                    "one Ping flow; every message committed with fsync before it is answered)",
                    ["round trip ms", "one message ms", "1-round flow over RPC ms"])
    lat_tbl.add(lt.get("round_trip_ms"), lt.get("message_ms"), lt.get("one_round_flow_ms"))
    return SuiteResult(NAME, {"concurrencies": concs, "budget_s": budget, "rounds": rounds},
                       figures, ratios, [tbl, lat_tbl])


def main(argv: Optional[list[str]] = None) -> int:
    from greenflow.benchmarks import __main__ as bench_main
    from greenflow.benchmarks import processes
    return bench_main.standalone("python -m benchmarks.processes", processes, argv,
                                 lambda p: None, lambda ctx, args: None)


if __name__ == "__main__":
    raise SystemExit(main())
