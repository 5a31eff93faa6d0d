"""A node's metrics in the Prometheus text format (``GET /metrics`` on the RPC port).

Each node gets its own `prometheus_client.CollectorRegistry` (never the process-wide
default one), so several nodes in one process (tests, `MockNetwork`) do not clash.

The flow path pays almost nothing for them: the scheduler keeps plain dict counts per
(event, flow class) (`Scheduler.flow_counts`) and calls one observer per group commit
(two bucket counts, no lock); the transport counts frames per peer. Everything else
(flows by status, resident and hibernated counts, link state, store size) is read when
the metrics are scraped. The metric names and their meaning are listed in
docs/console.md.
"""
from __future__ import annotations

import os
import threading
from bisect import bisect_left
import time
from typing import Any, Iterator, Optional

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.utils import floatToGoString
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from greenflow.statemachine import parked
from greenflow.status import FlowStatus

# Above this many stored unfinished flows, flows by status are not counted by reading
# every checkpoint at each scrape: the gauge then gives resident flows by status and
# the rest as HIBERNATED_OR_HOSPITALIZED.
STATUS_SCAN_LIMIT = 20_000
# A scrape reuses the flows-by-status count taken less than this many seconds ago.
STATUS_CACHE_SECONDS = 5.0

COMMIT_SECONDS_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5,
                          1.0, 2.5)
BATCH_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000)

# Scheduler.flow_counts events -> (metric name, help)
_COUNTERS = {
    "started": ("greenflow_flows_started", "Flows started on this node (by RPC, by a flow, "
                "or as a responder to a peer), by flow class"),
    "COMPLETED": ("greenflow_flows_finished", "Flows that completed with a result, by flow class"),
    "FAILED": ("greenflow_flows_failed", "Flows that ended with an error, by flow class"),
    "KILLED": ("greenflow_flows_killed", "Flows killed by an operator, by flow class"),
    "hospitalized": ("greenflow_flows_hospitalized", "Times a flow was parked in the hospital "
                     "for an operator, by flow class"),
    "retried": ("greenflow_flow_retries", "Times a hospitalized flow was run again from its "
                "last checkpoint (automatic retries and operator retries), by flow class"),
}


class NodeMetrics:
    """The metrics of one node; ``attach()`` once the node is open, ``exposition()`` per
    scrape. ``proc`` (a `greenflow.rpc.node_process.NodeProcess`) adds transport and
    draining; without it (an in-process `Node`) those come from the node alone."""

    def __init__(self, node: Any = None, proc: Any = None) -> None:
        self.proc = proc
        self._node = node
        self.registry = CollectorRegistry(auto_describe=False)
        self.commit_seconds = _Buckets(COMMIT_SECONDS_BUCKETS)
        self.commit_writes = _Buckets(BATCH_BUCKETS)
        self.suspensions = 0
        self._status_cache: tuple[float, dict[str, int]] = (-1e9, {})
        self._lock = threading.Lock()
        self.registry.register(_Collector(self))
        if node is not None:
            self.attach(node)

    @property
    def node(self) -> Any:
        if self.proc is not None:
            return self.proc.node
        return self._node

    def attach(self, node: Any) -> None:
        """Hook the commit observer into ``node``'s scheduler (one call per commit)."""
        self._node = node
        node.scheduler.observe_commits(self._on_commit)

    def _on_commit(self, seconds: float, writes: int, suspended: int) -> None:
        # Scheduler thread, once per group commit: two bisections and three additions,
        # no lock (the only writer is this thread; a scrape reads a snapshot).
        self.commit_seconds.observe(seconds)
        self.commit_writes.observe(writes)
        self.suspensions += suspended

    def exposition(self) -> tuple[str, bytes]:
        """(content type, body) of ``GET /metrics``."""
        return CONTENT_TYPE_LATEST, generate_latest(self.registry)

    # ------------------------------------------------------------------ read at scrape
    def flows_by_status(self) -> dict[str, int]:
        """Unfinished flows by status (finished ones are the counters)."""
        node = self.node
        with self._lock:
            at, cached = self._status_cache
            if time.monotonic() - at < STATUS_CACHE_SECONDS:
                return cached
            counts = node.on_scheduler(lambda: _count_statuses(node), timeout=30.0)
            self._status_cache = (time.monotonic(), counts)
            return counts


