"""The receiving side of the TCP transport: the connections peers dial to this node,
each checked by the handshake, then read record by record into the scheduler; and, on
the connections whose dialler asked for it, the reply path back (`Reply`), which also
carries the sessions this node opens to the worker owning their partition (the
dialler's partition hints).

Partition hints: a dialler with ``greenflow-p2p/3`` (a clustered party's worker) sends,
first on the connection and again whenever its generation changes, a ``[3, [partition,
...]]`` record naming the partitions it serves (at most `MAX_HINTED_PARTITIONS` numbers
below `PARTITIONS`; anything else, or a hint on another connection, drops it with a
WARNING). `Inbound.owners` keeps, per peer and partition, the connection that last
claimed it (a new hint replaces the connection's last one; they go with it), and
`Inbound.reply_for` sends a session the reply path knows no connection for (one this
node opened, not answered yet) on the one serving ``session_partition(sid)``, a pure
function of the session id, when it is open and keeping up; else the link. A hint is
only a hint: the link holds those frames like any reply-path frame (sent again on the
link if that connection closes, stays silent or falls behind), and one gone stale (the
partition moved) reaches a worker that hands the frame over to the owner."""
from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from typing import TYPE_CHECKING, Any, Optional

from greenflow.messages import MAX_FRAME_BYTES
from greenflow.network.network_map import NodeInfo, format_address
from greenflow.network.tcp_framing import (BATCH_BYTES, K_ACK, K_FRAME, K_PARTS,
                                           MAX_ACKS_PER_RECORD, MAX_HINTED_PARTITIONS,
                                           MAX_RECORD_BYTES, ProtocolError, _frame_msg_id,
                                           _keepalive, _msg_id_ok, _pack, _unpack, _why,
                                           write_message)
from greenflow.network.tcp_guard import Gate, read_record, wait_for_scheduler
from greenflow.network.tcp_handshake import Channel, server_handshake
from greenflow.log_limits import clip
from greenflow.statemachine.events import Acked, FrameArrived
from greenflow.storage.partitions import PARTITIONS, session_partition

if TYPE_CHECKING:
    from greenflow.network.tcp_transport import TcpTransport

log = logging.getLogger("greenflow.transport")

#: Sessions whose reply connection an `Inbound` remembers (the least recently used go
#: first): a forgotten one is answered on the link, as without the reply path.
MAX_REPLY_ROUTES = 65_536
#: A reply connection with more than this unsent is not used until its reader catches up
#: (its frames go on the link instead): bounded memory for a peer that does not read.
MAX_REPLY_BUFFER = 4 * BATCH_BYTES


def dispatch(t: "TcpTransport", info: NodeInfo, items: Any,
             reply: Optional["Reply"] = None) -> None:
    """One record from ``info``'s node, on a connection it dialled or (the reply path) one
    this node dialled: its frames to the scheduler, its acknowledgements to the link and
    the scheduler. Anything malformed raises `ProtocolError` (the connection is dropped)."""
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
            t.stats["frames_received"] += 1
            n += 1
            if reply is not None:
                reply.arrived(data)
            t.node.scheduler.post(FrameArrived(info.party, data))
        elif kind == K_ACK and len(it) == 2 and isinstance(it[1], list) \
                and all(_msg_id_ok(m) for m in it[1]):
            if len(it[1]) > MAX_ACKS_PER_RECORD:
                raise ProtocolError(f"an acknowledgement of {len(it[1])} frames (at most "
                                    f"{MAX_ACKS_PER_RECORD} in one)")
            t.stats["acks_received"] += len(it[1])
            mids = t.peer_acked(info.name, it[1])
            if mids:
                t.node.scheduler.post(Acked(info.name, mids))
        elif kind == K_PARTS and reply is not None and reply.chan.hints:
            reply.inbound.hint(reply, _hinted(it))
        else:
            raise ProtocolError("an unknown message kind "
                                + (str(kind) if type(kind) is int else clip(kind)))
    if n:
        t.frames_in[info.name] = t.frames_in.get(info.name, 0) + n


def _hinted(it: list) -> frozenset:
    """The partitions a `K_PARTS` record names: ``[3, [partition, ...]]``, at most
    `MAX_HINTED_PARTITIONS` of them, each a partition number."""
    parts = it[1] if len(it) == 2 else None
    if not isinstance(parts, list):
        raise ProtocolError("a malformed partition hint (not a list of partitions)")
    if len(parts) > MAX_HINTED_PARTITIONS:
        raise ProtocolError(f"a partition hint naming {len(parts)} partitions (at most "
                            f"{MAX_HINTED_PARTITIONS})")
    if not all(type(p) is int and 0 <= p < PARTITIONS for p in parts):
        raise ProtocolError(f"a malformed partition hint (partitions are numbers from 0 to "
                            f"{PARTITIONS - 1})")
    return frozenset(parts)


