"""The reply path: a node that dials with `PROTOCOL_REPLY` (a clustered party's worker)
is answered on its own connection, frames and acknowledgements alike; the peer's link
still holds every frame, so a reply connection that dies costs a re-send, never a frame;
an older listener that refuses the hello costs one connection; and a peer that breaks
the protocol on the way back is dropped as on the way in. Real transports on loopback."""
from __future__ import annotations

import asyncio
import logging
import threading

import pytest

from greenflow import Node
from greenflow.network import tcp_handshake
from greenflow.network.tcp_framing import (K_ACK, K_FRAME, K_PARTS, PROTOCOL, MAX_RECORD_BYTES,
                                           PROTOCOL_REPLY, ProtocolError, _pack, _unpack,
                                           read_message, write_message)
from greenflow.network.tcp_handshake import Channel, server_handshake
from greenflow.network.tcp_inbound import dispatch
from greenflow.network.tcp_link import Link
from greenflow.network.tcp_transport import TcpTransport
from greenflow.samples.ping import Ping
from test_transport import Net, wait_for


@pytest.fixture
def net(tmp_path):
    n = Net(str(tmp_path))
    yield n
    n.close()


def up(net: Net, name: str, reply: bool = False, apps: tuple = ()) -> Node:
    """``net.up`` with the reply path asked for (as a worker's transport does)."""
    c = net.configs[name]
    t = TcpTransport(net.identity(name), net.netmap(name), listen=c.p2p_address)
    t.reply_path = reply
    t.bind()
    node = Node(c.base_dir, name, apps=list(c.apps) + list(apps), transport=t, sync=False)
    t.start()
    net.nodes[name] = (node, t)
    return node


def pings(node: Node, net: Net, flows: int, n: int) -> list:
    handles = node.start_flows([Ping(net.party("Bob"), n) for _ in range(flows)])
    return [h.result(timeout=30) for h in handles]


def test_a_peer_answers_on_the_connection_that_asked_for_it(net):
    alice = up(net, "Alice", reply=True)
    up(net, "Bob")
    assert pings(alice, net, 20, 3) == [6] * 20
    a, b = net.transport("Alice").stats, net.transport("Bob").stats
    # Every frame Bob sent went back on Alice's connection, and so did every
    # acknowledgement he owed her: nothing on his own link.
    wait_for(lambda: b["frames_sent"] == b["frames_replied"] > 0)
    wait_for(lambda: a["frames_sent"] == b["acks_replied"] == a["acks_received"])
    bob_link = net.transport("Bob")._links["Alice"]
    wait_for(lambda: not bob_link.unacked and not bob_link.via)
    assert bob_link.frames_written == 0
    assert net.transport("Bob")._in.routes           # remembered per session
    # Alice's frames still went to Bob's listener; a single node does not ask.
    assert b["frames_received"] == a["frames_sent"]
    assert not net.transport("Bob").reply_path


def test_without_the_option_nothing_changes(net):
    alice = up(net, "Alice")
    up(net, "Bob")
    assert pings(alice, net, 5, 2) == [3] * 5
    b = net.transport("Bob").stats
    assert b["frames_replied"] == b["acks_replied"] == 0
    assert not net.transport("Bob")._in.routes


def test_frames_on_a_reply_connection_that_dies_arrive_through_the_link(net, monkeypatch):
    """Alice's connection dies with Bob's answer on it, unread: Bob's link still holds
    the frame and sends it on his own connection (at least once)."""
    cut = []
    real = Link._receive

    async def dies_on_the_first_frame(self, reader, chan):
        if cut:
            return await real(self, reader, chan)
        try:
            while True:
                items = _unpack(chan.open(await read_message(reader, MAX_RECORD_BYTES)))
                if any(it[0] == K_FRAME for it in items):
                    cut.append(len(items))          # lost with the connection
                    self.writer.transport.abort()
                    return
                dispatch(self.t, self.info, items)
        finally:
            self.wake.set()

    monkeypatch.setattr(Link, "_receive", dies_on_the_first_frame)
    alice = up(net, "Alice", reply=True)
    up(net, "Bob")
    assert pings(alice, net, 1, 3) == [6]
    assert cut
    b = net.transport("Bob").stats
    assert b["frames_replied"] >= 1
    # The lost frame went out again on Bob's own connection.
    link = net.transport("Bob")._links["Alice"]
    wait_for(lambda: not link.unacked and not link.via)
    assert link.frames_written >= 1


