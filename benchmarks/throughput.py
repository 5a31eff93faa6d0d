"""throughput: durable ping-pong flows per second on one node pair (target: plain asyncio's rate).

Measured, each in its own fresh process, in the same run:

- greenflow on `MockNetwork` (sync commits on): waves of C flows started with one
  ``start_flows`` call, then ``run_network()``; latency is from the start call to the
  flow's end in the scheduler (its result commit follows in the same round);
- greenflow on two real threaded `Node` instances joined by an in-process transport
  (sync on): a closed loop keeping C flows in flight;
- plain asyncio (no durability): two tasks per flow exchanging the same messages
  through ``asyncio.Queue``, C flows in flight (closed loop);
- DBOS (when installed): SQLite system database, workflows using ``DBOS.send`` /
  ``DBOS.recv``, waves of C flows, at the concurrencies it handles (one OS thread per
  waiting workflow).

A ping-pong flow is ``Ping(peer, 1)`` of ``samples/ping.py``: the initiation carries
the count, then one ``send_and_receive`` round.

Also: durable suspensions per second (``Ping(peer, R)``, many rounds, sync on), and the
cost of frame capture (node option ``capture_frames`` True vs False).
"""
from __future__ import annotations

import gc
import os
import shutil
import time
from typing import Any, Optional

from greenflow.benchmarks import dbos_peer
from greenflow.benchmarks.common import SuiteResult, Table, percentile, ratio, run_worker, scratch_dir

NAME = "throughput"
ROUNDS = 1                 # send_and_receive rounds per ping-pong flow
SUSPEND_ROUNDS = 20        # rounds per flow in the suspensions measurement


def _lat_summary(lat: list[float]) -> dict:
    return {"p50_ms": None if not lat else percentile(lat, 50) * 1e3,
            "p99_ms": None if not lat else percentile(lat, 99) * 1e3}


# ====================================================================== workers
def w_greenflow_mock(concurrency: int, budget: float, rounds: int = ROUNDS, sync: bool = True,
                     capture_frames: bool = True, min_waves: int = 1,
                     profile: bool = False) -> dict:
    """Waves of ``concurrency`` Ping flows on a MockNetwork until ``budget`` seconds."""
    from greenflow.testing import MockNetwork
    from greenflow.benchmarks.common import child_progress
    from greenflow.benchmarks.harness import Ping

    base = scratch_dir("tp-mock")
    try:
        net = MockNetwork(base, sync=sync, capture_frames=capture_frames)
        alice, bob = net.create_node("Alice"), net.create_node("Bob")
        ends: dict[str, float] = {}
        clock = time.perf_counter

        def on_end(fid: str) -> None:
            ends[fid] = clock()

        alice.node.scheduler.add_flow_end_listener(on_end)
        # warm-up wave (imports, code paths, LMDB map)
        hs = alice.node.start_flows([Ping(bob.party, rounds) for _ in range(min(concurrency, 100))])
        net.run_network()
        for h in hs:
            h.result()
        expected = sum(i + 1 for i in range(rounds))
        stats0 = _stats(alice, bob)
        commits0 = _commits(alice, bob)
        lat: list[float] = []
        flows = waves = 0
        prof = None
        if profile:
            import cProfile
            prof = cProfile.Profile()
            prof.enable()
        gc.collect()
        t0, cpu0 = clock(), time.process_time()
        while True:
            ts = clock()
            hs = alice.node.start_flows([Ping(bob.party, rounds) for _ in range(concurrency)])
            net.run_network()
            for h in hs:
                lat.append(ends.pop(h.id) - ts)
            flows += concurrency
            waves += 1
            elapsed = clock() - t0
            child_progress(f"{flows:,} flows, {flows / elapsed:,.0f}/s")
            if elapsed >= budget and waves >= min_waves:
                break
        cpu = time.process_time() - cpu0
        if prof is not None:
            prof.disable()
        bad = sum(1 for h in hs if h.result() != expected)
        stats1 = _stats(alice, bob)
        out = {"flows": flows, "waves": waves, "seconds": elapsed, "flows_per_s": flows / elapsed,
               "cpu_us_per_flow": cpu / flows * 1e6, "wrong_results": bad, **_lat_summary(lat)}
        # Suspension points: Ping's `rounds` send_and_receive calls and Pong's rounds + 1
        # receives; each is a journal entry committed (synced) before the flow goes on.
        susp = flows * (2 * rounds + 1)
        out["suspensions"] = susp
        out["suspensions_per_s"] = susp / elapsed
        if stats0 is not None and stats1 is not None:
            out["scheduler_waits"] = stats1 - stats0
        c1 = _commits(alice, bob)
        if commits0 is not None and c1 is not None:
            out["commits"] = c1 - commits0
            out["commits_per_s"] = (c1 - commits0) / elapsed
        if prof is not None:
            out["profile"] = _top_functions(prof, 15)
        net.close()
        return out
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _stats(*nodes: Any) -> Optional[int]:
    try:
        return sum(n.node.scheduler.stats["suspensions"] for n in nodes)
    except (AttributeError, KeyError):
        return None


