"""Operations: the flow hospital, code upgrades, draining, hibernation and retention."""
from __future__ import annotations

import os
import time

import pytest

import opsflows
from opsflows import KNOBS, Exchange
from greenflow import FlowStatus
from greenflow.testing import MockNetwork


@pytest.fixture
def ops_net(tmp_path):
    opsflows.reset()
    net = MockNetwork(tmp_path / "net")
    yield net
    net.close()
    opsflows.reset()


def status_of(node, fid):
    return next(f for f in node.flows() if f.id == fid)


def test_transient_failure_is_retried_from_the_last_checkpoint_with_backoff(ops_net):
    alice, bob = ops_net.create_node("Alice"), ops_net.create_node("Bob")
    KNOBS["transient_failures"] = 2
    h = alice.start_flow(Exchange(bob.party))
    ops_net.run_network()
    info = status_of(alice, h.id)
    assert info.status == FlowStatus.HOSPITALIZED
    assert "TransientError: store briefly unavailable" in info.error
    ops_net.advance_clock(1.0)            # first retry due after 1 s: fails again
    ops_net.run_network()
    assert status_of(alice, h.id).status == FlowStatus.HOSPITALIZED
    ops_net.advance_clock(1.0)            # backoff doubled: not yet
    ops_net.run_network()
    assert status_of(alice, h.id).status == FlowStatus.HOSPITALIZED
    ops_net.advance_clock(1.0)
    ops_net.run_network()
    assert h.result() == 10 + 20 + 30


def test_an_automatic_retry_that_was_due_is_still_made_after_a_restart(ops_net):
    """Its timer lived in memory only: after a restart (clean or not) the flow stayed
    parked for good, its error still saying 'attempt 1'."""
    alice, bob = ops_net.create_node("Alice"), ops_net.create_node("Bob")
    KNOBS["transient_failures"] = 1
    h = alice.start_flow(Exchange(bob.party))
    ops_net.run_network()
    assert status_of(alice, h.id).status == FlowStatus.HOSPITALIZED
    assert ops_net.next_timer() == pytest.approx(1.0)
    alice = ops_net.restart_node(alice)
    assert ops_net.next_timer() == pytest.approx(1.0)   # the retry's time, kept
    ops_net.advance_clock(1.0)
    ops_net.run_network()
    assert alice.node.handle(h.id).result() == 10 + 20 + 30


def test_the_dump_of_a_hospitalized_flow_shows_where_it_failed_with_its_locals(ops_net):
    """It showed the frames with no locals (the greenlet was gone, and the replay a dump
    makes skipped parked flows), the case where the locals matter most."""
    alice, bob = ops_net.create_node("Alice"), ops_net.create_node("Bob")
    KNOBS["transient_failures"] = 5
    h = alice.start_flow(Exchange(bob.party))
    ops_net.run_network()
    for restart in (False, True):
        node = ops_net.restart_node(alice) if restart else alice
        [dump] = [d for d in node.checkpoints_dump() if d["flow_id"] == h.id]
        assert dump["status"] == "HOSPITALIZED"
        [frame] = dump["frames"]
        assert frame["function"] == "Exchange.call" and frame["locals"]["total"] == "10", dump


def test_flow_that_keeps_failing_stays_hospitalized_until_an_operator_retries_it(ops_net):
    alice = ops_net.create_node("Alice", max_retries=1)
    bob = ops_net.create_node("Bob")
    KNOBS["transient_failures"] = 5
    h = alice.start_flow(Exchange(bob.party))
    ops_net.run_network()
    ops_net.advance_clock(10)
    ops_net.run_network()
    info = status_of(alice, h.id)
    assert info.status == FlowStatus.HOSPITALIZED and "after 1 retries" in info.error
    ops_net.advance_clock(1000)
    ops_net.run_network()
    assert status_of(alice, h.id).status == FlowStatus.HOSPITALIZED  # no more automatic retries
    KNOBS["transient_failures"] = 1             # the operator's retry fails once more:
    assert alice.node.retry_flow(h.id)          # retried again automatically (the count
    ops_net.run_network()                       # starts afresh), not parked at once
    info = status_of(alice, h.id)
    assert info.status == FlowStatus.HOSPITALIZED and "after 1 retries" not in info.error
    ops_net.advance_clock(1.0)
    ops_net.run_network()
    assert h.result() == 60


