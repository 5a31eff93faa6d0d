"""What a connection to the P2P port may cost this node before and after it proves who
dialled (the ``[p2p]`` table of ``node.toml``, `P2pLimits`), and the log of refusals.

Anyone who can reach the port can open connections and send a hello; only a node on the
network map can finish the handshake. Unbounded, strangers' connections that never send
(or that send fake handshakes) hold memory and file descriptors and cost CPU, and each
refusal logged in full lets them fill and rotate away the log. So `Gate` caps the
connections that have not completed the handshake, per source address and in total (one
over is closed at once), and the rate at which one address may start new ones; it caps
the connections one authenticated peer holds (the oldest goes: a peer that crashed and
reconnects is never locked out by its own dead ones), and summarises refusals once per
interval with the strangers' strings clipped.
"""
from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional

from greenflow.network.node_config import positive_settings
from greenflow.network.tcp_framing import HANDSHAKE_TIMEOUT, HEADER, ProtocolError
from greenflow.log_limits import RateLimitedLog

log = logging.getLogger("greenflow.transport")


@dataclass
class P2pLimits:
    """The P2P port's limits; set any of them in the ``[p2p]`` table of ``node.toml``."""

    max_unauthenticated: int = 256     # connections not through the handshake, in all
    max_unauthenticated_per_address: int = 16   # of those, from one source address
    max_connections_per_peer: int = 8  # authenticated connections of one peer (its workers)
    connection_rate_per_address: float = 20.0  # new connections a second from one address
    #                                            (on average; twice that at once)
    handshake_timeout: float = HANDSHAKE_TIMEOUT  # seconds from accept to the handshake's end
    record_timeout: float = 30.0       # seconds a record that has begun may go without a byte
    log_interval: float = 10.0         # refused connections: one line per interval

    @classmethod
    def from_config(cls, doc: Optional[dict], where: str = "node.toml [p2p]") -> "P2pLimits":
        return positive_settings(cls, doc, where)


_MAX_BUDGETS = 10_000   # source addresses remembered before the idle ones are forgotten