def test_a_frame_swallowed_on_a_reply_connection_is_sent_again_on_the_link(
        net, monkeypatch, caplog):
    """The reply connection stays open but a frame on it never arrives (a machine that
    vanished, before keep-alive notices): Bob sends it again on his own connection."""
    from greenflow.network import tcp_link
    monkeypatch.setattr(tcp_link, "REPLY_RESEND_AFTER", 1.0)
    swallowed = []
    real = Link._receive

    async def swallows_the_first_frame(self, reader, chan):
        async def records():
            while True:
                yield _unpack(chan.open(await read_message(reader, MAX_RECORD_BYTES)))
        try:
            async for items in records():
                if not swallowed and any(it[0] == K_FRAME for it in items):
                    swallowed.append(items)
                    items = [it for it in items if it[0] != K_FRAME]
                if items:
                    dispatch(self.t, self.info, items)
        except (asyncio.IncompleteReadError, OSError):
            pass
        finally:
            self.wake.set()

    monkeypatch.setattr(Link, "_receive", swallows_the_first_frame)
    alice = up(net, "Alice", reply=True)
    up(net, "Bob")
    with caplog.at_level(logging.INFO, logger="greenflow.transport"):
        assert pings(alice, net, 1, 2) == [3]
    assert swallowed
    assert any("were not acknowledged within 1s; re-sending them" in r.getMessage()
               for r in caplog.records)
    assert net.transport("Bob")._links["Alice"].frames_written >= 1
    assert net.transport("Bob").stats["retransmits"] == 0     # not the link's timer


def test_an_older_listener_is_dialled_without_the_reply_path(net, monkeypatch, caplog):
    """A listener that knows only /1 refuses the /2 hello: the dialler falls back at
    once and everything arrives as before."""
    monkeypatch.setattr(tcp_handshake, "HELLOS", (PROTOCOL,))
    up(net, "Bob")
    alice = up(net, "Alice", reply=True)
    with caplog.at_level(logging.INFO, logger="greenflow.transport"):
        assert pings(alice, net, 3, 2) == [3] * 3
    msgs = [r.getMessage() for r in caplog.records]
    assert any("Bob: dropped" in m and "not a greenflow hello" in m for m in msgs), msgs
    assert any("dialling it without the reply path" in m for m in msgs), msgs
    assert net.transport("Bob").stats["frames_replied"] == 0
    assert net.transport("Alice")._links["Bob"].plain_until > 0


# ----------------------------------------------------------------- hostile answers
def fake_bob(net: Net, misbehave) -> threading.Thread:
    """A listener at Bob's address with Bob's real key: completes the /2 handshake with
    whoever dials, then calls ``misbehave(reader, writer, chan)``."""
    t = TcpTransport(net.identity("Bob"), net.netmap("Bob"))
    ready = threading.Event()
    done = threading.Event()
    served: list = []

    async def serve(reader, writer):
        if served:                      # Alice again: only the first connection misbehaves
            writer.close()
            return
        served.append(writer)
        try:
            chan, info = await server_handshake(t.name, t.netmap, t.key_for, reader, writer)
            assert chan.reply
            await misbehave(reader, writer, chan)
            await writer.drain()
            await asyncio.wait_for(reader.read(), 10)    # until Alice drops it
        finally:
            writer.close()
            done.set()

    async def main():
        server = await asyncio.start_server(serve, *net.address("Bob"))
        ready.set()
        await asyncio.get_running_loop().run_in_executor(None, done.wait, 20)
        server.close()

    th = threading.Thread(target=asyncio.run, args=(main(),), daemon=True)
    th.start()
    ready.wait(5)
    th.done = done
    return th


async def unknown_kind(reader, writer, chan):
    write_message(writer, chan.seal(_pack([[99, "what"]])))


async def replayed(reader, writer, chan):
    rec = _pack([[K_ACK, []]])
    write_message(writer, chan.seal(rec))
    chan.sent -= 1                       # the same nonce again: a byte-exact replay
    write_message(writer, chan.seal(rec))


async def reflected(reader, writer, chan):
    """Alice's own first record, sent back to her: sealed in her direction."""
    ct = await read_message(reader, MAX_RECORD_BYTES)
    write_message(writer, ct)


async def oversized(reader, writer, chan):
    import struct
    writer.write(struct.pack(">I", MAX_RECORD_BYTES + 1))


async def bad_ack(reader, writer, chan):
    write_message(writer, chan.seal(_pack([[K_ACK, [["s", "not a bool", 1]]]])))


