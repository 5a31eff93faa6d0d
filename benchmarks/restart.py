"""restart: time to reopen a node holding N waiting flows, and for one of them to answer
a message afterwards.

Setup (its own process): a `MockNetwork` with Alice and Bob; Alice starts N `Stepper`
flows; each plays one ping-pong round with a `StepperPong` on Bob and then both wait:
Bob's in ``receive`` for the next ping, Alice's in ``receive`` for an answer that never
comes unprompted. One of Alice's flows (the trigger) instead sleeps 60 s (virtual
clock) and then sends the second ping. The network is closed: both stores hold N
waiting flows, nothing in flight, nothing unacknowledged.

Measure (a fresh process): open Bob's node, then Alice's, from those stores (the same
code path as ``Node.open``; MockNetwork drives them without threads); count what the
reopen loaded into memory; then advance the clock past the trigger's deadline and time

1. Alice's timer firing, the trigger flow replaying and sending its ping;
2. Bob receiving that ping for a flow that is not in memory, rebuilding it by replay,
   answering and committing;
3. Alice receiving the answer and finishing.
"""
from __future__ import annotations

import gc
import os
import shutil
import time
from typing import Any, Optional

from greenflow.benchmarks.common import (SuiteResult, Table, child_progress, dir_bytes, mem, ratio, run_worker,
                     scratch_dir)

NAME = "restart"
TRIGGER_AFTER = 60.0


# ====================================================================== workers
def w_setup(base: str, n: int, batch: int = 5_000) -> dict:
    """Leave ``n`` waiting Stepper/StepperPong pairs in the stores under ``base``."""
    from greenflow.testing import MockNetwork
    from greenflow.benchmarks.harness import Stepper

    t0 = time.perf_counter()
    # One peer holds all N sessions open on Bob: beyond the default per-peer cap.
    net = MockNetwork(base, sync=False, max_inbound_sessions=None)   # contents matter, not durability
    alice, bob = net.create_node("Alice"), net.create_node("Bob")
    trigger = alice.node.start_flows([Stepper(bob.party, TRIGGER_AFTER)])[0]
    net.run_network()
    made = 1
    while made < n:
        k = min(batch, n - made)
        alice.node.start_flows([Stepper(bob.party) for _ in range(k)])
        net.run_network()
        made += k
        el = time.perf_counter() - t0
        child_progress(f"setup {made:,}/{n:,} waiting pairs, {made / el:,.0f}/s")
    seconds = time.perf_counter() - t0
    in_flight = net.in_flight
    net.close()
    # Setup wrote with sync off: flush those dirty pages now, or the first synced commit
    # of the measurement pays for writing the whole setup to disk.
    os.sync()
    return {"n": n, "trigger_id": trigger.id, "setup_seconds": seconds, "in_flight": in_flight,
            "disk_bytes": {"alice": dir_bytes(os.path.join(base, "Alice")),
                           "bob": dir_bytes(os.path.join(base, "Bob"))}}


def _resident(mock_node: Any) -> Optional[int]:
    try:
        return len(mock_node.node.scheduler.resident)
    except AttributeError:
        return None


def w_measure(base: str, trigger_id: str) -> dict:
    from greenflow.testing import MockNetwork
    from greenflow.benchmarks import harness  # noqa: F401 - the flow classes must be importable (they are)

    gc.collect()
    mem0 = mem()
    clock = time.perf_counter
    t0 = clock()
    net = MockNetwork(base, sync=True, max_inbound_sessions=None)
    bob = net.create_node("Bob")
    t_bob = clock() - t0
    t1 = clock()
    alice = net.create_node("Alice")
    t_alice = clock() - t1
    resident_after_open = {"alice": _resident(alice), "bob": _resident(bob)}
    gc.collect()
    mem1 = mem()
    net.advance_clock(TRIGGER_AFTER * 2)
    t2 = clock()
    net.run_network(max_messages=0)           # Alice: timer, replay, ping committed and sent
    t_alice_wake = clock() - t2
    t3 = clock()
    net.run_network(max_messages=1)           # Bob: ping in, rebuild by replay, answer out
    t_bob_answer = clock() - t3
    t4 = clock()
    net.run_network()                         # Alice: answer in, flow finished
    t_finish = clock() - t4
    try:
        result = alice.node.handle(trigger_id).result()
    except Exception as exc:  # noqa: BLE001 - reported, not raised
        result = f"{type(exc).__name__}: {exc}"
    resident_after = {"alice": _resident(alice), "bob": _resident(bob)}
    net.close()
    return {"open_bob_s": t_bob, "open_alice_s": t_alice,
            "resident_after_open": resident_after_open, "resident_after_answer": resident_after,
            "rss_after_open_bytes": mem1[0] - mem0[0],
            "alice_wake_and_send_s": t_alice_wake, "bob_answer_s": t_bob_answer,
            "alice_finish_s": t_finish,
            "first_answer_s": t_alice_wake + t_bob_answer + t_finish,
            "trigger_result": result, "trigger_ok": result == 3}


TASKS = {"restart_setup": w_setup, "restart_measure": w_measure}


# ====================================================================== the suite
DBOS_N, DBOS_N_QUICK = 200, 50


def sizes(ctx: Any) -> list[int]:
    if ctx.n:
        return [ctx.n]
    return [1_000] if ctx.quick else [10_000, 100_000]


