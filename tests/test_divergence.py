"""A divergence explains itself: the flow, the step, the file and line of the diverging
request, the first differing payload field with both values (redacted like dumps), and a
hint when the values look like a clock, a random value or an id. The text is what
``FlowInfo.error``, the checkpoint dump and the CLI show. Peers of a hospitalized flow
keep waiting; they hear of it only when it is killed.

Each test runs the original ``Changing`` flow to its last wait, then installs "new code"
(flips ``replayflows.VARIANT``) and restarts the node, so the flow replays under it.
"""
from __future__ import annotations

import inspect

import pytest
import replayflows
from click.testing import CliRunner
from netutil import only_flow
from replayflows import Changing

from greenflow import FlowStatus, UnexpectedFlowEnd
from greenflow.runtime import fingerprint as fingerprint_module
from greenflow.cli.main import main as cli_main

SOURCE = inspect.getsource(replayflows)
FILE = replayflows.__file__


def line_of(text: str) -> int:
    """The line of ``replayflows.py`` holding ``text`` (exactly one)."""
    hits = [i for i, line in enumerate(SOURCE.splitlines(), 1) if text in line]
    assert len(hits) == 1, (text, hits)
    return hits[0]


@pytest.fixture(autouse=True)
def _variant():
    replayflows.reset()
    yield
    replayflows.reset()


@pytest.fixture(params=["restart", "restart-after-each-frame"])
def restarts(request) -> str:
    return request.param


def diverge(net, variant: int, restarts: str = "restart", first_variant: int = 0):
    """Run Changing under ``first_variant`` until it waits for the peer's last answer,
    switch to ``variant`` and let it replay. Returns (alice, bob, flow id, error text)."""
    alice, bob, carol = (net.create_node(n) for n in ("Alice", "Bob", "Carol"))
    replayflows.VARIANT["v"] = first_variant
    h = alice.start_flow(Changing(bob.party, carol.party))
    if restarts == "restart":
        net.run_network()
    else:   # power cuts of both nodes after every single frame on the way
        for _ in range(12):
            net.run_network(max_messages=1)
            alice, bob = net.restart_node(alice), net.restart_node(bob)
        net.run_network()
    if variant == first_variant:   # the values differ at every replay (reload mode: at once)
        net.restart_node(alice)
    else:
        assert alice.node.flow_info(h.id).status in (FlowStatus.SUSPENDED, FlowStatus.HIBERNATED)
    replayflows.VARIANT["v"] = variant
    alice = net.restart_node(alice)
    net.advance_clock(100)        # the peer answers: the flow is rebuilt by replay
    net.run_network()
    info = alice.node.flow_info(h.id)
    assert info.status == FlowStatus.HOSPITALIZED, info
    assert info.error.startswith("NonDeterminismError: flow replayflows.Changing (" + h.id)
    return alice, bob, h.id, info.error


def test_a_changed_payload_field_is_named_with_both_values(net, restarts):
    _, _, fid, error = diverge(net, 1, restarts)
    assert f"at {FILE}:{line_of('session.send(Order(item')} in Changing.call" in error
    assert "diverged from its journal at step 0, at" in error
    assert "the payload differs at payload.amount: recorded 10, now 11" in error


def test_a_payload_of_another_class_with_equal_fields_names_both_classes(net):
    """A payload class moved to another module showed the same repr on both sides."""
    _, _, _, error = diverge(net, 10)
    assert ("the recorded value's class is replayflows.Order, the code now sends "
            "replayflows.MovedOrder") in error


def test_a_changed_field_on_the_deny_list_is_named_but_its_values_are_redacted(net):
    _, _, _, error = diverge(net, 7)
    assert "the payload differs at payload.api_key: recorded <redacted>, now <redacted>" in error
    assert "k-1" not in error and "k-2" not in error


def test_a_changed_peer_is_named(net, restarts):
    _, _, _, error = diverge(net, 2, restarts)
    assert f"at {FILE}:{line_of('session = self.initiate_flow(peer)')} in Changing.call" in error
    assert "the peer changed: recorded Bob, now Carol" in error


def test_a_changed_expected_type_is_named(net, restarts):
    _, _, _, error = diverge(net, 3, restarts)
    assert f"at {FILE}:{line_of('first = session.receive(')} in Changing.call" in error
    assert "the journal recorded 'receive int from Bob', the code now asks to 'receive str from Bob'" in error
    assert "the expected type changed: recorded int, now str" in error


@pytest.mark.parametrize("first, then", [(0, 11), (12, 0)])
def test_a_receive_whose_type_changed_replays_when_what_it_received_fits(net, restarts, first, then):
    """Widening a receive (`int` to `(int, str)`) was taken for a divergence; so was
    narrowing one where the payload received still fits. The payload decides."""
    alice, bob, carol = (net.create_node(n) for n in ("Alice", "Bob", "Carol"))
    replayflows.VARIANT["v"] = first
    h = alice.start_flow(Changing(bob.party, carol.party))
    for _ in range(12 if restarts != "restart" else 0):
        net.run_network(max_messages=1)
        alice, bob = net.restart_node(alice), net.restart_node(bob)
    net.run_network()
    assert alice.node.flow_info(h.id).status in (FlowStatus.SUSPENDED, FlowStatus.HIBERNATED)
    replayflows.VARIANT["v"] = then
    alice = net.restart_node(alice)
    net.advance_clock(100)
    net.run_network()
    assert alice.node.handle(h.id).result(timeout=10) == (1, 2)


def test_a_narrowed_receive_that_would_not_take_what_it_received_diverges(net):
    _, _, _, error = diverge(net, 3)
    assert "the expected type changed: recorded int, now str, and the payload received " \
           "then (of class int) is not one" in error