class Gate:
    """The counts behind the caps of `P2pLimits`, for one transport (its loop's thread
    only), and ``log``: the rate-limited log of refusals (``flush`` it now and then)."""

    def __init__(self, name: str, limits: P2pLimits, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.name, self.limits, self.clock = name, limits, clock
        self.pending: dict[str, int] = {}   # source address -> connections in the handshake
        self.pending_total = 0
        # source address -> [connections it may still start now, when that was counted]
        self.budget: dict[str, list[float]] = {}
        self.peers: dict[str, list] = {}    # peer name -> its open connections, oldest first
        self.log = RateLimitedLog(log, limits.log_interval)

    def admit(self, host: str) -> Optional[str]:
        """Count a new connection from ``host``; or why it is refused (not counted)."""
        lim = self.limits
        if self.pending_total >= lim.max_unauthenticated:
            return (f"{self.pending_total} connections have not completed the handshake "
                    "(max_unauthenticated)")
        n = self.pending.get(host, 0)
        if n >= lim.max_unauthenticated_per_address:
            return (f"{n} connections from that address have not completed the handshake "
                    "(max_unauthenticated_per_address)")
        if not self._spend(host):
            return (f"more than {lim.connection_rate_per_address:g} new connections a second "
                    "from that address (connection_rate_per_address)")
        self.pending[host] = n + 1
        self.pending_total += 1
        return None

    def _spend(self, host: str) -> bool:
        """Take one new connection from ``host``'s budget (a token bucket: refilled at
        ``connection_rate_per_address`` a second, holding at most twice that); False when
        it is spent. A handshake costs about twice what closing at once does (measured:
        ~290 us of the node's CPU for a hello under a listed name, ~150 us for a
        connection closed unread), so one address cannot make the node spend a core on
        fake ones."""
        rate = self.limits.connection_rate_per_address
        full = 2 * rate
        now = self.clock()
        b = self.budget.get(host)
        left = full if b is None else min(full, b[0] + (now - b[1]) * rate)
        if left < 1:
            b[0], b[1] = left, now   # type: ignore[index]
            return False
        if b is None:
            if len(self.budget) >= _MAX_BUDGETS:   # forget the addresses whose bucket is full
                self.budget = {h: v for h, v in self.budget.items()
                               if v[0] + (now - v[1]) * rate < full}
            self.budget[host] = [left - 1, now]
        else:
            b[0], b[1] = left - 1, now
        return True

    def release(self, host: str) -> None:
        """A connection `admit` counted completed the handshake or ended."""
        n = self.pending.get(host, 0) - 1
        if n > 0:
            self.pending[host] = n
        else:
            self.pending.pop(host, None)
        self.pending_total = max(0, self.pending_total - 1)

    def joined(self, peer: str, writer: Any) -> Optional[Any]:
        """``peer`` completed the handshake on ``writer``: the connection of that peer to
        close (its oldest) when it now holds more than ``max_connections_per_peer``."""
        conns = self.peers.setdefault(peer, [])
        conns.append(writer)
        if len(conns) > self.limits.max_connections_per_peer:
            return conns.pop(0)
        return None

    def left(self, peer: str, writer: Any) -> None:
        conns = self.peers.get(peer)
        if conns is not None and writer in conns:
            conns.remove(writer)
            if not conns:
                del self.peers[peer]


async def read_record(reader: asyncio.StreamReader, limit: int, stall: float) -> bytes:
    """The next message, waiting as long as it takes for one to begin (a peer may have
    nothing to send for hours), but at most ``stall`` seconds for each next byte of one
    that has begun: a peer announcing a large record and stopping short would otherwise
    hold the part it sent in memory for as long as it keeps the connection. A header
    stalled part way holds at most three bytes, so it is read without a deadline."""
    head = await reader.readexactly(HEADER.size)
    n = HEADER.unpack(head)[0]
    if n == 0 or n > limit:
        raise ProtocolError(f"message of {n} bytes (limit {limit})")
    buffered = getattr(reader, "_buffer", None)
    if buffered is not None and len(buffered) >= n:
        # The common case, the whole record in already: no deadline to set (one per
        # record costs ~7 us, on every frame of every flow).
        return await reader.readexactly(n)
    loop = asyncio.get_running_loop()
    parts: list[bytes] = []
    got = 0
    try:
        async with asyncio.timeout(stall) as deadline:
            while got < n:
                chunk = await reader.read(n - got)
                if not chunk:
                    raise asyncio.IncompleteReadError(head + b"".join(parts), n)
                parts.append(chunk)
                got += len(chunk)
                deadline.reschedule(loop.time() + stall)
    except TimeoutError:
        raise ProtocolError(f"a record stopped arriving: nothing of it for {stall:.0f} s "
                            f"({got} of its bytes in)") from None
    return parts[0] if len(parts) == 1 else b"".join(parts)


_behind_log = RateLimitedLog(log)


async def wait_for_scheduler(t: Any) -> None:
    """Backpressure before a connection's next record: while the node's scheduler has more
    than `MAX_QUEUED_EVENTS` events waiting, no connection reads (its peer's sends then
    wait on TCP), until the queue is half that. A peer flooding frames (for sessions that
    do not exist, acknowledgements of nothing, session initiations) otherwise grew the
    queue by gigabytes and every other flow waited behind it."""
    from greenflow.statemachine.scheduler import MAX_QUEUED_EVENTS
    events = _queue(t)
    if events is None or events.qsize() <= MAX_QUEUED_EVENTS:
        return
    seen = getattr(t, "frames_in_at_pause", {})
    lately = {p: n - seen.get(p, 0) for p, n in t.frames_in.items()}
    busiest = max(lately, key=lately.__getitem__, default=None)
    t.frames_in_at_pause = dict(t.frames_in)
    t.stats["reads_paused"] = t.stats.get("reads_paused", 0) + 1
    _behind_log.warning("behind", "%s: %d events wait for the scheduler: reading from peers "
                        "paused until it catches up%s", t.name, events.qsize(),
                        f" (most frames lately from {busiest}: {lately[busiest]:,})"
                        if busiest is not None and lately[busiest] > 0 else "")
    while not t.closing:
        events = _queue(t)   # (a clustered worker's generation may change meanwhile)
        if events is None or events.qsize() <= MAX_QUEUED_EVENTS // 2:
            return
        await asyncio.sleep(0.005)


def _queue(t: Any) -> Any:
    """The event queue of the transport's node: its scheduler's, or a clustered worker's
    current generation's (None between generations)."""
    return getattr(getattr(t.node, "scheduler", None), "events", None)
