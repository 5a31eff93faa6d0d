"""A clustered party as real processes: three workers of Alice on PostgreSQL, Bob an
ordinary node process. Workers killed with -9, stopped past their lease and resumed,
and PostgreSQL restarted under them: every flow finishes exactly once."""
from __future__ import annotations

import os
import signal
import time

import pytest

from cluster_pg import new_schema, server, server_dsn
from greenflow.cluster.launcher import Cluster
from greenflow.network.node_config import read_credentials
from greenflow.rpc.client import RpcClient, RpcClientError
from greenflow.testing.node_processes import ProcessNetwork

TESTS = os.path.dirname(os.path.abspath(__file__))
LEASE = 3.0


@pytest.fixture
def parties(tmp_path):
    url = server_dsn() + "?schema=" + new_schema()
    with ProcessNetwork(tmp_path, ["Alice", "Bob"], apps=["samples.ping", "clusterflows"],
                        pythonpath=[TESTS]) as net:
        net.start("Bob")
        cl = Cluster(net.dir("Alice"), workers=3, database=url, lease_s=LEASE, renew_s=0.5,
                     env=net._env())
        try:
            cl.start(wait=60)
            yield net, cl
        finally:
            cl.stop()


def clients(net, cl) -> dict[str, RpcClient]:
    user, pw = read_credentials(net.dir("Alice"))
    return {n: RpcClient(a, user, pw, timeout=10) for n, a in cl.rpc.items()}


def start(net, cl, per_worker: int, pause: float) -> list[tuple[str, str]]:
    ids = []
    for n, c in clients(net, cl).items():
        r = c.start_flow("clusterflows.SlowPing", {"peer": "Bob", "n": 2, "pause": pause},
                         count=per_worker)
        ids += [(n, f) for f in r["flow_ids"]]
    return ids


def results(cl, ids, timeout: float) -> dict[str, dict]:
    """Each flow's result read from the party's tables (any worker's partitions)."""
    from greenflow.storage.postgres_store import PostgresStore
    store = PostgresStore(cl.dsn, cl.schema, readonly=True)
    try:
        end = time.monotonic() + timeout
        while True:
            got = {f: store.result(f) for _, f in ids}
            if all(got.values()) or time.monotonic() > end:
                return got
            time.sleep(0.3)
    finally:
        store.close()


def check_exactly_once(net, got, n_flows):
    assert sum(1 for r in got.values() if r is not None) == n_flows, \
        f"{sum(1 for r in got.values() if r is None)} flows unfinished"
    assert all(r["status"].name == "COMPLETED" and r["value"] == 3 for r in got.values())
    bob = [f for f in net.client("Bob").flows() if f["flow_class"].endswith("SlowPong")]
    # One responder per initiator, each completed once: nothing ran twice on Bob's side.
    assert len(bob) == n_flows and all(f["status"] == "COMPLETED" for f in bob), \
        sorted({f["status"] for f in bob})


def test_kill_9_of_one_worker_of_three_loses_and_duplicates_nothing(parties):
    net, cl = parties
    ids = start(net, cl, per_worker=30, pause=1.0)
    time.sleep(0.5)
    t0 = time.monotonic()
    cl.kill("w2")                      # a power cut, mid-flight
    cl.procs["w2"].wait(10)
    cl.wait_ready(30, workers={"w1", "w3"})
    got = results(cl, ids, 40)
    took = time.monotonic() - t0
    check_exactly_once(net, got, 90)
    assert took < LEASE + 20, took
    # Bob answers each worker on the connection it dialled: only what was in flight on
    # w2's connection (re-sent on Bob's own, which lands on either worker) may have gone
    # through the handoff table, and all of it was consumed.
    assert handoff_rows_left(cl) == 0


def handoff_rows_left(cl) -> int:
    import psycopg
    with psycopg.connect(cl.dsn, autocommit=True) as c:
        end = time.monotonic() + 20
        while True:
            left = c.execute(f'SELECT count(*) FROM "{cl.schema}".handoff').fetchone()[0]
            if not left or time.monotonic() > end:
                return left
            time.sleep(0.2)


