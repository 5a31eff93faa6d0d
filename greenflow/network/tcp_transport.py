"""The TCP transport between node processes: authenticated, encrypted, at least once.

Wire format
-----------
Everything on a connection is a *message*: a 4-byte big-endian length, then that many
bytes. Before the handshake completes a message may be at most `MAX_HANDSHAKE_BYTES`
(a stranger cannot make the node allocate more than that); after it, a *record* may be
at most `MAX_RECORD_BYTES`. A length over the limit, a connection closed mid-message, or
anything that fails to decrypt or parse drops the connection; the node logs it and
keeps serving everyone else.

Handshake (the dialling node C, the listening node S, both on the network map)::

    C -> S  hello      [PROTOCOL, C's name, S's name, c_nonce(32)]          (clear)
    S -> C  challenge  [s_nonce(32), n(24), box(["S", c_nonce, s_nonce, S, C], n)]
    C -> S  proof      [n'(24), box(["C", c_nonce, s_nonce, C, S], n')]
    S -> C  welcome    the first sealed record of the channel

``box`` is a NaCl box (X25519 + XSalsa20-Poly1305) whose key is computed from the two
nodes' identity keys (Ed25519 converted to Curve25519): only S and the holder of the key
the map lists under C's name can compute it. So the challenge proves S to C, the proof
proves C to S, and both are bound to this connection's fresh nonces: a recorded
handshake replayed later fails. A peer claiming another's name cannot seal the proof.

Channel
-------
After the handshake every record is ``box(msgpack([[kind, ...], ...]), nonce)`` with an
implicit nonce: 16 bytes derived from both handshake nonces, one byte of direction and
a 7-byte counter. Nonces are never sent; each side computes the one it expects next, so
a replayed, reordered, reflected or dropped record fails to decrypt. Record kinds:
``[0]`` welcome, ``[1, frame]`` a session frame, ``[2, [msg_id, ...]]`` acknowledgements.

Delivery
--------
Each node dials its peers for what it sends; it receives on the connections its peers
dial to it. A `_Link` per peer holds every session frame until the peer acknowledges it
(which the peer does only after committing it), re-sends them all in order after a
reconnect and, as a backstop, when no acknowledgement came for `RETRANSMIT_AFTER`
seconds (doubling while none comes, up to `RETRANSMIT_MAX`): a receiver drops
unacknowledged what it cannot take yet (out of order, a session it holds while draining). The receiver deduplicates (`greenflow.messages`). Acknowledgements travel on
the receiver's own link back to the sender; a lost one only causes a harmless re-send.

A link holds at most `MAX_HELD_BYTES` of frames in memory. Every frame it is given is
already committed to the node's outbox (commit, then send), so beyond that bound a peer
that stays down costs disk, not memory: further frames are left in the outbox, and the
link reads them back from it, in key (session, sequence) order, as acknowledgements free
room.

All sockets are served by one asyncio loop on the transport's own thread. The
scheduler's ``send``/``ack`` only append to a queue, so a slow or dead peer never holds
up the scheduler or the links to other peers.
"""
from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import random
import socket
import struct
import threading
import time
from collections import deque
from typing import Any, Callable, Iterator, Optional

import msgpack
import nacl.bindings
import nacl.exceptions
import nacl.public
import nacl.signing

from greenflow.errors import WireFormatError
from greenflow.statemachine.events import Acked, FrameArrived
from greenflow.node.identity import NodeIdentity
from greenflow.messages import MAX_FRAME_BYTES, decode_frame
from greenflow.network.network_map import NetworkMap, NodeInfo, format_address
from greenflow.party import Party

log = logging.getLogger("greenflow.transport")

PROTOCOL = b"greenflow-p2p/1"
HEADER = struct.Struct(">I")
MAX_HANDSHAKE_BYTES = 1024
BATCH_BYTES = 256 * 1024
MAX_RECORD_BYTES = MAX_FRAME_BYTES + 64 * 1024
MAX_ACKS_PER_RECORD = 8192
MAX_OWED_ACKS = 100_000
MAX_HELD_BYTES = 64 * 1024 * 1024   # per peer: unacknowledged frames kept in memory
HANDSHAKE_TIMEOUT = 10.0
CONNECT_TIMEOUT = 5.0
BACKOFF_MIN, BACKOFF_MAX = 0.05, 10.0
RETRANSMIT_AFTER = 3.0
RETRANSMIT_MAX = 60.0