def _commits(*nodes: Any) -> Optional[int]:
    try:
        return sum(n.node.store.commits for n in nodes)
    except AttributeError:
        return None


def _top_functions(prof: Any, n: int) -> list[dict]:
    import pstats
    st = pstats.Stats(prof)
    total = st.total_tt  # type: ignore[attr-defined]
    rows = []
    for (file, line, func), (cc, nc, tt, ct, _callers) in st.stats.items():  # type: ignore[attr-defined]
        rows.append({"function": func, "file": _short(file), "line": line, "calls": nc,
                     "tottime_s": tt, "cumtime_s": ct, "tottime_pct": 100.0 * tt / total if total else 0.0})
    rows.sort(key=lambda r: -r["tottime_s"])
    return rows[:n]


def _short(path: str) -> str:
    parts = path.replace("\\", "/").split("/")
    for anchor in ("greenflow", "site-packages", "lib"):
        if anchor in parts:
            i = len(parts) - 1 - parts[::-1].index(anchor)
            return "/".join(parts[i:])
    return "/".join(parts[-2:])


def w_greenflow_threaded(concurrency: int, budget: float, rounds: int = ROUNDS) -> dict:
    """Closed loop: ``concurrency`` Ping flows in flight between two threaded nodes."""
    import queue
    from greenflow.benchmarks.common import child_progress
    from greenflow.benchmarks.harness import Ping, linked_pair

    base = scratch_dir("tp-threaded")
    alice = bob = None
    try:
        alice, bob = linked_pair(base, sync=True, threaded=True)
        done: "queue.SimpleQueue[tuple[str, float]]" = queue.SimpleQueue()
        clock = time.perf_counter
        alice.scheduler.add_flow_end_listener(lambda fid: done.put((fid, clock())))
        expected = sum(i + 1 for i in range(rounds))
        # warm-up
        for h in alice.start_flows([Ping(bob.party, rounds) for _ in range(min(concurrency, 100))]):
            h.result(timeout=120)
        while True:
            try:
                done.get_nowait()
            except queue.Empty:
                break
        started: dict[str, float] = {}
        lat: list[float] = []
        gc.collect()
        t0, cpu0 = clock(), time.process_time()
        ts = clock()
        for h in alice.start_flows([Ping(bob.party, rounds) for _ in range(concurrency)]):
            started[h.id] = ts
        finished = 0
        last_handle = None
        stop_starting = False
        while started:
            fid, te = done.get(timeout=120)
            if fid not in started:
                continue
            lat.append(te - started.pop(fid))
            finished += 1
            k = 1
            while True:  # gather every completion already queued: one start commit for them
                try:
                    fid2, te2 = done.get_nowait()
                except queue.Empty:
                    break
                if fid2 in started:
                    lat.append(te2 - started.pop(fid2))
                    finished += 1
                    k += 1
            elapsed = clock() - t0
            if elapsed >= budget:
                stop_starting = True
            if not stop_starting:
                ts = clock()
                hs = alice.start_flows([Ping(bob.party, rounds) for _ in range(k)])
                for h in hs:
                    started[h.id] = ts
                last_handle = hs[-1]
            if finished % 500 < k:
                child_progress(f"{finished:,} flows, {finished / max(elapsed, 1e-9):,.0f}/s")
        elapsed = clock() - t0
        cpu = time.process_time() - cpu0
        bad = 0
        if last_handle is not None and last_handle.result(timeout=60) != expected:
            bad = 1
        return {"flows": finished, "seconds": elapsed, "flows_per_s": finished / elapsed,
                "cpu_us_per_flow": cpu / max(finished, 1) * 1e6,
                "wrong_results": bad, **_lat_summary(lat)}
    finally:
        for n in (alice, bob):
            if n is not None:
                n.close()
        shutil.rmtree(base, ignore_errors=True)