def test_an_extra_step_is_named_where_the_code_makes_it(net, restarts):
    _, _, _, error = diverge(net, 4, restarts)
    line = line_of('session.send("extra")')
    assert f"at {FILE}:{line} in Changing.call" in error
    assert "the journal recorded 'receive int from Bob', the code now asks to 'send to Bob" in error
    assert "a step was added, or this one changed" in error


def test_a_missing_step_is_named(net, restarts):
    _, _, _, error = diverge(net, 5, restarts)
    line = line_of('session.send("second")')
    assert f"at {FILE}:{line} in Changing.call" in error
    assert "a step is missing: the code skips the recorded step 'receive int from Bob'" in error


def test_a_flow_that_now_returns_early_names_the_steps_it_skips_and_where_it_waited(net):
    _, _, _, error = diverge(net, 6)
    assert f"call() of Changing ({FILE}:{line_of('def call(self) -> Any:')}) returned" in error
    assert "up to its pending request 'receive int from Bob'" in error
    last_receive = line_of("result = first, session.receive(")
    assert f"(made at {FILE}:{last_receive} in Changing.call)" in error
    assert "a step is missing: the code skips the recorded step 'receive int from Bob'" in error


def test_a_clock_reading_greenflow_does_not_replay_gets_a_clock_hint(net):
    _, _, _, error = diverge(net, 8, first_variant=8)
    assert "the payload differs at payload.amount: recorded " in error
    assert "Hint: these look like clock readings" in error and "self.now()" in error


def test_an_id_from_a_generator_greenflow_does_not_replay_gets_an_id_hint(net):
    _, _, _, error = diverge(net, 9, first_variant=9)
    assert "the payload differs at payload.item: recorded '" in error
    assert "Hint: these look like ids made afresh on replay" in error


def test_the_explanation_is_in_the_dump_and_the_cli(net, tmp_path):
    alice, _, fid, error = diverge(net, 1)
    [entry] = [e for e in alice.checkpoints_dump() if e["flow_id"] == fid]
    assert entry["status"] == "HOSPITALIZED" and entry["error"] == error
    base_dir = alice.node.base_dir
    net.close()                  # the CLI opens the store itself (read-only)
    result = CliRunner().invoke(cli_main, ["checkpoints", "dump", "--node", base_dir])
    assert result.exit_code == 0, result.output
    assert "payload.amount: recorded 10, now 11" in result.output
    assert f"{FILE}:{line_of('session.send(Order(item')}" in result.output


def test_peers_wait_while_the_flow_is_hospitalized_and_hear_of_it_when_it_is_killed(net):
    alice, bob, fid, _ = diverge(net, 1)
    peer = only_flow(bob, "ChangingPeer")
    for _ in range(3):           # time passes, nodes restart: the peer still waits, no error
        net.advance_clock(1000)
        bob = net.restart_node(bob)
        net.run_network()
        info = bob.node.flow_info(peer.id)
        assert info.status in (FlowStatus.SUSPENDED, FlowStatus.HIBERNATED), info
        assert info.error is None
        assert alice.node.flow_info(fid).status == FlowStatus.HOSPITALIZED
    assert alice.node.kill_flow(fid)
    net.run_network()
    info = bob.node.flow_info(peer.id)
    assert info.status == FlowStatus.FAILED, info
    with pytest.raises(UnexpectedFlowEnd, match="Alice was killed while .*ChangingPeer expected to receive str"):
        bob.handle(peer.id).result()


@pytest.mark.parametrize("variant", [1, 2])     # a changed payload; a session to another peer
def test_the_node_and_the_replay_check_word_a_divergence_alike(net, variant):
    """One module words a divergence: the reason a parked flow shows and what the replay
    check reports for the same checkpoint and code are the same text."""
    from greenflow.testing.replay import replay_node
    alice, _, fid, error = diverge(net, variant)
    base_dir = alice.node.base_dir
    net.close()
    [flow] = [f for f in replay_node(base_dir, ["replayflows"]).flows if f.flow_id == fid]
    assert flow.outcome == "diverges" and flow.detail == error
    assert "diverged from its journal at step " in error


def test_the_code_fingerprint_sees_a_changed_name_as_a_change():
    """Sending another constant (PRICE2 for PRICE) changed no bytecode and no constant, so
    a divergence it caused did not say the code had changed."""
    from greenflow.runtime.fingerprint import code_digest

    def flow_reading(name: str) -> type:
        ns: dict = {}
        exec(f"class F:\n    def call(self):\n        return {name}\n", ns)
        return ns["F"]

    assert code_digest(flow_reading("PRICE")) != code_digest(flow_reading("PRICE2"))
    assert code_digest(flow_reading("PRICE")) == code_digest(flow_reading("PRICE"))


def test_a_changed_sub_flow_is_named_as_the_likely_cause(net, monkeypatch):
    """The note "(the code of X changed since this checkpoint was written)" compared
    only the top-level flow class: a divergence inside a changed sub-flow had none."""
    from flowlib import Inner, Outer
    alice, bob = net.create_node("Alice"), net.create_node("Bob")
    h = alice.start_flow(Outer(bob.party))
    net.run_network(max_messages=2)               # inside Inner, its request sent

    def call(self) -> str:                         # deploy: Inner sends something else
        return self.initiate_flow(self.peer).send_and_receive(str, "inner, v2")
    monkeypatch.setattr(Inner, "call", call)
    monkeypatch.setattr(fingerprint_module, "_DIGESTS", {})
    alice = net.restart_node(alice)
    net.run_network()
    info = alice.node.flow_info(h.id)
    assert info.status == FlowStatus.HOSPITALIZED, info
    assert "(the code of flowlib.Inner changed since this checkpoint was written)" in info.error
