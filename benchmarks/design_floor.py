"""The design floor of durable ping-pong: the least any runtime built the way greenflow
must be built (a greenlet per flow, a C-pickled checkpoint at every suspension, group
commits to LMDB with sync on, messages msgpack-encoded, released only after the commit)
can cost per flow in CPython, measured with none of greenflow's code.

Why it exists: the throughput target is durable ping-pong at least as fast as plain
asyncio without durability. The `storage floor` row (throughput.py) shows that the disk alone
rules that out at concurrency 1 and 100. This row answers the remaining question, the
one at concurrency 10,000 where the storage floor passes asyncio: could a leaner
implementation of the same design get there? It is a ~80-line skeleton with no error
handling, no sessions, routing, deduplication, acknowledgements, replay, timers, frame
capture or diagnostics, so a real runtime can only be slower than it.

Per flow it does what a Ping(peer, 1)/Pong pair must do at the least: two greenlets;
the initiator sends the count and one value and suspends; the responder is started by
the first message, suspends for the second, answers and ends; the initiator wakes and
ends. Each suspension pickles the flow's journal into its node's group commit, each
message is encoded and staged in the same commit (a transactional outbox) and handed
over only after it, and each end writes a result record and deletes the checkpoint.

A flow runs on a greenlet a finished flow ran on when there is one (an unbounded pool
of idle workers), not on a new greenlet each time: CPython allocates and frees a fresh
greenlet's frame stack, which is not a cost of the design, and a floor that counts it
overstates the bound.
"""
from __future__ import annotations

import os
import pickle
import shutil
import time
from typing import Any

from greenflow.benchmarks.common import scratch_dir


class _Node:
    """One node of the skeleton: an LMDB environment, what this round staged, and the
    messages it may release after its commit."""

    __slots__ = ("env", "db", "staged", "deletes", "sends")

    def __init__(self, path: str, sync: bool) -> None:
        import lmdb
        self.env = lmdb.open(path, map_size=1 << 30, max_dbs=2, sync=sync, metasync=sync,
                             readahead=False)
        self.db = self.env.open_db(b"flows")
        self.staged: list[tuple[bytes, bytes]] = []
        self.deletes: list[bytes] = []
        self.sends: list[tuple[Any, bytes]] = []

    def commit(self) -> list[tuple[Any, bytes]]:
        """One group commit of everything staged; returns the messages it released."""
        db = self.db
        with self.env.begin(write=True) as txn:
            for k, v in self.staged:
                txn.put(k, v, db=db)
            for k in self.deletes:
                txn.delete(k, db=db)
        self.staged, self.deletes = [], []
        sends, self.sends = self.sends, []
        return sends


def w_design_floor(concurrency: int, budget: float, sync: bool = True) -> dict:
    """Waves of ``concurrency`` skeleton ping-pong flows until ``budget`` seconds."""
    import greenlet
    import msgpack

    from greenflow.benchmarks.common import child_progress

    base = scratch_dir("tp-design")
    a, b = _Node(os.path.join(base, "a"), sync), _Node(os.path.join(base, "b"), sync)
    hub = greenlet.getcurrent()
    dumps, packb, unpackb = pickle.dumps, msgpack.packb, msgpack.unpackb
    waiting: dict[tuple[int, bytes], Any] = {}

    idle: list = []          # greenlets of finished flows, reused (LIFO)
    finished = object()      # what a worker switches to the hub when its flow returned

    def worker(fn: Any, args: tuple) -> None:
        while True:
            fn(*args)
            fn = args = None
            fn, args = hub.switch(finished)

    def start(fn: Any, *args: Any) -> Any:
        """Runs a flow, until it first suspends, on a reused (or new) greenlet."""
        g = idle.pop() if idle else greenlet.greenlet(worker)
        g.switch(fn, args)
        return g

    def suspend(node: _Node, fid: bytes, journal: list) -> Any:
        node.staged.append((fid, dumps(journal, 5)))
        return hub.switch()

    def send(node: _Node, dest: _Node, fid: bytes, n: int, payload: int) -> None:
        data = packb((fid, n, payload))
        node.staged.append((b"o%s%d" % (fid, n), data))   # the outbox, in the same commit
        node.sends.append((dest, data))

    def finish(node: _Node, fid: bytes, result: Any) -> None:
        node.staged.append((b"r" + fid, dumps(("done", result), 5)))
        node.deletes.append(fid)

    def ping(fid: bytes) -> None:
        journal: list = [("start", 1)]
        send(a, b, fid, 0, 1)
        send(a, b, fid, 1, 0)
        value = suspend(a, fid, journal)
        journal.append(("receive", value))
        finish(a, fid, value)

    def pong(fid: bytes, n: int) -> None:
        journal: list = [("receive", n)]
        value = suspend(b, fid, journal)
        journal.append(("receive", value))
        send(b, a, fid, 2, value + 1)
        finish(b, fid, None)

    flows = wrong = seq = 0
    clock = time.perf_counter
    try:
        t0, cpu0 = clock(), time.process_time()
        while True:
            for i in range(concurrency):
                fid = b"%016d" % (seq + i)
                waiting[(0, fid)] = start(ping, fid)
            seq += concurrency
            released = a.commit()
            while released:
                for dest, data in released:
                    fid, n, payload = unpackb(data)
                    side = 1 if dest is b else 0
                    g = waiting.get((side, fid))
                    if g is None:   # the initiation starts the responder
                        waiting[(side, fid)] = start(pong, fid, payload)
                        continue
                    if g.switch(payload) is finished:
                        idle.append(g)
                        del waiting[(side, fid)]
                        if side == 0:
                            flows += 1
                            wrong += payload != 1
                released = [m for node in (a, b) if node.staged or node.deletes
                            for m in node.commit()]
            elapsed = clock() - t0
            child_progress(f"{flows:,} flows, {flows / elapsed:,.0f}/s")
            if elapsed >= budget:
                break
        cpu = time.process_time() - cpu0
        return {"flows": flows, "seconds": elapsed, "flows_per_s": flows / elapsed,
                "cpu_us_per_flow": cpu / max(flows, 1) * 1e6, "wrong_results": wrong,
                "left_waiting": len(waiting)}
    finally:
        a.env.close()
        b.env.close()
        shutil.rmtree(base, ignore_errors=True)


TASKS = {"tp_design_floor": w_design_floor}
