"""Power cuts at every point: flows resume where they were and every effect happens once.

`MockNetwork.restart_node` drops a node's memory and reopens it from its LMDB store;
`run_network()` always returns at a committed point, so side effects run exactly once.
"""
from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from flowlib import (Ask, CatchesSideEffectFailure, ChainStart, Doomed, External, HoldsClosures,
                     Napper, Patient, Recorded, Refusal, RefuseEveryone, Rounds, Sleeper, lines)
from netutil import assert_all_finished, only_flow, pair, result_of, run

from greenflow import FlowError, FlowLogic, FlowStatus, UnexpectedFlowEnd
from greenflow.testing import MockNetwork

ROUNDS_RESULT = 1 + 11 + 21


def frames_of_a_full_run(tmp_path, options) -> int:
    net = MockNetwork(tmp_path / "count", **options)
    try:
        alice, bob = pair(net)
        h = alice.start_flow(Rounds(bob.party, str(tmp_path / "count.log")))
        net.run_network()
        assert h.result() == ROUNDS_RESULT
        return net.delivered
    finally:
        net.close()


@pytest.mark.parametrize("who", ["initiator", "responder", "both"])
def test_a_restart_after_every_number_of_delivered_frames_delivers_everything_once(
        tmp_path, net_options, who):
    total = frames_of_a_full_run(tmp_path, net_options)
    assert total >= 7          # 3 rounds of 2 messages, a last message, ends
    effects_before_restart = []
    for k in range(total + 3):
        base = tmp_path / f"{who}-{k}"
        log = str(base) + ".log"
        net = MockNetwork(base, **net_options)
        try:
            alice, bob = pair(net)
            h = alice.start_flow(Rounds(bob.party, log))
            net.run_network(max_messages=k)
            effects_before_restart.append(len(lines(log)))
            if who in ("initiator", "both"):
                alice = net.restart_node(alice)
            if who in ("responder", "both"):
                bob = net.restart_node(bob)
            net.run_network()
            assert alice.handle(h.id).result() == ROUNDS_RESULT, f"restart after {k} frames"
            assert sorted(lines(log)) == sorted(
                [f"initiator {i}" for i in range(3)] + [f"responder {i}" for i in range(3)]), \
                f"restart after {k} frames"
            assert_all_finished(alice, bob)
            [responder] = bob.flows()
            assert bob.handle(responder.id).result() == 0 + 1 + 2
        finally:
            net.close()
    # The power cuts fell everywhere: after the first effect (it runs before any frame
    # leaves), between every two of them, and after the last.
    assert sorted(set(effects_before_restart)) == [1, 2, 3, 4, 5, 6]


def test_restarting_both_nodes_after_every_single_frame_still_completes_once(tmp_path, net):
    log = str(tmp_path / "effects.log")
    alice, bob = pair(net)
    h = alice.start_flow(Rounds(bob.party, log))
    for _ in range(30):
        net.run_network(max_messages=1)
        alice, bob = net.restart_node(alice), net.restart_node(bob)
    net.run_network()
    assert alice.handle(h.id).result() == ROUNDS_RESULT
    assert len(lines(log)) == 6 and len(set(lines(log))) == 6
    assert_all_finished(alice, bob)


def test_many_concurrent_flows_survive_repeated_restarts_of_both_nodes(tmp_path, net):
    alice, bob = pair(net)
    logs = [str(tmp_path / f"flow-{n}.log") for n in range(200)]
    handles = alice.start_flows([Rounds(bob.party, log) for log in logs])
    for k in (150, 333, 500, 777):
        net.run_network(max_messages=k)
        alice, bob = net.restart_node(alice), net.restart_node(bob)
    net.run_network()
    assert [alice.handle(h.id).result() for h in handles] == [ROUNDS_RESULT] * 200
    assert all(len(set(lines(log))) == len(lines(log)) == 6 for log in logs)
    assert_all_finished(alice, bob)


# Outcomes that are errors (a peer's exception, an end, a timeout) are journalled like
# payloads: a restart anywhere must not change who sees what.
OUTCOME_SCENARIOS = {
    "refusal passed up a chain of four": (
        "ABCD", lambda p: ChainStart(p[1], p[2], p[3]), 0),
    "refusal to every open session": ("ABC", lambda p: RefuseEveryone([p[1], p[2]]), 0),
    "peer crash": ("AB", lambda p: Ask(p[1], "crash", int), 0),
    "session closed by the peer": ("AB", lambda p: Ask(p[1], "close", int), 5),
    "payload of the wrong type": ("AB", lambda p: Ask(p[1], "wrong-type", int), 0),
    "receive timeout, then the late answer": ("AB", lambda p: Patient(p[1], 10), 30),
}


