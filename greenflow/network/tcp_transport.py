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

    C -> S  hello      [version, C's name, S's name, c_nonce(32)]           (clear)
    S -> C  challenge  [s_nonce(32), n(24), box(["S", c_nonce, s_nonce, S, C, +], n)]
    C -> S  proof      [n'(24), box(["C", c_nonce, s_nonce, C, S, +], n')]
    S -> C  welcome    the first sealed record of the channel

``version`` is `PROTOCOL` (``greenflow-p2p/1``), `PROTOCOL_REPLY` (``.../2``: the reply
path, below) or `PROTOCOL_HINTS` (``.../3``: the reply path and partition hints, below);
``+`` is nothing for /1 and the version for the others, so the version is authenticated
too (a hello changed on the way fails the handshake).

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
``[0]`` welcome, ``[1, frame]`` a session frame, ``[2, [msg_id, ...]]`` acknowledgements,
``[3, [partition, ...]]`` a partition hint (on /3 connections, from the dialler only).
The two directions of a connection have their own direction byte and counter: records
flowing both ways (the reply path) can be neither confused nor replayed.

Delivery
--------
Each node dials its peers for what it sends; it receives on the connections its peers
dial to it. A `Link` per peer holds every session frame until the peer acknowledges it
(which the peer does only after committing it), re-sends them all in order after a
reconnect and, as a backstop, when no acknowledgement came for `RETRANSMIT_AFTER`
seconds (doubling while none comes, up to `RETRANSMIT_MAX`): a receiver drops
unacknowledged what it cannot take yet (out of order, a session it holds while draining). The receiver deduplicates (`greenflow.messages`). Acknowledgements travel on
the receiver's own link back to the sender (or on the reply path, below); a lost one
only causes a harmless re-send.

A link holds at most `MAX_HELD_BYTES` of frames in memory. Every frame it is given is
already committed to the node's outbox (commit, then send), so beyond that bound a peer
that stays down costs disk, not memory: further frames are left in the outbox, and the
link reads them back from it, in key (session, sequence) order, as acknowledgements free
room.

Reply path
----------
A clustered party runs as several workers behind one address; the connection a peer
dials to it reaches one of them at random, so without more half of what the peer sends
(frames, and acknowledgements of the other worker's frames) lands on the wrong worker
and is handed over through the database. So a dialler with ``reply_path`` (a cluster's
workers set it) says ``greenflow-p2p/2`` in its hello: it will also read records on its
own connection. The listener (`tcp_inbound.Reply`) then remembers, per (peer, session),
the /2 connection the session's last frame arrived on (at most `MAX_REPLY_ROUTES`, least
recent first out; forgotten when the connection closes) and sends that session's frames
and the acknowledgements it owes for it back on that connection, sealed in its own
direction of the channel. The dialler reads them exactly as the listener reads its
records (same limits and checks; a bad record drops the connection, logged at WARNING,
and the peer is then dialled with /1 for `tcp_link.PLAIN_FOR` seconds).

Delivery does not depend on it: a frame sent on a reply connection is held by the
sender's link like any other; when the reply connection closes, what went out on it
unacknowledged goes out again on the link, and the link's retransmission still covers a
reply that is never acknowledged. A session's frame follows the path its previous frame
took while that one is unacknowledged, so a session's frames do not overtake each other
by changing connection. A reply connection with more than `MAX_REPLY_BUFFER` unsent is
passed over for the link until its reader catches up.

Partition hints
---------------
A session the *peer* opens goes on its own connection, to a random worker; so a worker
(`TcpTransport.serve_partitions`) dials with ``greenflow-p2p/3`` and tells the peer the
partitions it serves (``[3, [partition, ...]]``), and the peer sends the sessions it
opens on the connection of the worker serving their partition (`tcp_inbound`).

