"""The scheduler: one per node, on one thread, running every flow greenlet of the node.

A round (`Scheduler.pump`) goes:

1. apply queued events (starts, arriving frames, acks, timers, external results,
   kills) through the transitions; resumed flows join the run queue;
2. run every runnable flow until it suspends or ends;
3. **group commit**: one synced LMDB transaction with every changed checkpoint, new
   journal entries, inbox and outbox changes and results;
4. only then: frames go to the transport, arrivals are acknowledged, external work is
   started and waiters are told. A crash before 3 loses nothing anyone has seen; a crash
   after it re-sends from the outbox and the receiver drops duplicates.

Flows are *resident* (in memory) or not. A non-resident flow is rebuilt by replay when
something arrives for it; restart loads nothing but the flows with work to do.
"""
from __future__ import annotations

import heapq
import time
from collections import deque
import logging
import os
import queue
import random
import traceback
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Optional

from greenflow.runtime import snapshots as frames_mod
from greenflow import serialization, wire
from greenflow.storage import payloads
from greenflow.statemachine import transitions
from greenflow.runtime.checkpoint import OPEN, Checkpoint, SessionState
from greenflow.errors import (FlowError, FlowException, StoreError, WireFormatError)
from greenflow.statemachine.events import Acked, Call, ExternalDone, FrameArrived, KillFlow, StartFlows
from greenflow.statemachine.executor import execute
from greenflow.runtime.fingerprint import code_digest, fingerprint
from greenflow.runtime.flow_runtime import FlowRuntime, InboxItem
from greenflow.statemachine.hospital import backoff, is_transient
from greenflow.runtime.journal import Entry
from greenflow.messages import INIT, REJECT, Frame, carries_message, decode_frame, encode_frame
from greenflow.party import Party
from greenflow.flows.registry import ResponderTable, qualified_name
from greenflow.flows.session import FlowSession
from greenflow.status import FlowStatus
from greenflow.storage.store import (Batch, Store, dump_result, expiry_key, fid_key, inbox_key, journal_key, outbox_key, parse_timer_key,
                    session_key, timer_key)
from greenflow.runtime.traps import Unwind, recycle

log = logging.getLogger("greenflow.scheduler")

FINISHED_ROUTE = b"~"  # route value prefix: the flow behind this session has finished
REJECTED_ROUTE = b"!"


def new_flow_id() -> str:
    """32 hex digits: milliseconds since the epoch, then 80 random bits.

    Time-ordered ids make every store key of a new flow land at the right edge of its
    B-tree, so writing millions of flows touches mostly the newest pages rather than
    pages all over the file (measured: 10M hibernated flows, 3 B of anonymous memory each;
    the LMDB map kept ~2 GB of clean, reclaimable file pages mapped).

    The random part comes from a generator seeded from the OS once per process (and
    again in a forked child), not a system call per flow: ids must be unique, not secret
    (frames are routed by sender and checked against the session's counterparty).
    """
    return "%012x%020x" % (int(time.time() * 1000) & 0xFFFFFFFFFFFF, _id_bits(80))


def _reseed_ids() -> None:
    global _id_bits
    _id_bits = random.Random(os.urandom(32)).getrandbits


_id_bits: Callable[[int], int]
_reseed_ids()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reseed_ids)


