"""The TCP transport between nodes: delivery, reconnection, and what an attacker at the
P2P port can (not) do. Nodes run in this process on real sockets (loopback)."""
from __future__ import annotations

import asyncio
import logging
import os
import socket
import struct
import time

import pytest

from greenflow import Node
from greenflow.network.bootstrap import bootstrap_network
from greenflow.node.identity import NodeIdentity
from greenflow.network.network_map import NetworkMap
from greenflow.samples.ping import Ping
from greenflow.network.tcp_transport import (MAX_HANDSHAKE_BYTES, MAX_RECORD_BYTES, PROTOCOL, K_FRAME,
                                     TcpTransport, _pack, write_message)


class Net:
    """Alice, Bob and Carol bootstrapped on free ports; ``up(name)`` runs one in-process."""

    def __init__(self, root: str) -> None:
        self.configs = {c.name: c for c in bootstrap_network(root, ["Alice", "Bob", "Carol"],
                                                             base_port=0)}
        self.nodes: dict[str, tuple[Node, TcpTransport]] = {}

    def identity(self, name: str) -> NodeIdentity:
        c = self.configs[name]
        return NodeIdentity.load_or_create(c.base_dir, name)

    def netmap(self, name: str = "Alice") -> NetworkMap:
        return NetworkMap.load(self.configs[name].network_map_path)

    def up(self, name: str) -> Node:
        c = self.configs[name]
        t = TcpTransport(self.identity(name), self.netmap(name), listen=c.p2p_address)
        t.bind()
        node = Node(c.base_dir, name, apps=c.apps, transport=t, sync=False)
        t.start()
        self.nodes[name] = (node, t)
        return node

    def down(self, name: str) -> None:
        node, t = self.nodes.pop(name)
        node.close()
        t.close()

    def transport(self, name: str) -> TcpTransport:
        return self.nodes[name][1]

    def party(self, name: str):
        return self.netmap().party(name)

    def address(self, name: str) -> tuple[str, int]:
        return self.configs[name].p2p_address

    def close(self) -> None:
        for name in list(self.nodes):
            self.down(name)


@pytest.fixture
def net(tmp_path):
    n = Net(str(tmp_path))
    yield n
    n.close()


def ping(net: Net, n: int = 3, to: str = "Bob", timeout: float = 20.0) -> int:
    alice = net.nodes["Alice"][0]
    return alice.start_flow(Ping(net.party(to), n)).result(timeout=timeout)


def wait_for(cond, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.01)


# ------------------------------------------------------------------------- delivery
def test_ping_pong_between_two_nodes_over_tcp(net):
    net.up("Alice"), net.up("Bob")
    assert ping(net, 5) == 15
    alice, bob = net.transport("Alice").stats, net.transport("Bob").stats
    # The result is in before Alice's closing frame has necessarily reached Bob.
    wait_for(lambda: alice["frames_sent"] == bob["frames_received"] > 0)
    wait_for(lambda: alice["acks_received"] == alice["frames_sent"])


def test_many_concurrent_flows_all_complete(net):
    alice = net.up("Alice")
    net.up("Bob")
    handles = alice.start_flows([Ping(net.party("Bob"), 2) for _ in range(300)])
    assert [h.result(timeout=60) for h in handles] == [3] * 300


def test_frames_sent_while_the_peer_is_down_arrive_when_it_comes_back(net):
    alice = net.up("Alice")
    h = alice.start_flow(Ping(net.party("Bob"), 3))
    time.sleep(0.3)                     # Alice is retrying the connection with backoff
    assert not h.status.finished
    net.up("Bob")
    assert h.result(timeout=20) == 6


def test_a_peer_restarting_mid_flow_gets_the_unacknowledged_frames_again(net):
    alice = net.up("Alice")
    net.up("Bob")
    assert ping(net, 1) == 1
    net.down("Bob")
    h = alice.start_flow(Ping(net.party("Bob"), 4))
    time.sleep(0.2)
    net.up("Bob")
    assert h.result(timeout=20) == 10


def test_a_dead_peer_does_not_hold_up_the_others(net):
    alice = net.up("Alice")
    net.up("Bob")                       # Carol is on the map but never started
    stuck = alice.start_flow(Ping(net.party("Carol"), 1))
    assert ping(net, 3) == 6
    assert not stuck.status.finished


def test_a_node_talks_to_itself_without_the_network(net):
    alice = net.up("Alice")
    assert alice.start_flow(Ping(net.party("Alice"), 2)).result(timeout=10) == 3


# ------------------------------------------------------------------------- attacks
def raw_connect(addr: tuple[str, int]) -> socket.socket:
    s = socket.create_connection(addr, timeout=5)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def closed_by_peer(s: socket.socket, timeout: float = 5.0) -> bool:
    """True once the node has closed the connection (EOF or reset)."""
    s.settimeout(timeout)
    try:
        while True:
            if not s.recv(4096):
                return True
    except ConnectionResetError:
        return True
    except socket.timeout:
        return False


