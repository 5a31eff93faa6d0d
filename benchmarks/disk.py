"""disk: bytes on disk per waiting flow, and store growth over a long run of completed
flows.

- *Waiting flows*: the `restart` suite's setup (N `Stepper` flows on Alice, N
  `StepperPong` on Bob, all waiting in ``receive``); then each store's LMDB databases
  are read: live bytes (branch + leaf + overflow pages) and entries, per database.
- *Long run*: rounds of ping-pong flows on a `MockNetwork`; after each round, every
  store's live bytes, high-water mark (the file never shrinks; LMDB reuses freed pages)
  and entries per database, and the process RSS. Between rounds the virtual clock moves
  on by a quarter of the node's result retention, so records of finished flows reach
  their expiry during the run: a store that does not leak levels off.
"""
from __future__ import annotations

import gc
import os
import shutil
import time
from typing import Any, Optional

from greenflow.benchmarks.common import SuiteResult, Table, child_progress, dir_bytes, mem, ratio, run_worker, scratch_dir

NAME = "disk"


def store_usage(env: Any) -> dict:
    """Live bytes and entries per named database of an open LMDB environment."""
    import lmdb
    out: dict[str, Any] = {"dbs": {}}
    with env.begin() as txn:
        names = [bytes(k) for k, _ in txn.cursor()]
        live = 0
        for name in names:
            try:
                db = env.open_db(name, txn=txn, create=False)
            except lmdb.Error:
                continue
            st = txn.stat(db)
            b = (st["branch_pages"] + st["leaf_pages"] + st["overflow_pages"]) * st["psize"]
            out["dbs"][name.decode(errors="replace")] = {"entries": st["entries"], "bytes": b}
            live += b
    info, st = env.info(), env.stat()
    out["live_bytes"] = live
    out["high_water_bytes"] = (info["last_pgno"] + 1) * st["psize"]
    out["map_size"] = info["map_size"]
    return out


def read_store(path: str) -> dict:
    import lmdb
    env = lmdb.open(path, readonly=True, lock=False, max_dbs=64, subdir=True)
    try:
        out = store_usage(env)
    finally:
        env.close()
    out["allocated_bytes"] = dir_bytes(path)
    return out


def _find_store(node_dir: str) -> str:
    for root, _dirs, files in os.walk(node_dir):
        if "data.mdb" in files:
            return root
    raise FileNotFoundError(f"no LMDB store under {node_dir}")


# ====================================================================== workers
def w_waiting(n: int) -> dict:
    from greenflow.benchmarks.restart import w_setup
    base = scratch_dir("disk-wait")
    try:
        setup = w_setup(base, n)
        out: dict[str, Any] = {"n": n, "setup_seconds": setup["setup_seconds"]}
        for name in ("Alice", "Bob"):
            out[name.lower()] = read_store(_find_store(os.path.join(base, name)))
        return out
    finally:
        shutil.rmtree(base, ignore_errors=True)


def w_growth(rounds: int, per_round: int, sync: bool = False) -> dict:
    from greenflow.testing import MockNetwork
    from greenflow.benchmarks.harness import Ping

    base = scratch_dir("disk-growth")
    try:
        net = MockNetwork(base, sync=sync)
        alice, bob = net.create_node("Alice"), net.create_node("Bob")
        retention = getattr(alice.node.scheduler, "retention", None)
        step = retention / 4 if retention else 0.0
        samples = []
        gc.collect()
        mem0 = mem()
        t0 = time.perf_counter()
        done = 0
        for r in range(rounds):
            left = per_round
            while left:
                k = min(left, 1_000)
                hs = alice.node.start_flows([Ping(bob.party, 1) for _ in range(k)])
                net.run_network()
                left -= k
                done += k
            bad = sum(1 for h in hs if h.result() != 1)
            if step:
                net.advance_clock(step)
                net.run_network()   # a round with nothing to do still sweeps expired records
            gc.collect()
            sample = {"round": r + 1, "completed": done, "wrong_results": bad,
                      "rss_growth_bytes": mem()[0] - mem0[0],
                      "anon_growth_bytes": mem()[1] - mem0[1],
                      "virtual_seconds": (r + 1) * step}
            for name, mn in (("alice", alice), ("bob", bob)):
                sample[name] = store_usage(mn.node.store.env)
            samples.append(sample)
            el = time.perf_counter() - t0
            child_progress(f"round {r + 1}/{rounds}: {done:,} flows completed, {done / el:,.0f}/s")
        net.close()
        return {"rounds": rounds, "per_round": per_round, "sync": sync,
                "retention_s": retention, "clock_step_s": step, "seconds": time.perf_counter() - t0,
                "samples": samples}
    finally:
        shutil.rmtree(base, ignore_errors=True)