class Reply:
    """The way back on a connection a peer dialled with `PROTOCOL_REPLY`: frames and
    acknowledgements for that peer's sessions that last arrived here, sealed in the
    listener's direction of the connection's channel. Written once per turn of the loop
    (one record for all a drain produced), never awaited: the link still holds every
    frame, so a full or lost reply connection costs a re-send, never a frame."""

    def __init__(self, inbound: "Inbound", info: NodeInfo, writer: asyncio.StreamWriter,
                 chan: Channel) -> None:
        self.inbound, self.info, self.writer, self.chan = inbound, info, writer, chan
        self.frames: list[bytes] = []
        self.pending = 0           # bytes of self.frames
        self.acks: list[list] = []
        self.closed = False
        self._flush_due = False
        #: The partitions the dialler last said it serves (`PROTOCOL_HINTS`).
        self.parts: frozenset = frozenset()

    def arrived(self, data: bytes) -> None:
        mid = _frame_msg_id(data)
        if mid is not None:
            self.inbound.learn((self.info.name, mid[0]), self)

    def usable(self) -> bool:
        return not self.closed and not self.writer.is_closing() and \
            self.pending + self.writer.transport.get_write_buffer_size() <= MAX_REPLY_BUFFER

    def add_frame(self, data: bytes) -> None:
        self.frames.append(data)
        self.pending += len(data)
        self._due()

    def add_acks(self, msg_ids: list) -> None:
        self.acks.extend(msg_ids)
        self._due()

    def _due(self) -> None:
        if not self._flush_due:
            self._flush_due = True
            asyncio.get_running_loop().call_soon(self.flush)

    def flush(self) -> None:
        self._flush_due = False
        frames, acks, self.frames, self.acks = self.frames, self.acks, [], []
        self.pending = 0
        if self.closed:
            return
        batch: list = []
        size = 0
        for data in frames:
            if batch and size + len(data) > BATCH_BYTES:
                self._write(batch)
                batch, size = [], 0
            batch.append([K_FRAME, data])
            size += len(data) + 8
        for i in range(0, len(acks), MAX_ACKS_PER_RECORD):
            batch.append([K_ACK, acks[i:i + MAX_ACKS_PER_RECORD]])
            self._write(batch)
            batch = []
        if batch:
            self._write(batch)

    def _write(self, batch: list) -> None:
        try:
            write_message(self.writer, self.chan.seal(_pack(batch)))
        except (OSError, RuntimeError):   # closing under us: the link re-sends
            return
        self.inbound.t.stats["records_sent"] += 1


