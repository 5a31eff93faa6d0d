"""held: N flows suspended in ``receive`` on one node: RSS per flow and creation rate.

Each variant runs in its own fresh process and measures RSS (``/proc/self/statm``)
before and after creating its N waiters, after ``gc.collect()``:

- greenflow resident: a real threaded `Node` (sync commits on, ``max_resident`` off)
  whose transport drops everything, started with ``start_flows`` in batches; each flow
  opens a session and waits in ``receive`` (`harness.Hold`);
- greenflow hibernating: the same with ``max_resident`` small, so all but that many are
  dropped from memory and live only in the store;
- a bare greenlet (two frames, a few locals) switched out;
- an asyncio task awaiting ``Queue.get()``;
- an OS thread (64 KiB stack) blocked on ``SimpleQueue.get()``;
- DBOS (when installed): workflows blocked in ``DBOS.recv`` on SQLite.

"RSS" is the whole resident set; "anon" excludes file-backed pages (the node's LMDB map
is file-backed, so it shows in RSS but not in anon).
"""
from __future__ import annotations

import gc
import shutil
import time
from typing import Any, Optional

from greenflow.benchmarks.common import SuiteResult, Table, child_progress, mem, ratio, run_worker, scratch_dir

NAME = "held"
THREAD_CAP = 10_000       # OS threads beyond this are impractical (and slow to create)
DBOS_CAP = 1_000          # each blocked DBOS workflow holds an OS thread
HIBERNATE_RESIDENT = 1_000


def _result(n: int, before: tuple[int, int], after: tuple[int, int], seconds: float,
            **extra: Any) -> dict:
    return {"n": n, "rss_before": before[0], "rss_after": after[0],
            "bytes_per_flow": (after[0] - before[0]) / n,
            "anon_bytes_per_flow": (after[1] - before[1]) / n,
            "create_seconds": seconds, "created_per_s": n / seconds if seconds else None,
            **extra}


# ====================================================================== workers
def w_greenflow(n: int, max_resident: Optional[int] = None, batch: int = 1000,
                capture_frames: bool = True) -> dict:
    from greenflow import Node, Party
    from greenflow.benchmarks.harness import Hold, NullTransport, all_waiting

    base = scratch_dir("held-gf")
    node = None
    try:
        node = Node.open(base, "Holder", transport=NullTransport(), sync=True, threaded=True,
                         max_resident=max_resident, capture_frames=capture_frames)
        peer = Party("Nobody")
        warm = node.start_flows([Hold(peer) for _ in range(min(batch, 200))])
        gc.collect()
        before = mem()
        t0 = time.perf_counter()
        made = 0
        while made < n:
            k = min(batch, n - made)
            node.start_flows([Hold(peer) for _ in range(k)])
            made += k
            if made % (batch * 10) == 0:
                el = time.perf_counter() - t0
                child_progress(f"{made:,}/{n:,} flows, {made / el:,.0f}/s")
        seconds = time.perf_counter() - t0
        all_waiting(node, made + len(warm), warm[0])
        sched = node.scheduler
        try:   # on the scheduler thread: after its last round (and hibernation) is over
            resident = node.on_scheduler(lambda: len(sched.resident))
        except AttributeError:
            resident = None
        gc.collect()
        after = mem()
        store_bytes = None
        try:
            store_bytes = node.store.bytes_used()
        except Exception:
            pass
        return _result(n, before, after, seconds, resident=resident,
                       store_bytes=store_bytes)
    finally:
        if node is not None:
            node.close()
        shutil.rmtree(base, ignore_errors=True)


def w_greenlet(n: int) -> dict:
    from greenlet import getcurrent, greenlet

    main = getcurrent()

    def receive(session: int, expected: type) -> Any:
        value = main.switch(("receive", session, expected))
        return value

    def body(i: int) -> int:
        total = 0
        total += receive(i, int)
        return total

    gs = []
    gc.collect()
    before = mem()
    t0 = time.perf_counter()
    for i in range(n):
        g = greenlet(body)
        g.switch(i)
        gs.append(g)
    seconds = time.perf_counter() - t0
    gc.collect()
    after = mem()
    out = _result(n, before, after, seconds)
    for g in gs[:3]:
        g.switch(1)
    return out


def w_asyncio(n: int) -> dict:
    import asyncio

    async def body(q: asyncio.Queue) -> int:
        total = 0
        total += await q.get()
        return total

    async def main() -> dict:
        tasks, queues = [], []
        gc.collect()
        before = mem()
        t0 = time.perf_counter()
        for _ in range(n):
            q: asyncio.Queue = asyncio.Queue()
            queues.append(q)
            tasks.append(asyncio.ensure_future(body(q)))
        await asyncio.sleep(0)  # every task runs to its await
        await asyncio.sleep(0)
        seconds = time.perf_counter() - t0
        gc.collect()
        after = mem()
        for t in tasks:
            t.cancel()
        return _result(n, before, after, seconds)

    return asyncio.run(main())