def run(ctx: Any) -> SuiteResult:
    from greenflow.benchmarks import dbos_peer
    has_dbos = dbos_peer.installed()
    n_dbos = DBOS_N_QUICK if ctx.quick else DBOS_N
    ns = sizes(ctx)
    if has_dbos and n_dbos not in ns:
        ns = sorted({n_dbos, *ns})      # greenflow at DBOS's size too, for a like-for-like ratio
    prog = ctx.progress(NAME, 2 * len(ns) + (2 if has_dbos else 0))
    figures: dict[str, Any] = {}
    for n in ns:
        figures[str(n)] = _two_phase(prog, "restart_setup", "restart_measure", n)
    if has_dbos:
        figures["dbos"] = _two_phase(prog, "dbos_restart_setup", "dbos_restart_measure", n_dbos)
    prog.close()

    tbl = Table("Reopen a node holding N waiting flows, then one of them answers a message",
                ["N waiting", "reopen Bob ms", "reopen Alice ms", "loaded at open",
                 "RSS after open MiB", "Bob answers ms", "first answer ms", "result ok"])
    for n in ns:
        s, m = figures[str(n)]["setup"], figures[str(n)]["measure"]
        if "error" in s or "error" in m:
            tbl.add(n, None, None, None, None, None, None, False)
            tbl.notes.append(f"N={n:,}: {s.get('error') or m.get('error')}")
            continue
        loaded = m["resident_after_open"]
        tbl.add(n, m["open_bob_s"] * 1e3, m["open_alice_s"] * 1e3,
                f"{loaded['bob']}/{loaded['alice']}", m["rss_after_open_bytes"] / 2**20,
                m["bob_answer_s"] * 1e3, m["first_answer_s"] * 1e3, m["trigger_ok"])
    tbl.notes.append("Bob holds N StepperPong flows waiting in receive; Alice holds N Stepper flows "
                     "(N-1 waiting in receive, one sleeping until its trigger); sync on when reopened")
    tbl.notes.append("loaded at open: flows in memory after reopening, Bob/Alice (lazy restart "
                     "loads only flows with something to do)")
    tbl.notes.append("Bob answers: the ping arrives for a flow not in memory; Bob rebuilds it by "
                     "replay, answers and commits. first answer: Alice's timer fires, her flow "
                     "replays and pings, Bob answers, Alice finishes")
    tbl.notes.append("stores are read through a warm page cache (written just before by the setup)")
    tables = [tbl]
    ratios: dict[str, Optional[float]] = {}
    if has_dbos:
        d = figures["dbos"]
        t2 = Table("DBOS (SQLite): relaunch with N workflows blocked in recv, then one answers",
                   ["N waiting", "launch ms", "first answer ms", "all recovered ms",
                    "threads after", "result ok"])
        if "error" in d["setup"] or "error" in d["measure"]:
            t2.notes.append(f"not measured: {d['setup'].get('error') or d['measure'].get('error')}")
        else:
            m = d["measure"]
            t2.add(n_dbos, m["launch_s"] * 1e3, m["first_answer_s"] * 1e3,
                   m["all_recovered_s"] * 1e3, m["threads"], m["trigger_ok"])
            g = figures[str(n_dbos)]["measure"]
            if "error" not in g:
                ratios[f"a waiting flow answers after restart, DBOS / greenflow (Bob) @N={n_dbos}"] = \
                    ratio(m["first_answer_s"], g["bob_answer_s"])
                ratios[f"reopen, DBOS launch+recovery / greenflow open @N={n_dbos}"] = ratio(
                    m["all_recovered_s"], g["open_bob_s"] + g["open_alice_s"])
        t2.notes.append(f"N={n_dbos}: DBOS recovers every pending workflow at launch, each on its "
                        f"own thread; launch returns before recovery ends. first answer: send to one "
                        f"workflow until its result is read (recv poll interval "
                        f"{dbos_peer.THROUGHPUT_POLL_S} s)")
        tables.append(t2)
    if len(ns) > 1:
        a, b = figures[str(ns[0])]["measure"], figures[str(ns[-1])]["measure"]
        if "error" not in a and "error" not in b and a["open_bob_s"]:
            ratios[f"reopen time N={ns[-1]:,} / N={ns[0]:,}"] = b["open_bob_s"] / a["open_bob_s"]
            ratios[f"flows N={ns[-1]:,} / N={ns[0]:,}"] = ns[-1] / ns[0]
    not_measured = ["cold page cache (dropping caches needs root)"]
    if not has_dbos:
        not_measured.append("DBOS: the dbos package is not installed")
    else:
        not_measured.append(f"DBOS beyond N={n_dbos}: a thread per recovered workflow")
    if max(ns) < 1_000_000:
        not_measured.append("N = 1,000,000 (the target size; run with --n 1000000: setup "
                            "takes minutes)")
    return SuiteResult(NAME, {"sizes": ns, "trigger_after_s": TRIGGER_AFTER, "dbos_n": n_dbos},
                       figures, ratios, tables, not_measured)


def _two_phase(prog: Any, setup_task: str, measure_task: str, n: int) -> dict:
    """Setup in one process, measure the reopen in a fresh one, on the same files."""
    base = scratch_dir(f"restart-{n}")
    who = "DBOS" if setup_task.startswith("dbos") else "greenflow"
    try:
        prog.step(f"{who} setup: {n:,} waiting flows")
        setup = run_worker(setup_task, {"base": base, "n": n}, on_line=prog.detail)
        prog.finish_step()
        prog.step(f"{who} reopen with {n:,} waiting flows, wake one")
        if "error" in setup:
            meas: dict = {"error": "setup failed"}
        else:
            params = {"base": base, "trigger_id": setup["trigger_id"]}
            if who == "DBOS":
                params["n"] = n
            meas = run_worker(measure_task, params, on_line=prog.detail)
        prog.finish_step()
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return {"setup": setup, "measure": meas}