class Scheduler:
    #: What one peer may make this node hold (`greenflow.statemachine.limits.PeerLimits`); set by `Node`.
    limits: Any = None

    def __init__(self, *, identity: Party, store: Store, clock: Any, transport: Any,
                 responders: ResponderTable, services: Any = None,
                 capture_frames: bool = True, reload_after_suspend: bool = False,
                 max_resident: Optional[int] = None, threaded: bool = False,
                 retention: float = 7 * 24 * 3600.0, max_retries: int = 5,
                 retry_backoff: float = 1.0) -> None:
        self.identity = identity
        self.store = store
        self.clock = clock
        self.transport = transport
        self.responders = responders
        self.services = services
        self.capture_frames = capture_frames
        self.reload_after_suspend = reload_after_suspend
        self.max_resident = max_resident
        self.threaded = threaded
        self.retention = retention
        self.max_retries = max_retries
        self.retry_backoff = retry_backoff
        self.draining = False
        self._deferred: list[tuple[Party, bytes]] = []   # initiations held while draining
        self._next_sweep = 0.0
        self.events: "queue.SimpleQueue[Any]" = queue.SimpleQueue()
        self.resident: dict[str, FlowRuntime] = {}
        self.routes: dict[bytes, str] = {}
        self.run_queue: deque[tuple[FlowRuntime, Any]] = deque()
        self.timers: list[tuple[float, str]] = []
        self.batch = Batch()
        # Routes written in this round's batch, not yet readable from the store.
        self._round_routes: dict[bytes, bytes] = {}
        self.decoded: dict[int, tuple[bytes, Any]] = {}   # see _payload_ok
        self.post_sends: list[tuple[Party, bytes]] = []
        self.post_acks: dict[str, list[tuple]] = {}
        self.post_externals: list[FlowRuntime] = []
        self.externals_running: set[str] = set()   # flow ids whose external call is running
        self.post_callbacks: list[Callable[[], None]] = []
        self.waiters: dict[str, list[Callable[[dict], None]]] = {}
        self.recent_results: dict[str, dict] = {}
        self.idle_greenlets: list = []   # finished flows' greenlets, reused (traps.recycle)
        self.progress_listeners: list[Callable[[str, Optional[str]], None]] = []
        # fn(flow_id) when a flow ends (completed, failed, killed), inside the round: what
        # it writes to `self.batch` commits with the flow's result (the vault releases the
        # flow's soft locks this way).
        self.flow_end_listeners: list[Callable[[str], None]] = []
        self.touched: dict[str, FlowRuntime] = {}
        # Flows that ended in this round: their records are dropped in `self.batch`, not
        # yet in the store, so what the store still says of them must not bring them back.
        self.ended: set[str] = set()
        self.dead = False
        self.commit_error: Optional[BaseException] = None
        self._workers: Optional[ThreadPoolExecutor] = None
        self._wakeup: Optional[Callable[[], None]] = None
        self.stats = {"commits": 0, "flows_started": 0, "replays": 0}
        # (event, flow class) -> count, for the node's metrics (`greenflow.rpc.metrics`): a
        # dict increment per flow start/end, read when metrics are scraped.
        self.flow_counts: dict[tuple[str, str], int] = {}
        # fn(seconds, writes, suspended) after each durable commit (`greenflow.rpc.metrics`).
        self.commit_observer: Optional[Callable[[float, int, int], None]] = None

    # ================================================================== intake
    def post(self, event: Any) -> None:
        """Hand an event to the scheduler (any thread)."""
        self.events.put(event)
        if self._wakeup is not None:
            self._wakeup()

    def start_flows(self, items: list[tuple[Checkpoint, bytes, Any]],
                    done: Optional[Callable[[], None]] = None) -> None:
        self.post(StartFlows(tuple(items), done))

    # ================================================================== the round
    def pump(self) -> bool:
        """Run one round to quiescence and commit. Returns True when anything happened."""
        if self.dead:
            return False
        did = False
        while True:
            progressed = self._drain_events()
            progressed |= self._fire_due_timers()
            while self.run_queue:
                rt, value = self.run_queue.popleft()
                self._step(rt, value)
                progressed = True
            if not progressed:
                break
            did = True
        if self.batch or self.touched or self.post_sends or self.post_acks or self.post_callbacks:
            self._commit()
            did = True
        if self.decoded:   # payloads checked this round whose frames were not consumed
            self.decoded.clear()
        return did

    def next_deadline(self) -> Optional[float]:
        return self.timers[0][0] if self.timers else None

    def _drain_events(self) -> bool:
        any_ = False
        while True:
            try:
                ev = self.events.get_nowait()
            except queue.Empty:
                return any_
            any_ = True
            try:
                self._apply(ev)
            except Exception:
                log.exception("%s: failed to apply %s", self.identity.name, type(ev).__name__)

    def _apply(self, ev: Any) -> None:
        t = type(ev)
        if t is FrameArrived:
            self._deliver(ev.sender, ev.data)
        elif t is StartFlows:
            for cp, blob, logic in ev.items:
                self._record_start(cp, blob, logic)
            if ev.done is not None:
                self.post_callbacks.append(ev.done)
        elif t is Acked:
            for mid in ev.msg_ids:
                sid, to_resp, seq = mid
                self.batch.delete("outbox", outbox_key(ev.peer, sid, to_resp, seq))
        elif t is ExternalDone:
            self.externals_running.discard(ev.flow_id)
            rt = self._resident_or_load(ev.flow_id)
            if rt is not None:
                if rt.pending is None and rt.greenlet is None:
                    rt.external_done = ev.outcome  # reloaded: answer it once replay gets there
                else:
                    execute(self, rt, transitions.on_external_done(rt.pending, ev.outcome))
        elif t is KillFlow:
            ok = self._kill(ev.flow_id)
            if ev.done is not None:
                self.post_callbacks.append(lambda: ev.done(ok))
        elif t is Call:
            try:
                r = ev.fn()
            except BaseException as exc:  # noqa: BLE001 - handed back to the caller
                ev.done(None, exc)
            else:
                ev.done(r, None)
        else:
            raise FlowError(f"unknown scheduler event {ev!r}; please file a bug")

    def set_draining(self, on: bool) -> None:
        """Draining: no new flows and no new inbound sessions; running flows finish.
        Initiations that arrive meanwhile are held unacknowledged and answered after."""
        self.draining = on
        if not on and self._deferred:
            held, self._deferred = self._deferred, []
            for sender, data in held:
                self.events.put(FrameArrived(sender, data))

    # ================================================================== starting
    def _record_start(self, cp: Checkpoint, blob: bytes, logic: Any) -> None:
        # Nothing of the flow itself is written yet: it goes into the store at the round's
        # commit if it is still unfinished then (a responder that answers and ends within
        # one round only ever writes its result). The start is durable either way by the
        # time anyone is told: start_flow returns, or the initiation is acknowledged.
        if cp.client_id is not None:
            self.batch.put("clients", cp.client_id.encode(), fid_key(cp.flow_id))
        rt = FlowRuntime(self, cp, logic, [])
        rt.start_blob = blob
        rt.base = cp.clone()   # nothing stored yet: its last good state, should it be parked
        self._make_resident(rt)
        self.touched[rt.flow_id] = rt
        self.run_queue.append((rt, None))
        self.stats["flows_started"] += 1
        self._count("started", cp.flow_class)

    def _count(self, event: str, flow_class: str) -> None:
        key = (event, flow_class)
        self.flow_counts[key] = self.flow_counts.get(key, 0) + 1

    def _make_resident(self, rt: FlowRuntime) -> None:
        self.resident[rt.flow_id] = rt
        for st in rt.cp.sessions.values():
            if not st.initiator:  # sessions we initiated route by their id (see _deliver)
                self.routes[session_key(st.counterparty.name, st.sid, st.role_of_peer)] = rt.flow_id

    # ================================================================== running
    def _step(self, rt: FlowRuntime, value: Any) -> None:
        if rt.cp.status.finished or self.resident.get(rt.flow_id) is not rt:
            return  # finished, or evicted (a newer runtime may stand for the same flow)
        g = rt.greenlet
        if g is None:
            if rt.journal:
                self.stats["replays"] += 1
            g = rt.start_greenlet()
            res = g.switch(rt)
        else:
            res = g.switch(value)
        fid = rt.flow_id
        self.resident[fid] = self.resident.pop(fid)  # most recently active last (LRU)
        self.touched[fid] = rt
        if isinstance(res, Entry):
            rt.pending = res
            done, rt.external_done = rt.external_done, None
            execute(self, rt, transitions.on_suspend(rt.cp, rt.inbox, res, self.clock.now(), done))
        else:
            try:
                self._finish(rt, res)
            except Exception as exc:  # an error while handling the flow's end
                log.exception("%s: ending flow %s failed", self.identity.name, rt.flow_id)
                self._park(rt, f"error while ending the flow ({res[0]}): "
                               f"{type(exc).__name__}: {exc}")

    def progress_changed(self, rt: FlowRuntime, step: Optional[str]) -> None:
        for fn in list(self.progress_listeners):
            try:
                fn(rt.flow_id, step)
            except Exception:
                log.exception("progress listener failed")

    def arm_timer(self, rt: FlowRuntime, deadline: float) -> None:
        heapq.heappush(self.timers, (deadline, rt.flow_id))
        key = timer_key(deadline, rt.flow_id)
        if rt.cp.timer_key != key:
            if rt.cp.timer_key is not None:
                self.batch.delete("timers", rt.cp.timer_key)
            rt.cp.timer_key = key
            self.batch.put("timers", key, b"")

    def _fire_due_timers(self) -> bool:
        now = self.clock.now()
        fired = False
        while self.timers and self.timers[0][0] <= now:
            deadline, fid = heapq.heappop(self.timers)
            rt = self.resident.get(fid)
            if rt is None:
                cp = self.store.checkpoint(fid)
                if cp is not None and cp.status == FlowStatus.HOSPITALIZED:
                    if cp.retry_at is not None and cp.retry_at <= now:
                        fired |= self.retry(fid)
                    continue
                if cp is None or cp.pending is None or cp.pending[2] is None \
                        or not transitions.same_deadline(cp.pending[2], deadline):
                    continue
                rt = self._load(fid)
                if rt is None:
                    continue
                # Not replayed yet: it will reach the pending entry and see the deadline passed.
                fired = True
                continue
            actions = transitions.on_timer(rt.pending, deadline)
            if actions:
                execute(self, rt, actions)
                fired = True
        return fired

    # ================================================================== frames in
    def _deliver(self, sender: Party, data: bytes) -> None:
        try:
            frame = decode_frame(data)
        except WireFormatError as exc:
            log.warning("%s: dropped an undecodable frame from %s: %s",
                        self.identity.name, sender.name, exc)
            return
        if frame.kind == INIT and frame.to_responder:
            key = session_key(sender.name, frame.sid, 0)
            fid = self.routes.get(key)
            if fid is None:
                route = self._route(key)
                if route is None:
                    if self.draining:
                        # Not acknowledged: held here, and still in the sender's outbox.
                        log.info("%s: draining: holding a new session from %s (%s)",
                                 self.identity.name, sender.name, frame.protocol)
                        self._deferred.append((sender, data))
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
            key = session_key(sender.name, frame.sid, 0)
            fid = self.routes.get(key)
            if fid is None:
                route = self._route(key)
                if route is None:
                    if any(s == sender and decode_frame(d).sid == frame.sid
                           for s, d in self._deferred):
                        self._deferred.append((sender, data))  # behind its held initiation
                        return
                    # Not acknowledged: if its initiation is merely late, the sender re-sends.
                    log.warning("%s: dropped %s from %s: no such session here",
                                self.identity.name, frame.describe(), sender.name)
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
        if frame.payload is not None and not self._payload_ok(sender, frame):
            return
        execute(self, rt, transitions.on_frame(rt.cp, rt.inbox, rt.pending, frame), sender)

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
            # Not acknowledged: if it is merely early, the sender re-sends it.
            log.warning("%s: dropped %s from %s: no such session here", self.identity.name,
                        frame.describe(), sender.name)
            return
        if rt is None:
            rt = self._load(fid, cp)
            if rt is None:
                return
        if frame.payload is not None and not self._payload_ok(sender, frame):
            return
        execute(self, rt, transitions.on_frame(rt.cp, rt.inbox, rt.pending, frame), sender)

    def _route(self, key: bytes) -> Optional[bytes]:
        value = self._round_routes.get(key)
        return value if value is not None else self.store.route(key)

    def _put_route(self, key: bytes, value: bytes) -> None:
        self.batch.put("sessions", key, value)
        self._round_routes[key] = value

    def _payload_ok(self, sender: Party, frame: Frame) -> bool:
        try:
            value = wire.decode(frame.payload)  # type: ignore[arg-type]
        except WireFormatError as exc:
            log.warning("%s: dropped %s from %s: bad payload: %s", self.identity.name,
                        frame.describe(), sender.name, exc)
            return False
        # Kept for the receive that consumes this very payload in this round (saves a
        # second decode); keyed by identity, checked by identity, dropped when the round
        # ends (`pump`).
        self.decoded[id(frame.payload)] = (frame.payload, value)
        return True

    def stored_payload(self, fid: str, sid: str, seq: int) -> bytes:
        """A received payload the store set aside (what a replayed ``receive`` returns)."""
        return payloads.stored_payload(self.store, fid, sid, seq)

    def take_decoded(self, data: bytes) -> Any:
        """The payload ``data`` decoded: the value checked on arrival if it is still
        here (and not handed out before), otherwise decoded now."""
        hit = self.decoded.pop(id(data), None)
        if hit is not None and hit[0] is data:
            return hit[1]
        return wire.decode(data)

    def _ack(self, sender: Party, frame: Frame) -> None:
        self.post_acks.setdefault(sender.name, []).append(frame.msg_id)

    def _reject(self, sender: Party, frame: Frame, key: bytes, reason: str) -> None:
        reject = Frame(REJECT, frame.sid, False, 0, reason=reason)
        data = encode_frame(reject)
        self.batch.put("outbox", outbox_key(sender.name, frame.sid, False, 0), data)
        self._put_route(key, REJECTED_ROUTE)
        # Kept to recognise a re-sent initiation, for as long as finished sessions are.
        self.batch.put("expiry", expiry_key(self.clock.now() + self.retention, "sessions", key), b"")
        self.post_sends.append((sender, data))
        self._ack(sender, frame)

    def _start_responder(self, sender: Party, frame: Frame, key: bytes) -> None:
        cls = self.responders.responder_for(frame.protocol)
        if cls is None:
            log.warning("%s: rejected a session from %s: no flow registered to answer %s",
                        self.identity.name, sender.name, frame.protocol)
            self._reject(sender, frame, key, f"no responder registered for {frame.protocol} on "
                                             f"{self.identity.name}")
            return
        limits = self.limits
        refusal = limits.refusal(sender.name, self.identity.name, frame.protocol) if limits else None
        if refusal is not None:
            log.warning("%s: refused a session from %s (%s): %s", self.identity.name,
                        sender.name, frame.protocol, refusal)
            self._reject(sender, frame, key, refusal)
            return
        if frame.payload is not None and not self._payload_ok(sender, frame):
            return
        fid = new_flow_id()
        st = SessionState(frame.sid, sender, False, frame.protocol, frame.version, frame.app,
                          state=OPEN, peer_info=(frame.version, frame.app))
        try:
            logic = cls(FlowSession(frame.sid, sender))
            blob = serialization.dumps(logic)
        except Exception as exc:
            log.error("%s: cannot start responder %s for %s: %s", self.identity.name,
                      qualified_name(cls), sender.name, exc)
            return
        cp = Checkpoint(fid, qualified_name(cls), started_at=self.clock.now(),
                        sessions={frame.sid: st}, invoker_sid=frame.sid)
        self._put_route(key, fid.encode())
        self._record_start(cp, blob, logic)
        if limits is not None:
            limits.opened(sender.name)
        rt = self.resident[fid]
        rt.routed = 1
        execute(self, rt, transitions.on_frame(rt.cp, rt.inbox, None, frame), sender)

    # ================================================================== loading
    def _resident_or_load(self, fid: str) -> Optional[FlowRuntime]:
        rt = self.resident.get(fid)
        if rt is not None:
            return rt
        return self._load(fid)

    def _load(self, fid: str, cp: Optional[Checkpoint] = None) -> Optional[FlowRuntime]:
        """Rebuild a non-resident flow from its checkpoint; it replays when it runs."""
        if fid in self.ended:   # the store still holds what this round's batch dropped
            return None
        try:
            if cp is None:
                cp = self.store.checkpoint(fid)
            if cp is None or cp.status.finished:
                return None
            if cp.status == FlowStatus.HOSPITALIZED:
                if cp.retry_at is not None and cp.retry_at <= self.clock.now():
                    return self.retry(fid)  and self.resident.get(fid)  # type: ignore[return-value]
                return None
            raw_logic = self.store.logic_blob(fid)
            if raw_logic is None and self.store.result(fid) is not None:
                # A header left behind by a flow that had finished (written by an older
                # version): the result is what counts; drop the leftover.
                log.warning("%s: removing the stale checkpoint of finished flow %s",
                            self.identity.name, fid)
                self.batch.drop_flow(fid, cp.journal_len)
                return None
            if raw_logic is None:
                raise StoreError(f"the start record of flow {fid} is missing from the store")
            logic = serialization.loads(raw_logic)
            journal = self.store.journal(fid, cp.journal_len - (1 if cp.pending else 0))
            if cp.pending is not None:
                journal.append(Entry(cp.pending[0], cp.pending[1], None, cp.pending[2]))
            inbox_rows = self.store.inbox(fid)
        except Exception as exc:  # corrupt or unreadable: park this flow only
            log.error("%s: cannot restore flow %s: %s", self.identity.name, fid, exc)
            self._hospitalize_stored(fid, f"checkpoint cannot be restored: {type(exc).__name__}: {exc}")
            return None
        rt = FlowRuntime(self, cp, logic, journal)
        rt.base = None  # the store holds this very checkpoint: _park reads it back from there
        cp.fingerprint = None  # recomputed for the code running now at the next commit
        for sid, seq, data in inbox_rows:
            try:
                f = payloads.restore_inbox_frame(self.store, fid, decode_frame(data))
            except WireFormatError:
                continue
            rt.inbox_queue(sid).append(InboxItem(f, True))
        rt.dirty = False
        rt.routed = len(cp.sessions)
        cp.status = FlowStatus.RUNNABLE
        self._make_resident(rt)
        self.run_queue.append((rt, None))
        return rt

    def _hospitalize_stored(self, fid: str, why: str) -> None:
        """Park a flow that is not in memory (its checkpoint could not be restored)."""
        try:
            cp = self.store.checkpoint(fid)
        except Exception:
            cp = None
        if cp is None:
            return
        cp.status = FlowStatus.HOSPITALIZED
        cp.error = why
        self._count("hospitalized", cp.flow_class)
        self.batch.put("flows", fid_key(fid), serialization.dumps(cp))
        self.batch.delete("wake", fid_key(fid))

    def _park(self, rt: FlowRuntime, why: str, retry_in: Optional[float] = None) -> None:
        """The flow hospital: put the flow back to its last checkpoint and park it.

        Whatever it did since that checkpoint is discarded (its frames are never sent),
        but frames it accepted since are kept in its inbox, since their senders may
        already have been told they arrived. With ``retry_in`` it is retried from there
        automatically; otherwise it waits for an operator (``retry`` or ``kill``).
        """
        fid = rt.flow_id
        cp = self._last_good(rt) or rt.cp
        b = self.batch
        for f in rt.fresh:
            st = cp.sessions.get(f.sid)
            if st is None:
                continue
            st.recv_seq = max(st.recv_seq, f.seq + 1)
            if f.info is not None and st.peer_info is None:
                st.peer_info = tuple(f.info)
            if carries_message(f):
                payloads.persist_inbox_frame(b, fid, f)
        if rt.start_blob is not None:
            b.put("logic", fid_key(fid), rt.start_blob)
            rt.start_blob = None
            if self.limits is not None and cp.invoker_sid is not None:
                self.limits.first_stored(b, rt)
        cp.status = FlowStatus.HOSPITALIZED
        cp.error = why
        cp.retry_at = None if retry_in is None else self.clock.now() + retry_in
        if retry_in is None:
            self._count("hospitalized", cp.flow_class)
        if retry_in is not None:
            cp.retries += 1
            heapq.heappush(self.timers, (cp.retry_at, fid))
            b.put("wake", fid_key(fid), b"")
        else:
            b.delete("wake", fid_key(fid))
        b.put_header(fid_key(fid), serialization.dumps(cp))
        rt.out = ()
        self._evict(rt, "hospitalized")
        self.touched.pop(fid, None)
        level = logging.WARNING if retry_in is not None else logging.ERROR
        log.log(level, "%s: flow %s (%s) hospitalized: %s%s", self.identity.name, fid,
                cp.flow_class, why, f"; retry in {retry_in:.1f}s" if retry_in is not None else "")

    def retry(self, fid: str) -> bool:
        """Take a flow out of the hospital and run it again from its last checkpoint."""
        if fid in self.ended:
            return False
        cp = self.store.checkpoint(fid)
        if cp is None or cp.status != FlowStatus.HOSPITALIZED or fid in self.resident:
            return False
        cp.status = FlowStatus.RUNNABLE
        cp.retry_at = None
        cp.error = None
        self._count("retried", cp.flow_class)
        blob = serialization.dumps(cp)
        self.batch.put("flows", fid_key(fid), blob)
        rt = self._load(fid, cp)
        return rt is not None

    # ================================================================== ending
    def _finish(self, rt: FlowRuntime, res: tuple) -> None:
        kind = res[0]
        fid = rt.flow_id
        if kind == "diverged" or rt.diverged is not None:
            self._park(rt, f"NonDeterminismError: {rt.diverged}{self._code_changed(rt)}")
            return
        if kind == "failed" and is_transient(res[1]):
            exc = res[1]
            why = f"{type(exc).__name__}: {exc}"
            if rt.cp.retries < self.max_retries:
                self._park(rt, why, retry_in=backoff(rt.cp.retries, self.retry_backoff))
            else:
                self._park(rt, f"{why} (still failing after {rt.cp.retries} retries)")
            return
        if kind == "unwound":
            kind = "killed"
        record: dict[str, Any] = {"flow_class": rt.cp.flow_class, "client_id": rt.cp.client_id,
                                  "started_at": rt.cp.started_at, "finished_at": self.clock.now()}
        if kind == "done":
            rt.end_frames(("done",))
            record.update(status=FlowStatus.COMPLETED, value=res[1])
        if kind == "failed":
            exc = res[1]
            if isinstance(exc, FlowException):
                log.info("%s: flow %s (%s) failed: %s: %s", self.identity.name, fid,
                         rt.cp.flow_class, type(exc).__name__, exc)
            else:
                log.warning("%s: flow %s (%s) failed:\n%s", self.identity.name, fid,
                            rt.cp.flow_class,
                            "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))
            rt.end_frames(("failed", exc))
            record.update(status=FlowStatus.FAILED, error=f"{type(exc).__name__}: {exc}")
            if isinstance(exc, FlowException):
                # Kept as the wire carries it: unpickling would call the class's __init__
                # with the message alone, which a FlowException never gets rebuilt by.
                record["flow_exception"] = (qualified_name(type(exc)), str(exc),
                                            exc.ensure_error_id())
            else:
                record["exc"] = serialization.try_dumps(exc, limit=1 << 20)
        elif kind == "killed":
            rt.end_frames(("killed",))
            record.update(status=FlowStatus.KILLED, error="FlowKilled: killed by an operator")
        rt.cp.status = record["status"]
        self.ended.add(fid)
        b = self.batch
        k = fid_key(fid)
        if self.limits is not None and rt.cp.invoker_sid is not None:
            self.limits.ended(b, rt)
        if rt.start_blob is None:  # something of it was stored
            b.drop_flow(fid, max(rt.cp.journal_len, 0))
            if rt.cp.timer_key is not None:
                b.delete("timers", rt.cp.timer_key)
        expires = self.clock.now() + self.retention
        for st in rt.cp.sessions.values():
            if st.initiator:
                continue  # late frames on it are recognised by the flow's result record
            key = session_key(st.counterparty.name, st.sid, st.role_of_peer)
            self._put_route(key, FINISHED_ROUTE + fid.encode())
            b.put("expiry", expiry_key(expires, "sessions", key), b"")
            self.routes.pop(key, None)
        try:
            blob = dump_result(record)
        except Exception as exc:  # the return value cannot be stored
            record.pop("value", None)
            record.update(status=FlowStatus.FAILED,
                          error=f"FlowError: the result of {rt.cp.flow_class} cannot be stored: {exc}")
            rt.cp.status = FlowStatus.FAILED
            blob = dump_result(record)
        b.put("results", k, blob)
        self._count(record["status"].value, rt.cp.flow_class)
        b.put("expiry", expiry_key(expires, "results", k), b"")
        if rt.cp.client_id is not None:
            b.put("expiry", expiry_key(expires, "clients", rt.cp.client_id.encode()), b"")
        for fn in self.flow_end_listeners:
            try:
                fn(fid)
            except Exception:
                log.exception("%s: flow-end listener failed for flow %s", self.identity.name, fid)
        self._queue_frames(rt)
        self._release(rt)
        self.resident.pop(fid, None)
        self.touched.pop(fid, None)
        self.recent_results[fid] = record
        if len(self.recent_results) > 10_000:  # the store has them all; this is a cache
            self.recent_results.pop(next(iter(self.recent_results)))
        waiters = self.waiters.pop(fid, [])
        self.post_callbacks.extend((lambda w=w: w(record)) for w in waiters)
        self.progress_changed(rt, None)

    def _queue_frames(self, rt: FlowRuntime) -> None:
        for peer, frame in rt.out:
            data = encode_frame(frame)
            self.batch.put("outbox", outbox_key(peer.name, frame.sid, frame.to_responder, frame.seq), data)
            self.post_sends.append((peer, data))
        rt.out = ()

    def _evict(self, rt: FlowRuntime, why: str = "evicted") -> None:
        """Drop a flow from memory (its checkpoint is durable), unwinding its greenlet
        with I/O refused so its ``finally`` blocks run now, not at a random GC moment."""
        g = rt.greenlet
        rt.io_refused = why
        if g is not None and not g.dead and g:
            try:
                g.throw(Unwind(why))
            except BaseException:  # noqa: BLE001 - whatever the flow did while unwinding
                pass
        self._release(rt)
        self.resident.pop(rt.flow_id, None)
        for st in rt.cp.sessions.values():
            if not st.initiator:
                self.routes.pop(session_key(st.counterparty.name, st.sid, st.role_of_peer), None)

    @staticmethod
    def _release(rt: FlowRuntime) -> None:
        """Break the runtime <-> greenlet cycle, so a finished or evicted flow is freed by
        reference counting at once, not later by the cyclic collector (which at high
        concurrency cost a third of the scheduler's time); an idle greenlet is kept for
        the next flow (`traps.recycle`)."""
        g = rt.greenlet
        if g is not None:
            rt.greenlet = None
            recycle(g, rt.sched.idle_greenlets)

    def _kill(self, fid: str) -> bool:
        rt = self.resident.get(fid)
        if rt is None:
            cp = None if fid in self.ended else self.store.checkpoint(fid)
            if cp is None:
                return False
            if self.store.logic_blob(fid) is None and self.store.result(fid) is not None:
                self.batch.drop_flow(fid, cp.journal_len)   # a finished flow's leftover header:
                return True                                 # its result stands
            try:
                logic = serialization.loads(self.store.logic_blob(fid))  # type: ignore[arg-type]
            except Exception:
                logic = None
            rt = FlowRuntime(self, cp, logic, [])  # type: ignore[arg-type]
        self._evict(rt, "killed")   # unwinds its greenlet with I/O refused
        rt.out = ()              # anything produced while unwinding is not sent
        self._finish(rt, ("killed",))
        return True

    # ================================================================== commit
    def _commit(self) -> None:
        b = self.batch
        suspended: list[FlowRuntime] = []
        for fid, rt in list(self.touched.items()):
            if rt.cp.status.finished:
                continue
            try:
                self._stage_checkpoint(b, rt)
            except Exception as exc:
                log.error("%s: flow %s cannot be checkpointed: %s", self.identity.name, fid, exc)
                self._finish(rt, ("failed", FlowError(f"checkpoint failed: {exc}")))
                continue
            if rt.pending is not None:
                suspended.append(rt)
        for rt in self.touched.values():
            if rt.out:
                self._queue_frames(rt)
        try:
            if b:
                t0 = time.perf_counter()
                self.store.commit(b)
                self.stats["commits"] += 1
                if self.commit_observer is not None:
                    self.commit_observer(time.perf_counter() - t0, len(b.ops), len(suspended))
        except StoreError as exc:
            # Nothing of this round is durable, so nothing of it may be seen: stop the node.
            log.critical("%s: %s; the node stops committing", self.identity.name, exc)
            self.commit_error = exc
            self.dead = True
            return
        for rt in self.touched.values():
            rt.base = None   # committed: the store holds it now (read back if parked)
        self.batch = Batch()
        self._round_routes.clear()
        self.ended.clear()
        self.touched = {}
        sends, self.post_sends = self.post_sends, []
        acks, self.post_acks = self.post_acks, {}
        exts, self.post_externals = self.post_externals, []
        cbs, self.post_callbacks = self.post_callbacks, []
        for peer, data in sends:
            self.transport.send(peer, data)
        for peer_name, mids in acks.items():
            self.transport.ack(peer_name, tuple(mids))
        for rt in exts:
            self._run_external(rt)
        for cb in cbs:
            try:
                cb()
            except Exception:
                log.exception("post-commit callback failed")
        self._shed(suspended)
        now = self.clock.now()
        if now >= self._next_sweep:
            self._next_sweep = now + min(60.0, self.retention / 10)
            try:
                n = self.store.expire(now)
                if n:
                    log.debug("%s: expired %d finished-flow records", self.identity.name, n)
            except StoreError as exc:
                log.error("%s: expiry sweep failed: %s", self.identity.name, exc)

    def _stage_checkpoint(self, b: Batch, rt: FlowRuntime) -> None:
        cp = rt.cp
        fid = rt.flow_id
        journal = rt.journal
        n = len(journal)
        # The pending entry (last, no outcome yet) lives in the header; chunks hold only
        # resolved entries, one chunk per commit, so nothing is stored twice.
        last = journal[-1] if journal and journal[-1].outcome is None else None
        resolved = n - (1 if last is not None else 0)
        if resolved > rt.committed:
            chunk = journal[rt.committed:resolved]
            payloads.set_aside(b, self.store, fid, chunk, rt.consumed)
            b.put("journal", journal_key(fid, rt.committed), serialization.dumps(chunk))
            rt.committed = resolved
        pend = rt.pending if rt.pending is not None else last
        cp.journal_len = n
        cp.pending = (last.kind, last.key, last.deadline) if last is not None else None
        for q in rt.inbox.values():
            for item in q:
                if not item.persisted:
                    payloads.persist_inbox_frame(b, fid, item.frame)
                    item.persisted = True
        for sid, seq in rt.consumed:
            b.delete("inbox", inbox_key(fid, sid, seq))
        rt.consumed = ()
        if len(cp.sessions) > rt.routed:  # sessions are only ever added
            for st in list(cp.sessions.values())[rt.routed:]:
                if st.initiator:
                    continue  # routed by its id (_deliver_to_initiator): nothing to store
                key = session_key(st.counterparty.name, st.sid, st.role_of_peer)
                self.routes[key] = fid
                self._put_route(key, fid.encode())
            rt.routed = len(cp.sessions)
        if pend is None or pend.kind == "external":
            b.put("wake", fid_key(fid), b"")
        else:
            b.delete("wake", fid_key(fid))
        if pend is not None and pend.deadline is None and cp.timer_key is not None:
            b.delete("timers", cp.timer_key)
            cp.timer_key = None
        if self.capture_frames and pend is not None and rt.greenlet is not None:
            call = getattr(type(rt.logic), "call", None)
            snap = frames_mod.capture(rt.user_frame or rt.greenlet.gr_frame,
                                      stop_code=getattr(call, "__code__", None))
            b.put("frames", fid_key(fid), serialization.dumps(snap))
        if rt.start_blob is not None:
            b.put("logic", fid_key(fid), rt.start_blob)
            rt.start_blob = None
            if self.limits is not None and cp.invoker_sid is not None:
                self.limits.first_stored(b, rt)
        if cp.fingerprint is None:
            cp.fingerprint = fingerprint(rt)
        rt.base = serialization.dumps(cp)
        rt.fresh = ()
        b.put_header(fid_key(fid), rt.base)
        rt.dirty = False

    def _last_good(self, rt: FlowRuntime) -> Optional[Checkpoint]:
        """A fresh copy of the flow's last good checkpoint: ``rt.base`` (a clone of its
        starting state before its first commit, the staged header bytes within a round)
        or else what the store holds."""
        if isinstance(rt.base, Checkpoint):
            return rt.base.clone()
        if rt.base is not None:
            return serialization.loads(rt.base)
        return self.store.checkpoint(rt.flow_id)

    def _code_changed(self, rt: FlowRuntime) -> str:
        try:
            base = self._last_good(rt)
            stored = base.fingerprint if base is not None else None
        except Exception:
            stored = None
        if not stored:
            return ""
        changed = [name for name, dg in stored.items()
                   if name == rt.cp.flow_class and dg != code_digest(type(rt.logic))]
        return (f" (the code of {', '.join(changed)} changed since this checkpoint was "
                "written)") if changed else ""

    def _run_external(self, rt: FlowRuntime) -> None:
        call = rt.external
        if call is None:
            return
        fn, args = call
        fid = rt.flow_id

        def work() -> None:
            try:
                out: tuple = ("ok", fn(*args))
            except Exception as exc:  # noqa: BLE001 - recorded, re-raised in the flow
                out = ("exc", exc)
            self.post(ExternalDone(fid, out))

        if self.threaded:
            if self._workers is None:
                self._workers = ThreadPoolExecutor(max_workers=8,
                                                   thread_name_prefix=f"gf-ext-{self.identity.name}")
            self._workers.submit(work)
        else:
            work()

    def _shed(self, suspended: list[FlowRuntime]) -> None:
        """Hibernate: drop suspended flows from memory (reload_after_suspend: all of them;
        otherwise the least recently active beyond max_resident)."""
        if self.reload_after_suspend:
            for rt in suspended:
                if rt.pending is not None and rt.flow_id in self.resident:
                    self._evict(rt, "hibernated")
            return
        excess = 0 if self.max_resident is None else len(self.resident) - self.max_resident
        if excess > 0:
            victims = []
            for rt in self.resident.values():  # least recently active first
                if rt.pending is not None and not rt.dirty:
                    victims.append(rt)
                    if len(victims) >= excess:
                        break
            for rt in victims:
                self._evict(rt, "hibernated")

    # ================================================================== restart
    def recover(self) -> None:
        """After opening a store: re-send the outbox, re-arm timers, and load only the
        flows that have something to do (runnable, pending external, frames waiting)."""
        for key, data in self.store.iter_db("outbox"):
            peer_name = key.split(b"\0", 1)[0].decode()
            self.post_sends.append((self._party(peer_name), data))
        for key, _ in self.store.iter_db("timers"):
            deadline, fid = parse_timer_key(key)
            heapq.heappush(self.timers, (deadline, fid))
        wake = {k.decode() for k in self.store.keys("wake")} | self.store.inbox_flow_ids()
        for fid in sorted(wake):
            if fid not in self.resident:
                self._load(fid)

    def resend_outbox(self, peer_name: str) -> int:
        """Send ``peer_name`` again every committed frame it has not acknowledged: what a
        transport does when a connection to a restarted peer comes back."""
        prefix = peer_name.encode() + b"\0"
        n = 0
        party = self._party(peer_name)
        for key, data in self.store.iter_db("outbox"):
            if key.startswith(prefix):
                self.transport.send(party, data)
                n += 1
        return n

    def _party(self, name: str) -> Party:
        lookup = getattr(self.transport, "party", None)
        if lookup is not None:
            p = lookup(name)
            if p is not None:
                return p
        return Party(name)

    def crash(self) -> None:
        """Power cut: unwind every greenlet with I/O refused and forget everything."""
        for rt in list(self.resident.values()):
            self._evict(rt, "power cut")
        self.resident.clear()
        self.idle_greenlets.clear()
        self.run_queue.clear()
        self.dead = True
        waiters, self.waiters = self.waiters, {}
        for fns in waiters.values():  # nobody may wait for a result this node cannot give
            for fn in fns:
                fn(None)
