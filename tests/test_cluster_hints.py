"""Two workers of Alice on PostgreSQL and Bob, an ordinary node, on real sockets: the
sessions Bob opens (Bob pings Alice) go on the connection of the worker that owns the
session's partition, which each worker told him when it dialled him (partition hints,
`greenflow-p2p/3`), so none is handed over; a stale hint or a hinted connection that
dies costs a hand-over or a re-send, never a frame; a worker without hints (an older
version) is served as before.

Measured on the code before the hints (the first test without its wait for the hints:
2 workers, Bob opening 20 sessions of 3 pings, three runs): 24, 18 and 24 of the 80
frames Bob sent were handed over (his one connection reached one worker: the first two
frames of each session the other worker owns, both sent before any answer). With the
hints: 0."""
from __future__ import annotations

import asyncio
import time

import pytest

from greenflow.cluster.handoff import ACK, FRAME
from greenflow.network.tcp_framing import (K_FRAME, MAX_RECORD_BYTES, ProtocolError, _unpack,
                                           read_message)
from greenflow.network.tcp_inbound import dispatch
from greenflow.network.tcp_link import Link
from greenflow.samples.ping import Ping
from greenflow.storage.partitions import PARTITIONS
from test_cluster_reply import (alice_workers_and_bob, cluster,  # noqa: F401 (a fixture)
                                count_handoffs)
from test_cluster_worker import results, settle
from test_transport import wait_for

FLOWS, N = 20, 3


def warm(net, *workers) -> None:
    """Each worker pings Bob once (so it has dialled him): then he knows which
    partitions each one serves, as a peer that talked to the party before does."""
    bob = net.party("Bob")
    ids = [w.node.start_flow(Ping(bob, 1)).id for w in workers]
    got = results(workers[0].node.store, ids, 30)
    assert all(r is not None and r["value"] == 1 for r in got.values()), got


def owners(net, workers) -> dict:
    return dict(net.transport("Bob")._in.owners.get(workers[0].tcp.name, {}))