def w_asyncio(concurrency: int, budget: float, rounds: int = ROUNDS) -> dict:
    """The same ping-pong in plain asyncio: two tasks per flow, two queues, no
    durability; a closed loop keeping ``concurrency`` flows in flight."""
    import asyncio
    from greenflow.benchmarks.common import child_progress

    async def ping(n: int, to_pong: asyncio.Queue, to_ping: asyncio.Queue) -> int:
        to_pong.put_nowait(n)
        total = 0
        for i in range(n):
            to_pong.put_nowait(i)
            total += await to_ping.get()
        return total

    async def pong(to_pong: asyncio.Queue, to_ping: asyncio.Queue) -> None:
        n = await to_pong.get()
        for _ in range(n):
            to_ping.put_nowait(await to_pong.get() + 1)

    async def one_flow(n: int) -> int:
        a: asyncio.Queue = asyncio.Queue()
        b: asyncio.Queue = asyncio.Queue()
        responder = asyncio.ensure_future(pong(a, b))
        initiator = asyncio.ensure_future(ping(n, a, b))
        r = await initiator
        await responder
        return r

    async def main() -> dict:
        clock = time.perf_counter
        expected = sum(i + 1 for i in range(rounds))
        for _ in range(100):
            await one_flow(rounds)
        lat: list[float] = []
        state = {"flows": 0, "bad": 0, "stop": False}
        t0, cpu0 = clock(), time.process_time()

        async def worker() -> None:
            while not state["stop"]:
                ts = clock()
                r = await one_flow(rounds)
                lat.append(clock() - ts)
                state["flows"] += 1
                if r != expected:
                    state["bad"] += 1
                if state["flows"] % 2000 == 0:
                    el = clock() - t0
                    child_progress(f"{state['flows']:,} flows, {state['flows'] / el:,.0f}/s")
                    if el >= budget:
                        state["stop"] = True

        async def timer() -> None:
            await asyncio.sleep(budget)
            state["stop"] = True

        t = asyncio.ensure_future(timer())
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        t.cancel()
        elapsed = clock() - t0
        cpu = time.process_time() - cpu0
        return {"flows": state["flows"], "seconds": elapsed,
                "flows_per_s": state["flows"] / elapsed, "wrong_results": state["bad"],
                "cpu_us_per_flow": cpu / max(state["flows"], 1) * 1e6, **_lat_summary(lat)}

    gc.collect()
    return asyncio.run(main())


# The store operations one durable Ping/Pong pair makes (counted from the batches a
# MockNetwork run commits, with what the LMDB writer makes of them: see
# benchmarks/README.md): (db, puts, value bytes, deletes). Initiator: its start record,
# its checkpoint header (at the start and when it waits), journal chunk and code
# locations, dropped at its end with its wake flag (set at the start, cleared when it
# first waits), two frames in the outbox until acknowledged, its result; responder: its
# one frame, its result and its session's finished marker. Expiry records are shared by
# everything due at one time (about one per 64 results), left out.
FLOOR_OPS = (("flows", 2, 342, 1), ("logic", 1, 173, 1), ("journal", 1, 208, 1),
             ("frames", 1, 384, 1), ("outbox", 3, 103, 3), ("results", 2, 196, 0),
             ("sessions", 1, 74, 0), ("wake", 1, 32, 2))
# Commits per wave, in order, and whose: the initiator's start, the responder's answer,
# the initiator's end, the responder's acknowledgements, ... (0: initiator, 1: responder).
FLOOR_COMMITS = (0, 1, 0, 1, 0)