K_WELCOME, K_FRAME, K_ACK = 0, 1, 2
_S2C, _C2S = 1, 0


class ProtocolError(Exception):
    """The other end broke the protocol (or is not who it claims): drop the connection."""


def _pack(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


#: Most lists, maps and extension values one message may decode into. A record holds a
#: batch of frames (a list each, at most BATCH_BYTES of them) and a chunk of at most
#: MAX_ACKS_PER_RECORD acknowledgements (a list each): ~20,000 at most. Without a bound,
#: 16 MiB of empty lists decoded into 16 million (16 s and 1.2 GB) on the transport thread.
MAX_RECORD_CONTAINERS = 65_536
# Every byte that cannot open an array, map or extension value: deleting them leaves an
# upper bound on the containers of a message, in one C call.
_NOT_CONTAINER_HEADERS = bytes(b for b in range(256) if not (
    0x80 <= b <= 0x9F or 0xDC <= b <= 0xDF or 0xC7 <= b <= 0xC9 or 0xD4 <= b <= 0xD8))


def _refuse_ext(code: int, data: bytes) -> Any:
    raise ProtocolError(f"an extension value (type {code})")


def _unpack(data: bytes) -> Any:
    try:
        if len(data) > MAX_RECORD_CONTAINERS and \
                len(data.translate(None, _NOT_CONTAINER_HEADERS)) > MAX_RECORD_CONTAINERS:
            built = 0

            def count(value: Any) -> Any:
                nonlocal built
                built += 1
                if built > MAX_RECORD_CONTAINERS:
                    raise ProtocolError(f"more than {MAX_RECORD_CONTAINERS:,} lists in one message")
                return value

            return msgpack.unpackb(data, raw=False, use_list=True, strict_map_key=True,
                                   ext_hook=_refuse_ext, list_hook=count, object_hook=count)
        return msgpack.unpackb(data, raw=False, use_list=True, strict_map_key=True,
                               ext_hook=_refuse_ext)
    except Exception as exc:
        raise ProtocolError(f"undecodable message ({type(exc).__name__}: {exc})"[:200]) from None


def _open(key: bytes, ct: bytes, nonce: bytes) -> bytes:
    try:
        return nacl.bindings.crypto_box_open_easy_afternm(ct, nonce, key)
    except (nacl.exceptions.CryptoError, ValueError, TypeError):
        raise ProtocolError("a record failed authentication (wrong key, tampered, "
                            "replayed or out of order)") from None


async def read_message(reader: asyncio.StreamReader, limit: int) -> bytes:
    n = HEADER.unpack(await reader.readexactly(HEADER.size))[0]
    if n == 0 or n > limit:
        raise ProtocolError(f"message of {n} bytes (limit {limit})")
    return await reader.readexactly(n)


def write_message(writer: asyncio.StreamWriter, data: bytes) -> None:
    writer.write(HEADER.pack(len(data)) + data)


class Channel:
    """The sealed record stream of one connection, after the handshake."""

    def __init__(self, key: bytes, c_nonce: bytes, s_nonce: bytes, send_dir: int) -> None:
        self.key = key
        self.prefix = hashlib.blake2b(c_nonce + s_nonce, digest_size=16,
                                      person=b"greenflow-nonce").digest()
        self.send_dir, self.recv_dir = send_dir, 1 - send_dir
        self.sent = 0
        self.received = 0

    def _nonce(self, direction: int, counter: int) -> bytes:
        return self.prefix + bytes((direction,)) + counter.to_bytes(7, "big")

    def seal(self, plaintext: bytes) -> bytes:
        nonce = self._nonce(self.send_dir, self.sent)
        self.sent += 1
        return nacl.bindings.crypto_box_easy_afternm(plaintext, nonce, self.key)

    def open(self, ct: bytes) -> bytes:
        pt = _open(self.key, ct, self._nonce(self.recv_dir, self.received))
        self.received += 1
        return pt


def _hello_ok(v: Any) -> bool:
    return (isinstance(v, list) and len(v) == 4 and v[0] == PROTOCOL
            and isinstance(v[1], str) and isinstance(v[2], str)
            and isinstance(v[3], bytes) and len(v[3]) == 32)


def _sealed_ok(v: Any, extra: int) -> bool:
    return (isinstance(v, list) and len(v) == 2 + extra
            and all(isinstance(x, bytes) for x in v)
            and (extra == 0 or len(v[0]) == 32) and len(v[extra]) == 24)


def _msg_id_ok(m: Any) -> bool:
    return (isinstance(m, list) and len(m) == 3 and isinstance(m[0], str) and 0 < len(m[0]) <= 200
            and isinstance(m[1], bool) and isinstance(m[2], int) and 0 <= m[2] < 2**62)


def _frame_msg_id(data: bytes) -> Any:
    try:
        return decode_frame(data).msg_id
    except WireFormatError:
        return None


class _Link:
    """Everything this node sends to one peer: a connection it dials, the frames the
    peer has not acknowledged yet, and the acknowledgements it owes the peer."""

    def __init__(self, transport: "TcpTransport", info: NodeInfo) -> None:
        self.t = transport
        self.info = info
        self.unacked: dict[Any, bytes] = {}
        self.held_bytes = 0        # sum of len(unacked values)
        self.spilled = False       # frames for this peer are in the outbox only
        self.queue: deque[Any] = deque()
        self.acks: list[list] = []
        self.wake = asyncio.Event()
        self.connected = False
        self.frames_out = 0        # frames routed to this peer (metrics)
        self.writer: Optional[asyncio.StreamWriter] = None
        self.last_ack = time.monotonic()
        self.retransmit_after = RETRANSMIT_AFTER
        self.task = asyncio.get_running_loop().create_task(self._run())

    @property
    def name(self) -> str:
        return self.info.name

    def add_frame(self, data: bytes, from_outbox: bool = False) -> bool:
        """Hold ``data`` until acknowledged; False when it is left in the outbox instead
        (over the memory bound: `refill` reads it back later)."""
        mid = _frame_msg_id(data)
        if mid is None:
            mid = ("?", False, id(data))  # the peer will drop it; keep it out of the way
        old = self.unacked.get(mid)
        if old is None and (self.spilled and not from_outbox
                            or self.unacked and self.held_bytes + len(data) > self.t.max_held_bytes):
            if not self.spilled:
                # Said before the flag is set: whoever sees the link spilled finds it said.
                log.warning("%s: %s holds %d unacknowledged frames (%d MiB); further frames "
                            "for it stay in the outbox until it acknowledges these",
                            self.t.name, self.name, len(self.unacked), self.held_bytes >> 20)
                self.spilled = True
            return False
        if not self.unacked:
            self.last_ack = time.monotonic()
        self.unacked[mid] = data
        self.held_bytes += len(data) - (len(old) if old is not None else 0)
        self.queue.append(mid)
        self.wake.set()
        return True

    def refill(self) -> None:
        """Take frames left in the outbox back into memory, up to the bound."""
        reader = self.t.outbox_reader
        if reader is None:
            return
        self.spilled = False
        try:
            for data in reader(self.name):
                mid = _frame_msg_id(data)
                if mid is None or mid in self.unacked:
                    continue
                if not self.add_frame(data, from_outbox=True):
                    return            # full again: still spilled
        except Exception as exc:  # noqa: BLE001 - the store closing under us, say
            log.warning("%s: cannot read frames for %s back from the outbox: %s",
                        self.t.name, self.name, exc)
            self.spilled = True
            return
        log.info("%s: every frame for %s is held in memory again (%d)", self.t.name,
                 self.name, len(self.unacked))

    def add_acks(self, msg_ids: tuple) -> None:
        self.acks.extend(list(m) for m in msg_ids)
        if len(self.acks) > MAX_OWED_ACKS:
            # The peer is unreachable: forget the oldest; it re-sends those frames and the
            # node acknowledges the duplicates again.
            del self.acks[:len(self.acks) - MAX_OWED_ACKS]
        self.wake.set()

    def acked(self, msg_ids: list) -> None:
        for m in msg_ids:
            data = self.unacked.pop(tuple(m), None)
            if data is not None:
                self.held_bytes -= len(data)
        self.last_ack = time.monotonic()
        self.retransmit_after = RETRANSMIT_AFTER
        if self.spilled and self.held_bytes <= self.t.max_held_bytes // 2:
            self.refill()

    def check_retransmit(self, now: float) -> None:
        if self.connected and self.unacked and now - self.last_ack > self.retransmit_after:
            log.info("%s: no acknowledgement from %s for %.0fs; re-sending %d frames",
                     self.t.name, self.name, now - self.last_ack, len(self.unacked))
            self.queue = deque(self.unacked)
            self.last_ack = now
            self.retransmit_after = min(self.retransmit_after * 2, RETRANSMIT_MAX)
            self.t.stats["retransmits"] += 1
            self.wake.set()

    async def _run(self) -> None:
        backoff = BACKOFF_MIN
        host, port = self.info.p2p_address
        while not self.t.closing:
            if not self.unacked and not self.acks:
                self.wake.clear()
                await self.wake.wait()
                continue
            writer = None
            try:
                reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port),
                                                        CONNECT_TIMEOUT)
                _keepalive(writer)
                chan = await asyncio.wait_for(self.t._client_handshake(reader, writer, self.info),
                                              HANDSHAKE_TIMEOUT)
            except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, ProtocolError) as exc:
                if writer is not None:
                    writer.close()
                level = logging.WARNING if isinstance(exc, ProtocolError) else logging.INFO
                log.log(level, "%s: cannot reach %s at %s (%s); retrying in %.2fs",
                        self.t.name, self.name, format_address(self.info.p2p_address),
                        _why(exc), backoff)
                self.t.stats["connect_failures"] += 1
                await asyncio.sleep(backoff * random.uniform(0.5, 1.0))
                backoff = min(backoff * 2, BACKOFF_MAX)
                continue
            backoff = BACKOFF_MIN
            log.info("%s: connected to %s at %s; %d unacknowledged frames to (re)send",
                     self.t.name, self.name, format_address(self.info.p2p_address),
                     len(self.unacked))
            self.queue = deque(self.unacked)
            self.connected, self.writer = True, writer
            self.last_ack = time.monotonic()
            watcher = asyncio.get_running_loop().create_task(self._watch(reader))
            try:
                await self._pump(writer, chan, watcher)
            except (OSError, ProtocolError) as exc:
                log.info("%s: link to %s lost: %s", self.t.name, self.name, _why(exc))
            finally:
                self.connected, self.writer = False, None
                watcher.cancel()
                writer.close()

    async def _watch(self, reader: asyncio.StreamReader) -> None:
        """The listener sends nothing after its welcome: reading only notices the end."""
        try:
            await reader.read(1)
        except OSError:
            pass
        finally:
            self.wake.set()

    async def _pump(self, writer: asyncio.StreamWriter, chan: Channel, watcher: asyncio.Task) -> None:
        while not self.t.closing:
            if watcher.done():
                raise ConnectionResetError("the peer closed the connection")
            items: list = []
            size = 0
            while self.queue:
                data = self.unacked.get(self.queue[0])
                if data is None:
                    self.queue.popleft()
                    continue
                if items and size + len(data) > BATCH_BYTES:
                    break
                self.queue.popleft()
                items.append([K_FRAME, data])
                size += len(data) + 8
            if self.acks and size < BATCH_BYTES:
                chunk, self.acks = self.acks[:MAX_ACKS_PER_RECORD], self.acks[MAX_ACKS_PER_RECORD:]
                items.append([K_ACK, chunk])
            if items:
                write_message(writer, chan.seal(_pack(items)))
                self.t.stats["records_sent"] += 1
                await writer.drain()
                continue
            self.wake.clear()
            await self.wake.wait()