def bob_pings_alice(net, workers, flows: int = FLOWS) -> None:
    """Bob opens ``flows`` sessions to Alice; each of his flows and each of Alice's
    responders finishes exactly once."""
    bob_node = net.nodes["Bob"][0]
    alice = net.party("Alice")
    handles = bob_node.start_flows([Ping(alice, N) for _ in range(flows)])
    assert [h.result(timeout=60) for h in handles] == [N * (N + 1) // 2] * flows
    link = net.transport("Bob")._links["Alice"]
    wait_for(lambda: not link.unacked, 30)
    pongs = {fid: r for w in workers for fid, r in w.node.store.results()
             if r["flow_class"].endswith("Pong")}
    assert len(pongs) == flows, pongs
    assert all(r["status"].name == "COMPLETED" for r in pongs.values()), pongs


def test_a_peer_opens_its_sessions_on_the_owning_workers_connection(cluster):
    net, worker, handed = cluster
    w1, w2 = worker("w1"), worker("w2")
    p1, p2 = settle(w1, w2)
    warm(net, w1, w2)
    # Bob knows, per partition, the connection of the worker that serves it.
    wait_for(lambda: len(owners(net, [w1])) == PARTITIONS)
    by = owners(net, [w1])
    assert len(set(map(id, by.values()))) == 2
    assert {p for p, r in by.items() if r is by[min(p1)]} == p1
    handed.clear()
    b = net.transport("Bob").stats
    hinted = b["hinted"]
    bob_pings_alice(net, [w1, w2])
    time.sleep(0.5)             # what would be handed over is counted when written
    # Every session Bob opened reached the worker owning it: nothing handed over
    # (before: about half of Bob's frames, see the module doc).
    assert handed[FRAME] == 0 and handed[ACK] == 0, (handed, b)
    assert b["hinted"] - hinted >= FLOWS
    assert w1.stats["handed_off"] == w2.stats["handed_off"] == 0
    print(f"\nBob opened {FLOWS} sessions: {b['hinted'] - hinted} frames and "
          f"acknowledgements sent by partition hint; handed over: {handed[FRAME]} frames")


def test_a_rebalance_updates_what_the_peer_was_told(cluster):
    """w1 served every partition and told Bob; w2 joins and takes half: w1's next
    generation tells Bob what it kept, w2 what it took, and nothing is handed over."""
    net, worker, handed = cluster
    w1 = worker("w1")
    settle(w1)
    warm(net, w1)
    wait_for(lambda: len(owners(net, [w1])) == PARTITIONS)
    w2 = worker("w2")
    p1, p2 = settle(w1, w2)
    warm(net, w2)

    def split():
        by = owners(net, [w1])
        conns = {id(r): {p for p, x in by.items() if x is r} for r in by.values()}
        return sorted(map(sorted, conns.values()))
    wait_for(lambda: split() == sorted([sorted(p1), sorted(p2)]))
    handed.clear()
    bob_pings_alice(net, [w1, w2])
    time.sleep(0.5)
    assert handed[FRAME] == 0, handed


def test_a_stale_hint_costs_a_hand_over_not_a_frame(cluster):
    """w1 told Bob it serves every partition, then w2 joined and took half, and w1's
    update never reached Bob: his first frames for w2's partitions reach w1, which hands
    them over; every flow still finishes exactly once."""
    net, worker, handed = cluster
    w1 = worker("w1")
    settle(w1)
    warm(net, w1)
    wait_for(lambda: len(owners(net, [w1])) == PARTITIONS)
    w1.tcp.serve_partitions = lambda parts: None     # the update is lost
    w2 = worker("w2")
    w2.tcp.serve_partitions = lambda parts: None     # and w2 does not say (yet)
    _, p2 = settle(w1, w2)
    time.sleep(0.5)
    assert len(owners(net, [w1])) == PARTITIONS      # stale: w1 for all
    handed.clear()
    bob_pings_alice(net, [w1, w2])
    assert handed[FRAME] > 0, handed                 # the stale hint's cost
    assert w1.stats["handed_off"] > 0 and w2.stats["taken_over"] > 0


def test_frames_on_a_hinted_connection_that_dies_arrive_through_the_link(cluster, monkeypatch):
    """A worker's connection dies with Bob's first frames on it, unread: Bob's link
    still holds them and sends them on his own connection; each flow finishes once."""
    armed, cut = [], []

    async def dies_on_the_first_frames_once_armed(self, reader, chan):
        t = self.t
        try:
            while not t.closing:
                items = _unpack(chan.open(await read_message(reader, MAX_RECORD_BYTES)))
                if armed and not cut and any(it[0] == K_FRAME for it in items):
                    cut.append(len(items))          # lost with the connection
                    self.writer.transport.abort()
                    return
                dispatch(t, self.info, items)
        except (asyncio.IncompleteReadError, OSError, ProtocolError):
            pass
        finally:
            self.wake.set()

    monkeypatch.setattr(Link, "_receive", dies_on_the_first_frames_once_armed)
    net, worker, handed = cluster
    w1, w2 = worker("w1"), worker("w2")
    settle(w1, w2)
    warm(net, w1, w2)
    wait_for(lambda: len(owners(net, [w1])) == PARTITIONS)
    armed.append(True)
    bob_pings_alice(net, [w1, w2])
    assert cut
    assert net.transport("Bob")._links["Alice"].frames_written > 0


def test_a_worker_without_hints_is_served_as_before(cluster, monkeypatch):
    """A worker of the version before the hints dials with /2 and says nothing: Bob
    keeps no partition of it and sends its sessions on his link; everything arrives."""
    from greenflow.network import tcp_transport
    monkeypatch.setattr(tcp_transport.TcpTransport, "serve_partitions", lambda self, parts: None)
    net, worker, handed = cluster
    w1, w2 = worker("w1"), worker("w2")
    settle(w1, w2)
    warm(net, w1, w2)
    assert net.transport("Bob").stats["frames_replied"] > 0     # the reply path still
    bob_pings_alice(net, [w1, w2])
    assert not net.transport("Bob")._in.owners
    assert net.transport("Bob").stats["hinted"] == 0


# ------------------------------------------------------------------ real processes
@pytest.mark.cluster
def test_worker_processes_are_sent_the_sessions_they_own(tmp_path):
    """Alice as two worker processes, Bob an ordinary node process. Each worker pings Bob
    once (it dials him and tells him its partitions); then Bob starts 20 SlowPing flows
    to Alice over RPC: their frames reach the worker owning each session. Measured the
    same way before the hints (two runs): 28 and 14 of Bob's 80 frames handed over; with
    them 0."""
    with alice_workers_and_bob(tmp_path) as (net, cl, workers):
        for w in workers:
            r = w.start_flow("clusterflows.SlowPing", {"peer": "Bob", "n": 1, "pause": 0.0},
                             wait=30)
            assert r["result"] == 1, r
        counts = count_handoffs(cl.dsn, cl.schema)
        bob = net.client("Bob")
        ids = bob.start_flow("clusterflows.SlowPing", {"peer": "Alice", "n": 3,
                                                       "pause": 0.2}, count=FLOWS)["flow_ids"]
        got = [bob.result(f, wait=60) for f in ids]
        assert all(g["finished"] and g["result"] == 6 for g in got), got
        time.sleep(1.0)
        handed = counts()
    print(f"\nhanded over: {handed[FRAME]} frames, {handed[ACK]} acknowledgements")
    assert handed[FRAME] <= 2 and handed[ACK] <= 2, handed
