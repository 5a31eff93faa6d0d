"""What connections to the P2P port may cost a node: strangers' connections that have not
completed the handshake are capped per source address and in total, an authenticated
peer's connections are capped, a record that stops arriving partway is dropped, and
refusals are logged once per interval with the strangers' strings clipped. Nodes run in
this process on real sockets (loopback)."""
from __future__ import annotations

import asyncio
import logging
import os
import socket
import struct
import threading
import time

from greenflow import Node
from greenflow.network.tcp_transport import PROTOCOL, TcpTransport, _pack, write_message
from test_transport import Net, closed_by_peer, net, ping, raw_connect, wait_for, write_raw  # noqa: F401


def idle(addr: tuple[str, int], source: str = "127.0.0.1") -> socket.socket:
    """A connection to ``addr`` from ``source`` (any 127.x address) that sends nothing."""
    s = socket.socket()
    s.bind((source, 0))
    s.connect(addr)
    return s


def still_open(s: socket.socket, wait: float = 0.3) -> bool:
    return not closed_by_peer(s, wait)


def test_refused_strangers_are_summarised_with_their_strings_clipped(net, caplog):
    """50 hellos claiming a 960-character name: one line with the name cut, and the
    rest counted in a summary, instead of 50 lines of 1 KB each."""
    up_with(net, "Bob", connection_rate_per_address=1000.0)   # 50 at once: all are read
    name = "M" * 960
    with caplog.at_level(logging.WARNING, logger="greenflow.transport"):
        for _ in range(50):
            s = raw_connect(net.address("Bob"))
            write_raw(s, _pack([PROTOCOL, name, "Bob", os.urandom(32)]))
            assert closed_by_peer(s)
            s.close()
        wait_for(lambda: net.transport("Bob").stats["dropped_connections"] == 50)
        lines = [r.getMessage() for r in caplog.records if "dropped a connection" in r.getMessage()]
        assert len(lines) == 1, f"{len(lines)} lines"
        assert len(lines[0]) < 300 and name not in lines[0], lines
        assert "'MMMM" in lines[0] and "(+880 chars)" in lines[0]
        net.transport("Bob")._in.gate.log.flush(force=True)   # as the transport does each interval
    summary = caplog.records[-1].getMessage()
    assert "(and 48 more like it in the last 10 s)" in summary and len(summary) < 300, summary


def test_connections_that_never_complete_the_handshake_are_capped_per_address(net, caplog):
    """One address may hold 16 connections that have not completed the handshake; the
    17th is closed at once (counted, one line), and peers are served when they go."""
    net.up("Alice"), net.up("Bob")
    assert ping(net, 1) == 1          # Alice's link to Bob is up before the flood
    bob = net.address("Bob")
    with caplog.at_level(logging.WARNING, logger="greenflow.transport"):
        held = [idle(bob) for _ in range(16)]
        extra = [idle(bob) for _ in range(5)]
        try:
            assert all(closed_by_peer(s, 2) for s in extra)
            assert all(still_open(s, 0.05) for s in held)
            other = idle(bob, "127.0.0.2")   # another address is not held up by this one
            assert still_open(other)
            other.close()
            assert net.transport("Bob").stats["refused_connections"] == 5
            assert ping(net, 2) == 3
        finally:
            for s in held + extra:
                s.close()
    refused = [r.getMessage() for r in caplog.records if "refused a connection" in r.getMessage()]
    assert len(refused) == 1 and "max_unauthenticated_per_address" in refused[0], refused


def test_connections_that_never_complete_the_handshake_are_capped_in_total(net):
    """256 such connections from many addresses: the next is closed at once."""
    net.up("Bob")
    bob = net.address("Bob")
    held = [idle(bob, f"127.0.1.{i}") for i in range(1, 17) for _ in range(16)]
    try:
        wait_for(lambda: len(net.transport("Bob")._in.conns) == 256)
        late = idle(bob, "127.0.2.1")
        assert closed_by_peer(late, 2)
        late.close()
        assert net.transport("Bob").stats["refused_connections"] == 1
    finally:
        for s in held:
            s.close()
    wait_for(lambda: not net.transport("Bob")._in.conns)
    fine = idle(bob, "127.0.2.1")
    assert still_open(fine)
    fine.close()


