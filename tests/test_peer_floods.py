"""A peer that completed the handshake (a real party of the network) and then floods:
frames for sessions that do not exist, initiations carrying huge names, initiations while
the node drains. Its frames cost the node bounded memory, and the node keeps serving its
other peers meanwhile. Nodes run in this process on real sockets (loopback)."""
from __future__ import annotations

import asyncio
import logging
import threading
import time

import pytest

from greenflow.errors import WireFormatError
from greenflow.messages import DATA, INIT, MAX_NAME, Frame, decode_frame, encode_frame
from greenflow.network.tcp_framing import K_FRAME
from greenflow.network.tcp_transport import _pack, write_message
from greenflow.statemachine.scheduler import MAX_QUEUED_EVENTS
from test_transport import net, ping, wait_for  # noqa: F401
from test_transport_limits import Peer

#: Frames a record may carry at most (each is a container of the record).
PER_RECORD = 5_000


def test_a_flood_of_frames_neither_stalls_the_node_nor_grows_its_queue(net, caplog):
    """12.5 million frames for sessions that do not exist in 20 s took a node from 39 MB
    to 1.5 GB, and a ping from another peer took 42 s: one round took the flood in for
    as long as it lasted, committing and sending nothing for anyone."""
    net.up("Alice"), net.up("Bob")
    assert ping(net, 1) == 1
    carol = Peer(net)
    events = net.nodes["Bob"][0].scheduler.events
    deepest = [0]
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            deepest[0] = max(deepest[0], events.qsize())
            time.sleep(0.005)

    async def flood(seconds: float) -> int:
        r, w = await asyncio.open_connection(*net.address("Bob"))
        chan = await carol.t._client_handshake(r, w, net.netmap().get("Bob"))
        record = _pack([[K_FRAME, encode_frame(Frame(DATA, f"nosuch{i}", True, 1, b"x"))]
                        for i in range(PER_RECORD)])
        sent, end = 0, time.monotonic() + seconds
        while time.monotonic() < end:
            write_message(w, chan.seal(record))   # each record sealed in turn
            await w.drain()
            sent += PER_RECORD
        w.close()
        return sent

    from greenflow.network import tcp_guard
    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        with caplog.at_level(logging.WARNING, logger="greenflow.transport"):
            flooding = asyncio.run_coroutine_threadsafe(flood(4.0), carol.loop)
            time.sleep(1.0)
            started = time.monotonic()
            assert ping(net, 1, timeout=30) == 1
            took = time.monotonic() - started
            sent = flooding.result(30)
            tcp_guard._behind_log.flush(force=True)   # (one line per interval, per process)
    finally:
        stop.set()
        watcher.join()
        carol.close()
    assert sent > 2 * MAX_QUEUED_EVENTS, sent          # a flood, not a trickle
    assert deepest[0] <= MAX_QUEUED_EVENTS + PER_RECORD, deepest[0]
    assert took < 5.0, took
    if net.transport("Bob").stats.get("reads_paused"):   # (a node that kept up never pauses)
        assert any("reading from peers paused" in r.getMessage() and "Carol" in r.getMessage()
                   for r in caplog.records), [r.getMessage() for r in caplog.records][-5:]


def test_acknowledgements_of_frames_never_sent_are_passed_over_and_said(net, caplog):
    """17 million acknowledgements of frames never sent, 8,000 a record, took a node to a
    gigabyte and a ping to seconds, saying nothing: each became a store delete, and one
    event of the round whatever its size. A record acknowledges at most 8,192 frames."""
    from greenflow.network.tcp_framing import K_ACK, MAX_ACKS_PER_RECORD
    net.up("Alice"), net.up("Bob")
    assert ping(net, 1) == 1
    carol = Peer(net)
    bob = net.nodes["Bob"][0]
    deletes, real = [], bob.scheduler._apply

    def counting(ev):
        if type(ev).__name__ == "Acked" and ev.peer == "Carol":
            deletes.append(len(ev.msg_ids))
        return real(ev)
    bob.scheduler._apply = counting

    async def flood(seconds: float, per_record: int) -> int:
        r, w = await asyncio.open_connection(*net.address("Bob"))
        chan = await carol.t._client_handshake(r, w, net.netmap().get("Bob"))
        record = _pack([[K_ACK, [[f"never{i}", True, i] for i in range(per_record)]]])
        sent, end = 0, time.monotonic() + seconds
        while time.monotonic() < end:
            write_message(w, chan.seal(record))
            await w.drain()
            sent += per_record
        w.close()
        return sent

    try:
        with caplog.at_level(logging.WARNING, logger="greenflow.transport"):
            flooding = asyncio.run_coroutine_threadsafe(flood(3.0, 8000), carol.loop)
            time.sleep(0.5)
            started = time.monotonic()
            assert ping(net, 1, timeout=30) == 1
            took = time.monotonic() - started
            assert flooding.result(30) > 100_000
            dropped = net.transport("Bob").stats["dropped_connections"]
            too_many = asyncio.run_coroutine_threadsafe(flood(0.1, MAX_ACKS_PER_RECORD + 1),
                                                        carol.loop)
            try:
                too_many.result(30)
            except OSError:   # (the node may drop the connection while it is written)
                pass
            wait_for(lambda: net.transport("Bob").stats["dropped_connections"] > dropped)
            net.transport("Bob")._in.gate.log.flush(force=True)
    finally:
        carol.close()
    assert sum(deletes) == 0 and took < 5.0, (sum(deletes), took)
    said = [r.getMessage() for r in caplog.records]
    assert any("Carol acknowledged 8000 frame(s) this node has not sent it" in m for m in said), said
    assert any("an acknowledgement of 8193 frames" in m and "Carol" in m for m in said), said


