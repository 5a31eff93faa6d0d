"""Placing a flow's rows without a lookup: a responder's id is derived from (sender,
session id) and lands in the session's partition, so every row of a session lives in
one partition, the one any worker computes from the frame alone."""
from __future__ import annotations

from netutil import only_flow, pair, run

from greenflow.samples.ping import Ping
from greenflow.statemachine.ids import new_flow_id, responder_flow_id
from greenflow.storage.partitions import PARTITIONS, partition_of, session_partition


def test_responder_ids_are_derived_time_ordered_and_in_the_session_partition():
    seen = set()
    for i in range(3000):
        sid = f"{new_flow_id()}.{i % 7}"
        fid = responder_flow_id("O=Alice,L=London,C=GB", sid)
        assert fid == responder_flow_id("O=Alice,L=London,C=GB", sid)  # same on every worker
        assert len(fid) == 32 and int(fid, 16) >= 0
        assert fid[:12] == sid[:12]  # the initiator's time prefix: ids stay time-ordered
        assert partition_of(fid) == session_partition(sid)
        seen.add(fid)
    assert len(seen) == 3000
    assert {session_partition(f"{new_flow_id()}.1") for _ in range(5000)} == set(range(PARTITIONS))


def test_responder_ids_are_the_ones_every_stored_route_and_partition_already_names():
    # Pinned: the cluster places responders, and stored routes name them, by these ids.
    assert responder_flow_id("O=Alice,L=London,C=GB", "019aef01c2d3a1b2c3d4e5f60718293a.1") \
        == "019aef01c2d3893dcf494d4e871e009a"
    assert responder_flow_id("Bob", "not-hex-session.2") == "02381ec34cc60a4a7299626b745000fe"
    assert responder_flow_id("Zo\u00eb", "0123456789ab") == "0123456789abb4ccbd292019d1be00a6"
    assert responder_flow_id("x", "") == "3776096e973314f825b2bbc32dd800a6"


def test_two_senders_on_the_same_session_id_get_different_responders():
    sid = f"{new_flow_id()}.1"
    a, b = responder_flow_id("O=A,L=L,C=GB", sid), responder_flow_id("O=B,L=L,C=GB", sid)
    assert a != b and partition_of(a) == partition_of(b) == session_partition(sid)


def test_an_odd_session_id_from_a_peer_still_gets_a_well_formed_id():
    for sid in ("x", "not-hex-at-all.3", "é" * 50, ".", "ABCDEF012345.1"):
        fid = responder_flow_id("O=A,L=L,C=GB", sid)
        assert len(fid) == 32 and partition_of(fid) == session_partition(sid)


def test_a_node_starts_the_responder_under_the_derived_id(net):
    alice, bob = pair(net)
    h = run(net, alice, Ping(bob.party, 2))
    assert h.result() == 3
    pong = only_flow(bob, "Pong")
    assert pong.id == responder_flow_id(alice.party.name, f"{h.id}.1")  # its first session
    assert partition_of(pong.id) == partition_of(h.id)


def test_a_worker_can_draw_new_flow_ids_in_a_partition_it_owns():
    from greenflow.statemachine.ids import flow_id_in
    ids = [flow_id_in(p) for p in range(PARTITIONS) for _ in range(3)]
    assert [partition_of(f) for f in ids] == [p for p in range(PARTITIONS) for _ in range(3)]
    assert len(set(ids)) == len(ids) and all(len(f) == 32 for f in ids)
