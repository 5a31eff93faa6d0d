"""Storage faults: the map grows by itself, a failed commit stops the node without losing
what was committed, and a corrupt checkpoint parks only its own flow."""
from __future__ import annotations

import lmdb
import pytest

import opsflows
from opsflows import Exchange
from greenflow import FlowStatus
from greenflow.storage import lmdb_store as store_mod
from greenflow.storage.interface import Batch
from greenflow.errors import StoreError
from greenflow.testing import MockNetwork


@pytest.fixture(autouse=True)
def _knobs():
    opsflows.reset()
    yield
    opsflows.reset()


@pytest.mark.lmdb_only
def test_the_store_map_grows_by_itself_before_it_fills(tmp_path, monkeypatch):
    monkeypatch.setattr(store_mod, "INITIAL_MAP", 256 * 1024)
    net = MockNetwork(tmp_path / "net")
    alice, bob = net.create_node("Alice"), net.create_node("Bob")
    before = alice.node.store.env.info()["map_size"]
    handles = alice.node.start_flows([Exchange(bob.party) for _ in range(400)])
    net.run_network()
    assert [h.result() for h in handles] == [60] * 400
    assert alice.node.store.env.info()["map_size"] > before
    net.close()


@pytest.mark.lmdb_only
def test_a_failed_commit_stops_the_node_and_loses_nothing_committed(tmp_path, monkeypatch):
    net = MockNetwork(tmp_path / "net")
    alice, bob = net.create_node("Alice"), net.create_node("Bob")
    first = alice.start_flow(Exchange(bob.party))
    net.run_network(max_messages=2)            # committed: first waits on Bob's answer

    real_apply = store_mod.LmdbWriter.apply

    def disk_full(self, txn, batch):
        if self.store is alice.node.store:
            raise lmdb.DiskError("No space left on device")
        return real_apply(self, txn, batch)

    monkeypatch.setattr(store_mod.LmdbWriter, "apply", disk_full)
    with pytest.raises(StoreError, match="No space left on device"):
        net.run_network()
    assert alice.node.scheduler.dead                 # no further commits, no further sends
    monkeypatch.setattr(store_mod.LmdbWriter, "apply", real_apply)
    alice = net.restart_node(alice)                  # the operator frees space and restarts
    net.run_network()
    assert alice.node.handle(first.id).result() == 60
    assert bob.node.pending_flows_count == 0


def test_a_corrupt_checkpoint_parks_only_its_own_flow(tmp_path):
    net = MockNetwork(tmp_path / "net")
    alice, bob = net.create_node("Alice"), net.create_node("Bob")
    victim = alice.start_flow(Exchange(bob.party))
    healthy = alice.start_flow(Exchange(bob.party))
    net.run_network(max_messages=2)                  # both initiations delivered
    alice = net.restart_node(alice)
    b = Batch()                                       # bit rot in one start object
    b.start_flow(victim.id, b"P\x80\x05garbage")
    alice.node.store.commit(b)
    net.run_network()
    assert alice.node.handle(healthy.id).result() == 60
    info = next(f for f in alice.node.flows() if f.id == victim.id)
    assert info.status == FlowStatus.HOSPITALIZED
    assert "cannot be restored" in info.error


def test_a_checkpoint_header_that_cannot_be_read_is_listed_parked_and_can_be_killed(tmp_path):
    """Its flow vanished from listings ("left out of a listing"), and reading, retrying
    or killing it was an internal error; a damaged result record likewise."""
    from greenflow.errors import FlowError, FlowKilled
    net = MockNetwork(tmp_path / "net")
    alice, bob = net.create_node("Alice"), net.create_node("Bob")
    victim = alice.start_flow(Exchange(bob.party))
    healthy = alice.start_flow(Exchange(bob.party))
    net.run_network(max_messages=2)                  # both initiations delivered
    alice = net.restart_node(alice)
    b = Batch()                                       # bit rot in one header
    b.put_header_unchecked(victim.id, b"Bgarbage")
    alice.node.store.commit(b)
    net.run_network()
    assert alice.node.handle(healthy.id).result() == 60
    for info in ([f for f in alice.node.flows() if f.id == victim.id][0],
                 alice.node.flow_info(victim.id),
                 [f for f in alice.node.flow_page([FlowStatus.HOSPITALIZED]).flows if f.id == victim.id][0]):
        assert (info.flow_class, info.status) == ("<unreadable>", FlowStatus.HOSPITALIZED)
        assert info.error.startswith("checkpoint cannot be read: ")
    with pytest.raises(FlowError, match="has not finished .status HOSPITALIZED"):
        alice.node.handle(victim.id).result()
    with pytest.raises(FlowError, match="cannot be read .* it cannot run again; kill it"):
        alice.node.retry_flow(victim.id)
    alice = net.restart_node(alice)                   # not woken again: still listed, parked
    assert alice.node.flow_info(victim.id).status == FlowStatus.HOSPITALIZED
    assert alice.node.kill_flow(victim.id)
    net.run_network()
    with pytest.raises(FlowKilled):
        alice.node.handle(victim.id).result()
    assert alice.node.flow_info(victim.id).flow_class == "opsflows.Exchange"   # from its start record
    assert alice.node.store.header_blob(victim.id) is None
    assert alice.node.store.logic_blob(victim.id) is None

    b = Batch()                                       # and bit rot in a result record
    b.put_result(healthy.id, b"Egarbage", alice.node.clock.now() + 3_600)
    alice.node.store.commit(b)
    for read in (lambda: alice.node.handle(healthy.id).result(), lambda: alice.node.flow_info(healthy.id)):
        with pytest.raises(FlowError, match=f"the stored result of flow {healthy.id} on Alice cannot be "
                                            "read .*: the record is damaged"):
            read()
    net.close()


def test_a_commit_that_holds_the_node_up_is_logged(tmp_path, monkeypatch, caplog):
    """A commit that stalled (a disk that stops answering, an overloaded database server)
    held every flow of the node up and nothing said why flows stopped moving."""
    import logging
    import re
    import time

    from greenflow.statemachine import commit
    monkeypatch.setattr(commit, "SLOW_COMMIT", 0.5)
    net = MockNetwork(tmp_path / "net")
    alice, bob = net.create_node("Alice"), net.create_node("Bob")
    store = alice.node.scheduler.store
    real = store.commit

    def stalls(batch):
        time.sleep(0.6)
        return real(batch)

    monkeypatch.setattr(store, "commit", stalls)
    h = alice.start_flow(Exchange(bob.party))
    with caplog.at_level(logging.WARNING, logger="greenflow.scheduler"):
        net.run_network()
    assert h.result() == 60
    said = re.findall(r"Alice: a commit of \d+ writes took \d+\.\d s; every flow of the node "
                      r"waited for it \(a slow or stalled disk, or an overloaded database server\)",
                      caplog.text)
    assert said, caplog.text
    assert "Bob: a commit" not in caplog.text