def test_hospitalized_flow_survives_a_restart_and_can_be_killed(ops_net):
    alice, bob = ops_net.create_node("Alice", max_retries=0), ops_net.create_node("Bob")
    KNOBS["transient_failures"] = 1
    h = alice.start_flow(Exchange(bob.party))
    ops_net.run_network()
    alice = ops_net.restart_node(alice)
    ops_net.run_network()
    assert status_of(alice, h.id).status == FlowStatus.HOSPITALIZED
    dump = alice.node.checkpoints_dump()
    assert dump[0]["status"] == "HOSPITALIZED" and "TransientError" in dump[0]["error"]
    assert alice.node.kill_flow(h.id)
    ops_net.run_network()
    assert status_of(alice, h.id).status == FlowStatus.KILLED
    assert bob.node.pending_flows_count == 0   # the responder saw the session end


def test_compatible_code_change_resumes_old_checkpoints(ops_net):
    alice, bob = ops_net.create_node("Alice"), ops_net.create_node("Bob")
    h = alice.start_flow(Exchange(bob.party))
    ops_net.run_network(max_messages=2)   # past the first round, under the old code
    KNOBS["new_code"] = True              # deploy: new branch guarded by versioned()
    alice = ops_net.restart_node(alice)
    ops_net.run_network()
    assert alice.node.handle(h.id).result() == 60          # old path replayed
    h2 = alice.start_flow(Exchange(bob.party))
    ops_net.run_network()
    assert h2.result() == 60 + 1000                         # new runs take the new path


def test_a_change_id_asked_twice_gives_a_flow_one_path(ops_net):
    """A flow checkpointed between two `versioned` calls of one change id replayed the
    first as False (no marker), then took the second live as True: half of each path
    (3 -> 300 here, where the old path gives 30 and the new 600)."""
    from opsflows import Fee
    alice = ops_net.create_node("Alice")
    h = alice.start_flow(Fee(3))
    ops_net.run_network()                    # sleeping, under the old code
    KNOBS["new_code"] = True                 # deploy: both uses guarded by versioned()
    alice = ops_net.restart_node(alice)
    h2 = alice.start_flow(Fee(3))
    ops_net.run_network()
    alice = ops_net.restart_node(alice)      # the new flow replays its first marker
    ops_net.advance_clock(30)
    ops_net.run_network()
    assert alice.node.handle(h.id).result() == 30          # the old path, whole
    assert alice.node.handle(h2.id).result() == 600        # the new path, whole


def test_a_versioned_call_removed_with_its_old_branch_is_passed_over_by_flows_that_took_it(ops_net):
    """The docs say to remove the old branch once no flow from before the change is left;
    flows that had taken the new branch then diverged at the marker their journal held
    ("the journal recorded 'versioned'"), and nothing could retire the call."""
    alice, bob = ops_net.create_node("Alice"), ops_net.create_node("Bob")
    KNOBS["new_code"] = True
    h = alice.start_flow(Exchange(bob.party))
    ops_net.run_network(max_messages=4)          # past the versioned call: its marker stored
    KNOBS["retired"] = True                      # deploy: no old branch, no versioned call
    alice = ops_net.restart_node(alice)
    ops_net.run_network()
    assert alice.node.handle(h.id).result() == 1060