@pytest.mark.parametrize("field", ["app", "info"])
def test_a_frame_with_an_app_name_longer_than_any_is_malformed(field):
    """The names a frame carries stay in every session's checkpoint while its flow lives:
    a peer's 15 MiB ``app`` cost 30 MiB of store per session it opened."""
    long = "x" * (MAX_NAME + 1)
    args = {"app": long} if field == "app" else {"info": (1, long)}
    frame = Frame(INIT if field != "info" else DATA, "s1", field != "info", 0, b"p", **args)
    with pytest.raises(WireFormatError, match=f"length <= {MAX_NAME}"):
        decode_frame(encode_frame(frame))
    fits = {k: (v[0], v[1][:MAX_NAME]) if k == "info" else v[:MAX_NAME] for k, v in args.items()}
    assert decode_frame(encode_frame(Frame(frame.kind, "s1", frame.to_responder, 0, b"p", **fits)))


def test_a_draining_node_holds_frames_of_new_sessions_up_to_a_number_of_bytes(tmp_path,
                                                                               monkeypatch):
    """Held initiations were bounded in number only: 60 of 15 MiB took a node from 336 MB
    to 1.27 GB (10,000 of them would be 160 GB)."""
    from greenflow.samples.ping import Ping
    from greenflow.statemachine import routing
    from greenflow.testing import MockNetwork
    monkeypatch.setattr(routing, "MAX_HELD_BYTES", 1500)
    mock = MockNetwork(tmp_path / "net")
    alice, bob = mock.create_node("Alice"), mock.create_node("Bob")
    bob.node.set_draining(True)
    handles = alice.node.start_flows([Ping(bob.party, 1) for _ in range(20)])
    mock.run_network()
    sched = bob.node.scheduler
    assert 0 < len(sched._deferred) < 40 and sched.held_bytes <= 1500
    assert sched.held_bytes == sum(len(d) for _, d in sched._deferred.values())
    bob.node.set_draining(False)
    mock.run_network()
    alice = mock.restart_node(alice)   # what was not held comes again
    mock.run_network()
    assert [alice.handle(h.id).result() for h in handles] == [1] * 20


def test_a_peer_is_refused_only_so_many_sessions_a_second(tmp_path, monkeypatch):
    """Each refused session stored a route for 7 days and a REJECT until acknowledged:
    a peer initiating flows nobody answers, as fast as it could, grew the store by ~290
    bytes a refusal without end. Past a rate its initiations wait unanswered (its node
    sends them again), and a refusal's route is kept an hour."""
    import opsflows
    from greenflow import UnknownFlow
    from greenflow.statemachine import routing
    from greenflow.storage.interface import Batch
    from greenflow.testing import MockNetwork
    monkeypatch.setattr(routing, "REJECTS_BURST", 10)
    monkeypatch.setattr(routing, "REJECTS_PER_S", 0.001)
    kept, put_route = [], Batch.put_route

    def spy(self, peer, sid, role, value, expires=None):
        if value == routing.REJECTED_ROUTE:
            kept.append(expires)
        return put_route(self, peer, sid, role, value, expires)
    monkeypatch.setattr(Batch, "put_route", spy)
    opsflows.reset()
    mock = MockNetwork(tmp_path / "net")
    alice = mock.create_node("Alice")
    bob = mock.create_node("Bob", apps=["greenflow.samples.ping"])   # no responder for Chatter
    handles = [alice.start_flow(opsflows.Chatter(bob.party)) for _ in range(30)]
    mock.run_network()
    assert sum(alice.node.flow_info(h.id).status.finished for h in handles) == 10
    assert len(kept) == 10
    now = bob.node.clock.now()
    assert all(e <= now + routing.REJECTED_ROUTE_S for e in kept)
    monkeypatch.setattr(routing, "REJECTS_PER_S", 1e6)
    alice = mock.restart_node(alice)   # re-sends what Bob left unacknowledged
    mock.run_network()
    for h in handles:
        with pytest.raises(UnknownFlow, match="Bob has no flow registered to answer"):
            alice.handle(h.id).result()
    assert len(kept) == 30


def test_a_peer_that_does_not_acknowledge_opens_no_new_sessions_until_it_does(tmp_path,
                                                                              monkeypatch):
    """A peer starting responders that fail at once, and never acknowledging their ERROR
    frames, grew the outbox without end (251,000 in 20 s, kept until acknowledged)."""
    from greenflow.samples.ping import Ping
    from greenflow.statemachine import routing
    from greenflow.testing import MockNetwork
    mock = MockNetwork(tmp_path / "net")
    alice, bob = mock.create_node("Alice"), mock.create_node("Bob")
    behind = {"Alice": routing.MAX_UNACKED_FOR_NEW_SESSIONS + 1}
    monkeypatch.setattr(bob.node.scheduler.transport, "unacknowledged",
                        lambda peer: behind.get(peer, 0), raising=False)
    handles = alice.node.start_flows([Ping(bob.party, 1) for _ in range(5)])
    mock.run_network()
    assert bob.node.pending_flows_count == 0 and not any(
        alice.node.flow_info(h.id).status.finished for h in handles)
    behind.clear()   # it caught up
    alice = mock.restart_node(alice)   # re-sends what Bob left unanswered
    mock.run_network()
    assert [alice.handle(h.id).result() for h in handles] == [1] * 5
