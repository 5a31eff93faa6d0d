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

import gc
import heapq
from collections import deque
import logging
import queue
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Iterator, Optional

from greenflow.status import FlowStatus
from greenflow.statemachine import parked, stacks, transitions
from greenflow.runtime.checkpoint import Checkpoint
from greenflow.errors import FlowError, StoreError, WireFormatError
from greenflow.messages import decode_frame
from greenflow.log_limits import RateLimitedLog
from greenflow.statemachine.events import (Acked, Call, ExternalDone, FrameArrived, KillFlow, StartFlows)
from greenflow.statemachine.executor import execute
from greenflow.runtime.flow_runtime import FlowRuntime, Resume
from greenflow.party import Party
from greenflow.flows.registry import ResponderTable
from greenflow.storage.interface import Batch, FlowStore
from greenflow.statemachine.routing import Routing
from greenflow.statemachine.running import Running
from greenflow.statemachine.loading import Loading
from greenflow.statemachine.ending import Ending
from greenflow.statemachine.commit import CommitStaging

log = logging.getLogger("greenflow.scheduler")

#: Events one round takes in at most before it commits. Events that keep coming (a peer's
#: flood of frames) would otherwise keep one round open: nothing committed, nothing sent,
#: for every flow of the node. (The transports stop reading from peers while the queue
#: holds `MAX_QUEUED_EVENTS`.) A frame counts one more per KiB: the payloads a round
#: decodes are held until it ends, and may take ~20 times their wire size in objects.
MAX_EVENTS_PER_ROUND = 10_000
MAX_QUEUED_EVENTS = 20_000


