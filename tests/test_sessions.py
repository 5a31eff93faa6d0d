"""Sessions between parties: who starts whom, what crosses, in which order.

Every test runs with flows resident and again with ``reload_after_suspend`` (see the
``net`` fixture in conftest.py).
"""
from __future__ import annotations

import pytest

from datetime import datetime, timezone

from flowlib import (CatchingParent, CloseEarly, Context, CustomPing, Echo, Fanout, Offer, Outer,
                     ReceiveFirst, SendNone, Tracked, Unused, VersionedAsk)
from netutil import assert_all_finished, only_flow, pair, result_of, run

from greenflow import FlowStatus, ProgressTracker
from greenflow.samples.ping import Ping


def test_ping_pong_between_two_parties_returns_the_sum_of_the_replies(net):
    alice, bob = pair(net)
    h = run(net, alice, Ping(bob.party, 3))
    assert h.result() == 1 + 2 + 3
    assert only_flow(bob, "Pong").status == FlowStatus.COMPLETED
    assert_all_finished(alice, bob)


def test_ping_pong_between_three_parties_interleaves_both_peers(net):
    alice, bob, carol = (net.create_node(n) for n in ("Alice", "Bob", "Carol"))
    h = run(net, alice, Fanout([bob.party, carol.party], 3))
    assert h.result() == [[("Bob", i + 1), ("Carol", i + 1)] for i in range(3)]
    assert_all_finished(alice, bob, carol)


def test_a_thousand_concurrent_flows_on_one_node_pair_all_complete(net):
    alice, bob = pair(net)
    handles = alice.start_flows([Ping(bob.party, (i % 3) + 1) for i in range(1000)])
    assert len({h.id for h in handles}) == 1000
    net.run_network()
    expected = {1: 1, 2: 3, 3: 6}
    assert [h.result() for h in handles] == [expected[(i % 3) + 1] for i in range(1000)]
    assert len(bob.flows()) == 1000
    assert_all_finished(alice, bob)


def test_receive_first_initiation_starts_the_responder_without_a_message(net):
    alice, bob = pair(net)
    h = run(net, alice, ReceiveFirst(bob.party))
    assert h.result() == "hello from Bob"
    # Greeter's first receive(int) got the int, not the bare initiation.
    assert_all_finished(alice, bob)


def test_a_none_payload_is_a_message_unlike_a_bare_initiation(net):
    alice, bob = pair(net)
    h = run(net, alice, SendNone(bob.party))
    assert h.result() == "None"


def test_a_session_never_sent_on_or_received_from_never_reaches_the_peer(net):
    alice, bob = pair(net)
    h = run(net, alice, Unused(bob.party))
    net.advance_clock(1)
    net.run_network()
    assert h.result() == "unused"
    assert net.delivered == 0
    assert bob.flows() == []


def test_close_ends_the_session_for_a_peer_waiting_on_it(net):
    alice, bob = pair(net)
    h = run(net, alice, CloseEarly(bob.party))
    assert only_flow(bob, "ReadPastClose").status == FlowStatus.COMPLETED
    text = result_of(bob, "ReadPastClose")
    assert text.startswith("1; ")
    assert "Alice" in text and "closed the session" in text and "int" in text
    net.advance_clock(5)
    net.run_network()
    assert h.result() == "closed"


def test_receive_on_a_session_this_flow_closed_is_refused_at_once(net):
    """It waited for good (the peer's end is not sent to a side that closed), as send()
    after close() is refused; or it took a reply the peer sent after the close."""
    alice, bob = pair(net)
    h = run(net, alice, CloseEarly(bob.party, then_receive=True))
    net.advance_clock(5)
    net.run_network()
    assert h.result() == ("flowlib.CloseEarly cannot receive from Bob: the session has "
                          "ended (closed by this flow)")
    assert result_of(bob, "ReadPastClose").startswith("1; ")


def test_counterparty_flow_info_shows_each_side_the_other_ones_version_and_app(net):
    alice, bob = pair(net)
    h = run(net, alice, VersionedAsk(bob.party))
    seen_by_alice, seen_by_bob = h.result()
    assert seen_by_bob == (2, "flowlib")      # the initiator's @initiating_flow(version=2)
    assert seen_by_alice == (1, "flowlib")    # responders are version 1 unless told
    assert result_of(bob, "VersionedAnswer") == (2, "flowlib")


def test_counterparty_flow_info_asked_before_anything_was_sent(net):
    alice, bob = pair(net)
    h = run(net, alice, VersionedAsk(bob.party, ask_first=True))
    assert h.result() == ((1, "flowlib"), (2, "flowlib"))


def test_an_initiating_sub_flow_opens_sessions_as_itself_and_a_plain_one_as_its_parent(net):
    alice, bob = pair(net)
    h = run(net, alice, Outer(bob.party))
    assert h.result() == ("answered by OuterResponder", "answered by InnerResponder",
                          "answered by OuterResponder")
    assert sorted(f.flow_class for f in bob.flows()) == [
        "flowlib.InnerResponder", "flowlib.OuterResponder", "flowlib.OuterResponder"]


