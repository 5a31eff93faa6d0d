"""The receiving side of the TCP transport: the connections peers dial to this node,
each checked by the handshake, then read record by record into the scheduler."""
from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from greenflow.messages import MAX_FRAME_BYTES
from greenflow.network.network_map import NodeInfo, format_address
from greenflow.network.tcp_framing import (HANDSHAKE_TIMEOUT, K_ACK, K_FRAME, MAX_RECORD_BYTES,
                                           ProtocolError, _keepalive, _msg_id_ok, _unpack, _why,
                                           read_message)
from greenflow.network.tcp_handshake import server_handshake
from greenflow.statemachine.events import Acked, FrameArrived

if TYPE_CHECKING:
    from greenflow.network.tcp_transport import TcpTransport

log = logging.getLogger("greenflow.transport")


class Inbound:
    """The connections peers dialled to one transport: ``by_peer`` names the live one of
    each peer (a reconnect replaces it), ``conns`` holds every open one until it ends."""

    def __init__(self, transport: TcpTransport) -> None:
        self.t = transport
        self.conns: set[asyncio.StreamWriter] = set()
        self.by_peer: dict[str, asyncio.StreamWriter] = {}

    def close_all(self) -> None:
        for w in list(self.conns):
            w.close()

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        t = self.t
        peer = writer.get_extra_info("peername")
        where = format_address(peer[:2]) if peer else "?"
        self.conns.add(writer)
        _keepalive(writer)
        who = f"a connection from {where}"
        try:
            try:
                chan, info = await asyncio.wait_for(
                    server_handshake(t.name, t.netmap, t.key_for, reader, writer),
                    HANDSHAKE_TIMEOUT)
            except asyncio.TimeoutError:
                raise ProtocolError("no complete handshake within "
                                    f"{HANDSHAKE_TIMEOUT:.0f}s") from None
            who = f"{info.name} ({where})"
            t.stats["handshakes"] += 1
            old = self.by_peer.get(info.name)
            if old is not None and not t.several_per_peer:
                old.close()   # the peer reconnected: its old connection is dead to it
            self.by_peer[info.name] = writer
            log.info("%s: %s connected", t.name, who)
            while not t.closing:
                record = await read_message(reader, MAX_RECORD_BYTES)
                self.dispatch(info, _unpack(chan.open(record)))
        except asyncio.IncompleteReadError as exc:
            if exc.partial or who.startswith("a connection"):
                t.stats["dropped_connections"] += 1
                log.warning("%s: dropped %s: closed in the middle of a message", t.name, who)
            else:
                log.info("%s: %s disconnected", t.name, who)
        except ProtocolError as exc:
            t.stats["dropped_connections"] += 1
            log.warning("%s: dropped %s: %s", t.name, who, exc)
        except (OSError, asyncio.CancelledError) as exc:
            log.info("%s: %s closed: %s", t.name, who, _why(exc))
        finally:
            self.conns.discard(writer)
            for name, w in list(self.by_peer.items()):
                if w is writer:
                    del self.by_peer[name]
            writer.close()

    def dispatch(self, info: NodeInfo, items: Any) -> None:
        t = self.t
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
                t.node.scheduler.post(FrameArrived(info.party, data))
            elif kind == K_ACK and len(it) == 2 and isinstance(it[1], list) \
                    and all(_msg_id_ok(m) for m in it[1]):
                mids = tuple(tuple(m) for m in it[1])
                t.stats["acks_received"] += len(mids)
                t.peer_acked(info.name, it[1])
                t.node.scheduler.post(Acked(info.name, mids))
            else:
                raise ProtocolError(f"an unknown message kind {kind!r}")
        if n:
            t.frames_in[info.name] = t.frames_in.get(info.name, 0) + n