def outcomes(net, make, parties, advance, max_messages=None, restart=()):
    """Run one scenario; return (what every party's flows ended with, frames delivered)."""
    nodes = [net.create_node(name) for name in parties]
    nodes[0].start_flow(make([n.party for n in nodes]))
    net.run_network(max_messages=max_messages)
    for i in restart:
        nodes[i] = net.restart_node(nodes[i])
    net.run_network()
    net.advance_clock(advance)
    net.run_network()
    seen = []
    for node in nodes:
        assert node.checkpoints_dump() == []
        for info in sorted(node.flows(), key=lambda f: f.flow_class):
            try:
                seen.append((info.flow_class, "returned", node.handle(info.id).result()))
            except Exception as e:  # noqa: BLE001 - the outcome under test
                seen.append((info.flow_class, type(e).__name__, str(e)))
    return seen, net.delivered


@pytest.mark.parametrize("scenario", OUTCOME_SCENARIOS)
def test_error_outcomes_are_the_same_whichever_node_restarts_after_any_frame(
        tmp_path, net_options, scenario):
    parties, make, advance = OUTCOME_SCENARIOS[scenario]
    with MockNetwork(tmp_path / "ref", **net_options) as net:
        expected, total = outcomes(net, make, parties, advance)
    victims = [(i,) for i in range(len(parties))] + [tuple(range(len(parties)))]
    for restart in victims:
        for k in range(total + 2):
            with MockNetwork(tmp_path / f"{restart}-{k}", **net_options) as net:
                seen, _ = outcomes(net, make, parties, advance, k, restart)
                assert seen == expected, f"restart of {restart} after {k} frames"


# ====================================================================== durable time
def test_a_durable_sleep_wakes_at_its_original_deadline_across_a_restart(net):
    alice = net.create_node("Alice")
    h = run(net, alice, Sleeper(60))
    net.advance_clock(30)
    alice = net.restart_node(alice)
    net.run_network()
    net.advance_clock(29.5)
    net.run_network()
    with pytest.raises(FlowError):
        alice.handle(h.id).result()          # not earlier
    net.advance_clock(0.5)
    net.run_network()
    before, after = alice.handle(h.id).result()
    assert after - before == timedelta(seconds=60)   # not later


def test_a_sleep_whose_deadline_passed_during_the_outage_wakes_at_once(net):
    alice = net.create_node("Alice")
    h = run(net, alice, Sleeper(60))
    alice = net.restart_node(alice)
    net.advance_clock(100)
    net.run_network()
    before, after = alice.handle(h.id).result()
    assert after - before == timedelta(seconds=100)
    assert alice.checkpoints_dump() == []


def test_a_receive_timeout_keeps_its_deadline_across_a_restart(net):
    alice, bob = pair(net)
    h = run(net, alice, Patient(bob.party, 10))
    net.advance_clock(5)
    alice = net.restart_node(alice)
    net.run_network()
    net.advance_clock(4.5)
    net.run_network()
    assert alice.handle(h.id).status != FlowStatus.COMPLETED
    [info] = alice.flows()
    assert info.suspended_on.startswith("receive int from Bob")
    net.advance_clock(0.5)
    net.run_network()
    [info] = alice.flows()
    assert info.suspended_on == "receive int from Bob"   # timed out; now waits without one
    net.advance_clock(20)
    net.run_network()
    message, value = alice.handle(h.id).result()
    assert value == 1 and "timed out" in message


def test_now_random_and_uuid_replay_the_values_first_recorded(net, tmp_path):
    log = str(tmp_path / "values.log")
    alice = net.create_node("Alice")
    h = alice.start_flow(Recorded(log))
    net.run_network()
    alice = net.restart_node(alice)
    net.advance_clock(10)
    net.run_network()
    assert [alice.handle(h.id).result()] == lines(log)


def test_a_side_effects_exception_is_replayed_not_rerun_after_a_restart(net, tmp_path):
    log = str(tmp_path / "tries.log")
    alice = net.create_node("Alice")
    h = run(net, alice, CatchesSideEffectFailure(log))
    alice = net.restart_node(alice)
    net.advance_clock(10)
    net.run_network()
    assert alice.handle(h.id).result() == "the side effect failed"
    assert lines(log) == ["tried"]


def test_a_power_cut_unwinds_waiting_flows_at_once_with_io_refused(net, flow_state):
    alice, bob = pair(net)
    run(net, alice, Doomed(bob.party))
    before = len(flow_state["unwinding"])
    alice = net.restart_node(alice)
    unwound = flow_state["unwinding"]
    assert unwound and all(entry.startswith("refused: ") for entry in unwound), unwound
    if not net.default_options.get("reload_after_suspend"):
        assert len(unwound) == before + 1        # now, not at some later garbage collection
    net.run_network()
    alice.kill_flow(only_flow(alice, "Doomed").id)
    net.run_network()
    assert result_of(bob, "AskResponder").startswith("UnexpectedFlowEnd: ")   # no "bye"


