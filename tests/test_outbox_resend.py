"""The outbox has one re-sender: `Scheduler.unacknowledged_frames` reads it and
`Scheduler.resend_outbox` sends what it reads, for a reopened node's own outbox and for
a peer that comes back alike (the TCP transport's read-back of spilled frames goes
through the same reader: tests/test_transport.py)."""
from __future__ import annotations

import pytest
from flowlib import Rounds, lines
from netutil import assert_all_finished, pair

from greenflow.statemachine.scheduler import Scheduler
from greenflow.testing.mock_network import MockTransport

FLOWS = 3


@pytest.fixture
def traced(monkeypatch):
    """Record, without changing them, what the outbox reader yields and what every
    node's transport sends."""
    seen: dict[str, list] = {"read": [], "sent": []}
    reader = Scheduler.unacknowledged_frames
    send = MockTransport.send

    def read(self, peer_name=None):
        for name, data in reader(self, peer_name):
            seen["read"].append((self.identity.name, name, data))
            yield name, data

    def sending(self, peer, data):
        seen["sent"].append((self.name, peer.name, data))
        return send(self, peer, data)

    monkeypatch.setattr(Scheduler, "unacknowledged_frames", read)
    monkeypatch.setattr(MockTransport, "send", sending)
    return seen


def start_unacknowledged(net, tmp_path):
    alice, bob = pair(net)
    handles = [alice.start_flow(Rounds(bob.party, str(tmp_path / f"{i}.log")))
               for i in range(FLOWS)]
    net.run_network(max_messages=0)     # committed and sent, never delivered
    outbox = [data for _, data in alice.node.store.outbox("Bob")]
    assert len(outbox) == FLOWS
    return alice, bob, handles, outbox


def finish(net, alice, bob, handles, tmp_path) -> None:
    net.run_network()
    assert [alice.handle(h.id).result() for h in handles] == [1 + 11 + 21] * FLOWS
    for i in range(FLOWS):       # duplicates were dropped: every effect happened once
        assert sorted(lines(tmp_path / f"{i}.log")) == sorted(
            [f"initiator {r}" for r in range(3)] + [f"responder {r}" for r in range(3)])
    assert_all_finished(alice, bob)


def test_a_restarted_peer_gets_every_unacknowledged_frame_through_the_one_re_sender(
        net, tmp_path, traced):
    alice, bob, handles, outbox = start_unacknowledged(net, tmp_path)
    traced["read"].clear(), traced["sent"].clear()
    bob = net.restart_node(bob)
    # Bob's own outbox was empty; Alice read exactly her unacknowledged frames for Bob
    # through the re-sender and sent exactly those again, in order.
    assert [(who, to, d) for who, to, d in traced["read"] if who == "Alice"] == \
        [("Alice", "Bob", d) for d in outbox]
    assert traced["sent"] == [("Alice", "Bob", d) for d in outbox]
    finish(net, alice, bob, handles, tmp_path)


def test_a_reopened_node_re_sends_its_own_outbox_through_the_same_re_sender(
        net, tmp_path, traced):
    alice, bob, handles, outbox = start_unacknowledged(net, tmp_path)
    traced["read"].clear(), traced["sent"].clear()
    alice = net.restart_node(alice)
    assert traced["read"] == [("Alice", "Bob", d) for d in outbox]
    assert traced["sent"] == []            # queued until its first commit
    net.run_network(max_messages=0)
    assert traced["sent"][:FLOWS] == [("Alice", "Bob", d) for d in outbox]
    finish(net, alice, bob, handles, tmp_path)


def test_a_damaged_outbox_record_is_logged_by_its_sender_and_not_sent(net, tmp_path, traced, caplog):
    """It was re-sent at every re-send, and only the peer's log said (at each one) that it
    dropped an undecodable frame; its sender's log said nothing above INFO."""
    import logging

    from greenflow.messages import decode_frame
    from greenflow.storage.interface import Batch
    alice, bob, handles, outbox = start_unacknowledged(net, tmp_path)
    f = decode_frame(outbox[0])
    b = Batch()
    b.put_outbox("Bob", f.sid, f.to_responder, f.seq, b"\x9c" + outbox[0][1:])   # 12 fields
    alice.node.store.commit(b)
    traced["sent"].clear()
    with caplog.at_level(logging.WARNING, logger="greenflow.scheduler"):
        bob = net.restart_node(bob)
    assert traced["sent"] == [("Alice", "Bob", d) for d in outbox[1:]]
    assert "Alice: a frame in the outbox to Bob cannot be decoded" in caplog.text
    # The first sending of it was still in flight (MockNetwork keeps frames in flight
    # across a restart): it arrives, and its acknowledgement removes the damaged record.
    net.run_network()
    assert [alice.handle(h.id).result() for h in handles] == [1 + 11 + 21] * FLOWS
    assert list(alice.node.store.outbox("Bob")) == []