def attack_and_check(net: Net, caplog, send, expect: str) -> None:
    """Run ``send(socket)`` against Bob: the connection is dropped with ``expect`` in
    Bob's log, and Bob still serves Alice."""
    for name in ("Alice", "Bob"):
        if name not in net.nodes:
            net.up(name)
    dropped = net.transport("Bob").stats["dropped_connections"]
    with caplog.at_level(logging.WARNING, logger="greenflow.transport"):
        s = raw_connect(net.address("Bob"))
        try:
            send(s)
            assert closed_by_peer(s)
        finally:
            s.close()
        wait_for(lambda: net.transport("Bob").stats["dropped_connections"] == dropped + 1)
    assert any("Bob: dropped" in r.getMessage() and expect in r.getMessage()
               for r in caplog.records), [r.getMessage() for r in caplog.records]
    assert ping(net, 3) == 6


def test_random_bytes_are_dropped(net, caplog):
    attack_and_check(net, caplog, lambda s: s.sendall(os.urandom(600)), "bytes (limit")


def test_random_bytes_under_the_size_limit_are_dropped(net, caplog):
    junk = os.urandom(200)
    attack_and_check(net, caplog, lambda s: s.sendall(struct.pack(">I", 200) + junk),
                     "dropped a connection from")


def test_a_truncated_frame_is_dropped(net, caplog):
    def send(s):
        s.sendall(struct.pack(">I", 100) + b"x" * 10)
        s.shutdown(socket.SHUT_WR)
    attack_and_check(net, caplog, send, "closed in the middle of a message")


def test_an_oversized_frame_is_dropped_before_it_is_read(net, caplog):
    attack_and_check(net, caplog, lambda s: s.sendall(struct.pack(">I", 2**31)),
                     f"message of {2**31} bytes (limit {MAX_HANDSHAKE_BYTES})")


def test_a_peer_not_on_the_network_map_is_dropped(net, caplog):
    hello = _pack([PROTOCOL, "Mallory", "Bob", os.urandom(32)])
    attack_and_check(net, caplog, lambda s: write_raw(s, hello), "'Mallory', which is not on the network map")


def write_raw(s: socket.socket, data: bytes) -> None:
    s.sendall(struct.pack(">I", len(data)) + data)


def read_raw(s: socket.socket) -> bytes:
    s.settimeout(5)
    n = struct.unpack(">I", recv_exact(s, 4))[0]
    return recv_exact(s, n)


