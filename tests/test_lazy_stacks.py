"""Frame capture is lazy: a commit records where a flow stands; its locals are taken
when it leaves memory, when a dump asks, or at every suspension if the node says so.
Dumps show locals for every unfinished flow, resident or on disk only."""
from __future__ import annotations

from flowlib import Inspected, Napper, Sleeper
from netutil import pair, run
from test_diagnostics import assert_shows_the_helper_at_its_suspension, dump_of

from greenflow import FlowStatus
from greenflow.runtime import snapshots


def stored(node, fid):
    return node.node.store.snapshot(fid)


def test_a_commit_stores_locations_and_a_dump_reads_a_resident_flows_locals_in_memory(tmp_path):
    from greenflow.testing import MockNetwork
    with MockNetwork(tmp_path / "net") as net:
        alice, bob = pair(net)
        h = run(net, alice, Inspected(bob.party))
        snap = stored(alice, h.id)
        assert not snapshots.has_locals(snap)
        assert [where[0] for where in snap] == ["Inspected.call", "Inspected.ask", "wait_for_answer"]
        entry = dump_of(alice, "Inspected")
        assert entry["resident"] is True
        assert_shows_the_helper_at_its_suspension(entry)


def test_a_flow_evicted_to_disk_keeps_its_locals_for_dumps(tmp_path):
    from greenflow.testing import MockNetwork
    with MockNetwork(tmp_path / "net") as net:
        alice = net.create_node("Alice", max_resident=1)
        bob = net.create_node("Bob")
        first = alice.start_flow(Inspected(bob.party))
        net.run_network()
        second = alice.start_flow(Napper(bob.party))
        net.run_network()
        assert alice.node.flow_info(first.id).status == FlowStatus.HIBERNATED
        snap = stored(alice, first.id)
        assert snapshots.has_locals(snap)     # written with the commit that evicted it
        assert_shows_the_helper_at_its_suspension(dump_of(alice, "Inspected"))
        # ... and read back offline, from the store alone, with no node running.
        net.close()
        from greenflow.node.node import read_checkpoints
        [entry] = [e for e in read_checkpoints(alice.node.base_dir) if e["flow_id"] == first.id]
        assert_shows_the_helper_at_its_suspension(entry)
        assert second.id in {e["flow_id"] for e in read_checkpoints(alice.node.base_dir)}


def test_a_clean_close_keeps_the_locals_of_flows_left_waiting(tmp_path):
    from greenflow.node.node import read_checkpoints
    from greenflow.testing import MockNetwork
    net = MockNetwork(tmp_path / "net")
    alice, bob = pair(net)
    h = run(net, alice, Inspected(bob.party))
    net.close()
    [entry] = [e for e in read_checkpoints(alice.node.base_dir) if e["flow_id"] == h.id]
    assert_shows_the_helper_at_its_suspension(entry)


def test_after_a_power_cut_a_dump_replays_a_flow_on_disk_without_changing_it(tmp_path):
    from greenflow.testing import MockNetwork
    with MockNetwork(tmp_path / "net") as net:
        alice = net.create_node("Alice")
        h = run(net, alice, Sleeper(10))
        alice = net.restart_node(alice)
        header = alice.node.store.header_blob(h.id)
        entry = dump_of(alice, "Sleeper")
        assert entry["resident"] is False and entry["status"] == "HIBERNATED"
        assert [f["function"] for f in entry["frames"]] == ["Sleeper.call"]
        assert entry["frames"][0]["locals"]["before"].startswith("datetime.datetime(")
        assert alice.node.store.header_blob(h.id) == header   # the flow unchanged
        assert alice.handle(h.id).status == FlowStatus.HIBERNATED
        net.run_network()   # the next commit keeps what the replay found
        assert snapshots.has_locals(stored(alice, h.id))
        assert alice.node.store.header_blob(h.id) == header
        net.advance_clock(10)
        net.run_network()
        before, after = alice.handle(h.id).result()
        assert (after - before).total_seconds() >= 10


def test_capture_at_every_suspension_is_a_node_option(tmp_path):
    import pytest

    from greenflow.testing import MockNetwork
    with MockNetwork(tmp_path / "net") as net:
        alice = net.create_node("Alice", capture_frames="every_suspension")
        bob = net.create_node("Bob")
        h = run(net, alice, Inspected(bob.party))
        assert snapshots.has_locals(stored(alice, h.id))
        with pytest.raises(ValueError, match="capture_frames"):
            net.create_node("Carol", capture_frames="sometimes")


def test_the_stored_locations_follow_the_flow_as_it_moves(tmp_path):
    from endflows import NapTwice

    from greenflow.testing import MockNetwork
    with MockNetwork(tmp_path / "net") as net:
        alice = net.create_node("Alice")
        h = run(net, alice, NapTwice())
        lines = []
        for _ in range(4):
            [(function, _file, line)] = stored(alice, h.id)
            assert function == "NapTwice.call"
            lines.append(line)
            net.advance_clock(1)
            net.run_network()
        assert lines[0] == lines[1] == lines[2] != lines[3]
        assert h.result() == "rested"