@pytest.mark.parametrize("misbehave, expect", [
    (unknown_kind, "unknown message kind 99"),
    (replayed, "failed authentication"),
    (reflected, "failed authentication"),
    (oversized, f"limit {MAX_RECORD_BYTES}"),
    (bad_ack, "unknown message kind 2"),
])
def test_a_hostile_answer_drops_the_connection(net, caplog, misbehave, expect):
    th = fake_bob(net, misbehave)
    alice = up(net, "Alice", reply=True)
    t = net.transport("Alice")
    with caplog.at_level(logging.WARNING, logger="greenflow.transport"):
        h = alice.start_flow(Ping(net.party("Bob"), 1))
        wait_for(lambda: t.stats["dropped_connections"] == 1)
        assert th.done.wait(10)
    msgs = [r.getMessage() for r in caplog.records]
    assert any("Alice: dropped the connection to Bob" in m and expect in m for m in msgs), msgs
    # It dials Bob without the reply path for a while; the flow waits for an honest Bob,
    # and Alice keeps serving everyone else, on the reply path.
    assert t._links["Bob"].plain_until > 0
    assert not h.status.finished
    th.join(10)
    up(net, "Carol")
    assert alice.start_flow(Ping(net.party("Carol"), 2)).result(timeout=20) == 3
    assert net.transport("Carol").stats["frames_replied"] > 0


def test_the_hello_version_is_sealed_into_the_handshake(net, caplog):
    """Carol (her real key) says /2 in her hello but proves herself as for /1 (a hello
    changed from /1 on the way would look so to Bob): Bob drops her. His challenge binds
    /2 too, so a /1 dialler whose hello was changed could not be fooled either."""
    import os
    import nacl.bindings
    from greenflow.network.tcp_framing import PROTOCOL_REPLY
    from test_transport import attack_and_check, read_raw, write_raw
    carol = TcpTransport(net.identity("Carol"), net.netmap("Carol"))
    key = carol.key_for(net.netmap().get("Bob"))

    def send(s):
        c_nonce = os.urandom(32)
        write_raw(s, _pack([PROTOCOL_REPLY, "Carol", "Bob", c_nonce]))
        s_nonce, n, ct = _unpack(read_raw(s))
        pt = nacl.bindings.crypto_box_open_easy_afternm(ct, n, key)
        assert pt == _pack([b"S", c_nonce, s_nonce, "Bob", "Carol", PROTOCOL_REPLY])
        n2 = os.urandom(24)
        write_raw(s, _pack([n2, nacl.bindings.crypto_box_easy_afternm(
            _pack([b"C", c_nonce, s_nonce, "Carol", "Bob"]), n2, key)]))

    up(net, "Alice"), up(net, "Bob")
    attack_and_check(net, caplog, send, "claims to be 'Carol' but cannot prove it")


def test_the_two_directions_of_a_channel_cannot_be_confused():
    """Records both ways on one connection: each side opens only the other's, in order."""
    key, c_nonce, s_nonce = bytes(32), b"c" * 32, b"s" * 32
    client = Channel(key, c_nonce, s_nonce, tcp_handshake._C2S, True)
    server = Channel(key, c_nonce, s_nonce, tcp_handshake._S2C, True)
    up1, down1 = client.seal(b"up"), server.seal(b"down")
    assert up1 != down1
    with pytest.raises(ProtocolError):        # its own record, reflected
        Channel(key, c_nonce, s_nonce, tcp_handshake._C2S).open(up1)
    assert server.open(up1) == b"up" and client.open(down1) == b"down"
    with pytest.raises(ProtocolError):        # replayed
        client.open(down1)
    later = server.seal(b"again")
    assert client.open(later) == b"again"


# ----------------------------------------------------------------- partition hints
def up_worker(net: Net, name: str, parts=range(256)) -> Node:
    """``up`` as a clustered party's worker serving ``parts`` (it tells its peers)."""
    node = up(net, name, reply=True)
    net.transport(name).serve_partitions(parts)
    return node


def owners(net: Net, of: str = "Alice") -> dict:
    return dict(net.transport("Bob")._in.owners.get(of, {}))