def recv_exact(s: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("closed")
        buf += chunk
    return buf


def test_a_peer_claiming_anothers_name_cannot_prove_it(net, caplog):
    """Mallory says she is Carol, but seals the proof with her own key."""
    import nacl.bindings
    import nacl.public
    import nacl.signing
    from greenflow.network.tcp_transport import _unpack

    mallory = nacl.signing.SigningKey.generate()
    bob_pk = nacl.signing.VerifyKey(net.party("Bob").owning_key).to_curve25519_public_key()
    key = nacl.public.Box(mallory.to_curve25519_private_key(), bob_pk).shared_key()

    def send(s):
        c_nonce = os.urandom(32)
        write_raw(s, _pack([PROTOCOL, "Carol", "Bob", c_nonce]))
        s_nonce, n, ct = _unpack(read_raw(s))
        with pytest.raises(Exception):       # sealed for the real Carol: Mallory cannot open it
            nacl.bindings.crypto_box_open_easy_afternm(ct, n, key)
        n2 = os.urandom(24)
        write_raw(s, _pack([n2, nacl.bindings.crypto_box_easy_afternm(
            _pack([b"C", c_nonce, s_nonce, "Carol", "Bob"]), n2, key)]))
    attack_and_check(net, caplog, send, "claims to be 'Carol' but cannot prove it")


class Recorder:
    """Wraps an asyncio writer and keeps every byte written."""

    def __init__(self, writer) -> None:
        self.w, self.data = writer, bytearray()

    def write(self, b: bytes) -> None:
        self.data += b
        self.w.write(b)

    def __getattr__(self, name):
        return getattr(self.w, name)


def honest_session(net: Net, who: str, records: list[bytes], *, record=False, after=None,
                   expect_drop=True):
    """Connect to Bob as ``who`` with ``who``'s real key (as the transport does), send
    each record sealed on the channel; returns the bytes written when ``record``."""
    t = TcpTransport(net.identity(who), net.netmap(who))
    bob = net.netmap().get("Bob")

    async def go():
        reader, writer = await asyncio.open_connection(*net.address("Bob"))
        w = Recorder(writer) if record else writer
        chan = await t._client_handshake(reader, w, bob)
        for r in records:
            write_message(w, chan.seal(r))
        await writer.drain()
        if after is not None:
            after(w, chan)
            await writer.drain()
        if expect_drop:
            await asyncio.wait_for(reader.read(1), 5)
        writer.close()
        return bytes(w.data) if record else b""

    return asyncio.run(go())


def test_a_replayed_connection_fails_the_handshake(net, caplog):
    """Everything Carol sent on one connection, replayed on a new one: the proof is
    bound to the first connection's nonces."""
    net.up("Alice"), net.up("Bob")
    frame = _pack([[K_FRAME, b"\x93junk"]])
    recorded = honest_session(net, "Carol", [frame], record=True, expect_drop=False)
    attack_and_check(net, caplog, lambda s: s.sendall(recorded),
                     "claims to be 'Carol' but cannot prove it")


def authenticated_attack(net: Net, caplog, expect: str, records=(), after=None) -> None:
    """Carol (on the map, with her real key) completes the handshake with Bob, then
    misbehaves: Bob drops the connection, logs ``expect``, and still serves Alice."""
    net.up("Alice"), net.up("Bob")
    before = net.transport("Bob").stats["dropped_connections"]
    with caplog.at_level(logging.WARNING, logger="greenflow.transport"):
        honest_session(net, "Carol", list(records), after=after)
        wait_for(lambda: net.transport("Bob").stats["dropped_connections"] == before + 1)
    assert any(expect in r.getMessage() for r in caplog.records), [r.getMessage() for r in caplog.records]
    assert ping(net, 2) == 3


def test_a_record_replayed_within_a_connection_is_dropped(net, caplog):
    frame = _pack([[K_FRAME, b"not a frame"]])

    def replay(w, chan):
        chan.sent -= 1                      # same nonce again: a byte-exact replay
        write_message(w, chan.seal(frame))

    authenticated_attack(net, caplog, "failed authentication", [frame], after=replay)


def test_a_record_sealed_with_a_key_not_on_the_map_is_dropped(net, caplog):
    import nacl.bindings

    def forged(w, chan):
        write_message(w, nacl.bindings.crypto_box_easy_afternm(
            _pack([[K_FRAME, b"x"]]), chan._nonce(chan.send_dir, chan.sent), os.urandom(32)))

    authenticated_attack(net, caplog, "failed authentication", after=forged)


def test_an_oversized_record_from_an_authenticated_peer_is_dropped(net, caplog):
    authenticated_attack(net, caplog, f"limit {MAX_RECORD_BYTES}",
                         after=lambda w, chan: w.write(struct.pack(">I", MAX_RECORD_BYTES + 1)))


def test_a_malformed_record_from_an_authenticated_peer_is_dropped(net, caplog):
    authenticated_attack(net, caplog, "unknown message kind 99", [_pack([[99, "what"]])])


def test_a_node_will_not_talk_to_an_impostor_at_its_peers_address(net, caplog):
    """Someone without Bob's key listens where Bob should be: Alice's frames stay
    unsent (and in her outbox) until the real Bob answers."""
    impostor = socket.socket()
    impostor.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    impostor.bind(net.address("Bob"))
    impostor.listen(5)
    alice = net.up("Alice")
    with caplog.at_level(logging.WARNING, logger="greenflow.transport"):
        h = alice.start_flow(Ping(net.party("Bob"), 2))
        conn, _ = impostor.accept()
        conn.settimeout(5)
        hello = read_raw(conn)
        import msgpack
        c_nonce = msgpack.unpackb(hello)[3]
        n = os.urandom(24)
        import nacl.bindings
        write_raw(conn, _pack([os.urandom(32), n, nacl.bindings.crypto_box_easy_afternm(
            _pack([b"S", c_nonce, b"x" * 32, "Bob", "Alice"]), n, os.urandom(32))]))
        assert closed_by_peer(conn)
        conn.close()
    impostor.close()
    assert any("failed to prove it is Bob" in r.getMessage() for r in caplog.records)
    assert net.transport("Alice").stats["frames_received"] == 0
    net.up("Bob")
    assert h.result(timeout=30) == 3


# ------------------------------------------------------------------------- memory bound
def test_frames_for_a_peer_that_stays_down_wait_in_the_outbox_not_in_memory(net, caplog):
    """Beyond the link's memory bound, frames for a dead peer are left in the outbox (they
    are committed there before they are sent) and read back from it as room frees up:
    every flow still completes once the peer comes back."""
    alice = net.up("Alice")
    t = net.transport("Alice")
    t.max_held_bytes = 1024             # a dozen frames
    caplog.set_level(logging.INFO, logger="greenflow.tcp")
    handles = alice.start_flows([Ping(net.party("Bob"), 2) for _ in range(60)])
    link = None

    def spilled() -> bool:
        nonlocal link
        link = t._links.get("Bob")
        return link is not None and link.spilled

    wait_for(spilled)
    # Every initiation is committed to the outbox; only the first few are in memory.
    wait_for(lambda: sum(1 for _ in alice.store.outbox()) >= 60)
    assert 0 < len(link.unacked) < 30 and link.held_bytes <= 1024
    assert any("stay in the outbox" in r.getMessage() for r in caplog.records)
    net.up("Bob")
    assert [h.result(timeout=60) for h in handles] == [3] * 60
    wait_for(lambda: not link.spilled and not link.unacked)
    wait_for(lambda: not any(True for _ in alice.store.outbox()))