class Peer:
    """Connections to Bob as ``who``, with ``who``'s real key, on a loop of their own."""

    def __init__(self, net: Net, who: str = "Carol") -> None:
        self.net, self.t = net, TcpTransport(net.identity(who), net.netmap(who))
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, daemon=True).start()

    def run(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(10)

    def connect(self):
        async def go():
            reader, writer = await asyncio.open_connection(*self.net.address("Bob"))
            chan = await self.t._client_handshake(reader, writer, self.net.netmap().get("Bob"))
            return reader, writer, chan
        return self.run(go())

    def closed(self, reader, timeout: float = 2.0) -> bool:
        async def go():
            try:
                return await asyncio.wait_for(reader.read(1), timeout) == b""
            except asyncio.TimeoutError:
                return False
            except OSError:
                return True
        return self.run(go())

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)


def test_an_authenticated_peer_holds_at_most_eight_connections(net, caplog):
    """The workers of a clustered party each connect under its name: up to 8 stay; a
    9th closes the oldest (a peer that reconnects is never locked out by its dead ones)."""
    net.up("Alice"), net.up("Bob")
    carol = Peer(net)
    try:
        with caplog.at_level(logging.WARNING, logger="greenflow.transport"):
            conns = [carol.connect() for _ in range(8)]
            assert not any(carol.closed(r, 0.1) for r, _, _ in conns)
            conns.append(carol.connect())
            assert carol.closed(conns[0][0])
            assert not any(carol.closed(r, 0.1) for r, _, _ in conns[1:])
        assert any("closed the oldest connection of Carol" in r.getMessage()
                   and "max_connections_per_peer" in r.getMessage() for r in caplog.records)
        assert ping(net, 2) == 3
    finally:
        carol.close()


def up_with(net: Net, name: str, **limits) -> Node:
    from greenflow.network.tcp_guard import P2pLimits
    c = net.configs[name]
    t = TcpTransport(net.identity(name), net.netmap(name), listen=c.p2p_address,
                     limits=P2pLimits(**limits))
    t.bind()
    node = Node(c.base_dir, name, apps=c.apps, transport=t, sync=False)
    t.start()
    net.nodes[name] = (node, t)
    return node


def test_a_record_that_stops_arriving_partway_is_dropped(net, caplog):
    """A peer announces a 1 MiB record, sends part of it and stops: after
    ``record_timeout`` without a byte the connection goes. A connection with no record
    begun stays however long it is quiet."""
    net.up("Alice")
    up_with(net, "Bob", record_timeout=1.0)
    carol = Peer(net)
    try:
        with caplog.at_level(logging.WARNING, logger="greenflow.transport"):
            quiet = carol.connect()
            r, w, _ = carol.connect()

            async def stall():
                w.write(struct.pack(">I", 1 << 20) + os.urandom(100_000))
                await w.drain()
            carol.run(stall())
            started = time.monotonic()
            assert carol.closed(r, 5)
            assert 0.9 < time.monotonic() - started < 4
            assert not carol.closed(quiet[0], 0.5)
        assert any("a record stopped arriving: nothing of it for 1 s (100000 of its bytes in)"
                   in rec.getMessage() for rec in caplog.records)

        async def honest():   # the quiet one still carries records
            write_message(quiet[1], quiet[2].seal(_pack([[2, []]])))
            await quiet[1].drain()
        carol.run(honest())
        assert not carol.closed(quiet[0], 0.5)
        assert ping(net, 2) == 3
    finally:
        carol.close()


def test_one_address_may_start_only_so_many_connections_a_second(net, caplog):
    """Hellos that can never complete cost the node a handshake each (~3x a connection
    closed unread): past ``connection_rate_per_address`` (twice that at once) one address's
    new connections are closed unread, another address's are served, and the budget
    comes back with time."""
    net.up("Alice")
    up_with(net, "Bob", connection_rate_per_address=5.0)
    bob = net.address("Bob")
    t = net.transport("Bob")
    assert ping(net, 1) == 1      # Alice's link to Bob took one of 127.0.0.1's budget
    hello = _pack([PROTOCOL, "O=Mallory,L=Nowhere,C=XX", "Bob", os.urandom(32)])
    before = t.stats["refused_connections"]
    with caplog.at_level(logging.WARNING, logger="greenflow.transport"):
        for _ in range(30):
            s = raw_connect(bob)
            write_raw(s, hello)
            assert closed_by_peer(s)
            s.close()
    refused = t.stats["refused_connections"] - before
    assert 30 - 10 - 2 <= refused <= 30 - 9   # at most 10 at once, ~5 a second after
    assert any("connection_rate_per_address" in r.getMessage() for r in caplog.records)
    other = idle(bob, "127.0.0.2")
    assert still_open(other)      # another address has its own budget
    other.close()
    time.sleep(1.0)               # 5 more a second
    s = idle(bob)
    assert still_open(s)
    s.close()
    assert ping(net, 2) == 3      # the peer's link, established before, is untouched


