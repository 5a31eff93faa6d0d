"""What one peer may make a node hold: inbound sessions per peer, and how long a
responder waits on the peer that started it.

A peer that opens sessions and never answers parks one responder flow per session on
this node (memory while resident, store space always). `PeerLimits` counts, per peer,
the responder flows it started that have not finished (running, waiting, hibernated or
hospitalized); beyond ``max_inbound_sessions`` a new initiation is refused, and the
peer's flow gets `SessionRefused` naming the limit. The count survives restarts: a
responder that outlives its first commit is recorded in the store's ``inbound``
table (``peer \\0 flow id``) until it ends, and a peer's count is read back from
there the first time it is needed after a restart (a scan bounded by the limit).

``responder_idle_timeout`` (off by default) bounds how long a responder waits in a
``receive`` on its initiating session without its own timeout: past it the receive
raises `FlowTimeout` naming the option, the responder fails unless it catches it, and
the peer sees `UnexpectedFlowEnd`.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional

from greenflow.messages import REFUSED
from greenflow.runtime.flow_types import MAX_DURATION

if TYPE_CHECKING:
    from greenflow.runtime.flow_runtime import FlowRuntime
    from greenflow.storage.interface import Batch, FlowStore

#: Inbound sessions (responder flows not yet finished) one peer may hold open on a node.
DEFAULT_MAX_INBOUND_SESSIONS = 10_000


_DB = "inbound"


def _key(peer: str, fid: str) -> bytes:
    return peer.encode() + b"\0" + fid.encode()


class PeerLimits:
    def __init__(self, store: "FlowStore", max_inbound_sessions: Optional[int] = DEFAULT_MAX_INBOUND_SESSIONS,
                 responder_idle_timeout: Optional[float] = None) -> None:
        if max_inbound_sessions is not None and max_inbound_sessions < 0:
            raise ValueError(f"max_inbound_sessions must be >= 0 or None, got {max_inbound_sessions}")
        if responder_idle_timeout is not None and not 0 < responder_idle_timeout <= MAX_DURATION:
            raise ValueError(f"responder_idle_timeout must be > 0 seconds, at most a century, or "
                             f"None, got {responder_idle_timeout}")
        self.store = store
        self.max_inbound_sessions = max_inbound_sessions
        self.responder_idle_timeout = responder_idle_timeout
        self._open: dict[str, int] = {}   # peer -> unfinished responders it started
        if not store.readonly:
            store.open_table(_DB)

    # ------------------------------------------------------------------ counting
    def inbound(self, peer: str) -> int:
        """Unfinished responder flows ``peer`` started here."""
        n = self._open.get(peer)
        if n is None:
            n = self._open[peer] = self._stored(peer)
        return n

    def _stored(self, peer: str) -> int:
        return sum(1 for _ in self.store.table_items(_DB, peer.encode() + b"\0"))

    def refusal(self, peer: str, node_name: str, protocol: str) -> Optional[str]:
        """Why a new session from ``peer`` is refused, or None to accept it."""
        limit = self.max_inbound_sessions
        if limit is None or self.inbound(peer) < limit:
            return None
        return (f"{REFUSED}{node_name} already holds {limit:,} open sessions from {peer} "
                f"(max_inbound_sessions); the session for {protocol} was not started, try "
                "again when some have ended")

    def opened(self, peer: str) -> None:
        self._open[peer] = self.inbound(peer) + 1

    # ------------------------------------------------------------------ the store
    @staticmethod
    def _peer_of(rt: "FlowRuntime") -> Optional[str]:
        sid = rt.cp.invoker_sid
        st = rt.cp.sessions.get(sid) if sid is not None else None
        return st.counterparty.name if st is not None else None

    def first_stored(self, b: "Batch", rt: "FlowRuntime") -> None:
        """The flow is written to the store for the first time: a responder is recorded
        under its peer, so the count survives a restart."""
        peer = self._peer_of(rt)
        if peer is not None:
            b.table_put(_DB, _key(peer, rt.flow_id), b"")

    def ended(self, b: "Batch", rt: "FlowRuntime") -> None:
        """A flow finished (completed, failed or killed)."""
        peer = self._peer_of(rt)
        if peer is None:
            return
        self._open[peer] = max(0, self.inbound(peer) - 1)
        if rt.start_blob is None:   # it was stored (see first_stored)
            b.table_delete(_DB, _key(peer, rt.flow_id))

    def describe(self) -> dict[str, Any]:
        return {"max_inbound_sessions": self.max_inbound_sessions,
                "responder_idle_timeout": self.responder_idle_timeout}