def test_an_undecorated_subclass_of_an_initiating_flow_is_answered_by_the_ancestors_responder(net):
    alice, bob = pair(net)
    h = run(net, alice, CustomPing(bob.party, 2))
    assert h.result() == 1000 + 1 + 2
    assert only_flow(bob, "Pong").status == FlowStatus.COMPLETED


def test_each_flow_instance_has_its_own_progress_tracker():
    a, b = Tracked(None, 1), Tracked(None, 2)
    assert a.progress_tracker is not b.progress_tracker
    assert a.progress_tracker is not Tracked.progress_tracker
    assert isinstance(Tracked.progress_tracker, ProgressTracker)


def test_progress_steps_of_concurrent_flows_are_independent_and_sub_flow_steps_nest(net):
    alice, bob = pair(net)
    quick = alice.start_flow(Tracked(bob.party, 10))
    slow = run(net, alice, Tracked(bob.party, 100))
    steps = {f.id: f.progress_step for f in alice.flows()}
    assert steps == {quick.id: "Asking", slow.id: "Asking"}
    net.advance_clock(10)
    net.run_network()
    steps = {f.id: f.progress_step for f in alice.flows()}
    assert steps == {quick.id: "Delegating / Child waiting", slow.id: "Asking"}
    net.advance_clock(10)
    net.run_network()
    assert quick.result() == "Delegating"
    assert Tracked.progress_tracker.label is None   # the class's template never moved
    for _ in range(2):   # the slow flow's own wait, then its child's
        net.advance_clock(100)
        net.run_network()
    assert slow.result() == "Delegating"


def test_builtins_parties_and_serializable_classes_cross_unchanged(net):
    alice, bob = pair(net)
    payload = {"offer": Offer("tea", 3, alice.party), "parties": [alice.party, bob.party],
               "tuple": (1, "two", None), "set": {1, 2}, "bytes": b"\x00\xff",
               "when": datetime(2024, 1, 2, 3, 4, 5, tzinfo=timezone.utc), "big": 2 ** 100}
    h = run(net, alice, Echo(bob.party, payload))
    assert h.result() == payload
    assert type(h.result()["offer"]) is Offer


def test_context_members_work_in_helpers_and_after_replay(net):
    alice = net.create_node("Alice")
    h = run(net, alice, Context())
    net.advance_clock(1)
    net.run_network()
    assert h.result() == ("Alice", h.id, True) * 2


def test_a_flow_exception_from_a_sub_flow_can_be_caught_and_the_flow_carries_on(net):
    alice, bob = pair(net)
    h = run(net, alice, CatchingParent(bob.party))
    assert h.result() == ("refused the offer 3 times", 42)
    statuses = sorted(f.status.value for f in bob.flows())
    assert statuses == ["COMPLETED", "FAILED"]


def test_progress_survives_a_restart(net):
    alice, bob = pair(net)
    h = run(net, alice, Tracked(bob.party, 10))
    alice = net.restart_node(alice)
    assert only_flow(alice, "Tracked").progress_step == "Asking"
    net.advance_clock(10)
    net.run_network()
    assert only_flow(alice, "Tracked").progress_step == "Delegating / Child waiting"
    alice = net.restart_node(alice)
    assert only_flow(alice, "Tracked").progress_step == "Delegating / Child waiting"
    net.advance_clock(10)
    net.run_network()
    assert alice.handle(h.id).result() == "Delegating"


@pytest.mark.parametrize("warm_up", [False, True], ids=["opening-frame", "later-frame"])
def test_a_payload_its_receiver_cannot_read_ends_both_flows(net, warm_up):
    """Two parties running different versions of a `@serializable` class: the receiver
    dropped the payload it could not decode, unacknowledged, so the sender re-sent it
    for ever and both flows waited for good. On a session that runs, the receiver's flow
    now fails with `ReceiveTypeError` saying why, and the sender sees that end; a
    session whose first message cannot be read is refused, saying why."""
    import dataclasses
    from flowlib import Order, PlaceOrder
    from greenflow import ReceiveTypeError, SessionRefused, UnexpectedFlowEnd
    from greenflow.wire import register_wire_type
    alice, bob = pair(net)
    handle = alice.start_flow(PlaceOrder(bob.party, warm_up))
    net.run_network(max_messages=2 if warm_up else 0)   # the Order is sent, not yet read

    @dataclasses.dataclass(frozen=True)
    class Upgraded:   # Bob's version of the class: one field more
        sku: str
        qty: int
        note: str
    Upgraded.__module__, Upgraded.__qualname__ = Order.__module__, Order.__qualname__
    register_wire_type(Upgraded)
    try:
        net.run_network()
        for _ in range(3):
            net.advance_clock(60)
            net.run_network()
    finally:
        register_wire_type(Order)
    if not warm_up:
        with pytest.raises(SessionRefused, match="Bob refused the session for flowlib.PlaceOrder: "
                                                 "its first message cannot be read on Bob: "
                                                 "malformed flowlib.Order.*note"):
            handle.result()
        assert bob.node.flows() == []
        return
    with pytest.raises(UnexpectedFlowEnd):
        handle.result()
    [taker] = [f for f in bob.node.flows() if f.flow_class.endswith("TakeOrder")]
    assert taker.status == FlowStatus.FAILED
    with pytest.raises(ReceiveTypeError, match="undecodable payload from Alice.*note"):
        bob.node.handle(taker.id).result()
