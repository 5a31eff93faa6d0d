"""What one peer's frames can make a node do: junk and rejected initiations cost a
warning per peer and interval (not one per frame), text quoted from a frame is cut, and a
frame on a session the receiver opened but does not have is acknowledged, so it leaves
the sender's outbox instead of being re-sent on every reconnect. A frame on a session
the peer opened and the receiver does not know yet is still not acknowledged: it may
have overtaken its initiation, and is needed once that arrives."""
from __future__ import annotations

import logging

from greenflow.messages import DATA, INIT, REJECT, Frame, decode_frame, encode_frame
from greenflow.statemachine.events import FrameArrived

from flowlib import Fanout


def _warnings(caplog, text):
    return [r.getMessage() for r in caplog.records
            if r.levelno >= logging.WARNING and text in r.getMessage()]


def _init(sid, protocol="no.such.Flow"):
    return encode_frame(Frame(INIT, sid, True, 0, None, protocol, 1, "app"))


def test_a_burst_of_undecodable_frames_is_one_warning_per_peer_then_a_count(net, caplog):
    alice, bob, carol = (net.create_node(n) for n in ("Alice", "Bob", "Carol"))
    now = [0.0]
    alice.node.scheduler.peer_log.clock = lambda: now[0]
    caplog.set_level(logging.WARNING, logger="greenflow")
    for _ in range(1000):
        alice.node.scheduler.post(FrameArrived(bob.party, b"\xc1junk"))
    alice.node.scheduler.post(FrameArrived(carol.party, b"\xc1junk"))
    net.run_network()
    assert len(_warnings(caplog, "undecodable frame from Bob")) == 1
    assert len(_warnings(caplog, "undecodable frame from Carol")) == 1   # per peer
    now[0] += 11
    alice.node.scheduler.post(FrameArrived(bob.party, b"\xc1junk"))
    net.run_network()
    lines = _warnings(caplog, "undecodable frame from Bob")
    assert len(lines) == 2 and "and 999 more like it" in lines[1]


def test_an_initiation_with_a_huge_protocol_name_is_rejected_with_the_name_cut(net, caplog):
    alice, bob = net.create_node("Alice"), net.create_node("Bob")
    caplog.set_level(logging.DEBUG, logger="greenflow")
    alice.node.scheduler.post(FrameArrived(bob.party, _init("x1.1", "P" * 2_000_000)))
    net.run_network(max_messages=0)           # Alice's round: the rejection is in flight
    rejects = [decode_frame(d) for _, to, d in net._in_flight if to == "Bob"]
    assert [f.kind for f in rejects] == [REJECT]
    assert "PPPP" in rejects[0].reason and len(rejects[0].reason) < 400
    net.run_network()
    assert max(len(r.getMessage()) for r in caplog.records) < 1000
    assert any("no flow registered to answer 'PPPP" in m
               for m in _warnings(caplog, "rejected a session from Bob"))


def test_rejections_for_sessions_the_receiver_never_opened_are_acknowledged(net, caplog):
    alice, bob = net.create_node("Alice"), net.create_node("Bob")
    caplog.set_level(logging.WARNING, logger="greenflow")
    for i in range(50):   # as a peer with Bob's key would: sessions Bob has no flow for
        alice.node.scheduler.post(FrameArrived(bob.party, _init(f"nobody{i}.1")))
    net.run_network()
    assert len(_warnings(caplog, "rejected a session from Bob")) == 1
    assert len(_warnings(caplog, "from Alice: no such session here")) == 1
    assert list(alice.node.store.outbox("Bob")) == []   # Bob acknowledged every rejection
    bob.node.scheduler.resend_outbox()
    alice.node.scheduler.resend_outbox()
    assert net.run_network() == 0


def test_a_frame_on_a_session_of_a_flow_that_exists_but_never_opened_it_is_acknowledged(net):
    alice, bob = net.create_node("Alice"), net.create_node("Bob")
    h = alice.start_flow(Fanout([bob.party], 1))
    net.run_network(max_messages=0)           # Alice's flow waits for Bob's answer
    acks = []
    alice.node.scheduler.transport.ack = lambda peer, mids: acks.append((peer, mids))
    stray = Frame(DATA, f"{h.id}.99", False, 0, b"\x00")   # on a session it never opened
    alice.node.scheduler.post(FrameArrived(bob.party, encode_frame(stray)))
    net.run_network(max_messages=0)
    assert acks == [("Bob", (stray.msg_id,))]
    del alice.node.scheduler.transport.ack
    net.run_network()
    assert h.result() == [[("Bob", 1)]]


def test_a_message_that_overtakes_its_initiation_is_kept_in_the_senders_outbox(net):
    alice, bob = net.create_node("Alice"), net.create_node("Bob")
    h = alice.start_flow(Fanout([bob.party], 1))
    net.run_network(max_messages=0)
    kinds = [decode_frame(d).kind for _, to, d in net._in_flight]
    assert kinds == [INIT, DATA]
    net._in_flight.reverse()                  # the message arrives before its initiation
    net.run_network()
    assert not h.status.finished              # Bob dropped it, unacknowledged ...
    assert alice.node.scheduler.resend_outbox("Bob") == 1   # ... so Alice still has it
    net.run_network()
    assert h.result() == [[("Bob", 1)]]
