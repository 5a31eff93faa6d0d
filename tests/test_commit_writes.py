"""What a round's commit writes for a flow besides its checkpoint: the wake flag (which
flows a restart runs at once) is written when it changes, not deleted again with every
commit of a flow that waits; a restart still finds exactly the flows with work to do."""
from __future__ import annotations

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
    if net_options.get("reload_after_suspend"):
        # A flow read back from the store does not know whether its flag is stored, and
        # clears it at its next commit.
        assert wakes and not any(wakes)
    else:
        # Started and run to its first wait in one commit, it never had a flag to clear;
        # every commit of it used to delete one all the same.
        assert wakes == []


def test_a_start_is_one_commit_with_the_flows_first_checkpoint(net):
    alice, bob = net.create_node("Alice"), net.create_node("Bob")
    seen = _record_ops(alice)
    h = alice.start_flow(Ping(bob.party, 1))
    # start_flow returned: the start and the flow's first wait are durable, in one commit
    # (as a node with its own thread commits them), and its first frames are on their way.
    assert len(seen) == 1
    assert [o[0] for o in seen[0] if o[1] == h.id].count(op.START_FLOW) == 1
    assert _ops(seen, op.PUT_HEADER, h.id) and net.in_flight == 2
    net.run_network()
    assert h.result() == 1


def test_a_restart_wakes_exactly_the_flows_with_work_to_do(net, tmp_path):
    alice, bob = net.create_node("Alice"), net.create_node("Bob")
    waiting = alice.start_flow(Ping(bob.party, 3))
    log = str(tmp_path / "external.log")
    ext = alice.start_flow(External(log, 21))   # committed waiting for its external call
    assert alice.node.store.flows_to_wake() == {ext.id}
    alice = net.restart_node(alice)
    net.run_network()
    assert alice.node.handle(waiting.id).result() == 6
    net.advance_clock(10)
    net.run_network()
    assert alice.node.handle(ext.id).result() == (42, 84)
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