@pytest.mark.cluster
def test_a_restarted_worker_is_ready_only_once_it_runs_and_then_stops_cleanly(parties):
    """Right after a kill -9 the worker's row still shows the killed process (for a lease
    time); `wait_ready` waits for the new process itself, which then takes a SIGTERM as a
    clean stop (exit status 0), not as death by the signal."""
    net, cl = parties
    old_pid = cl.procs["w3"].pid
    cl.kill("w3")
    cl.procs["w3"].wait(10)
    cl.start_worker("w3")
    cl.wait_ready(60)
    ws, _ = cl.status()
    [w3] = [w for w in ws if w.name == "w3"]
    assert w3.pid == cl.procs["w3"].pid != old_pid and w3.live and w3.partitions
    cl.procs["w3"].send_signal(signal.SIGTERM)
    assert cl.procs["w3"].wait(30) == 0


@pytest.mark.cluster
def test_a_worker_stopped_past_its_lease_is_fenced_when_it_resumes(parties):
    net, cl = parties
    ids = start(net, cl, per_worker=30, pause=1.0)
    time.sleep(0.5)
    cl.kill("w1", signal.SIGSTOP)      # a stall: no heartbeats, no renewals, no commits
    try:
        cl.wait_ready(30, workers={"w2", "w3"})
    finally:
        cl.kill("w1", signal.SIGCONT)  # wakes with commits in flight for partitions now gone
    got = results(cl, ids, 60)
    check_exactly_once(net, got, 90)
    ws, _ = cl.status()
    assert {w.name for w in ws if w.live} >= {"w2", "w3"}
    log = open(os.path.join(net.dir("Alice"), "cluster", "w1.log")).read()
    # It woke still believing it held partitions: what it tried to commit was refused.
    assert "commit refused" in log or "giving up partitions" in log


@pytest.mark.cluster
def test_postgresql_restarted_mid_run_workers_reconnect_nothing_lost(parties):
    net, cl = parties
    ids = start(net, cl, per_worker=20, pause=1.5)
    time.sleep(0.5)
    pg = server()
    pg.stop()
    time.sleep(1.0)
    pg.start()
    cl.wait_ready(60, workers={"w1", "w2", "w3"})
    got = results(cl, ids, 90)
    check_exactly_once(net, got, 60)
    more = start(net, cl, per_worker=2, pause=0.1)   # and they go on taking work
    check_exactly_once(net, {**got, **results(cl, more, 30)}, 66)


@pytest.mark.cluster
def test_chaos_random_worker_kills_lose_duplicate_and_strand_nothing(parties):
    """Flows started in bursts through random live workers (with client ids, retried on
    another worker when one dies under the request) while a random worker is killed
    with -9 every few seconds and started again."""
    import random
    net, cl = parties
    rnd = random.Random(1601)
    user, pw = read_credentials(net.dir("Alice"))
    flows: dict[str, str] = {}          # client id -> flow id
    end = time.monotonic() + 40
    next_kill = time.monotonic() + 3
    n = 0
    kills = 0
    while time.monotonic() < end:
        for _ in range(5):
            cid = f"chaos-{n}"
            n += 1
            for _attempt in range(20):
                live = [w for w, p in cl.procs.items() if p.poll() is None]
                c = RpcClient(cl.rpc[rnd.choice(live)], user, pw, timeout=10)
                try:
                    r = c.start_flow("clusterflows.SlowPing",
                                     {"peer": "Bob", "n": 2, "pause": 0.3}, client_id=cid)
                    flows[cid] = r["flow_id"]
                    break
                except RpcClientError:
                    time.sleep(0.3)   # that worker died or is switching: another one
            assert cid in flows, f"could not start {cid}"
        if time.monotonic() >= next_kill:
            victim = rnd.choice(sorted(cl.procs))
            if cl.procs[victim].poll() is None:
                cl.kill(victim)
                cl.procs[victim].wait(10)
                kills += 1
                time.sleep(rnd.uniform(0.5, 2.0))
                cl.start_worker(victim)
            next_kill = time.monotonic() + rnd.uniform(3, 6)
        time.sleep(0.2)
    cl.wait_ready(60)
    ids = [("", f) for f in flows.values()]
    assert len(set(flows.values())) == len(flows)          # one flow per client id
    got = results(cl, ids, 120)
    check_exactly_once(net, got, len(flows))
    assert kills >= 5