def w_thread(n: int, stack: int = 64 * 1024) -> dict:
    import queue
    import threading

    threading.stack_size(stack)
    started = threading.Semaphore(0)

    def body(q: "queue.SimpleQueue[int]") -> None:
        started.release()
        q.get()

    threads, queues = [], []
    gc.collect()
    before = mem()
    t0 = time.perf_counter()
    for i in range(n):
        q: "queue.SimpleQueue[int]" = queue.SimpleQueue()
        t = threading.Thread(target=body, args=(q,), daemon=True)
        t.start()
        threads.append(t)
        queues.append(q)
        if (i + 1) % 1000 == 0:
            child_progress(f"{i + 1:,}/{n:,} threads")
    for _ in range(n):
        started.acquire()
    seconds = time.perf_counter() - t0
    gc.collect()
    after = mem()
    out = _result(n, before, after, seconds, stack_bytes=stack)
    for q in queues:
        q.put(0)
    for t in threads:
        t.join()
    return out


TASKS = {"held_greenflow": w_greenflow, "held_greenlet": w_greenlet,
         "held_asyncio": w_asyncio, "held_thread": w_thread}


# ====================================================================== the suite
def _mem_available() -> Optional[int]:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def run(ctx: Any) -> SuiteResult:
    from greenflow.benchmarks.dbos_peer import installed as dbos_installed
    n = ctx.n or (2_000 if ctx.quick else 100_000)
    n_thread = min(n, 1_000 if ctx.quick else THREAD_CAP)
    n_dbos = min(n, 200 if ctx.quick else DBOS_CAP)
    hib = min(HIBERNATE_RESIDENT, max(n // 10, 1))
    # Variants that keep every waiter in memory stop where this machine's free memory
    # would run out (measured bytes per flow plus ~10%, within 80% of what is available:
    # 2,000,000 resident greenflow flows fit on the 24 GB machine).
    avail = _mem_available()

    def fit(per_flow: int) -> int:
        return n if avail is None else max(1, min(n, int(avail * 0.8 / per_flow)))

    variants: list[tuple[str, str, dict]] = [
        ("greenflow resident", "held_greenflow", {"n": fit(9_000), "max_resident": None}),
        ("greenflow resident, capture_frames off", "held_greenflow",
         {"n": fit(9_000), "max_resident": None, "capture_frames": False}),
        (f"greenflow hibernating (max_resident={hib:,})", "held_greenflow",
         {"n": n, "max_resident": hib}),
        ("bare greenlet", "held_greenlet", {"n": fit(7_000)}),
        ("asyncio task", "held_asyncio", {"n": fit(5_000)}),
        ("OS thread (64 KiB stack)", "held_thread", {"n": min(n_thread, fit(24_000))}),
    ]
    has_dbos = dbos_installed()
    if has_dbos:
        variants.append(("DBOS workflow in recv (SQLite)", "dbos_held", {"n": n_dbos}))
    prog = ctx.progress(NAME, len(variants))
    figures: dict[str, Any] = {}
    for label, task, params in variants:
        prog.step(f"{label}, n={params['n']:,}")
        figures[label] = run_worker(task, params, on_line=prog.detail)
        prog.finish_step()
    prog.close()

    tbl = Table("N flows suspended in receive on one node (RSS from /proc/self/statm, "
                "each variant in its own process)",
                ["variant", "N", "RSS/flow B", "anon/flow B", "created/s", "vs greenflow RSS"])
    gf = figures["greenflow resident"].get("bytes_per_flow")
    for label, _task, _params in variants:
        d = figures[label]
        if "error" in d:
            tbl.add(label, None, None, None, None, None)
            tbl.notes.append(f"{label}: {d['error'].splitlines()[0][:200]}")
            continue
        tbl.add(label, d["n"], d["bytes_per_flow"], d["anon_bytes_per_flow"],
                d["created_per_s"], ratio(d["bytes_per_flow"], gf))
    capped = [f"{label} at {params['n']:,}" for label, _t, params in variants
              if params["n"] < n and "OS thread" not in label and "DBOS" not in label]
    if capped:
        tbl.notes.append("capped to fit in memory: " + "; ".join(capped))
    if n_thread < n:
        tbl.notes.append(f"OS threads capped at {n_thread:,}")
    if has_dbos:
        tbl.notes.append(f"DBOS capped at {n_dbos:,}: each blocked workflow holds an OS thread "
                         f"({figures[variants[-1][0]].get('threads_added')} threads added)")
    tbl.notes.append("greenflow creation rate includes the synced commit of every batch of "
                     "1,000 starts; its RSS includes the LMDB pages it touched")
    hib_d = figures[variants[2][0]]
    if "error" not in hib_d and hib_d.get("resident") is not None:
        tbl.notes.append(f"hibernating node kept {hib_d['resident']:,} flows resident of {n:,}")

    ratios: dict[str, Optional[float]] = {}
    for label in figures:
        if label != "greenflow resident" and "error" not in figures[label]:
            ratios[f"RSS per flow: {label} / greenflow resident"] = ratio(
                figures[label]["bytes_per_flow"], gf)
    not_measured = []
    if not has_dbos:
        not_measured.append("DBOS: the dbos package is not installed")
    if n < 2_000_000:
        not_measured.append(f"N stops at {n:,} (use -n to go higher; the targets are "
                            f"2,000,000 resident and 10,000,000 hibernated)")
    return SuiteResult(NAME, {"n": n, "n_thread": n_thread, "n_dbos": n_dbos,
                              "hibernate_max_resident": hib}, figures, ratios, [tbl], not_measured)