class _Buckets:
    """A histogram's counts, kept by the one thread that observes (no lock; about a
    tenth of `prometheus_client.Histogram.observe`, which locks), exported at scrape
    time as a `HistogramMetricFamily`."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple) -> None:
        self.bounds = tuple(float(b) for b in bounds)
        self.counts = [0] * (len(self.bounds) + 1)   # the last one: above every bound
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    def family(self, name: str, doc: str) -> HistogramMetricFamily:
        counts, total = list(self.counts), self.sum
        cumulative, running = [], 0
        for bound, n in zip(self.bounds + (float("inf"),), counts):
            running += n
            cumulative.append((floatToGoString(bound), running))
        return HistogramMetricFamily(name, doc, buckets=cumulative, sum_value=total)


def _count_statuses(node: Any) -> dict[str, int]:
    """On the scheduler thread: resident flows from memory, stored ones from their
    checkpoints (unless there are too many to read at every scrape)."""
    from greenflow import serialization

    resident = node.scheduler.resident
    counts = {s.value: 0 for s in FlowStatus if not s.finished}
    for rt in resident.values():
        st = rt.cp.status
        if not st.finished:
            counts[st.value] = counts.get(st.value, 0) + 1
    stored = node.store.flow_count()
    if stored > STATUS_SCAN_LIMIT:
        # Flows on disk only are hibernated, or parked: those the index of parked flows
        # counts (a store not indexed yet, in the first round after an upgrade: the sum).
        on_disk = max(0, stored - sum(1 for rt in resident.values() if rt.start_blob is None))
        n_parked = parked.count(node.store)
        if n_parked is None:
            counts["HIBERNATED_OR_HOSPITALIZED"] = on_disk
        else:
            counts["HOSPITALIZED"] += n_parked
            counts["HIBERNATED"] += max(0, on_disk - n_parked)
        return counts
    for fid, raw in node.store.header_blobs():
        if fid in resident:
            continue
        try:
            cp = serialization.loads(raw)
        except Exception:  # noqa: BLE001 - an unreadable checkpoint: counted as such
            counts["UNREADABLE"] = counts.get("UNREADABLE", 0) + 1
            continue
        st = FlowStatus.HIBERNATED if cp.status == FlowStatus.SUSPENDED else cp.status
        counts[st.value] = counts.get(st.value, 0) + 1
    return counts


def store_bytes(node: Any) -> int:
    """Bytes of the node's store in use (LMDB: pages written, not its map size); 0 for a
    store that does not say."""
    used = getattr(node.store, "bytes_used", None)
    return int(used()) if used is not None else 0


def store_file_bytes(node: Any) -> Optional[int]:
    try:
        return os.path.getsize(os.path.join(node.store.path, "data.mdb"))
    except OSError:
        return None


def peer_stats(proc: Any) -> dict[str, dict]:
    transport = getattr(proc, "transport", None) if proc is not None else None
    fn = getattr(transport, "peer_stats", None)
    return fn() if fn is not None else {}


class _Collector:
    """Everything that is read when scraped rather than counted on the flow path."""

    def __init__(self, metrics: NodeMetrics) -> None:
        self.m = metrics

    def describe(self) -> list:
        return []

    def collect(self) -> Iterator[Any]:
        m = self.m
        node = m.node
        if node is None:
            return
        sched = node.scheduler
        yield m.commit_seconds.family("greenflow_commit_seconds", "Duration of one group "
                                      "commit (one LMDB write transaction, fsync included)")
        yield m.commit_writes.family("greenflow_commit_batch_writes", "Writes (puts and "
                                     "deletes) in one group commit")
        by_event: dict[str, CounterMetricFamily] = {
            ev: CounterMetricFamily(name, doc, labels=["flow_class"])
            for ev, (name, doc) in _COUNTERS.items()}
        for (event, cls), n in list(sched.flow_counts.items()):
            fam = by_event.get(event)
            if fam is not None:
                fam.add_metric([cls], n)
        yield from by_event.values()

        c = CounterMetricFamily("greenflow_suspensions", "Flow checkpoints committed while "
                                "the flow waits (a receive, a sleep, an external call)")
        c.add_metric([], m.suspensions)
        yield c
        c = CounterMetricFamily("greenflow_commits", "Group commits (LMDB write transactions)")
        c.add_metric([], sched.stats.get("commits", 0))
        yield c
        c = CounterMetricFamily("greenflow_replays", "Flows rebuilt by replaying their journal "
                                "(after hibernation, a restart or a retry)")
        c.add_metric([], sched.stats.get("replays", 0))
        yield c

        g = GaugeMetricFamily("greenflow_flows", "Unfinished flows by status", labels=["status"])
        for status, n in sorted(m.flows_by_status().items()):
            g.add_metric([status], n)
        yield g
        resident = len(sched.resident)
        stored = node.store.flow_count()
        g = GaugeMetricFamily("greenflow_flows_resident", "Flows held in memory (greenlet alive)")
        g.add_metric([], resident)
        yield g
        in_store_resident = sum(1 for rt in list(sched.resident.values()) if rt.start_blob is None)
        g = GaugeMetricFamily("greenflow_flows_hibernated", "Unfinished flows stored but not in "
                              "memory (hibernated or hospitalized): rebuilt by replay when woken")
        g.add_metric([], max(0, stored - in_store_resident))
        yield g
        g = GaugeMetricFamily("greenflow_draining", "1 while the node is draining (starts no "
                              "new flows), else 0")
        g.add_metric([], 1 if sched.draining else 0)
        yield g
        g = GaugeMetricFamily("greenflow_store_bytes", "Bytes of the node's store in use")
        g.add_metric([], store_bytes(node))
        yield g

        peers = peer_stats(m.proc)
        sent = CounterMetricFamily("greenflow_messages_sent", "Session frames sent to a peer",
                                   labels=["peer"])
        recv = CounterMetricFamily("greenflow_messages_received", "Session frames received "
                                   "from a peer", labels=["peer"])
        up = GaugeMetricFamily("greenflow_link_up", "1 while this node's connection to the peer "
                               "is up (direction=out) or the peer's connection to this node is "
                               "(direction=in)", labels=["peer", "direction"])
        unacked = GaugeMetricFamily("greenflow_frames_unacknowledged", "Frames sent to a peer "
                                    "that it has not acknowledged yet", labels=["peer"])
        for name, doc in sorted(peers.items()):
            sent.add_metric([name], doc["frames_out"])
            recv.add_metric([name], doc["frames_in"])
            up.add_metric([name, "out"], 1 if doc["link_up"] else 0)
            up.add_metric([name, "in"], 1 if doc["inbound_up"] else 0)
            unacked.add_metric([name], doc["unacked"])
        yield from (sent, recv, up, unacked)