def test_the_connection_budget_refills_and_forgets_idle_addresses():
    from greenflow.network import tcp_guard
    now = [0.0]
    gate = tcp_guard.Gate("Bob", tcp_guard.P2pLimits(connection_rate_per_address=2.0),
                          clock=lambda: now[0])
    for _ in range(4):
        assert gate.admit("a") is None and gate.release("a") is None
    assert "connection_rate_per_address" in gate.admit("a")
    now[0] = 0.5                  # one more after half a second at 2 a second
    assert gate.admit("a") is None
    gate.release("a")
    assert gate.admit("a") is not None
    now[0] = 100.0                # full again, not beyond: 4 at once
    assert [gate.admit("a") is None for _ in range(5)] == [True] * 4 + [False]
    for i in range(tcp_guard._MAX_BUDGETS):   # a scan from many addresses
        assert gate.admit(f"h{i}") is None
        gate.release(f"h{i}")
    now[0] = 200.0                # their buckets are full again: nothing to remember
    assert gate.admit("late") is None
    assert set(gate.budget) == {"late"}


def test_the_limits_are_node_settings(tmp_path):
    """``[p2p]`` in node.toml sets them; a wrong one names the file and the option."""
    import pytest
    from greenflow.network.node_config import ConfigError, NodeConfig
    from greenflow.network.tcp_guard import P2pLimits
    doc = {"name": "A", "p2p_address": "127.0.0.1:1", "rpc_address": "127.0.0.1:2",
           "p2p": {"max_connections_per_peer": 3, "record_timeout": 5}}
    cfg = NodeConfig.from_dict(doc, "node.toml", str(tmp_path))
    cfg.save()
    limits = P2pLimits.from_config(NodeConfig.load(str(tmp_path)).p2p)
    assert (limits.max_connections_per_peer, limits.record_timeout) == (3, 5.0)
    assert limits.max_unauthenticated_per_address == 16 and limits.max_unauthenticated == 256
    with pytest.raises(ConfigError, match="`max_unauthenticated` must be a positive integer"):
        P2pLimits.from_config({"max_unauthenticated": 0})
    with pytest.raises(ConfigError, match="unknown option 'max_conns'"):
        P2pLimits.from_config({"max_conns": 4})


def test_a_record_that_stops_arriving_on_a_dialled_peers_answers_is_dropped(net, caplog):
    """The same on a connection this node dialled: the peer it dials (here a fake
    Carol that proves itself) answers on the reply path with a record that stops
    partway. After ``record_timeout`` the link drops that connection and dials again.
    (Clustered workers dial with the reply path.)"""
    from greenflow.network.tcp_handshake import server_handshake
    from greenflow.samples.ping import Ping
    bob = up_with(net, "Bob", record_timeout=1.0)
    net.transport("Bob").reply_path = True
    carol = TcpTransport(net.identity("Carol"), net.netmap("Carol"))
    dialled: list[tuple[float, asyncio.StreamReader]] = []
    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, daemon=True).start()

    writers = []

    async def serve(reader, writer):
        writers.append(writer)
        await server_handshake("Carol", carol.netmap, carol.key_for, reader, writer)
        writer.write(struct.pack(">I", 1 << 20) + os.urandom(100_000))
        await writer.drain()
        dialled.append((time.monotonic(), reader))
        await reader.read()          # until Bob closes it
        dialled.append((time.monotonic(), None))

    server = asyncio.run_coroutine_threadsafe(
        asyncio.start_server(serve, *net.address("Carol")), loop).result(10)
    try:
        with caplog.at_level(logging.WARNING, logger="greenflow.transport"):
            bob.start_flow(Ping(net.party("Carol"), 1))   # Bob dials Carol to send it
            wait_for(lambda: len(dialled) >= 2, 10)
        (opened, _), (closed, _) = dialled[:2]
        assert 0.9 < closed - opened < 4
        assert any("dropped the connection to Carol: a record stopped arriving: nothing of "
                   "it for 1 s" in rec.getMessage() for rec in caplog.records)
        wait_for(lambda: len(dialled) >= 3, 15)   # and it dials again
    finally:
        async def stop():
            server.close()
            for w in writers:
                w.close()
            await asyncio.sleep(0.1)   # the serving tasks see their ends
        asyncio.run_coroutine_threadsafe(stop(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