def test_a_field_added_to_init_parks_the_flows_started_before_until_code_that_runs_them(ops_net):
    """A restored flow is not made again (its __init__ ran under the code it started
    with): a field the new __init__ sets was missing, and the flow FAILED for good with
    "'Tagged' object has no attribute 'tag'", while the replay check said it replays."""
    from opsflows import Tagged
    alice, bob = ops_net.create_node("Alice"), ops_net.create_node("Bob")
    KNOBS["old_init"] = True
    h = alice.start_flow(Tagged(bob.party))
    ops_net.run_network(max_messages=1)          # waiting for Bob's answer
    KNOBS["old_init"] = False                    # deploy: __init__ now sets tag
    alice = ops_net.restart_node(alice)
    ops_net.run_network()
    info = status_of(alice, h.id)
    assert info.status == FlowStatus.HOSPITALIZED, info
    assert "opsflows.Tagged.__init__ takes 'tag', but this flow object has no attribute 'tag'" in info.error
    assert "give tag a class-level default" in info.error
    Tagged.tag = "t"                             # deploy the fix the message names
    try:
        assert alice.node.retry_flow(h.id)
        ops_net.run_network()
        assert alice.node.handle(h.id).result() == "10/t"
    finally:
        del Tagged.tag


@pytest.mark.parametrize("read", ["attempts", "money"])
def test_a_field_init_sets_without_taking_it_parks_the_flows_started_before(ops_net, read):
    """Only fields `__init__` takes as parameters were recognised: `self.attempts = 0`
    added to a flow's `__init__`, or `self.currency = "EUR"` to that of an object the
    flow holds, passed the replay check ("replays") and the flow then FAILED for good."""
    from opsflows import Counted, Money

    from greenflow.testing import replay_node
    alice, bob = ops_net.create_node("Alice"), ops_net.create_node("Bob")
    KNOBS.update(old_init=True, read=read)
    try:
        h = alice.start_flow(Counted(bob.party))
        ops_net.run_network(max_messages=1)          # waiting for Bob's answer
        ops_net.close()
        KNOBS["old_init"] = False                    # deploy: the new __init__s
        report = replay_node(os.path.join(ops_net.base_dir, "Alice"), ["opsflows"])
        [flow] = [f for f in report.flows if f.flow_id == h.id]
        assert flow.outcome == "will park", report.text()
        if read == "money":
            assert "likewise Money.currency (field 'price')" in flow.detail
        else:
            assert "Counted.__init__ sets 'attempts', which this flow object lacks" in flow.detail
        alice = ops_net.restart_node(alice)
        ops_net.run_network()
        info = status_of(alice, h.id)
        assert info.status == FlowStatus.HOSPITALIZED, info
        cls, field = ("opsflows.Money", "currency") if read == "money" \
            else ("opsflows.Counted", "attempts")
        assert f"{cls}.__init__ sets '{field}', but " in info.error, info.error
        setattr(Money if read == "money" else Counted, field, "EUR" if read == "money" else 0)
        try:
            assert alice.node.retry_flow(h.id)
            ops_net.run_network()
            assert alice.node.handle(h.id).result() == ("10/7 EUR" if read == "money" else "10/1")
        finally:
            delattr(Money if read == "money" else Counted, field)
    finally:
        KNOBS.pop("read", None)


def test_the_replay_check_says_a_flow_missing_a_field_added_to_init_will_park(ops_net):
    """`greenflow replay` said such a flow replays: it does, up to its journal's end, and
    then parks where its code reads the field."""
    from opsflows import Tagged

    from greenflow.testing import replay_node
    alice, bob = ops_net.create_node("Alice"), ops_net.create_node("Bob")
    KNOBS["old_init"] = True
    h = alice.start_flow(Tagged(bob.party))
    ops_net.run_network(max_messages=1)          # waiting for Bob's answer
    ops_net.close()
    KNOBS["old_init"] = False                    # deploy: __init__ now sets tag
    report = replay_node(os.path.join(ops_net.base_dir, "Alice"), ["opsflows"])
    [flow] = [f for f in report.flows if f.flow_id == h.id]
    assert not report.ok and not flow.ok and flow.outcome == "will park", report.text()
    assert "Tagged.__init__ takes 'tag', which this flow object lacks" in flow.detail
    assert "give tag a class-level default" in flow.detail
    Tagged.tag = "t"                             # the fix the message names
    try:
        assert replay_node(os.path.join(ops_net.base_dir, "Alice"), ["opsflows"]).ok
    finally:
        del Tagged.tag


