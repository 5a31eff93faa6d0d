"""The sending side of the TCP transport: one `Link` per peer, which dials it, holds the
frames it has not acknowledged (spilling to the outbox beyond a memory bound), re-sends
them, and carries the acknowledgements this node owes it. A frame may go out on a reply
connection instead (`greenflow.network.tcp_inbound.Reply`); the link holds it all the
same. A link dialled with the reply path also reads what the peer answers on it; a
clustered party's worker's link also tells the peer which partitions the worker serves."""
from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import deque
from typing import TYPE_CHECKING, Any, Optional

from greenflow.network.network_map import NodeInfo, format_address
from greenflow.network.tcp_framing import (BACKOFF_MAX, BACKOFF_MIN, BATCH_BYTES, CONNECT_TIMEOUT,
                                           HANDSHAKE_TIMEOUT, K_ACK, K_FRAME, K_PARTS,
                                           MAX_ACKS_PER_RECORD, MAX_OWED_ACKS, MAX_RECORD_BYTES,
                                           PROTOCOL_HINTS, RETRANSMIT_AFTER, RETRANSMIT_MAX,
                                           ProtocolError, ReplyRefused, _frame_msg_id,
                                           _keepalive, _pack, _unpack, _why,
                                           write_message)
from greenflow.network.tcp_guard import read_record, wait_for_scheduler
from greenflow.network.tcp_handshake import Channel, client_handshake
from greenflow.network.tcp_inbound import dispatch

if TYPE_CHECKING:
    from greenflow.network.tcp_transport import TcpTransport

log = logging.getLogger("greenflow.transport")

#: After a peer refused the reply path (an older version), or broke the protocol on it,
#: the link dials that peer without it for this long before asking again.
PLAIN_FOR = 600.0
#: A frame sent on a reply connection and not acknowledged within this long goes out
#: again on the link (a reply connection to a machine that vanished stays "open" until
#: TCP keep-alive gives up on it, while the peer's other connections keep acknowledging).
REPLY_RESEND_AFTER = 10.0