Compatibility: a listener of an older version refuses a hello it does not know ("not a
greenflow hello") and closes the connection; the dialler sees the close before any
challenge and dials that peer with the next older version (/3 -> /2 -> /1) at once, for
`tcp_link.PLAIN_FOR` seconds: a refused connection per worker and peer every ten
minutes, never a frame. (A new hello, not a new record kind on /2: a refused hello is
told apart from any other failure before anything was sent, while an unknown record
kind would drop a connection frames already went out on.) Single nodes dial with /1
(their peers' connections reach the one process anyway).

All sockets are served by one asyncio loop on the transport's own thread. The
scheduler's ``send``/``ack`` only append to a queue, so a slow or dead peer never holds
up the scheduler or the links to other peers.

The parts: `tcp_framing` (messages and their limits), `tcp_guard` (what connections may
cost: caps, stalled records, the log of refusals), `tcp_handshake` (the handshake and
the `Channel`), `tcp_link` (sending to one peer, and reading its answers on the reply
path), `tcp_inbound` (connections peers dial, and the reply path back on them);
`TcpTransport` here ties them to a node.
"""
from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time
from collections import deque
from typing import Any, Callable, Iterable, Iterator, Optional

import nacl.public
import nacl.signing

from greenflow.messages import MAX_FRAME_BYTES
from greenflow.network.network_map import NetworkMap, NodeInfo, format_address
from greenflow.network.tcp_framing import (  # noqa: F401 - the protocol's names, as before
    BACKOFF_MAX, BACKOFF_MIN, BATCH_BYTES, CONNECT_TIMEOUT, HANDSHAKE_TIMEOUT, HEADER, K_ACK,
    K_FRAME, K_WELCOME, MAX_ACKS_PER_RECORD, MAX_HANDSHAKE_BYTES, MAX_HELD_BYTES,
    MAX_OWED_ACKS, MAX_RECORD_BYTES, MAX_RECORD_CONTAINERS, PROTOCOL, PROTOCOL_REPLY,
    RETRANSMIT_AFTER, RETRANSMIT_MAX, ProtocolError, _pack, _unpack, read_message,
    write_message)
from greenflow.network.tcp_guard import P2pLimits
from greenflow.network.tcp_handshake import Channel, client_handshake
from greenflow.network.tcp_inbound import Inbound
from greenflow.network.tcp_link import Link, acknowledged, unacknowledged
from greenflow.node.identity import NodeIdentity
from greenflow.party import Party
from greenflow.statemachine.events import Acked, FrameArrived

log = logging.getLogger("greenflow.transport")


class TcpTransport:
    """A node's P2P transport (the interface `greenflow.node.node.Node` uses: ``node``,
    ``send``, ``ack``, ``party``).

    Use: ``t = TcpTransport(identity, netmap, listen=addr); t.bind()`` (fails fast if the
    port is taken), ``Node(..., transport=t)``, ``t.start()``; ``t.close()`` after
    ``node.close()``.
    """

    def __init__(self, identity: NodeIdentity, netmap: NetworkMap,
                 listen: Optional[tuple[str, int]] = None, reuse_port: bool = False,
                 limits: Optional[P2pLimits] = None) -> None:
        self.node: Any = None
        #: What strangers' and peers' connections may cost (``[p2p]`` of node.toml).
        self.limits = limits or P2pLimits()
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
        self._links: dict[str, Link] = {}
        self._in = Inbound(self)
        self._warned: set[str] = set()
        self.max_held_bytes = MAX_HELD_BYTES
        #: Keep every inbound connection of a peer, not just its newest: the workers of a
        #: clustered party each connect under the party's one name, so closing the older
        #: one would make them take turns. A dead one goes when TCP keep-alive finds it.
        self.several_per_peer = True
        #: Dial peers asking them to answer on this node's own connection (the reply
        #: path, `PROTOCOL_REPLY`): set by a clustered party's workers, so that a peer's
        #: frames and acknowledgements reach the worker whose session they belong to.
        self.reply_path = False
        #: The partitions this node serves, told to the peers it dials (`PROTOCOL_HINTS`),
        #: or None (not a worker). Replaced whole by `serve_partitions`, never changed.
        self.partitions: Optional[tuple[int, ...]] = None
        self.outbox_reader: Optional[Callable[[str], Iterator[bytes]]] = None
        self.stats = {"frames_sent": 0, "frames_received": 0, "records_sent": 0,
                      "acks_received": 0, "dropped_connections": 0, "connect_failures": 0,
                      "retransmits": 0, "handshakes": 0, "frames_replied": 0,
                      "acks_replied": 0, "hinted": 0, "refused_connections": 0}
        self.frames_in: dict[str, int] = {}   # peer name -> frames received (metrics)

    # ------------------------------------------------------------------ keys
    def key_for(self, info: NodeInfo) -> bytes:
        """The box key shared with ``info``'s node (computed once per peer)."""
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
            self._server = await asyncio.start_server(self._in.serve, sock=self._sock,
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
                self._in.close_all()
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
            elif kind == "a":
                self._route_acks(who, payload)
            else:
                for link in self._links.values():
                    link.wake.set()

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
        if link is None:
            return
        if not self._in.routes and not self._in.owners:
            link.add_acks(msg_ids)
            return
        reply_for = self._in.reply_for
        rest = []
        for m in msg_ids:
            reply = reply_for(peer_name, m[0])
            if reply is None:
                rest.append(m)
            else:
                reply.add_acks([list(m)])
                self.stats["acks_replied"] += 1
        if rest:
            link.add_acks(tuple(rest))

    def reply_for(self, peer_name: str, sid: str) -> Any:
        """The reply connection ``peer_name``'s session ``sid`` last arrived on, open
        and keeping up (`greenflow.network.tcp_inbound.Reply`), or None: use the link."""
        return self._in.reply_for(peer_name, sid) \
            if self._in.routes or self._in.owners else None

    def serve_partitions(self, parts: Iterable[int]) -> None:
        """This node (a clustered party's worker) serves ``parts`` now: tell the peers it
        dials, on their connections (any thread). They send the sessions they open for
        those partitions on that connection; a hint gone stale costs a hand-over."""
        parts = tuple(sorted(set(parts)))
        if parts != self.partitions:
            self.partitions = parts   # each link's pump sends it (`Link._pump`)
            self._enqueue(("p", None, None))

    def reply_closed(self, reply: Any) -> None:
        """A reply connection closed: its peer's link sends again what went out on it."""
        link = self._links.get(reply.info.name)
        if link is not None:
            link.reply_closed(reply)

    def peer_stats(self) -> dict[str, dict]:
        """Per peer: whether our connection to it is up (``link_up``), whether it is
        connected to us (``inbound_up``), frames sent and received, frames awaiting its
        acknowledgement. Read from any thread (a snapshot; for the console and metrics)."""
        return self._in.peer_stats(self._links)

    def _link(self, name: str) -> Optional[Link]:
        link = self._links.get(name)
        if link is None:
            info = self.netmap.get(name)
            if info is None:
                if name not in self._warned:
                    self._warned.add(name)
                    log.error("%s: %s is not on the network map; its frames stay in the "
                              "outbox", self.name, name)
                return None
            link = self._links[name] = Link(self, info)
        return link

    async def _ticker(self) -> None:
        while not self.closing:
            await asyncio.sleep(1.0)
            now = time.monotonic()
            for link in list(self._links.values()):
                link.check_retransmit(now)
            self._in.gate.log.flush()

    def unacknowledged(self, peer_name: str) -> int:
        """Frames sent to ``peer_name`` it has not acknowledged (`tcp_link.unacknowledged`)."""
        return unacknowledged(self._links.get(peer_name))

    def peer_acked(self, peer_name: str, msg_ids: list) -> tuple:
        """``peer_name`` acknowledged these frames of ours: its link forgets them; the ones
        whose outbox rows the scheduler is to delete (`tcp_link.acknowledged`)."""
        return acknowledged(self, peer_name, msg_ids)

    async def _client_handshake(self, reader: asyncio.StreamReader,
                                writer: asyncio.StreamWriter, info: NodeInfo) -> Channel:
        return await client_handshake(self.name, self.key_for(info), reader, writer, info)