def _why(exc: BaseException) -> str:
    if isinstance(exc, asyncio.IncompleteReadError):
        return "connection closed during the handshake"
    if isinstance(exc, asyncio.TimeoutError):
        return "timed out"
    if isinstance(exc, asyncio.CancelledError):
        return "this node is shutting down"
    return str(exc) or type(exc).__name__


def _keepalive(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is None:
        return
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        if hasattr(socket, "TCP_KEEPIDLE"):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 30)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, 10)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 3)
    except OSError:
        pass


class TcpTransport:
    """A node's P2P transport (the interface `greenflow.node.node.Node` uses: ``node``,
    ``send``, ``ack``, ``party``).

    Use: ``t = TcpTransport(identity, netmap, listen=addr); t.bind()`` (fails fast if the
    port is taken), ``Node(..., transport=t)``, ``t.start()``; ``t.close()`` after
    ``node.close()``.
    """

    def __init__(self, identity: NodeIdentity, netmap: NetworkMap,
                 listen: Optional[tuple[str, int]] = None, reuse_port: bool = False) -> None:
        self.node: Any = None
        #: Share the listening port with the other workers of a clustered party on this
        #: machine (SO_REUSEPORT: the kernel spreads the peers' connections over them).
        self.reuse_port = reuse_port
        self.identity = identity
        self.name = identity.party.name
        self.netmap = netmap
        me = netmap.get(self.name)
        if me is None:
            raise ProtocolError(f"{self.name} is not on its own network map")
        if me.party.owning_key != identity.party.owning_key:
            raise ProtocolError(f"the network map lists another public key for {self.name} "
                                "than this node's identity.key")
        self.listen = listen or me.p2p_address
        self._curve_sk = identity.signing_key.to_curve25519_private_key()
        self._keys: dict[str, bytes] = {}
        self.closing = False
        self._sock: Optional[socket.socket] = None
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._thread: Optional[threading.Thread] = None
        self._server: Optional[asyncio.base_events.Server] = None
        self._inq: deque[tuple] = deque()
        self._drain_pending = True  # until start() schedules the first drain
        self._links: dict[str, _Link] = {}
        self._inbound: dict[str, asyncio.StreamWriter] = {}
        self._conns: set[asyncio.StreamWriter] = set()
        self._warned: set[str] = set()
        self.max_held_bytes = MAX_HELD_BYTES
        #: Keep every inbound connection of a peer, not just its newest: the workers of a
        #: clustered party each connect under the party's one name, so closing the older
        #: one would make them take turns. A dead one goes when TCP keep-alive finds it.
        self.several_per_peer = True
        self.outbox_reader: Optional[Callable[[str], Iterator[bytes]]] = None
        self.stats = {"frames_sent": 0, "frames_received": 0, "records_sent": 0,
                      "acks_received": 0, "dropped_connections": 0, "connect_failures": 0,
                      "retransmits": 0, "handshakes": 0}
        self.frames_in: dict[str, int] = {}   # peer name -> frames received (metrics)

    # ------------------------------------------------------------------ keys
    def _key_for(self, info: NodeInfo) -> bytes:
        key = self._keys.get(info.name)
        if key is None:
            pk = nacl.signing.VerifyKey(info.party.owning_key).to_curve25519_public_key()
            key = nacl.public.Box(self._curve_sk, pk).shared_key()
            self._keys[info.name] = key
        return key

    # ------------------------------------------------------------------ lifecycle
    def bind(self) -> tuple[str, int]:
        """Open the listening socket now, so a taken port fails before the node opens."""
        if self._sock is None:
            host, port = self.listen
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            s = socket.socket(family, socket.SOCK_STREAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if self.reuse_port:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            try:
                s.bind((host, port))
            except OSError as exc:
                s.close()
                raise OSError(exc.errno, f"cannot listen for peers on "
                              f"{format_address(self.listen)}: {exc.strerror}") from None
            s.listen(128)
            s.setblocking(False)
            self._sock = s
        return self._sock.getsockname()[:2]

    @property
    def address(self) -> tuple[str, int]:
        return self.bind()

    def start(self) -> None:
        """Start serving (after ``Node`` has attached itself as ``self.node``)."""
        if self.node is None:
            raise RuntimeError("TcpTransport.start() before a Node was attached")
        if self.outbox_reader is None:
            sched = getattr(self.node, "scheduler", None)
            if sched is not None:   # the scheduler owns reading the outbox for re-sending
                self.outbox_reader = lambda peer: (
                    data for _, data in sched.unacknowledged_frames(peer))
        self.bind()
        ready = threading.Event()
        self._thread = threading.Thread(target=self._thread_main, args=(ready,),
                                        name=f"gf-transport-{self.name}", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("transport thread did not start")

    def _thread_main(self, ready: threading.Event) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)

        async def boot() -> None:
            self._server = await asyncio.start_server(self._serve, sock=self._sock,
                                                      limit=MAX_HANDSHAKE_BYTES * 4)
            loop.create_task(self._ticker())
            self._drain_inq()
            ready.set()

        try:
            loop.run_until_complete(boot())
            loop.run_forever()
        finally:
            try:
                pending = asyncio.all_tasks(loop)
                for t in pending:
                    t.cancel()
                loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            finally:
                loop.close()

    def close(self) -> None:
        """Stop serving; unacknowledged frames stay in the node's durable outbox."""
        if self.closing:
            return
        self.closing = True
        loop = self._loop
        if loop is not None and self._thread is not None:
            def stop() -> None:
                if self._server is not None:
                    self._server.close()
                for w in list(self._conns):
                    w.close()
                for link in self._links.values():
                    link.wake.set()
                    if link.writer is not None:
                        link.writer.close()
                    link.task.cancel()
                loop.stop()
            loop.call_soon_threadsafe(stop)
            self._thread.join(10)
        elif self._sock is not None:
            self._sock.close()

    # ------------------------------------------------------------------ the Node's side
    def party(self, name: str) -> Optional[Party]:
        return self.netmap.party(name)

    def send(self, peer: Party, data: bytes) -> None:
        """Queue a session frame for ``peer`` (scheduler thread; never blocks)."""
        self._enqueue(("f", peer, data))

    def ack(self, peer_name: str, msg_ids: tuple) -> None:
        """Tell ``peer_name`` these frames of its are committed here."""
        self._enqueue(("a", peer_name, msg_ids))

    def acked(self, peer_name: str, msg_ids: tuple) -> None:
        """``peer_name`` acknowledged these frames of ours on a connection that reached
        another worker of this party (handed over): stop re-sending them."""
        def release() -> None:
            link = self._links.get(peer_name)
            if link is not None:
                link.acked([list(m) for m in msg_ids])
        if self._loop is not None:
            try:
                self._loop.call_soon_threadsafe(release)
            except RuntimeError:  # loop closed: the node is shutting down
                pass

    def _enqueue(self, item: tuple) -> None:
        self._inq.append(item)
        if not self._drain_pending and self._loop is not None:
            self._drain_pending = True
            try:
                self._loop.call_soon_threadsafe(self._drain_inq)
            except RuntimeError:  # loop closed: the node is shutting down
                pass

    def _drain_inq(self) -> None:
        self._drain_pending = False
        inq = self._inq
        while inq:
            kind, who, payload = inq.popleft()
            if kind == "f":
                self._route_frame(who, payload)
            else:
                self._route_acks(who, payload)

    def _route_frame(self, peer: Party, data: bytes) -> None:
        if peer.name == self.name:
            self.node.scheduler.post(FrameArrived(self.identity.party, data))
            return
        link = self._link(peer.name)
        if link is None:
            return
        if peer.owning_key and peer.owning_key != link.info.party.owning_key:
            log.error("%s: not sending to %s: the flow holds a key for it that differs from "
                      "the network map's", self.name, peer.name)
            return
        if len(data) > MAX_FRAME_BYTES:
            log.error("%s: not sending a frame of %d bytes to %s: over the %d-byte limit",
                      self.name, len(data), peer.name, MAX_FRAME_BYTES)
            return
        self.stats["frames_sent"] += 1
        link.frames_out += 1
        link.add_frame(data)

    def _route_acks(self, peer_name: str, msg_ids: tuple) -> None:
        if peer_name == self.name:
            self.node.scheduler.post(Acked(self.name, msg_ids))
            return
        link = self._link(peer_name)
        if link is not None:
            link.add_acks(msg_ids)

    def peer_stats(self) -> dict[str, dict]:
        """Per peer: whether our connection to it is up (``link_up``), whether it is
        connected to us (``inbound_up``), frames sent and received, frames awaiting its
        acknowledgement. Read from any thread (a snapshot; for the console and metrics)."""
        out: dict[str, dict] = {}
        inbound = set(self._inbound)
        for name, link in list(self._links.items()):
            out[name] = {"link_up": link.connected, "frames_out": link.frames_out,
                         "unacked": len(link.unacked)}
        for name, n in list(self.frames_in.items()):
            out.setdefault(name, {"link_up": False, "frames_out": 0, "unacked": 0})["frames_in"] = n
        for name, doc in out.items():
            doc.setdefault("frames_in", 0)
            doc["inbound_up"] = name in inbound
        for name in inbound - set(out):
            out[name] = {"link_up": False, "frames_out": 0, "unacked": 0, "frames_in": 0,
                         "inbound_up": True}
        return out

    def _link(self, name: str) -> Optional[_Link]:
        link = self._links.get(name)
        if link is None:
            info = self.netmap.get(name)
            if info is None:
                if name not in self._warned:
                    self._warned.add(name)
                    log.error("%s: %s is not on the network map; its frames stay in the "
                              "outbox", self.name, name)
                return None
            link = self._links[name] = _Link(self, info)
        return link

    async def _ticker(self) -> None:
        while not self.closing:
            await asyncio.sleep(1.0)
            now = time.monotonic()
            for link in list(self._links.values()):
                link.check_retransmit(now)

    # ------------------------------------------------------------------ handshakes
    async def _client_handshake(self, reader: asyncio.StreamReader,
                                writer: asyncio.StreamWriter, info: NodeInfo) -> Channel:
        key = self._key_for(info)
        c_nonce = os.urandom(32)
        write_message(writer, _pack([PROTOCOL, self.name, info.name, c_nonce]))
        ch = _unpack(await read_message(reader, MAX_HANDSHAKE_BYTES))
        if not _sealed_ok(ch, 1):
            raise ProtocolError("malformed challenge")
        s_nonce, n, ct = ch
        try:
            pt = _open(key, ct, n)
        except ProtocolError:
            raise ProtocolError(f"the node at {format_address(info.p2p_address)} failed to "
                                f"prove it is {info.name}") from None
        if pt != _pack([b"S", c_nonce, s_nonce, info.name, self.name]):
            raise ProtocolError(f"{info.name}'s challenge does not match this handshake")
        n2 = os.urandom(24)
        write_message(writer, _pack([n2, nacl.bindings.crypto_box_easy_afternm(
            _pack([b"C", c_nonce, s_nonce, self.name, info.name]), n2, key)]))
        chan = Channel(key, c_nonce, s_nonce, _C2S)
        welcome = _unpack(chan.open(await read_message(reader, MAX_HANDSHAKE_BYTES)))
        if welcome != [[K_WELCOME]]:
            raise ProtocolError(f"{info.name} sent no welcome")
        return chan

    async def _server_handshake(self, reader: asyncio.StreamReader,
                                writer: asyncio.StreamWriter) -> tuple[Channel, NodeInfo]:
        hello = _unpack(await read_message(reader, MAX_HANDSHAKE_BYTES))
        if not _hello_ok(hello):
            raise ProtocolError("not a greenflow hello")
        _, c_name, s_name, c_nonce = hello
        if s_name != self.name:
            raise ProtocolError(f"the peer dialled {s_name!r}, but this node is {self.name!r}")
        info = self.netmap.get(c_name)
        if info is None or c_name == self.name:
            raise ProtocolError(f"the peer claims to be {c_name!r}, which is not on the "
                                "network map")
        key = self._key_for(info)
        s_nonce, n = os.urandom(32), os.urandom(24)
        write_message(writer, _pack([s_nonce, n, nacl.bindings.crypto_box_easy_afternm(
            _pack([b"S", c_nonce, s_nonce, self.name, c_name]), n, key)]))
        pr = _unpack(await read_message(reader, MAX_HANDSHAKE_BYTES))
        if not _sealed_ok(pr, 0):
            raise ProtocolError(f"malformed proof from a peer claiming to be {c_name!r}")
        try:
            pt = _open(key, pr[1], pr[0])
        except ProtocolError:
            pt = None
        if pt != _pack([b"C", c_nonce, s_nonce, c_name, self.name]):
            raise ProtocolError(f"the peer claims to be {c_name!r} but cannot prove it (not "
                                "sealed with the key the network map lists for that name)")
        chan = Channel(key, c_nonce, s_nonce, _S2C)
        write_message(writer, chan.seal(_pack([[K_WELCOME]])))
        await writer.drain()
        return chan, info

    # ------------------------------------------------------------------ inbound
    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        where = format_address(peer[:2]) if peer else "?"
        self._conns.add(writer)
        _keepalive(writer)
        who = f"a connection from {where}"
        try:
            try:
                chan, info = await asyncio.wait_for(self._server_handshake(reader, writer),
                                                    HANDSHAKE_TIMEOUT)
            except asyncio.TimeoutError:
                raise ProtocolError("no complete handshake within "
                                    f"{HANDSHAKE_TIMEOUT:.0f}s") from None
            who = f"{info.name} ({where})"
            self.stats["handshakes"] += 1
            old = self._inbound.get(info.name)
            if old is not None and not self.several_per_peer:
                old.close()   # the peer reconnected: its old connection is dead to it
            self._inbound[info.name] = writer
            log.info("%s: %s connected", self.name, who)
            while not self.closing:
                record = await read_message(reader, MAX_RECORD_BYTES)
                self._dispatch(info, _unpack(chan.open(record)))
        except asyncio.IncompleteReadError as exc:
            if exc.partial or who.startswith("a connection"):
                self.stats["dropped_connections"] += 1
                log.warning("%s: dropped %s: closed in the middle of a message", self.name, who)
            else:
                log.info("%s: %s disconnected", self.name, who)
        except ProtocolError as exc:
            self.stats["dropped_connections"] += 1
            log.warning("%s: dropped %s: %s", self.name, who, exc)
        except (OSError, asyncio.CancelledError) as exc:
            log.info("%s: %s closed: %s", self.name, who, _why(exc))
        finally:
            self._conns.discard(writer)
            for name, w in list(self._inbound.items()):
                if w is writer:
                    del self._inbound[name]
            writer.close()

    def _dispatch(self, info: NodeInfo, items: Any) -> None:
        if not isinstance(items, list) or not items:
            raise ProtocolError("a record that is not a list of messages")
        n = 0
        for it in items:
            if not isinstance(it, list) or not it:
                raise ProtocolError("a malformed message in a record")
            kind = it[0]
            if kind == K_FRAME and len(it) == 2 and isinstance(it[1], bytes):
                data = it[1]
                if len(data) > MAX_FRAME_BYTES:
                    raise ProtocolError(f"a frame of {len(data)} bytes")
                self.stats["frames_received"] += 1
                n += 1
                self.node.scheduler.post(FrameArrived(info.party, data))
            elif kind == K_ACK and len(it) == 2 and isinstance(it[1], list) \
                    and all(_msg_id_ok(m) for m in it[1]):
                mids = tuple(tuple(m) for m in it[1])
                self.stats["acks_received"] += len(mids)
                link = self._links.get(info.name)
                if link is not None:
                    link.acked(it[1])
                self.node.scheduler.post(Acked(info.name, mids))
            else:
                raise ProtocolError(f"an unknown message kind {kind!r}")
        if n:
            self.frames_in[info.name] = self.frames_in.get(info.name, 0) + n