TASKS = {"disk_waiting": w_waiting, "disk_growth": w_growth}


# ====================================================================== the suite
def run(ctx: Any) -> SuiteResult:
    n = ctx.n or (1_000 if ctx.quick else 10_000)
    rounds, per_round = (8, 300) if ctx.quick else (16, 5_000)
    from greenflow.benchmarks import dbos_peer
    from greenflow.benchmarks.restart import DBOS_N, DBOS_N_QUICK
    has_dbos = dbos_peer.installed()
    n_dbos = DBOS_N_QUICK if ctx.quick else DBOS_N
    prog = ctx.progress(NAME, 3 if has_dbos else 2)
    prog.step(f"{n:,} waiting flow pairs")
    waiting = run_worker("disk_waiting", {"n": n}, on_line=prog.detail)
    prog.finish_step()
    dbos: dict = {"error": "the dbos package is not installed", "not_installed": True}
    if has_dbos:
        prog.step(f"DBOS: {n_dbos:,} workflows waiting in recv")
        base = scratch_dir("disk-dbos")
        try:
            dbos = run_worker("dbos_restart_setup", {"base": base, "n": n_dbos}, on_line=prog.detail)
        finally:
            shutil.rmtree(base, ignore_errors=True)
        prog.finish_step()
    prog.step(f"long run: {rounds} rounds x {per_round:,} completed flows")
    growth = run_worker("disk_growth", {"rounds": rounds, "per_round": per_round},
                        on_line=prog.detail)
    prog.finish_step()
    prog.close()
    figures: dict[str, Any] = {"waiting": waiting, "growth": growth, "dbos_waiting": dbos}
    ratios: dict[str, Optional[float]] = {}
    tables = []

    t1 = Table(f"Bytes on disk per waiting flow ({n:,} waiting flows per node)",
               ["node", "live B/flow", "high-water B/flow", "file B/flow", "largest databases (B/flow)"])
    if "error" in waiting:
        t1.notes.append(f"not measured: {waiting['error'][:300]}")
    else:
        for name, role in (("alice", "Alice (initiators)"), ("bob", "Bob (responders)")):
            s = waiting[name]
            top = sorted(s["dbs"].items(), key=lambda kv: -kv[1]["bytes"])[:4]
            t1.add(role, s["live_bytes"] / n, s["high_water_bytes"] / n, s["allocated_bytes"] / n,
                   ", ".join(f"{k} {v['bytes'] / n:,.0f}" for k, v in top))
            figures.setdefault("bytes_per_waiting_flow", {})[name] = s["live_bytes"] / n
        if "error" not in dbos:
            per = (dbos["sqlite_bytes"] - dbos["sqlite_bytes_empty"]) / dbos["n"]
            t1.add(f"DBOS (SQLite, N={dbos['n']:,})", None, None, per,
                   "SQLite file growth from the empty schema")
            figures["dbos_bytes_per_waiting_workflow"] = per
            for name in ("alice", "bob"):
                ratios[f"disk per waiting flow: DBOS file / greenflow {name} file"] = ratio(
                    per, waiting[name]["allocated_bytes"] / n)
        elif has_dbos:
            t1.notes.append(f"DBOS not measured: {dbos['error'][:200]}")
        t1.notes.append("live: pages in use by the databases; high-water: the data file's used "
                        "extent; file: blocks allocated (includes LMDB's preallocation)")
    tables.append(t1)

    t2 = Table(f"Store growth over a long run of completed ping-pong flows "
               f"({rounds} rounds x {per_round:,})",
               ["completed", "virtual days", "Alice live KiB", "Alice high-water KiB",
                "Bob live KiB", "results", "sessions", "expiry", "RSS growth MiB", "anon growth MiB"])
    if "error" in growth:
        t2.notes.append(f"not measured: {growth['error'][:300]}")
    else:
        samples = growth["samples"]
        show = samples if len(samples) <= 8 else samples[::max(1, len(samples) // 6)] + [samples[-1]]
        seen = set()
        for s in show:
            if s["round"] in seen:
                continue
            seen.add(s["round"])
            dbs = s["alice"]["dbs"]
            t2.add(s["completed"], s["virtual_seconds"] / 86_400, s["alice"]["live_bytes"] / 1024,
                   s["alice"]["high_water_bytes"] / 1024, s["bob"]["live_bytes"] / 1024,
                   dbs.get("results", {}).get("entries"), dbs.get("sessions", {}).get("entries"),
                   dbs.get("expiry", {}).get("entries"), s["rss_growth_bytes"] / 2**20,
                   s["anon_growth_bytes"] / 2**20)
        first, last = samples[0], samples[-1]
        mid = samples[len(samples) // 2]
        dflows = last["completed"] - mid["completed"]
        slope = (last["alice"]["live_bytes"] + last["bob"]["live_bytes"]
                 - mid["alice"]["live_bytes"] - mid["bob"]["live_bytes"]) / dflows if dflows else None
        early = (mid["alice"]["live_bytes"] + mid["bob"]["live_bytes"]
                 - first["alice"]["live_bytes"] - first["bob"]["live_bytes"]) / max(
                     1, mid["completed"] - first["completed"])
        figures["live_bytes_per_completed_flow_first_half"] = early
        figures["live_bytes_per_completed_flow_second_half"] = slope
        figures["rss_bytes_per_completed_flow"] = last["rss_growth_bytes"] / last["completed"]
        figures["anon_bytes_per_completed_flow"] = last["anon_growth_bytes"] / last["completed"]
        ratios["store growth per flow: second half / first half"] = ratio(slope, early)
        ret = growth.get("retention_s")
        if ret:
            t2.notes.append(f"result retention {ret / 86_400:g} days (node default); the virtual "
                            f"clock moves {growth['clock_step_s'] / 86_400:g} days per round")
        else:
            t2.notes.append("no result retention found on the node: records of finished flows are "
                            "kept for ever")
        t2.notes.append(f"both stores' live bytes grew {early:,.0f} B per completed flow in the first "
                        f"half of the run and {slope:,.0f} B per flow in the second half")
        grow = {}
        for node in ("alice", "bob"):
            for db, v in last[node]["dbs"].items():
                before = mid[node]["dbs"].get(db, {"bytes": 0, "entries": 0})
                d = v["bytes"] - before["bytes"]
                if d:
                    grow[f"{node}.{db}"] = {"bytes_per_flow": d / dflows if dflows else None,
                                            "entries": v["entries"] - before["entries"]}
        figures["db_growth_second_half"] = grow
        if grow:
            top = sorted(grow.items(), key=lambda kv: -kv[1]["bytes_per_flow"])[:4]
            t2.notes.append("second half, growth by database (B per flow, entries added): " + ", ".join(
                f"{k} {v['bytes_per_flow']:,.0f} ({v['entries']:+,})" for k, v in top))
        t2.notes.append("sync off for this run (disk contents do not depend on it)")
    tables.append(t2)
    not_measured = ["DBOS's SQLite growth over a long run of completed workflows",
                    "10,000,000 hibernated flows (target: 2 KB on disk per flow): "
                    "use -n; setup at that size takes most of an hour"]
    return SuiteResult(NAME, {"n": n, "rounds": rounds, "per_round": per_round}, figures, ratios,
                       tables, not_measured)
