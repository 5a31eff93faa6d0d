"""Frames in: routing what arrives to the flow and session it belongs to, checking and
decoding payloads, acknowledgements and rejections, and starting responder flows.

Part of the scheduler (`Scheduler` inherits it); the state it works on (``routes``,
``resident``, ``batch``, ``decoded``...) is the scheduler's, set up in its
``__init__``.

A peer decides how often the warnings here fire (one per frame it sends) and what they
quote (a protocol name is any string up to a frame's 16 MiB), so each warning is
summarised once per interval per peer (``peer_log``, a `RateLimitedLog`) and text taken
from a frame is cut (`_quoted`) in the log and in the rejection sent back.
"""
from __future__ import annotations

import logging
import time
from typing import Any, Optional

from greenflow import serialization, wire
from greenflow.storage import payloads
from greenflow.statemachine import transitions
from greenflow.runtime.checkpoint import Checkpoint, SessionState
from greenflow.errors import WireFormatError
from greenflow.log_limits import clip
from greenflow.statemachine.executor import execute
from greenflow.messages import (INIT, REFUSED, REJECT, Frame, decode_frame, encode_frame,
                                exception_text)
from greenflow.party import Party
from greenflow.flows.registry import qualified_name
from greenflow.flows.session import FlowSession
from greenflow.flows.start_records import encode_start
from greenflow.statemachine.ids import responder_flow_id

log = logging.getLogger("greenflow.scheduler")

FINISHED_ROUTE = b"~"  # route value prefix: the flow behind this session has finished
REJECTED_ROUTE = b"!"
_NAMES: dict[type, str] = {}   # responder class -> its qualified name (one lookup per class)
#: The most frames of new sessions a draining node holds (`Routing._hold`).
MAX_HELD_FRAMES = 10_000
#: ... and at most this many of their bytes (a peer's 15 MiB initiations filled gigabytes).
MAX_HELD_BYTES = 64 * 1024 * 1024
#: Sessions one peer may have refused (`_reject`) a second, on average, and at once: each
#: refusal stores a route and a REJECT in the outbox. Past that its initiations are left
#: unanswered and unacknowledged (its node sends them again later): a peer flooding
#: initiations for flows with no responder, or past its `max_inbound_sessions`, grew the
#: store by ~290 bytes each, without end.
REJECTS_PER_S = 100.0
REJECTS_BURST = 1_000
#: How long a refused session's route is kept (to answer a re-sent initiation the same
#: way): an hour, not the retention of finished flows (7 days by default).
REJECTED_ROUTE_S = 3600.0
#: A peer that has not acknowledged this many frames of this node opens no new sessions
#: here until it does (its initiations wait unanswered).
MAX_UNACKED_FOR_NEW_SESSIONS = 100_000
QUOTE_CHARS = 200   # of a peer's text (a protocol name, an error) in a log line or a rejection


def _quoted(text: object, limit: int = QUOTE_CHARS) -> str:
    """Text from a peer for a log line or a rejection's reason: as it came when it is
    short and printable (a class name, so the usual lines read as before), else escaped
    and cut to ``limit`` characters with the rest counted (`clip`)."""
    s = text if isinstance(text, str) else str(text)
    return s if len(s) <= limit and s.isprintable() else clip(s, limit)