def test_versioned_branch_is_kept_by_flows_started_under_the_new_code_across_restarts(ops_net):
    alice, bob = ops_net.create_node("Alice"), ops_net.create_node("Bob")
    KNOBS["new_code"] = True
    h = alice.start_flow(Exchange(bob.party))
    ops_net.run_network(max_messages=4)
    alice = ops_net.restart_node(alice)
    ops_net.run_network()
    assert alice.node.handle(h.id).result() == 1060


def test_incompatible_code_change_is_hospitalized_naming_class_and_step(ops_net):
    alice, bob = ops_net.create_node("Alice"), ops_net.create_node("Bob")
    h = alice.start_flow(Exchange(bob.party))
    other = alice.start_flow(Exchange(bob.party))
    ops_net.run_network(max_messages=6)
    done_before = {fid for fid in (h.id, other.id)
                   if status_of(alice, fid).status == FlowStatus.COMPLETED}
    KNOBS["diverge"] = True
    alice = ops_net.restart_node(alice)
    ops_net.run_network()
    for fid in (h.id, other.id):
        info = status_of(alice, fid)
        if fid in done_before:
            continue
        assert info.status == FlowStatus.HOSPITALIZED
        assert "NonDeterminismError" in info.error and "opsflows.Exchange" in info.error
        assert "step" in info.error and "sleep" in info.error
    # the node still serves new flows
    KNOBS["diverge"] = False
    h3 = alice.start_flow(Exchange(bob.party))
    ops_net.run_network()
    assert h3.result() == 60


def test_draining_refuses_new_flows_and_sessions_but_lets_running_ones_finish(ops_net):
    from greenflow import FlowError
    alice, bob = ops_net.create_node("Alice"), ops_net.create_node("Bob")
    running = alice.start_flow(Exchange(bob.party))
    ops_net.run_network(max_messages=3)
    bob.node.set_draining(True)
    alice.node.set_draining(False)
    with pytest.raises(FlowError, match="draining"):
        bob.start_flow(Exchange(alice.party))
    late = alice.start_flow(Exchange(bob.party))   # Bob must not answer it while draining
    ops_net.run_network()
    assert running.result() == 60
    assert bob.node.pending_flows_count == 0
    assert status_of(alice, late.id).status in (FlowStatus.SUSPENDED, FlowStatus.HIBERNATED)
    bob.node.set_draining(False)
    ops_net.run_network()
    assert late.result() == 60


def test_a_node_restarted_while_draining_stays_draining_until_told(ops_net):
    """The upgrade procedure stops a drained node, upgrades it and starts it: it came back
    taking new flows and sessions, before anyone said `drain off`."""
    from greenflow import FlowError
    alice, bob = ops_net.create_node("Alice"), ops_net.create_node("Bob")
    bob.node.set_draining(True)
    bob = ops_net.restart_node(bob)
    assert bob.node.draining
    with pytest.raises(FlowError, match="draining"):
        bob.start_flow(Exchange(alice.party))
    late = alice.start_flow(Exchange(bob.party))   # held: Bob takes no new session yet
    ops_net.run_network()
    assert status_of(alice, late.id).status in (FlowStatus.SUSPENDED, FlowStatus.HIBERNATED)
    bob.node.set_draining(False)
    ops_net.run_network()
    assert late.result() == 60
    bob = ops_net.restart_node(bob)
    assert not bob.node.draining


