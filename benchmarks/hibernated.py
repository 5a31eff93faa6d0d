"""hibernated: millions of flows waiting on one node, almost none of them in memory
(target: 10,000,000 waiting flows under 2 GB RSS, at most 2 KB on disk each, and every
one still answers when its message comes).

One node (sync on, default frame capture, ``max_resident`` 1,000) starts N `Hold` flows
that each open a session to a peer and wait in ``receive``. The peer is a stand-in that
acknowledges every frame (as a live node does once it has committed it) but never
answers by itself, so every flow really waits.
Then the node is closed and reopened (lazy restart), and a sample of the flows is sent
their answer as the peer would send it (a data frame on the flow's session); each must
complete with that value. Answering all N would take as long as creating them; the
sample (by default 2,000, spread evenly over the whole range of flows, oldest included)
checks that any of them can.

Run: ``python -m benchmarks hibernated -n 10000000`` (about 15 minutes and ~25 GB of disk
on the 2-core machine); the default N is 1,000,000 (``--quick``: 20,000).
"""
from __future__ import annotations

import gc
import os
import random
import time
from typing import Any

from greenflow.benchmarks.common import SuiteResult, Table, child_progress, dir_bytes, mem, run_worker, scratch_dir

NAME = "hibernated"
MAX_RESIDENT = 1_000
SAMPLE = 2_000


def w_hibernated(n: int, sample: int = SAMPLE, batch: int = 2_000) -> dict:
    from greenflow import Node, Party
    from greenflow.statemachine.events import FrameArrived
    from greenflow.messages import DATA, Frame, encode_frame
    from greenflow import wire
    from greenflow.benchmarks.harness import Hold, all_waiting

    base = scratch_dir("hibernated")
    peer = Party("Nobody", b"\x01" * 32)
    node = Node.open(base, "Holder", transport=AckingTransport(peer), sync=True, threaded=True,
                     max_resident=MAX_RESIDENT)
    gc.collect()
    before = mem()
    t0 = time.perf_counter()
    ids: list[str] = []
    keep_every = max(1, n // sample)
    made = 0
    while made < n:
        k = min(batch, n - made)
        handles = node.start_flows([Hold(peer) for _ in range(k)])
        for i, h in enumerate(handles):
            if (made + i) % keep_every == 0:
                ids.append(h.id)
        made += k
        if made % (batch * 25) == 0 or made == n:
            el = time.perf_counter() - t0
            child_progress(f"{made:,}/{n:,} flows waiting, {made / el:,.0f}/s, "
                           f"RSS {mem()[0] / 2**20:,.0f} MiB")
    create_s = time.perf_counter() - t0
    # Let the last round finish, then measure.
    resident = node.on_scheduler(lambda: len(node.scheduler.resident))
    waiting = all_waiting(node, n, handles[0])
    gc.collect()
    after = mem()
    used_bytes = getattr(node.store, "bytes_used", lambda: 0)()
    node.close()
    store_dir = os.path.join(base, "store")
    disk = dir_bytes(store_dir)
    used = used_bytes

    # Reopen (lazy restart) and answer the sample.
    t1 = time.perf_counter()
    node = Node.open(base, "Holder", transport=AckingTransport(peer), sync=True, threaded=True,
                     max_resident=MAX_RESIDENT)
    reopen_s = time.perf_counter() - t1
    loaded = node.on_scheduler(lambda: len(node.scheduler.resident))
    answers = {fid: random.randrange(1, 1 << 30) for fid in ids}
    t2 = time.perf_counter()
    latencies = []
    for fid, value in answers.items():
        ts = time.perf_counter()
        frame = Frame(DATA, f"{fid}.1", False, 0, wire.encode(value))
        node.scheduler.post(FrameArrived(peer, encode_frame(frame)))
        got = node.handle(fid).result(timeout=60)
        latencies.append(time.perf_counter() - ts)
        if got != value:
            raise AssertionError(f"flow {fid} answered {got!r}, expected {value!r}")
    answer_s = time.perf_counter() - t2
    node.close()
    latencies.sort()
    return {
        "n": n, "waiting_at_end": waiting, "resident_at_end": resident,
        "created_per_s": n / create_s, "create_seconds": create_s,
        "rss_bytes_per_flow": (after[0] - before[0]) / n,
        "anon_bytes_per_flow": (after[1] - before[1]) / n,
        "rss_total_bytes": after[0], "rss_growth_bytes": after[0] - before[0],
        "disk_bytes": disk, "disk_bytes_per_flow": disk / n,
        "used_bytes_per_flow": used / n,
        "reopen_seconds": reopen_s, "loaded_at_reopen": loaded,
        "answered": len(answers), "answer_seconds": answer_s,
        "answer_p50_ms": latencies[len(latencies) // 2] * 1e3 if latencies else None,
        "answer_max_ms": latencies[-1] * 1e3 if latencies else None,
        "first_answer_ms": latencies[0] * 1e3 if latencies else None,
    }


class AckingTransport:
    """The peer as a live node that has not answered yet: it acknowledges every frame
    (so the node's outbox empties, as on a real network) and sends nothing back."""

    def __init__(self, peer: Any) -> None:
        self.node: Any = None
        self.peer = peer

    def send(self, peer: Any, data: bytes) -> None:
        from greenflow.statemachine.events import Acked
        from greenflow.messages import decode_frame
        self.node.scheduler.post(Acked(peer.name, (decode_frame(data).msg_id,)))

    def ack(self, peer_name: str, msg_ids: tuple) -> None:
        pass

    def party(self, name: str) -> Any:
        return self.peer if name == self.peer.name else None


TASKS = {"hibernated": w_hibernated}


def run(ctx: Any) -> SuiteResult:
    n = ctx.n or (20_000 if ctx.quick else 1_000_000)
    sample = min(SAMPLE, n) if not ctx.quick else 200
    prog = ctx.progress(NAME, 1)
    prog.step(f"greenflow, {n:,} waiting flows, max_resident={MAX_RESIDENT:,}")
    d = run_worker("hibernated", {"n": n, "sample": sample}, on_line=prog.detail,
                   timeout=6 * 3600)
    prog.finish_step()
    prog.close()
    tbl = Table(f"{n:,} flows waiting in receive on one node, max_resident {MAX_RESIDENT:,} "
                "(sync on, frame capture on)",
                ["N", "created/s", "RSS MiB", "RSS B/flow", "disk B/flow", "reopen ms",
                 "loaded at reopen", "answered", "answer p50 ms", "answer max ms"])
    if "error" in d:
        tbl.notes.append(d["error"].splitlines()[0][:300])
        return SuiteResult(NAME, {"n": n}, {"hibernated": d}, {}, [tbl])
    tbl.add(d["n"], d["created_per_s"], d["rss_total_bytes"] / 2**20, d["rss_bytes_per_flow"],
            d["disk_bytes_per_flow"], d["reopen_seconds"] * 1e3, d["loaded_at_reopen"],
            d["answered"], d["answer_p50_ms"], d["answer_max_ms"])
    tbl.notes.append("answered: a sample spread evenly over all N flows (oldest included), "
                     "each sent its value as the peer would and checked to complete with it")
    tbl.notes.append("disk: the store directory's allocated blocks; RSS: the whole process "
                     "after creating all flows")
    ratios = {"rss_bytes_per_flow / 2 KB target": d["rss_bytes_per_flow"] / 2048,
              "disk_bytes_per_flow / 2 KB target": d["disk_bytes_per_flow"] / 2048}
    return SuiteResult(NAME, {"n": n, "sample": sample}, {"hibernated": d}, ratios, [tbl])
