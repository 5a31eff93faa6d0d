"""Frames on a session a flow opened find that flow by the flow id inside the session id
(no routing record is stored for such sessions): whether the flow is resident,
hibernated or finished, and only when they come from the session's counterparty."""
from __future__ import annotations

import logging

from greenflow.statemachine.events import FrameArrived
from greenflow.messages import DATA, decode_frame
from greenflow.samples.ping import Ping


def _frames_to(net, name):
    return [(s, d) for s, to, d in net._in_flight if to == name]


def _first_answer(net):
    """Deliver Alice's frames one at a time until Bob's first answer is in flight."""
    for _ in range(10):
        frames = _frames_to(net, "Alice")
        if frames:
            return frames[0][1]
        net.run_network(max_messages=1)
    raise AssertionError("Bob never answered")


def test_a_copy_of_a_peers_frame_sent_by_a_third_party_is_dropped(net, caplog):
    alice, bob, carol = (net.create_node(n) for n in ("Alice", "Bob", "Carol"))
    h = alice.start_flow(Ping(bob.party, 2))
    data = _first_answer(net)                  # Bob's answer, on its way to Alice
    assert decode_frame(data).kind == DATA
    caplog.set_level(logging.WARNING)
    alice.node.scheduler.post(FrameArrived(carol.party, data))   # Carol replays it
    net.run_network()
    assert h.result() == 3                     # Bob's real answers count, once each
    assert any("dropped" in r.getMessage() and "from Carol" in r.getMessage()
               and "no such session" in r.getMessage() for r in caplog.records)


def test_a_late_copy_of_a_frame_for_a_finished_flow_is_acknowledged(net, caplog):
    alice, bob = net.create_node("Alice"), net.create_node("Bob")
    h = alice.start_flow(Ping(bob.party, 1))
    data = _first_answer(net)
    net.run_network()
    assert h.result() == 1
    caplog.set_level(logging.DEBUG, logger="greenflow")
    alice.node.scheduler.post(FrameArrived(bob.party, data))     # re-sent after the end
    net.run_network()
    assert any("late" in r.getMessage() and "finished flow" in r.getMessage()
               for r in caplog.records)
    assert not any(r.levelno >= logging.WARNING and "no such session" in r.getMessage()
                   for r in caplog.records)
    assert list(bob.node.store.outbox()) == []
