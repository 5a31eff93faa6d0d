"""`Node`: one party's runtime: identity, store, scheduler and transport.

A node started with ``Node.open`` runs its scheduler on its own thread; other threads
(the user's, RPC, transport) talk to it through the scheduler's event queue. Under
`greenflow.testing.MockNetwork` the node has no thread and the network drives it, so
tests are deterministic.
"""
from __future__ import annotations

import logging
import os
import threading
from concurrent import futures
from typing import Any, Callable, Iterable, Optional

from greenflow.runtime import snapshots as frames_mod
from greenflow.runtime.clock import Clock, SystemClock
from greenflow.errors import FlowError
from greenflow.statemachine.events import FrameArrived
from greenflow.flows.flow_logic import FlowLogic
from greenflow.node import flow_listing, node_options, stall_watch
from greenflow.node.identity import NodeIdentity
from greenflow.node.flow_views import (FlowInfo, FlowViews, dump_store, info_from_checkpoint,
                                       info_from_result, read_checkpoints, shown_status,
                                       suspended_on)
from greenflow.node.results import FlowHandle, FlowResults, NotCheckpointed
from greenflow.node.results import unpack_result as _unpack_result  # noqa: F401 - its old name
from greenflow.node.scheduler_calls import run_on_scheduler
from greenflow.node.starting import FlowStarter
from greenflow.statemachine.limits import DEFAULT_MAX_INBOUND_SESSIONS, PeerLimits
from greenflow.party import Party
from greenflow.flows.registry import ResponderTable
from greenflow.status import FlowStatus
from greenflow.statemachine.ids import new_flow_id
from greenflow.statemachine import stacks
from greenflow.statemachine.scheduler import Scheduler
from greenflow.node.services import ServiceHub
from greenflow.storage import open_store
from greenflow.storage.plain_files import open_plain_file
from greenflow.storage.interface import FlowStore

# Names other modules (and pickles: FlowInfo) reach through this module.
__all__ = ["Node", "FlowHandle", "FlowInfo", "LocalTransport", "read_checkpoints", "dump_store",
           "info_from_checkpoint", "info_from_result", "shown_status", "suspended_on",
           "DEFAULT_MAX_RESIDENT"]

log = logging.getLogger("greenflow.node")

DEFAULT_MAX_RESIDENT = 100_000
#: How long a clean close lets running external calls return (`Node.close`).
EXTERNAL_GRACE = 10.0


class LocalTransport:
    """The transport of a node with no network: it can only talk to itself."""

    def __init__(self) -> None:
        self.node: Optional["Node"] = None

    def send(self, peer: Party, data: bytes) -> None:
        assert self.node is not None
        if peer.name == self.node.party.name:
            self.node.scheduler.post(FrameArrived(self.node.party, data))
        else:
            log.error("%s has no network transport: cannot reach %s", self.node.party.name, peer.name)

    def ack(self, peer_name: str, msg_ids: tuple) -> None:
        from greenflow.statemachine.events import Acked
        assert self.node is not None
        if peer_name == self.node.party.name:
            self.node.scheduler.post(Acked(peer_name, msg_ids))

    def party(self, name: str) -> Optional[Party]:
        return self.node.party if self.node and name == self.node.party.name else None


#: In a node directory while the node drains (`Node.set_draining`): a restart keeps it.
DRAINING_FILE = "draining"


def _mark_draining(base_dir: str, on: bool) -> None:
    path = os.path.join(base_dir, DRAINING_FILE)
    try:
        if on:
            with open_plain_file(path, "w", encoding="utf-8") as fh:
                fh.write("draining: no new flows or inbound sessions until `drain off`\n")
        elif os.path.exists(path):
            os.remove(path)
    except OSError as exc:   # drains all the same; a restart would not know it
        log.warning("cannot %s %s: %s; a restart would not keep the node draining",
                    "write" if on else "remove", path, exc.strerror or exc)