def test_a_peer_opens_its_sessions_on_the_connection_of_the_partitions_worker(net):
    """Alice (one worker serving every partition) dialled Bob once: the sessions he
    opens then go on her connection, the first frame by her hint, the rest by the reply
    path; nothing on his own link."""
    alice = up_worker(net, "Alice")
    bob = up(net, "Bob")
    assert pings(alice, net, 1, 1) == [1]            # she dials him, and says what she serves
    wait_for(lambda: len(owners(net)) == 256)
    handles = bob.start_flows([Ping(net.party("Alice"), 3) for _ in range(10)])
    assert [h.result(timeout=30) for h in handles] == [6] * 10
    b = net.transport("Bob").stats
    assert b["hinted"] >= 10
    link = net.transport("Bob")._links["Alice"]
    wait_for(lambda: not link.unacked and not link.via)
    assert link.frames_written == 0                  # every frame on Alice's connection
    # A hint that changes replaces the last one: Bob forgets what she no longer serves.
    net.transport("Alice").serve_partitions([1, 2])
    wait_for(lambda: set(owners(net)) == {1, 2})


def test_without_partitions_a_worker_dials_as_before(net):
    """A dialler with the reply path but no partitions to tell (a worker of the version
    before the hints) says /2, and the peer's sessions go on his link."""
    alice = up(net, "Alice", reply=True)
    bob = up(net, "Bob")
    assert pings(alice, net, 1, 1) == [1]
    assert bob.start_flow(Ping(net.party("Alice"), 2)).result(timeout=20) == 3
    assert not net.transport("Bob")._in.owners
    assert net.transport("Bob").stats["hinted"] == 0
    assert net.transport("Bob").stats["frames_replied"] > 0        # the reply path still


@pytest.mark.parametrize("hellos, fallbacks", [
    ((PROTOCOL, PROTOCOL_REPLY), ["without partition hints"]),
    ((PROTOCOL,), ["without partition hints", "without the reply path"]),
])
def test_an_older_listener_refuses_the_hints_and_the_worker_falls_back(
        net, monkeypatch, caplog, hellos, fallbacks):
    """A listener of the version before the hints refuses the /3 hello: the worker
    dials /2 at once (and /1 if that is refused too); everything arrives as before."""
    monkeypatch.setattr(tcp_handshake, "HELLOS", hellos)
    bob = up(net, "Bob")
    alice = up_worker(net, "Alice")
    with caplog.at_level(logging.INFO, logger="greenflow.transport"):
        assert pings(alice, net, 3, 2) == [3] * 3
        assert bob.start_flow(Ping(net.party("Alice"), 2)).result(timeout=20) == 3
    msgs = [r.getMessage() for r in caplog.records]
    assert any("Bob: dropped" in m and "not a greenflow hello" in m for m in msgs), msgs
    for fallback in fallbacks:
        assert any("dialling it " + fallback in m for m in msgs), msgs
    assert not net.transport("Bob")._in.owners
    link = net.transport("Alice")._links["Bob"]
    assert link.hintless_until > 0
    assert (link.plain_until > 0) == (len(fallbacks) == 2)
    assert (net.transport("Bob").stats["frames_replied"] > 0) == (len(fallbacks) == 1)


def carol_dials_bob(net: Net, records: list, hints: bool = True, then=None) -> None:
    """Carol (her real key) dials Bob as a worker would (/3, or /2 without ``hints``),
    sends ``records`` sealed, calls ``then()`` and waits for Bob to close."""
    carol = TcpTransport(net.identity("Carol"), net.netmap("Carol"))
    bob = net.netmap().get("Bob")

    async def go():
        reader, writer = await asyncio.open_connection(*net.address("Bob"))
        chan = await tcp_handshake.client_handshake(carol.name, carol.key_for(bob), reader,
                                                    writer, bob, reply=True, hints=hints)
        assert chan.hints == hints
        for r in records:
            write_message(writer, chan.seal(_pack(r)))
        await writer.drain()
        if then is not None:
            await asyncio.get_running_loop().run_in_executor(None, then)
        writer.close()

    asyncio.run(go())


@pytest.mark.parametrize("record, expect", [
    ([[K_PARTS, "all"]], "a malformed partition hint (not a list of partitions)"),
    ([[K_PARTS, [1], "more"]], "a malformed partition hint (not a list of partitions)"),
    ([[K_PARTS, list(range(256)) + [0]]], "a partition hint naming 257 partitions (at most 256)"),
    ([[K_PARTS, [256]]], "partitions are numbers from 0 to 255"),
    ([[K_PARTS, [-1]]], "partitions are numbers from 0 to 255"),
    ([[K_PARTS, [True]]], "partitions are numbers from 0 to 255"),
    ([[K_PARTS, [1.0]]], "partitions are numbers from 0 to 255"),
    ([[K_PARTS + 1, [1]]], "unknown message kind 4"),
])
def test_a_malformed_hint_drops_the_connection(net, caplog, record, expect):
    up(net, "Alice"), up(net, "Bob")
    t = net.transport("Bob")
    with caplog.at_level(logging.WARNING, logger="greenflow.transport"):
        carol_dials_bob(net, [record],
                        then=lambda: wait_for(lambda: t.stats["dropped_connections"] == 1))
    msgs = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("Bob: dropped Carol") and expect in m for m in msgs), msgs
    assert not t._in.owners
    assert pings(net.nodes["Alice"][0], net, 1, 2) == [3]    # Bob serves everyone else