class Link:
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
        self.frames_written = 0    # frames written on this link's own connection
        self.writer: Optional[asyncio.StreamWriter] = None
        self.last_ack = time.monotonic()
        self.retransmit_after = RETRANSMIT_AFTER
        #: Unacknowledged frames that went out on a reply connection (msg_id -> (`Reply`,
        #: when), oldest first) rather than this link's: not sent again here unless that
        #: one closes, or they wait too long for their acknowledgement.
        self.via: dict[Any, tuple[Any, float]] = {}
        self.plain_until = 0.0     # dial without the reply path until then
        self.hintless_until = 0.0  # dial without partition hints until then
        #: The partitions last told the peer on this connection (None: nothing yet).
        self.hinted: Optional[tuple] = None
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
                log.warning("%s: %s holds %d unacknowledged frames (%d MiB); further frames "
                            "for it stay in the outbox until it acknowledges these",
                            self.t.name, self.name, len(self.unacked), self.held_bytes >> 20)
                self.spilled = True   # after the line: whoever sees the flag sees the line
            return False
        if not self.unacked:
            self.last_ack = time.monotonic()
        self.unacked[mid] = data
        self.held_bytes += len(data) - (len(old) if old is not None else 0)
        reply = None if from_outbox else self._reply_path(mid)
        if reply is not None:
            self.via.pop(mid, None)
            self.via[mid] = (reply, time.monotonic())
            reply.add_frame(data)
            self.t.stats["frames_replied"] += 1
            return True
        self.via.pop(mid, None)
        self.queue.append(mid)
        self.wake.set()
        return True

    def _reply_path(self, mid: Any) -> Any:
        """The reply connection to send ``mid`` on, or None (this link). A frame follows
        the way its session's previous frame took while that one is unacknowledged, so
        a session's frames never overtake each other by changing connection."""
        if mid[0] == "?":
            return None
        if mid[2] > 0:
            prev = (mid[0], mid[1], mid[2] - 1)
            if prev in self.unacked:
                took = self.via.get(prev)
                return took[0] if took is not None and took[0].usable() else None
        return self.t.reply_for(self.name, mid[0])

    def reply_closed(self, reply: Any) -> None:
        """A reply connection closed: what went out on it and is unacknowledged goes
        out again here (the peer drops what it already has)."""
        again = [mid for mid, (r, _) in self.via.items() if r is reply]
        for mid in again:
            del self.via[mid]
        if again:
            self.queue.extend(again)
            self.wake.set()

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

    def acked(self, msg_ids: list) -> list:
        """Forget the frames ``msg_ids`` acknowledge; the ids of those this link held."""
        via = self.via
        known = []
        for m in msg_ids:
            mid = tuple(m)
            data = self.unacked.pop(mid, None)
            if data is not None:
                known.append(mid)
                self.held_bytes -= len(data)
                if via:
                    via.pop(mid, None)
        self.last_ack = time.monotonic()
        self.retransmit_after = RETRANSMIT_AFTER
        if self.spilled and self.held_bytes <= self.t.max_held_bytes // 2:
            self.refill()
        return known

    def check_retransmit(self, now: float) -> None:
        if self.via:
            self._resend_stale_replies(now)
        if self.connected and self.unacked and now - self.last_ack > self.retransmit_after:
            log.info("%s: no acknowledgement from %s for %.0fs; re-sending %d frames",
                     self.t.name, self.name, now - self.last_ack, len(self.unacked))
            self.queue = deque(self.unacked)
            self.via.clear()
            self.last_ack = now
            self.retransmit_after = min(self.retransmit_after * 2, RETRANSMIT_MAX)
            self.t.stats["retransmits"] += 1
            self.wake.set()

    def _resend_stale_replies(self, now: float) -> None:
        again = []
        for mid, (_, at) in self.via.items():
            if now - at <= REPLY_RESEND_AFTER:
                break
            again.append(mid)
        if again:
            log.info("%s: %d frames sent to %s on its connections were not acknowledged "
                     "within %.0fs; re-sending them on this node's own", self.t.name,
                     len(again), self.name, REPLY_RESEND_AFTER)
            for mid in again:
                del self.via[mid]
            self.queue.extend(again)
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
            now = time.monotonic()
            reply = self.t.reply_path and now >= self.plain_until
            hints = reply and self.t.partitions is not None and now >= self.hintless_until
            try:
                reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port),
                                                        CONNECT_TIMEOUT)
                _keepalive(writer)
                chan = await asyncio.wait_for(
                    client_handshake(self.t.name, self.t.key_for(self.info), reader, writer,
                                     self.info, reply, hints), HANDSHAKE_TIMEOUT)
            except ReplyRefused as exc:
                writer.close()
                if exc.version == PROTOCOL_HINTS:
                    self.hintless_until = time.monotonic() + PLAIN_FOR
                    log.info("%s: %s (an older version?); dialling it without partition "
                             "hints for %.0fs", self.t.name, exc, PLAIN_FOR)
                else:
                    self.plain_until = time.monotonic() + PLAIN_FOR
                    log.info("%s: %s (an older version?); dialling it without the reply "
                             "path for %.0fs", self.t.name, exc, PLAIN_FOR)
                continue
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
            self.queue = deque(m for m in self.unacked if m not in self.via)
            self.hinted = None
            self.connected, self.writer = True, writer
            self.last_ack = time.monotonic()
            watcher = asyncio.get_running_loop().create_task(
                self._receive(reader, chan) if chan.reply else self._watch(reader))
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

    async def _receive(self, reader: asyncio.StreamReader, chan: Channel) -> None:
        """The reply path: the peer answers on this connection, record by record, checked
        exactly as on a connection it dialled (a record that stops arriving partway
        included: ``record_timeout``). A peer that breaks the protocol here is dropped,
        and dialled without the reply path for a while."""
        t = self.t
        try:
            while not t.closing:
                await wait_for_scheduler(t)
                record = await read_record(reader, MAX_RECORD_BYTES, t.limits.record_timeout)
                dispatch(t, self.info, _unpack(chan.open(record)))
        except ProtocolError as exc:
            t.stats["dropped_connections"] += 1
            self.plain_until = time.monotonic() + PLAIN_FOR
            log.warning("%s: dropped the connection to %s: %s (on its answers; dialling it "
                        "without the reply path for %.0fs)", t.name, self.name, exc, PLAIN_FOR)
        except asyncio.IncompleteReadError as exc:
            if exc.partial:
                t.stats["dropped_connections"] += 1
                log.warning("%s: dropped the connection to %s: closed in the middle of a "
                            "message", t.name, self.name)
        except OSError:
            pass
        except Exception:  # noqa: BLE001 - a bug: said, not a connection that dies silently
            t.stats["dropped_connections"] += 1
            log.exception("%s: dropped the connection to %s after an unexpected error (a bug: "
                          "please report it with this log)", t.name, self.name)
        finally:
            self.wake.set()

    async def _pump(self, writer: asyncio.StreamWriter, chan: Channel, watcher: asyncio.Task) -> None:
        while not self.t.closing:
            if watcher.done():
                raise ConnectionResetError("the peer closed the connection")
            items: list = []
            size = 0
            parts = self.t.partitions
            if chan.hints and parts is not None and parts is not self.hinted:
                items.append([K_PARTS, list(parts)])   # first: the peer routes by it
                self.hinted = parts
            while self.queue:
                data = self.unacked.get(self.queue[0])
                if data is None:
                    self.queue.popleft()
                    continue
                if items and size + len(data) > BATCH_BYTES:
                    break
                self.queue.popleft()
                items.append([K_FRAME, data])
                self.frames_written += 1
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



def unacknowledged(link: Optional[Link]) -> int:
    """Frames sent on ``link`` its peer has not acknowledged (those it holds; a link that
    spilled to the outbox counts as past any bound; no link: none)."""
    if link is None:
        return 0
    return 1 << 62 if link.spilled else len(link.unacked)


def acknowledged(t: "TcpTransport", peer_name: str, msg_ids: list) -> tuple:
    """``peer_name`` acknowledged these frames: its link forgets them. Returns the ones
    whose outbox rows the scheduler is to delete: those the link held, or all where the
    link cannot tell (frames spilled to the outbox, a clustered worker, whose peers
    acknowledge frames other workers sent). A peer acknowledging frames never sent to it
    cost a store delete each (17 million in 14 s grew a node to a gigabyte), and said
    nothing. (Every frame in the outbox is in its link once the outbox is re-sent at
    start: one acknowledged before that is sent again, and acknowledged again.)"""
    if t.reply_path:
        return tuple(tuple(m) for m in msg_ids)
    link = t._links.get(peer_name)
    spilled = link is not None and link.spilled   # (before `acked`, which may refill)
    known = link.acked(msg_ids) if link is not None else []
    if spilled or len(known) == len(msg_ids):
        return tuple(tuple(m) for m in msg_ids)
    t._in.gate.log.warning(
        "unknown-acks:" + peer_name, "%s: %s acknowledged %d frame(s) this node has not "
        "sent it (or that it acknowledged already): passed over", t.name, peer_name,
        len(msg_ids) - len(known))
    return tuple(known)