class Node(NotCheckpointed):
    #: Where new flows' ids come from: a clustered worker sets one that picks a partition
    #: it owns (`greenflow.statemachine.ids.flow_id_in`).
    new_flow_id: Callable[[], str] = staticmethod(new_flow_id)
    #: A clustered worker's view of its whole party (`flow_listing.PartyListing`):
    #: `flows()` and `flow_page` list every worker's flows (`FlowInfo.worker` set).
    #: None: one node.
    party_listing: Optional[flow_listing.PartyListing] = None
    #: A clustered worker: whether it runs flow ``fid`` (else another worker does, and a
    #: wait for its result watches the shared result table). None: every flow is here.
    runs_flow: Optional[Callable[[str], bool]] = None
    #: A clustered worker that cannot start flows itself (it owns no partition): given
    #: the (flow, client id) pairs of a start, it files them for another worker and
    #: returns their ids, or returns None to start them here. None: start here.
    forward_starts: Optional[Callable[[list], Optional[list[str]]]] = None
    #: A clustered worker: the flow class of ``fid`` when its start is filed for a worker
    #: that has not started it yet (see `forward_starts`), else None. None: no filing.
    filed_start: Optional[Callable[[str], Optional[str]]] = None
    #: A clustered worker: records its party's draining where every worker sees it (the
    #: database), in place of the ``draining`` file. None: one node.
    party_draining: Optional[Callable[[bool], None]] = None

    def __init__(self, base_dir: str, name: str, *, apps: Optional[Iterable[str]] = None,
                 max_resident: Optional[int] = DEFAULT_MAX_RESIDENT, transport: Any = None,
                 clock: Optional[Clock] = None, capture_frames: bool | str = True,
                 reload_after_suspend: bool = False, threaded: bool = True,
                 sync: bool = True, retention: float = 7 * 24 * 3600.0,
                 max_retries: int = 5, retry_backoff: float = 1.0,
                 notary: bool = False, validating_notary: bool = False,
                 max_inbound_sessions: Optional[int] = DEFAULT_MAX_INBOUND_SESSIONS,
                 responder_idle_timeout: Optional[float] = None,
                 sensitive_names: Iterable[str] = (), store_url: Optional[str] = None,
                 store: Optional[FlowStore] = None) -> None:
        apps = node_options.check(
            name, apps, flags={"sync": sync, "threaded": threaded, "notary": notary,
                               "validating_notary": validating_notary,
                               "reload_after_suspend": reload_after_suspend},
            counts={"max_resident": max_resident, "max_retries": max_retries,
                    "max_inbound_sessions": max_inbound_sessions},
            seconds={"retention": retention, "retry_backoff": retry_backoff,
                     "responder_idle_timeout": responder_idle_timeout},
            optional=frozenset(("max_resident", "max_inbound_sessions", "responder_idle_timeout")))
        if validating_notary and not notary:
            raise FlowError(f"{name}: validating_notary=True needs notary=True")
        if sensitive_names:
            frames_mod.register_sensitive(names=sensitive_names)
        responders = ResponderTable(apps)   # (an app that fails to import: nothing made yet)
        self.base_dir = os.path.abspath(base_dir)
        os.makedirs(self.base_dir, exist_ok=True)
        self.identity = NodeIdentity.load_or_create(self.base_dir, name)
        self.party: Party = self.identity.party
        self.clock = clock or SystemClock()
        # ``store_url`` None: node.toml's ``store``, else $GREENFLOW_STORE, else LMDB.
        # ``store``: an open store to run on (a clustered worker's, fenced on its leases).
        self.store: FlowStore = store if store is not None else \
            open_store(self.base_dir, url=store_url, sync=sync)
        try:
            self._assemble(transport, responders, capture_frames, reload_after_suspend,
                           max_resident, threaded, retention, max_retries, retry_backoff,
                           max_inbound_sessions, responder_idle_timeout, notary,
                           validating_notary)
        except BaseException:
            # Nothing runs: let go of a store opened here, so the process can open the
            # node again (its lock would say the store is in use by this very process).
            if store is None:
                self.store.close()
            raise

    def _assemble(self, transport: Any, responders: ResponderTable, capture_frames: bool | str,
                  reload_after_suspend: bool, max_resident: Optional[int], threaded: bool,
                  retention: float, max_retries: int, retry_backoff: float,
                  max_inbound_sessions: Optional[int], responder_idle_timeout: Optional[float],
                  notary: bool, validating_notary: bool) -> None:
        """The node's parts around its open store, its flows recovered, its thread started."""
        self.transport = transport if transport is not None else LocalTransport()
        if hasattr(self.transport, "node"):
            self.transport.node = self
        self.services = ServiceHub(self)
        #: Collaborators for the operations on flows: results and waiting, listings and
        #: dumps, starting. The private names callers used before stay as aliases.
        self.results = FlowResults(self)
        self.views = FlowViews(self)
        self.starter = FlowStarter(self)
        self._record = self.results.record
        self._result = self.results.result
        self._status = self.results.status
        self._check_open = self.results.check_open
        self._wait_result = self.results.wait
        self._poll_result = self.results.poll
        self._start = self.starter.start
        self._start_prepared = self.starter.start_prepared
        self._flows = self.views.flows
        self._flow_info = self.views.flow_info
        self._dump = self.views.dump
        self.scheduler = Scheduler(
            identity=self.party, store=self.store, clock=self.clock, transport=self.transport,
            responders=responders, services=self.services,
            capture_frames=capture_frames, reload_after_suspend=reload_after_suspend,
            max_resident=max_resident, threaded=threaded, retention=retention,
            max_retries=max_retries, retry_backoff=retry_backoff)
        # What one peer may make this node hold (docs/nodes.md, "Limits").
        self.scheduler.set_limits(PeerLimits(self.store, max_inbound_sessions, responder_idle_timeout))
        self.threaded = threaded
        #: A notary node answers `NotaryClientFlow` and keeps the consumed-state index;
        #: a validating one also verifies each transaction and its history before it signs.
        self.is_notary = notary
        if notary:
            from greenflow.ledger.notary import install_notary  # the core imports the ledger only here
            install_notary(self, validating=validating_notary)
        self._closed = False
        self._thread: Optional[threading.Thread] = None
        self._wake = threading.Event()
        if os.path.exists(os.path.join(self.base_dir, DRAINING_FILE)):
            # Drained for an upgrade and restarted: it stays drained until told otherwise.
            log.warning("%s starts draining (%s is there; `drain off` ends it)", self.party.name,
                        DRAINING_FILE)
            self.scheduler.set_draining(True)
        self.scheduler.recover()
        if threaded:
            self.scheduler.set_wakeup(self._wake.set)
            self._thread = threading.Thread(target=self._loop,
                                            name=f"greenflow-{self.party.name}", daemon=True)
            self._thread.start()
            stall_watch.watch(self.scheduler, self._thread, self.party.name)

    # ------------------------------------------------------------------ lifecycle
    @classmethod
    def open(cls, base_dir: str, name: str = "O=Node,L=London,C=GB", apps: Optional[Iterable[str]] = None,
             max_resident: Optional[int] = DEFAULT_MAX_RESIDENT, **options: Any) -> "Node":
        """Open (or create) the node stored under ``base_dir`` and resume every
        unfinished flow that has something to do."""
        return cls(base_dir, name, apps=apps, max_resident=max_resident, **options)

    def _loop(self) -> None:
        sched = self.scheduler
        while not self._closed:
            try:
                sched.pump()
            except Exception:
                log.exception("%s: scheduler round failed", self.party.name)
            if sched.dead:
                break
            dl = sched.next_deadline()
            sweep = sched.upkeep()   # an idle node's results expire too
            if dl is None or (sweep is not None and sweep < dl):
                dl = sweep
            timeout = None if dl is None else max(0.0, dl - self.clock.now())
            if sched.events.empty():
                self._wake.wait(timeout if timeout is None else min(timeout, 3600))
            self._wake.clear()

    def close(self, external_grace: float = EXTERNAL_GRACE) -> None:
        """Stop the scheduler after its current round and close the store. Committed
        state is kept; unfinished flows resume at the next ``Node.open``.

        External calls (`FlowLogic.run_external`) running at the time get up to
        ``external_grace`` seconds to return, and their outcomes are committed before
        the node stops: a call that returns in time is not made again when the node
        reopens. One still running then is left to its thread, and its flow makes the
        call again at the next open (at least once, as after a crash)."""
        if isinstance(external_grace, bool) or not isinstance(external_grace, (int, float)):
            raise TypeError(f"external_grace takes a number of seconds, got "
                            f"{type(external_grace).__name__}")
        if not external_grace >= 0:
            raise ValueError(f"external_grace takes a number of seconds from 0 (inf: wait for "
                             f"every call), got {external_grace!r}")
        if self._closed:
            return
        if self._thread is not None and self._thread.is_alive() and not self.scheduler.dead:
            self._let_externals_finish(external_grace)
        self._closed = True
        stall_watch.unwatch(self.scheduler)
        if self._thread is not None:
            self._wake.set()
            self._thread.join(timeout=30)
        try:
            stacks.before_close(self.scheduler)   # the locals of flows left waiting
        except Exception as exc:  # noqa: BLE001 - diagnostics never stop a close
            log.warning("%s: could not keep the stacks of waiting flows: %s", self.party.name, exc)
        self.scheduler.crash()
        self.store.close()

    def _let_externals_finish(self, grace: float) -> None:
        sched = self.scheduler
        try:
            running = self.on_scheduler(sched.close_externals, timeout=5)
        except (FlowError, TimeoutError):   # closed meanwhile, or a scheduler stuck in a round
            return
        if not running:
            return
        log.info("%s: closing: waiting up to %gs for %d external call(s) to return",
                 self.party.name, grace, len(running))
        _, late = futures.wait(running, timeout=None if grace == float("inf") else grace)
        if late:
            log.warning("%s: closing with %d external call(s) still running after %gs (flows "
                        "%s): those flows make their calls again when the node reopens",
                        self.party.name, len(late), grace,
                        ", ".join(sorted(running[f] for f in late)[:10]))
        try:
            # Every outcome that came is in the scheduler's queue before this call: the
            # round that runs it also resumes those flows and commits, and the loop
            # stops only after that round.
            self.on_scheduler(lambda: None, timeout=10)
        except (FlowError, TimeoutError):
            pass

    def crash(self) -> None:
        """Power cut (tests): drop all in-memory state without committing anything."""
        self._closed = True
        stall_watch.unwatch(self.scheduler)
        if self._thread is not None:
            self.scheduler.stop()
            self._wake.set()
            self._thread.join(timeout=30)
        self.scheduler.crash()
        self.store.close()

    def __enter__(self) -> "Node":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ------------------------------------------------------------------ scheduler access
    @property
    def closed(self) -> bool:
        """True once `close` (or a power cut in tests) has run: the node does nothing more."""
        return self._closed

    def on_scheduler(self, fn: Callable[[], Any], timeout: float = 60.0) -> Any:
        """Run ``fn`` where the scheduler's state is consistent: inline without a thread,
        as an event on the scheduler thread otherwise (`scheduler_calls`)."""
        return run_on_scheduler(self, fn, timeout)

    # ------------------------------------------------------------------ starting flows
    def start_flow(self, flow: FlowLogic, client_id: Optional[str] = None) -> FlowHandle:
        """Start ``flow``; returns once the start is durably recorded. With ``client_id``
        the call is idempotent: the same id returns the flow started the first time."""
        if client_id is not None and not isinstance(client_id, str):
            raise TypeError(f"a client id is a str, got {type(client_id).__qualname__}")
        if client_id is not None and len(client_id.encode("utf-8", "replace")) > 200:
            # Part of the store's keys: refused here, not at the commit of every flow's round.
            raise ValueError("a client id must be at most 200 bytes (UTF-8)")
        return self._start([(flow, client_id)])[0]

    def start_flows(self, flows: Iterable[FlowLogic]) -> list[FlowHandle]:
        """Start many flows with one durable commit."""
        return self._start([(f, None) for f in flows])

    # ------------------------------------------------------------------ results
    def handle(self, flow_id: str) -> FlowHandle:
        """Re-attach to a flow by id (after a restart too)."""
        return self.results.handle(_flow_id(flow_id))

    # ------------------------------------------------------------------ operations
    def kill_flow(self, flow_id: str) -> bool:
        """Kill a flow: it unwinds (its ``finally`` blocks may do no I/O), its peers see
        `UnexpectedFlowEnd`, and ``result()`` raises `FlowKilled`. False when it had
        ended already; `UnknownFlow` for an id this node does not know (as over RPC)."""
        self.views.act_here(_flow_id(flow_id))   # (a clustered worker: NotHere)
        done = self.on_scheduler(lambda: self.scheduler.kill(flow_id))
        return done or self.views.nothing_done(flow_id)

    def retry_flow(self, flow_id: str) -> bool:
        """Take a HOSPITALIZED flow out of the hospital and run it again from its last
        checkpoint (after fixing what parked it, e.g. deploying compatible code). False
        for a flow that is not HOSPITALIZED; `UnknownFlow` for an id this node does not
        know."""
        self.views.act_here(_flow_id(flow_id))
        done = self.on_scheduler(lambda: self.scheduler.retry(flow_id))
        return done or self.views.nothing_done(flow_id)

    def set_draining(self, on: bool = True) -> None:
        """Draining (for upgrades that must not meet old checkpoints): no new flows, no
        new inbound sessions; running flows go on to finish. Watch
        `pending_flows_count` reach 0, then stop the node. Kept across a restart (a
        ``draining`` file in the node directory), as an upgrade's stop and start need.
        On a clustered worker, the whole party drains (every worker within a second)."""
        if self.party_draining is not None:
            self.party_draining(on)
        else:
            _mark_draining(self.base_dir, on)
        self.on_scheduler(lambda: self.scheduler.set_draining(on))

    @property
    def draining(self) -> bool:
        return self.scheduler.draining

    @property
    def pending_flows_count(self) -> int:
        """Unfinished flows on this node (running, waiting, hibernated, hospitalized); on
        a clustered worker, the whole party's."""
        # Stored checkpoints, plus flows started in the current round whose first commit has
        # not happened yet (O(1): millions of waiting flows are not listed to count them).
        def fresh() -> int:
            return sum(1 for rt in self.scheduler.resident.values() if rt.start_blob is not None)
        if self.party_listing is None:
            return self.on_scheduler(lambda: self.store.flow_count() + fresh())
        store = self.party_listing.open_store()
        try:
            return store.flow_count() + self.on_scheduler(fresh)
        finally:
            store.close()

    def add_progress_listener(self, fn: Callable[[str, Optional[str]], None]) -> None:
        """``fn(flow_id, step)`` on every progress change (step None: the flow ended).
        Called on the scheduler thread: keep it quick. While any listener is registered
        the node works out every step of every flow as it is taken; a listener with an
        ``active`` attribute that is false (the RPC's hub with no stream open) does not
        count, and with none the node works each flow's step out only at its commit."""
        self.scheduler.add_progress_listener(fn)

    def flows(self) -> list[FlowInfo]:
        """Unfinished flows and recently finished ones (a clustered worker: the whole
        party's, read page by page as `flow_page` reads them)."""
        if self.party_listing is None:
            return self.on_scheduler(self.views.flows)
        return flow_listing.every_flow(self)

    def flow_page(self, statuses: Optional[Iterable[FlowStatus]] = None,
                  limit: int = flow_listing.DEFAULT_LIMIT,
                  cursor: Optional[str] = None) -> flow_listing.FlowPage:
        """A page of `flows` (unfinished flows first, then finished ones, each newest
        first): at most ``limit`` flows with one of ``statuses``, from a page's
        ``next_cursor`` on. Bounded in what it reads, and the store is read on the
        calling thread, so a long list never holds up the flows (`flow_listing`)."""
        return flow_listing.flow_page(self, statuses, limit, cursor)

    def flow_info(self, flow_id: str) -> FlowInfo:
        """One flow's `FlowInfo` (as `flows()` gives it) without listing every flow.
        Raises `UnknownFlow` for an id this node does not know."""
        _flow_id(flow_id)
        return self.on_scheduler(lambda: self.views.flow_info(flow_id))

    def checkpoints_dump(self) -> list[dict]:
        """One JSON-ready dict per unfinished flow: where it waits, its sessions and the
        frames of its stack with their locals (as captured at its last suspension)."""
        return self.on_scheduler(self.views.dump)

    def checkpoints_page(self, limit: int = flow_listing.CHECKPOINTS_LIMIT,
                         cursor: Optional[str] = None) -> tuple[list[dict], Optional[str]]:
        """A page of `checkpoints_dump` (newest first) and the cursor of the next one
        (None: this was the last); see `flow_listing.checkpoints_page`."""
        return flow_listing.checkpoints_page(self, limit, cursor)


def _flow_id(flow_id: object) -> str:
    """A flow id as the calls that take one need it: a str (an int or None got as far as
    the store's key encoding before, and failed there with an AttributeError)."""
    if not isinstance(flow_id, str):
        raise TypeError(f"a flow id is a str, got {type(flow_id).__qualname__}")
    return flow_id
