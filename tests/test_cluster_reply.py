"""Two workers of Alice on PostgreSQL, each dialling Bob (an ordinary node) on real
sockets: Bob answers each worker on the connection it dialled (the reply path), so his
frames and acknowledgements reach the worker whose session they belong to and nothing
goes through the handoff table; his own connection lands on one worker only.

Measured on the code before the reply path (the same test, 2 workers x 20 pings of 3 to
Bob, three runs): 60 of Bob's 120 frames and 80 of the 160 acknowledgements he owed
handed over every time (his one connection reached one of the two workers: everything
for the other's sessions). With it: 0 and 0."""
from __future__ import annotations

import contextlib

import time
from collections import Counter

import pytest

from cluster_pg import new_schema, server_dsn
from greenflow.cluster.handoff import ACK, FRAME
from greenflow.cluster.worker import Worker
from greenflow.network.tcp_transport import TcpTransport
from greenflow.samples.ping import Ping
from test_cluster_worker import results, settle
from test_transport import Net, wait_for

FLOWS, N = 20, 3


@pytest.fixture
def cluster(tmp_path):
    net = Net(str(tmp_path / "net"))
    url = server_dsn() + "?schema=" + new_schema()
    net.up("Bob")
    workers: list[Worker] = []
    handed: Counter = Counter()

    def worker(name: str) -> Worker:
        c = net.configs["Alice"]
        t = TcpTransport(net.identity("Alice"), net.netmap("Alice"), listen=c.p2p_address,
                         reuse_port=True)
        t.bind()
        w = Worker(c.base_dir, url, name=name, party_name=c.name, tcp=t, apps=c.apps,
                   lease_s=2.0, renew_s=0.4, poll_s=0.5)
        put = w.writer.put

        def counting(rows):     # what this worker hands over, by kind
            rows = list(rows)
            handed.update(r.kind for r in rows)
            return put(rows)

        w.writer.put = counting
        workers.append(w)
        return w.start()

    yield net, worker, handed
    for w in workers:
        if w.gen is not None:
            w.stop()
    net.close()


def test_a_peer_answers_each_worker_on_its_own_connection(cluster):
    net, worker, handed = cluster
    w1, w2 = worker("w1"), worker("w2")
    settle(w1, w2)
    bob = net.party("Bob")
    ids = []
    for w in (w1, w2):
        ids += [h.id for h in w.node.start_flows([Ping(bob, N) for _ in range(FLOWS)])]
    got = results(w1.node.store, ids, 60)
    assert all(r is not None and r["value"] == N * (N + 1) // 2 for r in got.values())
    b = net.transport("Bob").stats
    wait_for(lambda: b["acks_received"] >= b["frames_sent"] > 0)
    time.sleep(0.5)             # what would be handed over is counted when written
    # Bob's answers: every frame and acknowledgement went back to the worker that sent
    # the session's frame, so none was handed over (before: about half of each).
    assert b["frames_replied"] == b["frames_sent"], b
    assert b["acks_replied"] > 0
    assert handed[FRAME] == 0 and handed[ACK] == 0, (handed, b)
    assert w1.stats["handed_off"] == w2.stats["handed_off"] == 0
    assert w1.stats["taken_over"] == w2.stats["taken_over"] == 0
    print(f"\nBob sent {b['frames_sent']} frames, {b['frames_replied']} on the reply path; "
          f"handed over: {handed[FRAME]} frames, {handed[ACK]} acknowledgements")


# ------------------------------------------------------------------ real processes
def count_handoffs(dsn: str, schema: str):
    """Count every row written into the handoff table, by kind (a trigger: the rows
    themselves are deleted once their owner took them)."""
    import psycopg
    s = f'"{schema}"'
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute(f"CREATE TABLE {s}.handoff_count (kind smallint)")
        c.execute(f"CREATE FUNCTION {s}.count_handoff() RETURNS trigger LANGUAGE plpgsql AS "
                  f"$$ BEGIN INSERT INTO {s}.handoff_count VALUES (NEW.kind); RETURN NULL; END $$")
        c.execute(f"CREATE TRIGGER count_handoff AFTER INSERT ON {s}.handoff FOR EACH ROW "
                  f"EXECUTE FUNCTION {s}.count_handoff()")

    def counts() -> Counter:
        with psycopg.connect(dsn, autocommit=True) as c:
            return Counter(dict(c.execute(
                f"SELECT kind, count(*) FROM {s}.handoff_count GROUP BY kind").fetchall()))
    return counts


@contextlib.contextmanager
def alice_workers_and_bob(tmp_path):
    """Alice as two worker processes on a fresh schema, Bob an ordinary node process
    (apps: samples.ping and the tests' clusterflows): yields (network, cluster, an RPC
    client of each worker); the cluster is stopped at the end."""
    import os
    from greenflow.cluster.launcher import Cluster
    from greenflow.network.node_config import read_credentials
    from greenflow.rpc.client import RpcClient
    from greenflow.testing.node_processes import ProcessNetwork
    tests = os.path.dirname(os.path.abspath(__file__))
    url = server_dsn() + "?schema=" + new_schema()
    with ProcessNetwork(tmp_path, ["Alice", "Bob"], apps=["samples.ping", "clusterflows"],
                        pythonpath=[tests]) as net:
        net.start("Bob")
        cl = Cluster(net.dir("Alice"), workers=2, database=url, lease_s=3.0, renew_s=0.5,
                     env=net._env())
        try:
            cl.start(wait=60)
            user, pw = read_credentials(net.dir("Alice"))
            yield net, cl, [RpcClient(a, user, pw, timeout=10) for a in cl.rpc.values()]
        finally:
            cl.stop()


@pytest.mark.cluster
def test_worker_processes_are_answered_on_their_own_connections(tmp_path):
    """Alice as two worker processes, Bob an ordinary node process; SlowPing flows
    started through both workers. Measured the same way before the reply path (two
    runs): 60 of the 120 frames Bob sent and 80 of the 160 acknowledgements he owed were
    handed over each time (his one connection reached one worker); with it 0 and 0."""
    from greenflow.storage.postgres_store import PostgresStore
    with alice_workers_and_bob(tmp_path) as (net, cl, workers):
        counts = count_handoffs(cl.dsn, cl.schema)
        ids = []
        for w in workers:
            r = w.start_flow("clusterflows.SlowPing", {"peer": "Bob", "n": 3, "pause": 0.2},
                             count=20)
            ids += r["flow_ids"]
        store = PostgresStore(cl.dsn, cl.schema, readonly=True)
        try:
            end = time.monotonic() + 60
            while not all(store.result(f) for f in ids) and time.monotonic() < end:
                time.sleep(0.3)
            assert all(store.result(f)["value"] == 6 for f in ids)
        finally:
            store.close()
        time.sleep(1.0)
        got = counts()
    print(f"\nhanded over: {got[FRAME]} frames, {got[ACK]} acknowledgements")
    assert got[FRAME] <= 2 and got[ACK] <= 2, got