def test_a_draining_node_holds_each_frame_of_a_new_session_once_and_a_bounded_number(
        ops_net, monkeypatch):
    """Every copy a peer re-sent of a frame held while draining was held again (100 new
    sessions held 200 frames, 1,200 after five re-sends), with no bound; each later frame
    of a held session was checked by decoding every held one. Held once now, up to
    `MAX_HELD_FRAMES`; what is not held stays with its sender and comes again."""
    from greenflow.samples.ping import Ping
    from greenflow.statemachine import routing
    monkeypatch.setattr(routing, "MAX_HELD_FRAMES", 30)
    alice, bob = ops_net.create_node("Alice"), ops_net.create_node("Bob")
    bob.node.set_draining(True)
    handles = alice.node.start_flows([Ping(bob.party, 1) for _ in range(20)])
    ops_net.run_network()
    held = bob.node.scheduler._deferred
    assert len(held) == 30   # (each Ping sends two frames before its answer: 40 came)
    for _ in range(3):
        alice = ops_net.restart_node(alice)   # re-sends its whole outbox
        ops_net.run_network()
        assert len(bob.node.scheduler._deferred) == 30
    bob.node.set_draining(False)
    ops_net.run_network()
    alice = ops_net.restart_node(alice)   # what was not held comes again
    ops_net.run_network()
    assert [alice.handle(h.id).result() for h in handles] == [1] * 20


@pytest.mark.parametrize("extra", [{}, {"reload_after_suspend": True}], ids=["lru", "reload"])
def test_hibernated_flows_show_as_such_and_complete_when_their_message_comes(tmp_path, extra):
    opsflows.reset()
    net = MockNetwork(tmp_path / "net", max_resident=2, **extra)
    alice, bob = net.create_node("Alice"), net.create_node("Bob")
    handles = [alice.start_flow(Exchange(bob.party)) for _ in range(10)]
    net.run_network(max_messages=10)
    statuses = {f.status for f in alice.node.flows()}
    assert FlowStatus.HIBERNATED in statuses
    assert len(alice.node.scheduler.resident) <= 2
    net.run_network()
    assert [h.result() for h in handles] == [60] * 10


def test_restart_replays_only_flows_with_something_to_do(tmp_path):
    opsflows.reset()
    net = MockNetwork(tmp_path / "net")
    alice, bob = net.create_node("Alice"), net.create_node("Bob")
    for _ in range(20):
        alice.start_flow(Exchange(bob.party))
    net.run_network(max_messages=20)   # every initiator now waits on Bob
    bob_replays_before = bob.node.scheduler.stats["replays"]
    alice = net.restart_node(alice)
    assert len(alice.node.scheduler.resident) == 0   # idle flows stay on disk
    assert alice.node.pending_flows_count == 20
    net.run_network()
    assert all(f.status == FlowStatus.COMPLETED for f in alice.node.flows())
    assert bob.node.scheduler.stats["replays"] == bob_replays_before


def test_finished_flow_records_expire_after_the_retention_time(tmp_path):
    opsflows.reset()
    net = MockNetwork(tmp_path / "net", retention=3600)
    alice, bob = net.create_node("Alice"), net.create_node("Bob")
    h = alice.start_flow(Exchange(bob.party), client_id="c-1")
    net.run_network()
    assert h.result() == 60
    store, bstore = alice.node.store, bob.node.store
    # Alice opened the session: it routes by its id, no record. Bob keeps one (finished).
    bob_route = ("Alice", f"{h.id}.1", 0)
    assert [fid for fid, _ in store.results()] == [h.id]
    assert store.route("Bob", f"{h.id}.1", 1) is None
    assert bstore.route(*bob_route) is not None
    net.advance_clock(3601)
    h2 = alice.start_flow(Exchange(bob.party))   # any later commit sweeps
    net.run_network()
    assert h2.result() == 60
    assert store.result(h.id) is None and store.client("c-1") is None
    assert bstore.route(*bob_route) is None
    # The node's own view agrees with its store (the listing still said COMPLETED).
    from greenflow import UnknownFlow
    assert h.id not in {f.id for f in alice.node.flows()}
    for ask in (alice.node.flow_info, lambda fid: alice.node.handle(fid).result()):
        with pytest.raises(UnknownFlow):
            ask(h.id)