def test_a_hint_on_a_connection_that_did_not_offer_them_is_refused(net, caplog):
    """/2 says nothing of hints: a hint record on it is an unknown kind there."""
    up(net, "Alice"), up(net, "Bob")
    t = net.transport("Bob")
    with caplog.at_level(logging.WARNING, logger="greenflow.transport"):
        carol_dials_bob(net, [[[K_PARTS, [1]]]], hints=False,
                        then=lambda: wait_for(lambda: t.stats["dropped_connections"] == 1))
    assert any("dropped Carol" in r.getMessage() and "unknown message kind 3" in r.getMessage()
               for r in caplog.records)
    assert not t._in.owners


def test_hints_are_bounded_replaced_and_forgotten_with_their_connection(net):
    up(net, "Bob")
    t = net.transport("Bob")
    seen = []

    def look():
        wait_for(lambda: set(t._in.owners.get("Carol", {})) == {0, 1})
        seen.append(len(t._in.owners["Carol"]))

    # Every partition, then two of them: the second hint replaces the first.
    carol_dials_bob(net, [[[K_PARTS, list(range(256))]], [[K_PARTS, [1, 0, 1]]]], then=look)
    assert seen == [2]
    wait_for(lambda: "Carol" not in t._in.owners)         # the connection closed


async def parts_back(reader, writer, chan):
    write_message(writer, chan.seal(_pack([[K_PARTS, [1]]])))


def test_a_listener_sending_hints_back_is_dropped(net, caplog):
    """Hints go from the dialler to the listener only: one on the way back is refused."""
    th = fake_bob(net, parts_back)
    alice = up_worker(net, "Alice")
    t = net.transport("Alice")
    with caplog.at_level(logging.WARNING, logger="greenflow.transport"):
        alice.start_flow(Ping(net.party("Bob"), 1))
        wait_for(lambda: t.stats["dropped_connections"] == 1)
        assert th.done.wait(10)
    assert any("Alice: dropped the connection to Bob" in r.getMessage()
               and "unknown message kind 3" in r.getMessage() for r in caplog.records)
    th.join(10)


# ----------------------------------------------------------------- the reply buffer bound
def test_a_reply_connection_far_behind_is_passed_over_for_the_link(net, monkeypatch):
    """Alice stops reading her connection: Bob's answer waits in its buffer (more than
    `MAX_REPLY_BUFFER`), and his next answers on that connection go on his own link."""
    import socket
    from flowlib import Echo
    from greenflow.network import tcp_inbound, tcp_link
    monkeypatch.setattr(tcp_link, "REPLY_RESEND_AFTER", 600.0)   # not re-sent: still stuck
    stalled = []

    async def never_reads(self, reader, chan):
        stalled.append(reader)
        self.writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        await asyncio.Event().wait()

    real_keepalive = tcp_inbound._keepalive

    def small_send_buffer(writer):
        real_keepalive(writer)
        writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)

    monkeypatch.setattr(Link, "_receive", never_reads)
    monkeypatch.setattr(tcp_inbound, "_keepalive", small_send_buffer)
    alice = up(net, "Alice", reply=True, apps=["flowlib"])
    up(net, "Bob", apps=["flowlib"])
    big = b"x" * (tcp_inbound.MAX_REPLY_BUFFER + 256 * 1024)
    stuck = alice.start_flow(Echo(net.party("Bob"), big))
    bob = net.transport("Bob")
    wait_for(lambda: bob.stats["frames_replied"] == 1)
    wait_for(lambda: any(r.writer.transport.get_write_buffer_size() > tcp_inbound.MAX_REPLY_BUFFER
                         for r in set(bob._in.routes.values())))
    # The next answer to Alice: her connection is over the bound, so Bob's link.
    assert alice.start_flow(Echo(net.party("Bob"), b"small")).result(timeout=20) == b"small"
    assert bob.stats["frames_replied"] == 1
    assert bob._links["Alice"].frames_written >= 1
    assert not stuck.status.finished