class Routing:
    """Where an arriving frame goes, and the responder flows it starts."""

    def _deliver(self, sender: Party, data: bytes) -> None:
        try:
            frame = decode_frame(data)
        except WireFormatError as exc:
            self.peer_log.warning(f"undecodable {sender.name}",
                                  "%s: dropped an undecodable frame from %s: %s",
                                  self.identity.name, sender.name, _quoted(exc))
            return
        if frame.kind == INIT and frame.to_responder:
            key = (sender.name, frame.sid, 0)
            fid = self.routes.get(key)
            if fid is None:
                route = self._route(key)
                if route is None:
                    if self.draining:
                        # Not acknowledged: held here, and still in the sender's outbox.
                        if self._hold(sender, frame, data):
                            self.peer_log.info(f"holding {sender.name}", "%s: draining: holding "
                                               "a new session from %s (%s)", self.identity.name,
                                               sender.name, _quoted(frame.protocol))
                        return
                    self._start_responder(sender, frame, key)
                    return
                if route[:1] in (FINISHED_ROUTE, REJECTED_ROUTE):
                    self._ack(sender, frame)   # a re-sent initiation we already handled
                    return
                fid = route.decode()
        elif not frame.to_responder:
            self._deliver_to_initiator(sender, frame)
            return
        else:
            key = (sender.name, frame.sid, 0)
            fid = self.routes.get(key)
            if fid is None:
                route = self._route(key)
                if route is None:
                    if (sender.name, frame.sid, 0) in self._deferred:
                        self._hold(sender, frame, data)   # behind its held initiation
                        return
                    # Not acknowledged: if its initiation is merely late (not taken in, to
                    # be re-sent), this frame is needed after it, and so is re-sent too.
                    self._no_session(sender, frame)
                    return
                if route[:1] in (FINISHED_ROUTE, REJECTED_ROUTE):
                    log.debug("%s: late %s from %s for a finished flow", self.identity.name,
                              frame.describe(), sender.name)
                    self._ack(sender, frame)
                    return
                fid = route.decode()
        rt = self._resident_or_load(fid)
        if rt is None:
            return
        if frame.payload is not None:
            self._decode_payload(sender, frame)
        unread = self.unread.get(sender.name)
        execute(self, rt, transitions.on_frame(rt.cp, rt.inbox, rt.pending, frame,
                                               unread[0] if unread is not None else 0), sender)

    def _deliver_to_initiator(self, sender: Party, frame: Frame) -> None:
        """A frame on a session one of our flows opened. Its id is "<our flow id>.<n>",
        so the flow is found without any routing entry (none is stored for these
        sessions), and the session must be in that flow's table with ``sender`` as its
        counterparty, or the frame is not for it."""
        fid = frame.sid.rpartition(".")[0]
        rt = self.resident.get(fid)
        if rt is None and fid in self.ended:   # a late copy for a flow that just ended
            self._ack(sender, frame)
            return
        cp = rt.cp if rt is not None else None
        if cp is None and fid:
            try:
                cp = self.store.checkpoint(fid)
            except Exception:  # noqa: BLE001 - unreadable: _load parks the flow (hospital)
                self._load(fid)  # and the frame is not acknowledged: the sender re-sends
                return
        st = cp.sessions.get(frame.sid) if cp is not None else None
        if st is None or not st.initiator or st.counterparty.name != sender.name:
            if cp is None and self.store.result(fid) is not None \
                    or fid in self.recent_results:
                log.debug("%s: late %s from %s for a finished flow", self.identity.name,
                          frame.describe(), sender.name)
                self._ack(sender, frame)
                return
            # Acknowledged, unlike a frame for a session a peer opened: this flow opened
            # the session, and committed it before its first frame left, so no frame from
            # the peer on it can be early. The flow does not have it from this peer (or
            # is not here at all) and never will: unacknowledged, the frame would stay
            # in the sender's outbox, re-sent on every reconnect.
            self._no_session(sender, frame)
            self._ack(sender, frame)
            return
        if rt is None:
            rt = self._load(fid, cp)
            if rt is None:
                return
        if frame.payload is not None:
            self._decode_payload(sender, frame)
        unread = self.unread.get(sender.name)
        execute(self, rt, transitions.on_frame(rt.cp, rt.inbox, rt.pending, frame,
                                               unread[0] if unread is not None else 0), sender)

    def _route(self, key: tuple[str, str, int]) -> Optional[bytes]:
        value = self._round_routes.get(key)
        return value if value is not None else self.store.route(*key)

    def _put_route(self, key: tuple[str, str, int], value: bytes,
                   expires: Optional[float] = None) -> None:
        self.batch.put_route(key[0], key[1], key[2], value, expires)
        self._round_routes[key] = value

    def _decode_payload(self, sender: Party, frame: Frame) -> Optional[str]:
        """Decode ``frame``'s payload once, on arrival; why it cannot be (None: it can).
        One that cannot (a peer running another version of a `@serializable` class, or
        junk) is still delivered on a session that runs: the receive that takes it
        raises `ReceiveTypeError` naming the peer and why, so the receiving flow fails
        and the sender sees that end (dropped, unacknowledged, it was re-sent for ever
        and both flows waited for good). A session's first message that cannot be read
        has its session refused (`_start_responder`)."""
        try:
            value = wire.decode(frame.payload)  # type: ignore[arg-type]
        except WireFormatError as exc:
            why = _quoted(exc)
            self.peer_log.warning(f"bad payload {sender.name}",
                                  "%s: %s from %s has a payload that cannot be read here: "
                                  "%s", self.identity.name, frame.describe(), sender.name, why)
            return why
        # Kept for the receive that consumes this very payload in this round (saves a
        # second decode); keyed by identity, checked by identity, dropped when the round
        # ends (`pump`).
        self.decoded[id(frame.payload)] = (frame.payload, value)
        return None

    def stored_payload(self, fid: str, sid: str, seq: int) -> bytes:
        """A received payload the store set aside (what a replayed ``receive`` returns)."""
        return payloads.stored_payload(self.store, fid, sid, seq)

    def _hold(self, sender: Party, frame: Frame, data: bytes) -> bool:
        """Hold a frame of a session a peer opened while the node drains (answered when
        the drain ends), once: a peer re-sends what is unacknowledged, and each copy was
        held again. Past `MAX_HELD_FRAMES` nothing more is held (still unacknowledged,
        the sender re-sends it later); nor past `MAX_HELD_BYTES`. Whether it is newly held."""
        key = (sender.name, frame.sid, frame.seq)
        held = self._deferred
        if key in held:
            return False
        if len(held) >= MAX_HELD_FRAMES or self.held_bytes + len(data) > MAX_HELD_BYTES:
            self.peer_log.warning(f"held {sender.name}",
                                  "%s: draining: %d frames of new sessions held already (%d "
                                  "bytes); one from %s is left to its sender to send again",
                                  self.identity.name, len(held), self.held_bytes, sender.name)
            return False
        held[key] = (sender, data)
        self.held_bytes += len(data)
        return True

    def reaches(self, name: str) -> bool:
        """Whether a session to the party ``name`` can ever deliver: this node, or a
        party its transport knows (the network map; the nodes of a MockNetwork). A
        transport that cannot say is taken to reach everyone."""
        return name == self.identity.name or self._known_party(name) is not None

    def unread_from(self, peer_name: str) -> list:
        """The count of what ``peer_name`` has waiting unread on this node, in bytes (see
        `InboxQueue`): one item, shared by the inbox queues of its sessions."""
        unread = self.unread.get(peer_name)
        if unread is None:
            unread = self.unread[peer_name] = [0]
        return unread

    def _known_party(self, name: str) -> Any:
        """The transport's `Party` for ``name``: None when it knows no such party,
        ``...`` when it cannot say (it has no ``party`` lookup)."""
        lookup = getattr(self.transport, "party", None)
        return ... if lookup is None else lookup(name)

    def party_for(self, name: str) -> Party:
        """The party named ``name`` as the transport knows it (its keys and address),
        else just by name."""
        p = self._known_party(name)
        return p if isinstance(p, Party) else Party(name)

    def take_decoded(self, data: bytes) -> Any:
        """The payload ``data`` decoded: the value checked on arrival if it is still
        here (and not handed out before), otherwise decoded now."""
        hit = self.decoded.pop(id(data), None)
        if hit is not None and hit[0] is data:
            return hit[1]
        return wire.decode(data)

    def _no_session(self, sender: Party, frame: Frame) -> None:
        self.peer_log.warning(f"no session {sender.name}",
                              "%s: dropped %s from %s: no such session here",
                              self.identity.name, frame.describe(), sender.name)

    def _ack(self, sender: Party, frame: Frame) -> None:
        self.post_acks.setdefault(sender.name, []).append(frame.msg_id)

    def _may_reject(self, peer: str) -> bool:
        """A token of ``peer``'s refusals (`REJECTS_PER_S`), taken if there is one."""
        now = time.monotonic()
        tokens, at = self.reject_budget.get(peer, (float(REJECTS_BURST), now))
        tokens = min(float(REJECTS_BURST), tokens + (now - at) * REJECTS_PER_S)
        if tokens < 1.0:
            self.reject_budget[peer] = (tokens, now)
            return False
        if len(self.reject_budget) > 10_000:   # peers are few; bounded anyway
            self.reject_budget.clear()
        self.reject_budget[peer] = (tokens - 1.0, now)
        return True

    def _reject(self, sender: Party, frame: Frame, key: tuple[str, str, int], reason: str) -> bool:
        """Refuse the session ``frame`` opens; False where the peer's refusals are past
        their rate (the initiation is then left unanswered)."""
        if not self._may_reject(sender.name):
            self.peer_log.warning(f"reject-rate {sender.name}", "%s: %s opens sessions faster "
                                  "than %d a second are refused: its initiations are left "
                                  "unanswered for now (it sends them again)", self.identity.name,
                                  sender.name, REJECTS_PER_S)
            return False
        reject = Frame(REJECT, frame.sid, False, 0, reason=reason)
        data = encode_frame(reject)
        self.batch.put_outbox(sender.name, frame.sid, False, 0, data)
        # Kept to recognise a re-sent initiation for a while (its sender stops re-sending
        # once the initiation is acknowledged, below).
        self._put_route(key, REJECTED_ROUTE, self.clock.now() + min(self.retention,
                                                                    REJECTED_ROUTE_S))
        self.post_sends.append((sender, data))
        self._ack(sender, frame)
        return True

    def _start_responder(self, sender: Party, frame: Frame, key: tuple[str, str, int]) -> None:
        backlog = getattr(self.transport, "unacknowledged", None)
        if backlog is not None and backlog(sender.name) > MAX_UNACKED_FOR_NEW_SESSIONS:
            # Its sessions' frames pile up here: it opens no more until it catches up (a
            # peer starting responders that fail at once, never acknowledging their
            # ERROR frames, grew the outbox without end).
            self.peer_log.warning(f"backlog {sender.name}", "%s: %s has not acknowledged "
                                  "%d frames of this node: its new sessions wait, unanswered, "
                                  "until it does (it sends them again)", self.identity.name,
                                  sender.name, backlog(sender.name))
            return
        cls = self.responders.responder_for(frame.protocol)
        if cls is None:
            protocol = _quoted(frame.protocol)
            if self._reject(sender, frame, key, f"no responder registered for {protocol} on "
                                                f"{self.identity.name}"):
                self.peer_log.warning(f"rejected {sender.name}",
                                      "%s: rejected a session from %s: no flow registered to "
                                      "answer %s", self.identity.name, sender.name, protocol)
            return
        limits = self.limits
        refusal = limits.refusal(sender.name, self.identity.name,
                                 frame.protocol) if limits else None
        if refusal is not None:   # the protocol, quoted only then: not at every start
            refusal = refusal.replace(frame.protocol, _quoted(frame.protocol))
            if self._reject(sender, frame, key, refusal):
                self.peer_log.warning(f"refused {sender.name}",
                                      "%s: refused a session from %s: %s", self.identity.name,
                                      sender.name, refusal)
            return
        if frame.payload is not None:
            why = self._decode_payload(sender, frame)
            if why is not None:   # no responder for a message it could never read
                self._reject(sender, frame, key, f"{REFUSED}its first message cannot be read "
                                                 f"on {self.identity.name}: {why}")
                return
        # Derived, not drawn: every worker of a clustered party computes the same id (and
        # so the same partition) for this session's responder.
        fid = responder_flow_id(sender.name, frame.sid)
        st = SessionState.answering(frame.sid, sender, frame.protocol, frame.version, frame.app)
        try:
            session = FlowSession(frame.sid, sender)
            logic = cls(session)
            blob = encode_start(logic, session) or serialization.dumps(logic)
        except Exception as exc:
            # Rejected, not dropped: a dropped initiation was never acknowledged, so the
            # initiator waited for ever and every re-send logged this again. The peer
            # learns that the responder cannot start here, not the error's text.
            log.error("%s: cannot start responder %s for %s: %s: %s", self.identity.name,
                      qualified_name(cls), sender.name, type(exc).__name__,
                      exception_text(exc))
            self._reject(sender, frame, key, f"its responder {qualified_name(cls)} cannot be "
                                             f"started on {self.identity.name} (its log says why)")
            return
        name = _NAMES.get(cls)
        if name is None:
            name = _NAMES[cls] = qualified_name(cls)
        cp = Checkpoint(fid, name, started_at=self.clock.now(),
                        sessions={frame.sid: st}, invoker_sid=frame.sid)
        self._put_route(key, fid.encode())
        rt = self.record_start(cp, blob, logic, key)
        if limits is not None:
            limits.opened(sender.name)
        rt.routed = 1
        execute(self, rt, transitions.on_frame(rt.cp, rt.inbox, None, frame), sender)