def test_an_idle_node_expires_its_results_too(tmp_path):
    """The sweep ran only after a commit: a node that committed nothing kept them."""
    from greenflow import Node, UnknownFlow
    node = Node.open(str(tmp_path / "solo"), name="Solo", retention=1)
    try:
        from flowlib import Sleeper
        h = node.start_flow(Sleeper(0))
        h.result(timeout=30)
        end = time.monotonic() + 30
        while time.monotonic() < end and node.store.result(h.id) is not None:
            time.sleep(0.2)
        with pytest.raises(UnknownFlow):
            node.handle(h.id).result(timeout=1)
    finally:
        node.close()


def test_frames_behind_a_rejected_initiation_are_acknowledged_so_no_outbox_entry_lingers(tmp_path):
    from greenflow import UnknownFlow
    opsflows.reset()
    net = MockNetwork(tmp_path / "net")
    alice = net.create_node("Alice")
    bob = net.create_node("Bob", apps=["greenflow.samples.ping"])   # no responder for Chatter
    h = alice.start_flow(opsflows.Chatter(bob.party))
    net.run_network()
    with pytest.raises(UnknownFlow, match="Bob has no flow registered to answer opsflows.Chatter"):
        h.result()
    assert list(alice.node.store.outbox()) == []
    assert list(bob.node.store.outbox()) == []


def test_an_error_while_ending_a_flow_parks_it_instead_of_breaking_the_node(ops_net, monkeypatch):
    from greenflow.runtime.flow_runtime import FlowRuntime
    alice, bob = ops_net.create_node("Alice"), ops_net.create_node("Bob")
    real = FlowRuntime.end_frames
    calls = {"n": 0}

    def broken(self, outcome):
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("bug while ending")
        return real(self, outcome)

    monkeypatch.setattr(FlowRuntime, "end_frames", broken)
    alice.start_flow(Exchange(bob.party))
    ops_net.run_network()
    ended = [f for f in alice.node.flows() + bob.node.flows() if f.error and "bug while ending" in f.error]
    assert len(ended) == 1 and ended[0].status == FlowStatus.HOSPITALIZED
    h2 = alice.start_flow(Exchange(bob.party))      # the node still serves new flows
    ops_net.run_network()
    assert h2.result() == 60


def test_a_client_id_too_long_for_the_store_is_refused_before_the_flow_starts(ops_net):
    from greenflow.samples.ping import Ping
    alice, bob = ops_net.create_node("Alice"), ops_net.create_node("Bob")
    with pytest.raises(ValueError, match="at most 200 bytes"):
        alice.start_flow(Ping(bob.party), client_id="\u00e9" * 101)
    handle = alice.start_flow(Ping(bob.party), client_id="x" * 200)
    ops_net.run_network()
    assert handle.result() == 6


def test_killing_or_retrying_an_unknown_flow_says_so_as_over_rpc(ops_net):
    """Both were a plain False, as for a flow that had ended: a mistyped id looked done."""
    from greenflow import UnknownFlow
    alice, bob = ops_net.create_node("Alice"), ops_net.create_node("Bob")
    h = alice.start_flow(Exchange(bob.party))
    ops_net.run_network()
    assert h.result() == 60
    assert alice.node.kill_flow(h.id) is False and alice.node.retry_flow(h.id) is False
    for act in (alice.node.kill_flow, alice.node.retry_flow):
        with pytest.raises(UnknownFlow, match="no flow '0123456789abcdef0123456789abcdef'"):
            act("0123456789abcdef0123456789abcdef")