class Scheduler(Running, Routing, Loading, Ending, CommitStaging):
    #: What one peer may make this node hold (`greenflow.statemachine.limits.PeerLimits`); set by `Node`.
    limits: Any = None

    def __init__(self, *, identity: Party, store: FlowStore, clock: Any, transport: Any,
                 responders: ResponderTable, services: Any = None,
                 capture_frames: bool | str = True, reload_after_suspend: bool = False,
                 max_resident: Optional[int] = None, threaded: bool = False,
                 retention: float = 7 * 24 * 3600.0, max_retries: int = 5,
                 retry_backoff: float = 1.0) -> None:
        self.identity = identity
        self.store = store
        self.clock = clock
        self.transport = transport
        self.responders = responders
        self.services = services
        self.capture_frames = stacks.check_mode(capture_frames)   # see statemachine.stacks
        self.reload_after_suspend = reload_after_suspend
        self.max_resident = max_resident
        self.threaded = threaded
        self.retention = retention
        self.max_retries = max_retries
        self.retry_backoff = retry_backoff
        self.draining = False
        # Frames of sessions peers opened while the node drains, by (peer, sid, seq).
        self._deferred: dict[tuple[str, str, int], tuple[Party, bytes]] = {}
        self.held_bytes = 0   # of the frames in `_deferred`
        self.reject_budget: dict[str, tuple[float, float]] = {}   # `Routing._may_reject`
        self.peer_log = RateLimitedLog(log)   # warnings a peer's frames cause (`routing`)
        self._next_sweep = 0.0
        self.events: "queue.SimpleQueue[Any]" = queue.SimpleQueue()
        self.resident: dict[str, FlowRuntime] = {}
        self.routes: dict[tuple[str, str, int], str] = {}   # (peer, sid, peer role) -> flow
        self.run_queue: deque[Resume] = deque()
        self.timers: list[tuple[float, str]] = []
        self.batch = Batch()
        # Routes written in this round's batch, not yet readable from the store.
        self._round_routes: dict[tuple[str, str, int], bytes] = {}
        self.decoded: dict[int, tuple[bytes, Any]] = {}   # see _decode_payload
        self.post_sends: list[tuple[Party, bytes]] = []
        self.post_acks: dict[str, list[tuple]] = {}
        self.post_externals: list[FlowRuntime] = []
        self.externals_running: set[str] = set()   # flow ids whose external call is running
        self.post_callbacks: list[Callable[[], None]] = []
        self.waiters: dict[str, list[Callable[[dict], None]]] = {}
        self.recent_results: dict[str, dict] = {}
        # Flows of this round whose result records are big, with their sizes: once
        # committed (the store has them) they join `kept_big`, the latest of which
        # `recent_results` keeps within RECENT_BIG_RESULTS_BYTES: bounded in bytes too.
        self.big_results: list[tuple[str, int]] = []
        self.kept_big: deque[tuple[str, int]] = deque()
        self.kept_big_bytes = 0
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
        #: Flows whose stored checkpoint cannot be read (`Loading._hospitalize_stored`).
        self.unreadable: set[str] = set()
        self.dead = False
        self.commit_error: Optional[BaseException] = None
        self._workers: Optional[ThreadPoolExecutor] = None
        # External calls running on `_workers` (future -> flow id), and whether a clean
        # close has begun (no more are started): see `CommitStaging.close_externals`.
        self.external_calls: dict[Any, str] = {}
        # peer name -> [what it has waiting unread here] (`Routing.unread_from`)
        self.unread: dict[str, list] = {}
        self.closing = False
        self.steps = 0   # two per turn a flow has had, odd while one runs (`Running._step`)
        self._wakeup: Optional[Callable[[], None]] = None
        self.stats = {"commits": 0, "flows_started": 0, "replays": 0}
        # (event, flow class) -> count, for the node's metrics (`greenflow.rpc.metrics`): a
        # dict increment per flow start/end, read when metrics are scraped.
        self.flow_counts: dict[tuple[str, str], int] = {}
        # fn(seconds, writes, suspended) after each durable commit (`greenflow.rpc.metrics`).
        self.commit_observer: Optional[Callable[[float, int, int], None]] = None
        parked.open_index(store, self.batch, identity.name)

    # ================================================================== wiring
    def set_wakeup(self, fn: Optional[Callable[[], None]]) -> None:
        """``fn()`` whenever an event is posted: wakes a threaded node's loop."""
        self._wakeup = fn

    def set_limits(self, limits: Any) -> None:
        """What one peer may make this node hold (`PeerLimits`)."""
        self.limits = limits

    def stop(self) -> None:
        """Stop the loop of a threaded node at its next turn (nothing more is committed)."""
        self.dead = True

    def add_progress_listener(self, fn: Callable[[str, Optional[str]], None]) -> None:
        self.progress_listeners.append(fn)

    def add_flow_end_listener(self, fn: Callable[[str], None]) -> None:
        """``fn(flow_id)`` inside the round in which a flow ends (see ``flow_end_listeners``)."""
        self.flow_end_listeners.append(fn)

    def observe_commits(self, fn: Optional[Callable[[float, int, int], None]]) -> None:
        """``fn(seconds, writes, suspended)`` after each durable commit."""
        self.commit_observer = fn

    # ---------------------------------------------- what the executor's actions ask for
    def resume_later(self, rt: FlowRuntime, outcome: Any) -> None:
        """Run ``rt`` again in this round, resumed with ``outcome``."""
        self.run_queue.append(Resume(rt, outcome))

    def hold_for_commit(self, rt: FlowRuntime) -> None:
        """``rt`` took in frames: its checkpoint goes into this round's commit, and the
        frames are acknowledged only once that commit holds."""
        self.touched[rt.flow_id] = rt

    def ack_after_commit(self, peer_name: str, msg_id: Any) -> None:
        self.post_acks.setdefault(peer_name, []).append(msg_id)

    def start_external_after_commit(self, rt: FlowRuntime) -> None:
        """Start ``rt``'s external call once this round's commit holds, unless it is
        running already (a flow rebuilt by replay while its call still runs waits for it)."""
        if rt.flow_id not in self.externals_running:
            self.externals_running.add(rt.flow_id)
            self.post_externals.append(rt)

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
        """Run one round to quiescence and commit. Returns True when anything happened.

        The cyclic collector waits for the round's end. A collection inside a round walks
        the round's short-lived objects (its batch, payloads, frames on their way) beside
        the flows that stay; at the end those are gone, freed by reference counting, and
        the collection the allocations called for walks what survives. Measured on
        ping-pong at 10,000 flows in flight: 6.1-6.3 -> 2.8-2.9 us of collection per flow.
        A collector disabled before the round (by the process) stays disabled; one
        disabled by flow code during the round is enabled again at its end."""
        if self.dead:
            return False
        if not gc.isenabled():
            return self._round()
        gc.disable()
        try:
            return self._round()
        finally:
            gc.enable()

    def _round(self) -> bool:
        did = False
        run_queue, step = self.run_queue, self._step
        budget = MAX_EVENTS_PER_ROUND
        while True:
            taken = self._drain_events(budget) if budget > 0 else 0
            budget -= taken
            progressed = taken > 0
            if self.timers:
                progressed |= self._fire_due_timers()
            if run_queue:
                progressed = True
                pop = run_queue.popleft
                while run_queue:
                    r = pop()
                    step(r.rt, r.value)
            if not progressed:
                break
            did = True
        if self.batch or self.touched or self.post_sends or self.post_acks or self.post_callbacks:
            self.commit()
            did = True
        if self.decoded:   # payloads checked this round whose frames were not consumed
            self.decoded.clear()
        return did

    def next_deadline(self) -> Optional[float]:
        return self.timers[0][0] if self.timers else None

    def _drain_events(self, budget: int) -> int:
        """Apply up to ``budget`` queued events; how many."""
        events = self.events
        if events.empty():
            return 0
        get, empty, deliver = events.get_nowait, events.empty, self._deliver
        taken = 0
        while taken < budget and not empty():   # only this thread takes events
            ev = get()
            try:
                if type(ev) is FrameArrived:   # most events: routed without a dispatch hop
                    taken += 1 + (len(ev.data) >> 10)
                    deliver(ev.sender, ev.data)
                else:   # (an acknowledgement counts one more per 8 frames it names)
                    taken += 1 if type(ev) is not Acked else 1 + (len(ev.msg_ids) >> 3)
                    self._apply(ev)
            except StoreError as exc:   # (its database restarting: a peer re-sends its
                # frame); a traceback per frame said nothing more, many times over
                self.peer_log.warning("store read", "%s: could not apply %s, the store did "
                                      "not answer: %s", self.identity.name,
                                      type(ev).__name__, exc)
            except Exception:
                log.exception("%s: failed to apply %s", self.identity.name, type(ev).__name__)
        return taken

    def _apply(self, ev: Any) -> None:
        t = type(ev)
        if t is FrameArrived:
            self._deliver(ev.sender, ev.data)
        elif t is StartFlows:
            for cp, blob, logic in ev.items:
                self.record_start(cp, blob, logic)
            if ev.done is not None:
                self.post_callbacks.append(ev.done)
        elif t is Acked:
            for mid in ev.msg_ids:
                sid, to_resp, seq = mid
                self.batch.delete_outbox(ev.peer, sid, to_resp, seq)
        elif t is ExternalDone:
            self.externals_running.discard(ev.flow_id)
            rt = self._resident_or_load(ev.flow_id)
            if rt is not None:
                if rt.pending is None and rt.greenlet is None:
                    rt.external_done = ev.outcome  # reloaded: answer it once replay gets there
                else:
                    execute(self, rt, transitions.on_external_done(rt.pending, ev.outcome))
        elif t is KillFlow:
            ok = self.kill(ev.flow_id)
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
            held, self._deferred = self._deferred, {}
            self.held_bytes = 0
            for sender, data in held.values():
                self.events.put(FrameArrived(sender, data))

    # ================================================================== restart
    def recover(self) -> None:
        """After opening a store: re-send the outbox, re-arm timers, and load only the
        flows that have something to do (runnable, pending external, frames waiting)."""
        self.resend_outbox(send=lambda party, data: self.post_sends.append((party, data)))
        for deadline, fid in self.store.timers():
            heapq.heappush(self.timers, (deadline, fid))
        wake = self.store.flows_to_wake()
        for fid in sorted(wake):
            if fid in self.resident or self._load(fid) is not None:
                continue
            # Not loaded: parked. One waiting for its automatic retry gets the retry's
            # timer back (it lived in memory only: a restart left the flow parked for good).
            try:
                cp = self.store.checkpoint(fid)
            except Exception:  # noqa: BLE001 - `_load` has said what is wrong with it
                continue
            if cp is not None and cp.status == FlowStatus.HOSPITALIZED and cp.retry_at is not None:
                heapq.heappush(self.timers, (cp.retry_at, fid))

    def unacknowledged_frames(self, peer_name: Optional[str] = None
                              ) -> Iterator[tuple[str, bytes]]:
        """Every committed frame ``peer_name`` (every peer when None) has not acknowledged,
        with the peer's name, in the order it was sent. The one reader of the outbox for re-sending, so a
        restart, a peer coming back and a transport taking spilled frames back into
        memory all re-send the same frames. Safe to call from the transport's thread: it
        only reads the store. A record that does not decode as a frame (a damaged store)
        is not sent: its peer would drop it at every re-send, and only the peer's log
        would say so; it is logged here, naming what it is."""
        for name, data in self.store.outbox(peer_name):
            try:
                decode_frame(data)
            except WireFormatError as exc:
                self.peer_log.warning(
                    f"damaged outbox {name}", "%s: a frame in the outbox to %s cannot be "
                    "decoded (%s): the record is damaged, and is not sent; the flow that sent "
                    "it waits for an answer that cannot come (see `greenflow flow list`; kill "
                    "it)", self.identity.name, name, exc)
                continue
            yield name, data

    def resend_outbox(self, peer_name: Optional[str] = None, *,
                      send: Optional[Callable[[Party, bytes], Any]] = None) -> int:
        """Send again every committed frame that ``peer_name`` (every peer when None) has
        not acknowledged: what a transport does when a connection to a restarted peer
        comes back, and what a reopened node does with its own outbox (through ``send``,
        which queues the frames for after its first commit). Returns how many."""
        send = send or self.transport.send
        n = 0
        for name, data in self.unacknowledged_frames(peer_name):
            send(self.party_for(name), data)
            n += 1
        return n

    def crash(self) -> None:
        """Power cut: unwind every greenlet with I/O refused and forget everything."""
        for rt in list(self.resident.values()):
            self._evict(rt, "power cut")
        self.resident.clear()
        self.idle_greenlets.clear()
        self.run_queue.clear()
        self.dead = True
        self.stop_workers()
        waiters, self.waiters = self.waiters, {}
        for fns in waiters.values():  # nobody may wait for a result this node cannot give
            for fn in fns:
                fn(None)