class Inbound:
    """The connections peers dialled to one transport: ``by_peer`` names the live one of
    each peer (a reconnect replaces it), ``conns`` holds every open one until it ends."""

    def __init__(self, transport: TcpTransport) -> None:
        self.t = transport
        self.conns: set[asyncio.StreamWriter] = set()
        self.by_peer: dict[str, asyncio.StreamWriter] = {}
        #: (peer name, session id) -> the reply connection that session's last frame
        #: arrived on (bounded, least recently arrived first out).
        self.routes: OrderedDict[tuple[str, str], Reply] = OrderedDict()
        #: peer name -> partition -> the reply connection of the peer's worker that last
        #: said it serves that partition (at most `PARTITIONS` per peer).
        self.owners: dict[str, dict[int, Reply]] = {}
        #: The caps on connections, strangers' and peers', and the log of refusals.
        self.gate = Gate(transport.name, transport.limits)

    def learn(self, key: tuple[str, str], reply: Reply) -> None:
        routes = self.routes
        if routes.get(key) is not reply:
            routes[key] = reply
        routes.move_to_end(key)
        if len(routes) > MAX_REPLY_ROUTES:
            routes.popitem(last=False)

    def hint(self, reply: Reply, parts: frozenset) -> None:
        """``reply``'s dialler serves ``parts`` now (its previous hint is replaced). A
        partition two connections claim goes to the one that said so last: a hint may be
        stale, which costs the other worker a hand-over, never a frame."""
        owners = self.owners.setdefault(reply.info.name, {})
        for p in reply.parts - parts:
            if owners.get(p) is reply:
                del owners[p]
        for p in parts:
            owners[p] = reply
        reply.parts = parts
        if not owners:
            del self.owners[reply.info.name]

    def reply_for(self, peer_name: str, sid: str) -> Optional[Reply]:
        """The connection to send ``peer_name``'s session ``sid`` on, if it has one that
        is open and keeping up: the one the session's last frame arrived on, else (a
        session this node opened, not answered yet) the one whose dialler serves the
        session's partition; None: send on the link."""
        reply = self.routes.get((peer_name, sid))
        if reply is not None and reply.usable():
            return reply
        owners = self.owners.get(peer_name)
        if owners:
            reply = owners.get(session_partition(sid))
            if reply is not None and reply.usable():
                self.t.stats["hinted"] += 1
                return reply
        return None

    def _forget(self, reply: Reply) -> None:
        reply.closed = True
        for key in [k for k, r in self.routes.items() if r is reply]:
            del self.routes[key]
        if reply.parts:
            self.hint(reply, frozenset())
        self.t.reply_closed(reply)

    def peer_stats(self, links: dict) -> dict[str, dict]:
        """`TcpTransport.peer_stats`: ``links`` are the transport's, per peer."""
        out: dict[str, dict] = {}
        inbound = set(self.by_peer)
        for name, link in list(links.items()):
            out[name] = {"link_up": link.connected, "frames_out": link.frames_out,
                         "unacked": len(link.unacked)}
        for name, n in list(self.t.frames_in.items()):
            out.setdefault(name, {"link_up": False, "frames_out": 0, "unacked": 0})["frames_in"] = n
        for name, doc in out.items():
            doc.setdefault("frames_in", 0)
            doc["inbound_up"] = name in inbound
        for name in inbound - set(out):
            out[name] = {"link_up": False, "frames_out": 0, "unacked": 0, "frames_in": 0,
                         "inbound_up": True}
        return out

    def close_all(self) -> None:
        for w in list(self.conns):
            w.close()

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        t, gate = self.t, self.gate
        peer = writer.get_extra_info("peername")
        where = format_address(peer[:2]) if peer else "?"
        host = peer[0] if peer else "?"
        refused = gate.admit(host)
        if refused is not None:   # closed before anything is read or allocated for it
            writer.close()
            t.stats["refused_connections"] += 1
            gate.log.warning("cap", "%s: refused a connection from %s: %s", t.name, where,
                             refused)
            return
        self.conns.add(writer)
        _keepalive(writer)
        who = f"a connection from {where}"
        info = None
        reply: Optional[Reply] = None
        try:
            try:
                chan, info = await asyncio.wait_for(
                    server_handshake(t.name, t.netmap, t.key_for, reader, writer),
                    t.limits.handshake_timeout)
            except asyncio.TimeoutError:
                raise ProtocolError("no complete handshake within "
                                    f"{t.limits.handshake_timeout:.0f}s") from None
            finally:
                gate.release(host)
            who = f"{info.name} ({where})"
            t.stats["handshakes"] += 1
            old = self.by_peer.get(info.name)
            if old is not None and not t.several_per_peer:
                old.close()   # the peer reconnected: its old connection is dead to it
            oldest = gate.joined(info.name, writer)
            if oldest is not None:
                oldest.close()
                gate.log.warning("oldest:" + info.name, "%s: closed the oldest connection of %s: "
                                 "more than %d open (max_connections_per_peer)", t.name,
                                 info.name, t.limits.max_connections_per_peer)
            self.by_peer[info.name] = writer
            if chan.reply:
                reply = Reply(self, info, writer, chan)
            # Once per interval per peer, the rest counted: a peer reconnecting a thousand
            # times a second from many addresses wrote megabytes of these.
            gate.log.info("connected:" + info.name, "%s: %s connected%s", t.name, who,
                          " (answered on its connection)" if chan.reply else "")
            while not t.closing:
                await wait_for_scheduler(t)
                record = await read_record(reader, MAX_RECORD_BYTES, t.limits.record_timeout)
                dispatch(t, info, _unpack(chan.open(record)), reply)
        except asyncio.IncompleteReadError as exc:
            if exc.partial or info is None:
                t.stats["dropped_connections"] += 1
                self._dropped(info, who, "closed in the middle of a message")
            else:
                gate.log.info("left:" + info.name, "%s: %s disconnected", t.name, who)
        except ProtocolError as exc:
            t.stats["dropped_connections"] += 1
            self._dropped(info, who, str(exc))
        except (OSError, asyncio.CancelledError) as exc:
            gate.log.info("left:" + (info.name if info is not None else ""), "%s: %s closed: %s",
                          t.name, who, _why(exc))
        except Exception:  # noqa: BLE001 - a bug: said, not a connection that dies silently
            t.stats["dropped_connections"] += 1
            log.exception("%s: dropped %s after an unexpected error (a bug: please report it "
                          "with this log)", t.name, who)
        finally:
            self.conns.discard(writer)
            if info is not None:
                gate.left(info.name, writer)
            for name, w in list(self.by_peer.items()):
                if w is writer:
                    del self.by_peer[name]
            writer.close()
            if reply is not None:
                self._forget(reply)

    def _dropped(self, info: Optional[NodeInfo], who: str, why: str) -> None:
        """Log a dropped connection, at most one line per interval for strangers (a
        stranger can open thousands a second) and per peer, with the rest counted."""
        key = "stranger" if info is None else "peer:" + info.name
        self.gate.log.warning(key, "%s: dropped %s: %s", self.t.name, who, why[:300])

    def dispatch(self, info: NodeInfo, items: Any) -> None:
        dispatch(self.t, info, items)
