"""What a round's commit writes for a flow besides its checkpoint: the wake flag (which
flows a restart runs at once) is written when it changes, not deleted again with every
commit of a flow that waits; a restart still finds exactly the flows with work to do.
And what a start commits on MockNetwork: the start alone, the flow runs in the next
`run_network()`."""
from __future__ import annotations

import pytest
from flowlib import External

from greenflow import FlowStatus
from greenflow.samples.ping import Ping
from greenflow.storage import interface as op


def _record_ops(mock_node) -> list:
    """Every batch ``mock_node``'s store commits from now on, as a list of its ops."""
    store = mock_node.node.scheduler.store
    seen: list = []
    commit = store.commit

    def recording(batch):
        seen.append(list(batch.ops))
        return commit(batch)

    store.commit = recording
    return seen


def _ops(batches: list, code: int, fid: str) -> list:
    return [o for b in batches for o in b if o[0] == code and o[1] == fid]


def test_a_waiting_flow_writes_its_wake_flag_only_when_it_changes(net, net_options):
    alice, bob = net.create_node("Alice"), net.create_node("Bob")
    seen = _record_ops(alice)
    h = alice.start_flow(Ping(bob.party, 5))
    net.run_network()
    assert h.result() == sum(range(1, 6))
    assert len(_ops(seen, op.PUT_HEADER, h.id)) >= 5   # checkpointed at every round it waited
    wakes = [bool(o[2]) for o in _ops(seen, op.SET_WAKE, h.id)]
    # Set when it was started (runnable), cleared once when it first waited; the rounds
    # after that leave the flag alone (it used to be deleted again at each of them).
    assert wakes[:2] == [True, False]
    if net_options.get("reload_after_suspend"):
        # A flow read back from the store does not know whether its flag is stored, and
        # clears it again at its next commit.
        assert not any(wakes[1:])
    else:
        assert len(wakes) == 2


def test_a_start_commits_the_start_and_the_flow_runs_in_run_network(net):
    alice, bob = net.create_node("Alice"), net.create_node("Bob")
    seen = _record_ops(alice)
    h = alice.start_flow(Ping(bob.party, 1))
    assert len(seen) == 1 and [o[0] for o in seen[0]].count(op.START_FLOW) == 1
    assert net.in_flight == 0 and h.status == FlowStatus.RUNNABLE   # nothing ran yet
    net.run_network()
    assert h.result() == 1


def test_a_restart_wakes_exactly_the_flows_with_work_to_do(net):
    alice, bob = net.create_node("Alice"), net.create_node("Bob")
    waiting = alice.start_flow(Ping(bob.party, 3))
    net.run_network(max_messages=1)      # it has sent and waits for Bob's answers
    assert waiting.id not in alice.node.store.flows_to_wake()
    fresh = alice.start_flow(Ping(bob.party, 1))   # started, not run yet
    assert alice.node.store.flows_to_wake() == {fresh.id}
    alice = net.restart_node(alice)
    net.run_network()
    assert alice.node.handle(waiting.id).result() == 6
    assert alice.node.handle(fresh.id).result() == 1
    assert alice.node.store.flows_to_wake() == set()


def test_a_start_leaves_due_timers_and_other_work_for_run_network(net, tmp_path):
    alice, bob = net.create_node("Alice"), net.create_node("Bob")
    ext = alice.start_flow(External(str(tmp_path / "external.log"), 21))
    net.run_network()                    # its external call done, it sleeps for 10 s
    net.advance_clock(10)                # its timer fell due ...
    ping = alice.start_flow(Ping(bob.party, 1))
    assert alice.node.handle(ext.id).status != FlowStatus.COMPLETED   # ... and waits for
    net.run_network()                                                  # run_network
    assert alice.node.handle(ext.id).result() == (42, 84)
    assert ping.result() == 1


def test_a_flow_of_many_commits_keeps_its_chunk_hints_bounded_and_drops_its_whole_journal(net):
    """The starts of its journal chunks were kept in a tuple searched and copied at every
    commit: a ping-pong of 32,000 rounds took 22 s instead of 3.5. Past `MAX_CHUNK_HINTS`
    the hints go, and the flow's end drops its journal by a scan of its keys."""
    from greenflow.errors import StoreError
    from greenflow.statemachine.commit import MAX_CHUNK_HINTS
    alice, bob = net.create_node("Alice"), net.create_node("Bob")
    h = alice.start_flow(Ping(bob.party, MAX_CHUNK_HINTS * 2))
    seen: list = []
    alice.node.scheduler.add_flow_end_listener(
        lambda fid: seen.append(alice.node.scheduler.resident[fid].chunks))
    net.run_network()
    assert h.result() == sum(range(1, MAX_CHUNK_HINTS * 2 + 1))
    assert seen == [None]   # more chunks than hints: none kept
    short = alice.start_flow(Ping(bob.party, 3))
    net.run_network()
    assert short.result() == 6
    for fid in (h.id, short.id):   # nothing of either journal is left in the store
        with pytest.raises(StoreError, match="has 0 entries"):
            alice.node.store.journal(fid, 1)