def w_floor(concurrency: int, budget: float, rounds: int = ROUNDS) -> dict:
    """The storage floor of durable ping-pong: exactly the LMDB writes and synced group
    commits greenflow's ping-pong makes (two stores, the `FLOOR_COMMITS` of a wave of
    ``concurrency`` flows, ``FLOOR_OPS`` per flow), with no runtime at all: no flows,
    greenlets, pickling or frames. Nothing durable in Python on LMDB can be faster."""
    import lmdb
    from greenflow.benchmarks.common import child_progress

    base = scratch_dir("tp-floor")
    try:
        envs = []
        for name in ("a", "b"):
            env = lmdb.open(os.path.join(base, name), map_size=1 << 30, max_dbs=16,
                            sync=True, metasync=True, readahead=False)
            envs.append((env, {db: env.open_db(db.encode()) for db, *_ in FLOOR_OPS}))
        values = {db: os.urandom(size) for db, _n, size, _d in FLOOR_OPS}
        # Spread each flow's ops over the commits of its two nodes, as the runtime does.
        plan: list[list[tuple[str, int, int]]] = [[] for _ in FLOOR_COMMITS]
        slot = 0
        for db, puts, _size, dels in FLOOR_OPS:
            for _ in range(puts):
                plan[slot % len(plan)].append((db, 1, 0))
                slot += 1
            for _ in range(dels):
                plan[(slot + 2) % len(plan)].append((db, 0, 1))
                slot += 1
        flows = 0
        clock = time.perf_counter
        t0, cpu0 = clock(), time.process_time()
        seq = 0
        while True:
            keys = [b"%032d" % (seq + i) for i in range(concurrency)]
            seq += concurrency
            for i, ops in enumerate(plan):
                env, dbs = envs[FLOOR_COMMITS[i]]
                with env.begin(write=True) as txn:
                    for k in keys:
                        for j, (db, put, _dele) in enumerate(ops):
                            kk = k + b"%d" % j
                            if put:
                                txn.put(kk, values[db], db=dbs[db])
                            else:
                                txn.delete(kk, db=dbs[db])
            flows += concurrency
            elapsed = clock() - t0
            if flows % max(concurrency, 2000) < concurrency:
                child_progress(f"{flows:,} flows, {flows / elapsed:,.0f}/s")
            if elapsed >= budget:
                break
        for env, _ in envs:
            env.close()
        return {"flows": flows, "seconds": elapsed, "flows_per_s": flows / elapsed,
                "cpu_us_per_flow": (time.process_time() - cpu0) / flows * 1e6,
                "commits": len(FLOOR_COMMITS) * (flows // concurrency),
                "store_ops_per_flow": sum(p + d for _db, p, _s, d in FLOOR_OPS)}
    finally:
        shutil.rmtree(base, ignore_errors=True)


TASKS = {"tp_mock": w_greenflow_mock, "tp_threaded": w_greenflow_threaded,
         "tp_asyncio": w_asyncio, "tp_floor": w_floor}


# ====================================================================== the suite
SYSTEMS = (  # key, label, worker task, extra params
    ("mock", "greenflow MockNetwork", "tp_mock", {}),
    ("threaded", "greenflow 2 threaded nodes", "tp_threaded", {}),
    ("mock_nosync", "greenflow MockNetwork, sync off", "tp_mock", {"sync": False}),
    ("asyncio", "asyncio (no durability)", "tp_asyncio", {}),
    ("floor", "storage floor: its LMDB writes + synced commits only", "tp_floor", {}),
    ("design_floor", "design floor: greenlets + pickle + LMDB skeleton", "tp_design_floor", {}),
)
FLOOR_NAMES = {"floor": "storage_floor", "design_floor": "design_floor"}
GREENFLOW_DURABLE = ("mock", "threaded")


def run(ctx: Any) -> SuiteResult:
    quick = ctx.quick
    concs = [1, 100] if quick else [1, 100, 10_000]
    budget = 0.3 if quick else 3.0
    dbos_concs = [1, 10] if quick else [1, 10, 100]
    dbos_budget = 0.5 if quick else 5.0
    susp_c = 100 if quick else 1000
    has_dbos = dbos_peer.installed()

    steps: list[tuple[str, str, str, dict]] = []   # (result key, label, task, params)
    for c in concs:
        for key, label, task, extra in SYSTEMS:
            params = {"concurrency": c, "budget": budget, **extra}
            if task == "tp_mock":
                params["min_waves"] = 1 if quick else 2
            steps.append((f"{key}@{c}", f"{label} c={c}", task, params))
    if has_dbos:
        steps.append(("dbos", f"DBOS c={dbos_concs}", "dbos_pingpong",
                      {"concurrencies": dbos_concs, "budget": dbos_budget}))
    for frames in (True, False):
        steps.append((f"susp_{frames}", f"suspensions capture_frames={frames}", "tp_mock",
                      {"concurrency": susp_c, "budget": budget, "rounds": SUSPEND_ROUNDS,
                       "capture_frames": frames, "min_waves": 2}))
    if ctx.profile:
        steps.append(("profile", "profile greenflow MockNetwork c=100", "tp_mock",
                      {"concurrency": 100, "budget": budget, "profile": True}))

    prog = ctx.progress(NAME, len(steps))
    raw: dict[str, dict] = {}
    for key, label, task, params in steps:
        prog.step(label)
        raw[key] = run_worker(task, params, on_line=prog.detail)
        prog.finish_step()
    prog.close()

    figures: dict[str, Any] = {key: {str(c): raw[f"{key}@{c}"] for c in concs}
                               for key, _l, _t, _e in SYSTEMS}
    figures["dbos"] = raw.get("dbos") or {"error": "dbos is not installed (pip install dbos)",
                                          "not_installed": True}
    susp_on, susp_off = raw["susp_True"], raw["susp_False"]
    figures["suspensions"] = {"capture_frames_on": susp_on, "capture_frames_off": susp_off,
                              "rounds_per_flow": SUSPEND_ROUNDS, "concurrency": susp_c}
    profile = raw.get("profile")
    if profile is not None:
        figures["profile"] = profile

    def rate(d: Any) -> Optional[float]:
        return d.get("flows_per_s") if isinstance(d, dict) else None

    ratios: dict[str, Optional[float]] = {}
    tbl = Table(f"Durable ping-pong flows per second, one node pair (Ping(peer, {ROUNDS}) "
                f"from samples/ping.py; greenflow with sync commits unless said)",
                ["system", "concurrency", "flows/s", "p50 ms", "p99 ms", "CPU us/flow", "vs asyncio"])
    for c in concs:
        a = rate(figures["asyncio"][str(c)])
        for key, label, _t, _e in SYSTEMS:
            d = figures[key][str(c)]
            if "error" in d:
                tbl.add(label, c, None, None, None, None, None)
                tbl.notes.append(f"{label} c={c}: {d['error'].splitlines()[0][:200]}")
                continue
            r = None if key == "asyncio" else ratio(rate(d), a)
            tbl.add(label, c, rate(d), d.get("p50_ms"), d.get("p99_ms"), d.get("cpu_us_per_flow"), r)
            if r is not None:
                name = FLOOR_NAMES.get(key, f"greenflow_{key}")
                ratios[f"{name}/asyncio@c={c}"] = r
    dbos_rates: dict[int, float] = {}
    if "error" not in figures["dbos"]:
        for c in dbos_concs:
            d = figures["dbos"].get(str(c))
            if d:
                dbos_rates[c] = d["flows_per_s"]
                a_d = figures["asyncio"].get(str(c))
                tbl.add("DBOS (SQLite)", c, d["flows_per_s"], d.get("p50_ms"), d.get("p99_ms"), None,
                        ratio(d["flows_per_s"], rate(a_d)) if a_d else None)
        tbl.notes.append(
            f"DBOS runs at concurrency {', '.join(map(str, dbos_concs))} only: each waiting "
            f"workflow holds an OS thread and recv on SQLite polls (notification poll interval "
            f"set to {figures['dbos'].get('poll_interval_s')} s; its default is 1 s)")
    else:
        tbl.notes.append(f"DBOS not measured: {figures['dbos']['error']}")
    tbl.notes.append("MockNetwork: waves of C flows (one start_flows, then run_network); threaded "
                     "pair and asyncio: closed loop with C flows in flight")
    tbl.notes.append("latency: start call to the flow's end on the initiating node")
    tbl.notes.append("CPU us/flow: the process's CPU time per flow (both nodes, fsync waits "
                     "excluded); steadier than flows/s on a shared machine, so the figure to "
                     "compare code changes by")
    tbl.notes.append("storage floor: the same store writes and synced group commits as "
                     f"greenflow's ping-pong (two LMDB stores, {len(FLOOR_COMMITS)} commits per wave, "
                     f"{sum(p + d for _db, p, _s, d in FLOOR_OPS)} puts/deletes per flow) with "
                     "no runtime at all: a bound no durable runtime on LMDB in Python can beat")
    tbl.notes.append("design floor: the least the design itself costs (a greenlet per flow in "
                     "flight, reused once its flow ends, a C-pickled journal per suspension, "
                     "msgpack messages released after synced LMDB group commits) as an ~80-line "
                     "skeleton with none of greenflow's code "
                     "and none of its guarantees beyond that (benchmarks/design_floor.py): a "
                     "bound no greenlet-and-checkpoint runtime in CPython can beat")

    def best(keys: tuple, cs: Any = concs) -> float:
        return max((rate(figures[k].get(str(c))) or 0.0) for k in keys for c in cs)

    best_gf = best(GREENFLOW_DURABLE)
    ratios["greenflow_best/asyncio_best"] = ratio(best_gf, best(("asyncio",)))
    for c, r in dbos_rates.items():
        for key in GREENFLOW_DURABLE:
            d = figures[key].get(str(c))
            if d is not None:
                ratios[f"greenflow_{key}/dbos@c={c}"] = ratio(rate(d), r)
    if dbos_rates:
        ratios["greenflow_best/dbos_best"] = ratio(best_gf, max(dbos_rates.values()))

    t2 = Table(f"Durable suspensions per second (MockNetwork, sync on, Ping(peer, {SUSPEND_ROUNDS}) "
               f"x {susp_c} concurrent)",
               ["capture_frames", "suspensions/s", "group commits/s", "suspensions/commit",
                "flows/s", "us per suspension"])
    for d, label in ((susp_on, True), (susp_off, False)):
        if "error" in d:
            t2.add(label, None, None, None, None, None)
            t2.notes.append(d["error"])
            continue
        sps = d.get("suspensions_per_s")
        t2.add(label, sps, d.get("commits_per_s"),
               ratio(d.get("suspensions"), d.get("commits")), d.get("flows_per_s"),
               None if not sps else 1e6 / sps)
    on_s, off_s = susp_on.get("suspensions_per_s"), susp_off.get("suspensions_per_s")
    ratios["suspensions capture_frames off/on"] = ratio(off_s, on_s)
    if on_s and off_s:
        figures["suspensions"]["frame_capture_us_per_suspension"] = 1e6 / on_s - 1e6 / off_s
        t2.notes.append(f"frame capture costs {1e6 / on_s - 1e6 / off_s:.1f} us per suspension "
                        f"({(1 - on_s / off_s) * 100:.0f}% of the suspension rate)")
    t2.notes.append(f"suspensions: the receive / send_and_receive calls of both flows "
                    f"({2 * SUSPEND_ROUNDS + 1} per Ping/Pong pair), each journaled and in a synced "
                    f"group commit before the flow's messages leave")

    tables = [tbl, t2]
    if profile is not None and "profile" in profile:
        t3 = Table("cProfile: greenflow MockNetwork ping-pong c=100, top functions by own time",
                   ["function", "file:line", "calls", "own s", "own %", "cum s"])
        for p in profile["profile"]:
            t3.add(p["function"], f"{p['file']}:{p['line']}", p["calls"], p["tottime_s"],
                   p["tottime_pct"], p["cumtime_s"])
        tables.append(t3)

    not_measured = []
    if not has_dbos:
        not_measured.append("DBOS: the dbos package is not installed")
    not_measured.append("DBOS at concurrency 10,000: one OS thread per waiting workflow and "
                        "SQLite polling make it impractical on this machine")
    not_measured.append("greenflow between node processes: the threaded pair here uses an "
                        "in-process link; the processes suite measures two processes over TCP")
    return SuiteResult(NAME, {"concurrency": concs, "budget_s": budget, "rounds": ROUNDS,
                              "dbos_concurrency": dbos_concs, "suspension_rounds": SUSPEND_ROUNDS},
                       figures, ratios, tables, not_measured)