# ====================================================================== starts and results
def test_start_flow_with_a_client_id_is_idempotent_also_after_a_restart(net):
    alice = net.create_node("Alice")
    first = alice.start_flow(Sleeper(10), client_id="nightly-1")
    again = alice.start_flow(Sleeper(10), client_id="nightly-1")
    other = alice.start_flow(Sleeper(10), client_id="nightly-2")
    assert first.id == again.id != other.id
    net.run_network()
    alice = net.restart_node(alice)
    assert alice.start_flow(Sleeper(10), client_id="nightly-1").id == first.id
    net.advance_clock(10)
    net.run_network()
    assert alice.start_flow(Sleeper(10), client_id="nightly-1").id == first.id
    assert len(alice.flows()) == 2
    alice = net.restart_node(alice)
    assert alice.start_flow(Sleeper(10), client_id="nightly-1").id == first.id
    assert alice.handle(first.id).result()[1] - alice.handle(first.id).result()[0] == \
        timedelta(seconds=10)


def test_start_flows_gives_every_flow_its_own_id_and_runs_them_all(net):
    alice = net.create_node("Alice")
    handles = alice.start_flows([Sleeper(1), Sleeper(2), Sleeper(3)])
    assert len({h.id for h in handles}) == 3
    alice = net.restart_node(alice)      # returned: so the starts are durable
    net.run_network()
    net.advance_clock(3)
    net.run_network()
    waits = [alice.handle(h.id).result() for h in handles]
    assert [after - before for before, after in waits] == [timedelta(seconds=3)] * 3


def test_results_and_errors_of_finished_flows_survive_a_restart(net):
    alice, bob = pair(net)
    ok = alice.start_flow(Ask(bob.party, "echo"))
    refused = alice.start_flow(Ask(bob.party, "refuse"))
    ended = run(net, alice, Ask(bob.party, "crash"))
    alice = net.restart_node(alice)
    bob = net.restart_node(bob)
    assert alice.handle(ok.id).result() == 42
    with pytest.raises(Refusal, match="refused the offer 3 times"):
        alice.handle(refused.id).result()
    with pytest.raises(UnexpectedFlowEnd, match="Bob"):
        alice.handle(ended.id).result()
    statuses = sorted(f.status.value for f in alice.flows())
    assert statuses == ["COMPLETED", "FAILED", "FAILED"]
    crashed = [f for f in bob.flows() if f.error and "ValueError" in f.error]
    assert len(crashed) == 1
    with pytest.raises(ValueError, match="password"):
        bob.handle(crashed[0].id).result()


def test_a_message_that_arrived_while_its_flow_slept_survives_a_restart(net):
    alice, bob = pair(net)
    h = alice.start_flow(Napper(bob.party))
    net.run_network()        # Bob answered at once; Alice sleeps with the answer in her inbox
    alice = net.restart_node(alice)
    net.advance_clock(10)
    net.run_network()
    assert alice.handle(h.id).result() == 42


def test_a_flow_started_just_before_a_power_cut_runs_after_the_restart(net):
    alice, bob = pair(net)
    h = alice.start_flow(Ask(bob.party, "echo"))
    alice = net.restart_node(alice)
    net.run_network()
    assert alice.handle(h.id).result() == 42


def test_a_handle_from_before_a_restart_says_to_re_attach(net):
    alice = net.create_node("Alice")
    h = run(net, alice, Sleeper(1))
    net.restart_node(alice)
    for use in (lambda: h.result(), lambda: h.status, lambda: h.node.handle(h.id)):
        with pytest.raises(FlowError, match=r"Alice is closed.*node\.handle"):
            use()


# ====================================================================== what flows hold
def test_lambdas_and_closures_in_attributes_and_locals_survive_restarts(net):
    alice = net.create_node("Alice")
    h = run(net, alice, HoldsClosures(offset=5))
    alice = net.restart_node(alice)
    net.advance_clock(10)
    net.run_network()
    alice = net.restart_node(alice)
    net.advance_clock(10)
    net.run_network()
    # twice(1)=2, +5 -> 7, +base 3 -> 10, +100 -> 110, later: -1 -> 109
    assert alice.handle(h.id).result() == 109


class ExternalThread(FlowLogic):
    def call(self) -> list:
        return [threading.current_thread().name,
                self.run_external(lambda: threading.current_thread().name)]


def test_run_external_runs_on_a_worker_thread_on_mock_network_too(net):
    """The contract: run_external runs its call on a worker thread. MockNetwork ran it on
    the test's thread (thread-local state and what blocks differed from a real node)."""
    alice = net.create_node("Alice")
    h = alice.start_flow(ExternalThread())
    net.run_network()
    flow_thread, call_thread = h.result()
    assert flow_thread == threading.current_thread().name
    assert call_thread != flow_thread and call_thread.startswith("gf-ext-")


def test_run_external_runs_once_and_its_result_is_replayed_after_a_restart(net, tmp_path):
    log = str(tmp_path / "external.log")
    alice = net.create_node("Alice")
    h = run(net, alice, External(log, 21))
    assert lines(log) == ["external 21"]
    alice = net.restart_node(alice)
    net.advance_clock(10)
    net.run_network()
    assert alice.handle(h.id).result() == (42, 84)
    assert lines(log) == ["external 21", "external 42"]
