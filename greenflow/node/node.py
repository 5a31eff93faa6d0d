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
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Optional

from greenflow.runtime import snapshots as frames_mod
from greenflow import serialization
from greenflow.runtime.checkpoint import Checkpoint
from greenflow.runtime.clock import Clock, SystemClock
from greenflow.errors import FlowError, FlowKilled, UnknownFlow
from greenflow.statemachine.events import Call, FrameArrived
from greenflow.flows.flow_logic import FlowLogic
from greenflow.runtime.flow_runtime import rebuild_flow_exception
from greenflow.node.identity import NodeIdentity
from greenflow.runtime.journal import describe
from greenflow.statemachine.limits import DEFAULT_MAX_INBOUND_SESSIONS, PeerLimits
from greenflow.party import Party
from greenflow.flows.registry import ResponderTable, qualified_name
from greenflow.statemachine.ids import new_flow_id
from greenflow.statemachine.scheduler import Scheduler
from greenflow.node.services import ServiceHub
from greenflow.status import FlowStatus
from greenflow.storage import open_store
from greenflow.storage.interface import FlowStore

log = logging.getLogger("greenflow.node")

DEFAULT_MAX_RESIDENT = 100_000


@dataclass(frozen=True)
class FlowInfo:
    id: str
    flow_class: str
    status: FlowStatus
    progress_step: Optional[str]
    suspended_on: Optional[str]
    resident: bool
    error: Optional[str]


class FlowHandle:
    """A started flow. Holds only the id and the node, so re-attach with
    ``node.handle(id)`` after a restart."""

    def __init__(self, node: "Node", flow_id: str) -> None:
        self.node = node
        self.id = flow_id

    def __repr__(self) -> str:
        return f"FlowHandle({self.id})"

    def result(self, timeout: Optional[float] = None) -> Any:
        """The flow's return value, or its error raised here. On a real node this waits
        (`TimeoutError` after ``timeout``); on MockNetwork an unfinished flow raises
        `FlowError` at once, since nothing else would run it."""
        return self.node._result(self.id, timeout)

    @property
    def status(self) -> FlowStatus:
        return self.node._status(self.id)


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


class Node:
    def __init__(self, base_dir: str, name: str, *, apps: Optional[Iterable[str]] = None,
                 max_resident: Optional[int] = DEFAULT_MAX_RESIDENT, transport: Any = None,
                 clock: Optional[Clock] = None, capture_frames: bool = True,
                 reload_after_suspend: bool = False, threaded: bool = True,
                 sync: bool = True, retention: float = 7 * 24 * 3600.0,
                 max_retries: int = 5, retry_backoff: float = 1.0,
                 notary: bool = False, validating_notary: bool = False,
                 max_inbound_sessions: Optional[int] = DEFAULT_MAX_INBOUND_SESSIONS,
                 responder_idle_timeout: Optional[float] = None,
                 sensitive_names: Iterable[str] = (), store_url: Optional[str] = None) -> None:
        if validating_notary and not notary:
            raise FlowError(f"{name}: validating_notary=True needs notary=True")
        self.base_dir = os.path.abspath(base_dir)
        os.makedirs(self.base_dir, exist_ok=True)
        self.identity = NodeIdentity.load_or_create(self.base_dir, name)
        self.party: Party = self.identity.party
        self.clock = clock or SystemClock()
        # ``store_url`` None: node.toml's ``store``, else $GREENFLOW_STORE, else LMDB.
        self.store: FlowStore = open_store(self.base_dir, url=store_url, sync=sync)
        self.transport = transport if transport is not None else LocalTransport()
        if hasattr(self.transport, "node"):
            self.transport.node = self
        self.services = ServiceHub(self)
        self.scheduler = Scheduler(
            identity=self.party, store=self.store, clock=self.clock, transport=self.transport,
            responders=ResponderTable(apps), services=self.services,
            capture_frames=capture_frames, reload_after_suspend=reload_after_suspend,
            max_resident=max_resident, threaded=threaded, retention=retention,
            max_retries=max_retries, retry_backoff=retry_backoff)
        # What one peer may make this node hold (docs/nodes.md, "Limits").
        self.scheduler.set_limits(PeerLimits(self.store, max_inbound_sessions, responder_idle_timeout))
        if sensitive_names:
            frames_mod.register_sensitive(names=sensitive_names)
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
        self.scheduler.recover()
        if threaded:
            self.scheduler.set_wakeup(self._wake.set)
            self._thread = threading.Thread(target=self._loop, name=f"greenflow-{name}",
                                            daemon=True)
            self._thread.start()

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
            timeout = None if dl is None else max(0.0, dl - self.clock.now())
            if sched.events.empty():
                self._wake.wait(timeout if timeout is None else min(timeout, 3600))
            self._wake.clear()

    def close(self) -> None:
        """Stop the scheduler after its current round and close the store. Committed
        state is kept; unfinished flows resume at the next ``Node.open``."""
        if self._closed:
            return
        self._closed = True
        if self._thread is not None:
            self._wake.set()
            self._thread.join(timeout=30)
        self.scheduler.crash()
        self.store.close()

    def crash(self) -> None:
        """Power cut (tests): drop all in-memory state without committing anything."""
        self._closed = True
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
        as an event on the scheduler thread otherwise."""
        if self._closed:
            raise FlowError(f"node {self.party.name} is closed")
        if not self.threaded or threading.current_thread() is self._thread:
            out = fn()
            if not self.threaded and (self.scheduler.batch or self.scheduler.touched
                                      or self.scheduler.post_callbacks):
                self.scheduler.commit()
            return out
        box: dict[str, Any] = {}
        done = threading.Event()

        def finish(r: Any, e: Optional[BaseException]) -> None:
            box["r"], box["e"] = r, e
            done.set()

        self.scheduler.post(Call(fn, finish))
        if not done.wait(timeout):
            raise TimeoutError(f"node {self.party.name} did not answer within {timeout}s")
        if box["e"] is not None:
            raise box["e"]
        return box["r"]

    # ------------------------------------------------------------------ starting flows
    def start_flow(self, flow: FlowLogic, client_id: Optional[str] = None) -> FlowHandle:
        """Start ``flow``; returns once the start is durably recorded. With ``client_id``
        the call is idempotent: the same id returns the flow started the first time."""
        return self._start([(flow, client_id)])[0]

    def start_flows(self, flows: Iterable[FlowLogic]) -> list[FlowHandle]:
        """Start many flows with one durable commit."""
        return self._start([(f, None) for f in flows])

    def _start(self, items: list[tuple[FlowLogic, Optional[str]]]) -> list[FlowHandle]:
        if self._closed:
            raise FlowError(f"node {self.party.name} is closed")
        if self.scheduler.draining:
            raise FlowError(f"node {self.party.name} is draining: no new flows are started "
                            "until draining is turned off")
        prepared = []
        handles: list[FlowHandle] = []
        seen_clients: dict[str, str] = {}
        for flow, client_id in items:
            if not isinstance(flow, FlowLogic):
                raise TypeError(f"start_flow takes a FlowLogic instance, got {type(flow).__qualname__}")
            if client_id is not None:
                existing = seen_clients.get(client_id) or self.store.client(client_id)
                if existing is not None:
                    handles.append(FlowHandle(self, existing))
                    continue
            fid = new_flow_id()
            if client_id is not None:
                seen_clients[client_id] = fid
            try:
                blob = serialization.dumps(flow)
            except Exception as exc:
                raise FlowError(f"{qualified_name(type(flow))} cannot be checkpointed: {exc}") from exc
            cp = Checkpoint(fid, qualified_name(type(flow)), client_id=client_id,
                            started_at=self.clock.now())
            prepared.append((cp, blob, flow))
            handles.append(FlowHandle(self, fid))
        if prepared:
            self._start_prepared(prepared)
        return handles

    def _start_prepared(self, prepared: list) -> None:
        sched = self.scheduler
        if not self.threaded:
            for cp, blob, flow in prepared:
                sched.record_start(cp, blob, flow)
            sched.commit()
            return
        done = threading.Event()
        sched.start_flows(prepared, done.set)
        deadline = time.monotonic() + 120
        while not done.wait(0.25):
            if sched.dead:   # its commits stopped (e.g. a full disk): the start is not durable
                raise sched.commit_error or FlowError(f"node {self.party.name} has stopped")
            if time.monotonic() > deadline:
                raise TimeoutError(f"node {self.party.name} did not record the start within 120s")
        if sched.commit_error is not None:
            raise sched.commit_error

    # ------------------------------------------------------------------ results
    def handle(self, flow_id: str) -> FlowHandle:
        """Re-attach to a flow by id (after a restart too)."""
        self._check_open(flow_id)
        if self.store.checkpoint(flow_id) is None and self.store.result(flow_id) is None \
                and flow_id not in self.scheduler.resident:
            raise UnknownFlow(f"no flow {flow_id!r} on node {self.party.name}")
        return FlowHandle(self, flow_id)

    def _check_open(self, fid: str) -> None:
        """Handles outlive their node object (a restart opens a new one): say so, rather
        than let the closed store raise from inside LMDB."""
        if self._closed:
            raise FlowError(f"node {self.party.name} is closed; to reach flow {fid} after a "
                            "restart, re-attach with node.handle(id) on the reopened node")

    def _record(self, fid: str) -> Optional[dict]:
        self._check_open(fid)
        rec = self.scheduler.recent_results.get(fid)
        return rec if rec is not None else self.store.result(fid)

    def _result(self, fid: str, timeout: Optional[float]) -> Any:
        rec = self._record(fid)
        if rec is None:
            if not self.threaded:
                raise FlowError(f"flow {fid} on {self.party.name} has not finished "
                                f"(status {self._status(fid)}); run the network")
            rec = self._wait_result(fid, timeout)
        return _unpack_result(fid, rec)

    def _wait_result(self, fid: str, timeout: Optional[float]) -> dict:
        box: dict[str, dict] = {}
        done = threading.Event()

        def register() -> None:
            rec = self._record(fid)
            if rec is not None:
                box["r"] = rec
                done.set()
            else:
                self.scheduler.when_finished(fid, lambda r: (box.__setitem__("r", r), done.set()))

        self.on_scheduler(register)
        if not done.wait(timeout):
            raise TimeoutError(f"flow {fid} did not finish within {timeout}s")
        if box["r"] is None:
            raise FlowError(f"node {self.party.name} closed while waiting for flow {fid}; "
                            "re-attach with node.handle(id) once it is reopened")
        return box["r"]

    def _status(self, fid: str) -> FlowStatus:
        rec = self._record(fid)
        if rec is not None:
            return rec["status"]
        rt = self.scheduler.resident.get(fid)
        if rt is not None:
            return rt.cp.status
        cp = self.store.checkpoint(fid)
        if cp is None:
            raise UnknownFlow(f"no flow {fid!r} on node {self.party.name}")
        return shown_status(cp, resident=False)

    # ------------------------------------------------------------------ operations
    def kill_flow(self, flow_id: str) -> bool:
        """Kill a flow: it unwinds (its ``finally`` blocks may do no I/O), its peers see
        `UnexpectedFlowEnd`, and ``result()`` raises `FlowKilled`."""
        return self.on_scheduler(lambda: self.scheduler.kill(flow_id))

    def retry_flow(self, flow_id: str) -> bool:
        """Take a HOSPITALIZED flow out of the hospital and run it again from its last
        checkpoint (after fixing what parked it, e.g. deploying compatible code)."""
        return self.on_scheduler(lambda: self.scheduler.retry(flow_id))

    def set_draining(self, on: bool = True) -> None:
        """Draining (for upgrades that must not meet old checkpoints): no new flows, no
        new inbound sessions; running flows go on to finish. Watch
        `pending_flows_count` reach 0, then stop the node."""
        self.on_scheduler(lambda: self.scheduler.set_draining(on))

    @property
    def draining(self) -> bool:
        return self.scheduler.draining

    @property
    def pending_flows_count(self) -> int:
        """Unfinished flows on this node (running, waiting, hibernated, hospitalized)."""
        # Stored checkpoints, plus flows started in the current round whose first commit has
        # not happened yet (O(1): millions of waiting flows are not listed to count them).
        return self.on_scheduler(lambda: self.store.flow_count() + sum(
            1 for rt in self.scheduler.resident.values() if rt.start_blob is not None))

    def add_progress_listener(self, fn: Callable[[str, Optional[str]], None]) -> None:
        """``fn(flow_id, step)`` on every progress change (step None: the flow ended).
        Called on the scheduler thread: keep it quick."""
        self.scheduler.add_progress_listener(fn)

    def flows(self) -> list[FlowInfo]:
        """Unfinished flows and recently finished ones."""
        return self.on_scheduler(self._flows)

    def flow_info(self, flow_id: str) -> FlowInfo:
        """One flow's `FlowInfo` (as `flows()` gives it) without listing every flow.
        Raises `UnknownFlow` for an id this node does not know."""
        return self.on_scheduler(lambda: self._flow_info(flow_id))

    def _flow_info(self, fid: str) -> FlowInfo:
        rt = self.scheduler.resident.get(fid)
        if rt is not None:
            return self._info(rt.cp, True)
        rec = self._record(fid)
        if rec is not None:
            return FlowInfo(fid, rec["flow_class"], rec["status"], None, None, False,
                            rec.get("error"))
        cp = self.store.checkpoint(fid)
        if cp is None:
            raise UnknownFlow(f"no flow {fid!r} on node {self.party.name}")
        return self._info(cp, False)

    def _flows(self) -> list[FlowInfo]:
        out: dict[str, FlowInfo] = {}
        resident = self.scheduler.resident
        for fid, raw in self.store.header_blobs():
            rt = resident.get(fid)
            cp: Checkpoint = rt.cp if rt is not None else serialization.loads(raw)
            out[fid] = self._info(cp, rt is not None)
        for fid, rt in resident.items():
            if fid not in out:
                out[fid] = self._info(rt.cp, True)
        for fid, rec in self.store.results():
            if fid not in out:
                out[fid] = FlowInfo(fid, rec["flow_class"], rec["status"], None, None, False,
                                    rec.get("error"))
        for fid, rec in self.scheduler.recent_results.items():
            out.setdefault(fid, FlowInfo(fid, rec["flow_class"], rec["status"], None, None,
                                         False, rec.get("error")))
        return list(out.values())

    def _info(self, cp: Checkpoint, resident: bool) -> FlowInfo:
        return FlowInfo(cp.flow_id, cp.flow_class, shown_status(cp, resident), cp.progress_step,
                        suspended_on(cp), resident, cp.error)

    def checkpoints_dump(self) -> list[dict]:
        """One JSON-ready dict per unfinished flow: where it waits, its sessions and the
        frames of its stack with their locals (as captured at its last suspension)."""
        return self.on_scheduler(self._dump)

    def _dump(self) -> list[dict]:
        return dump_store(self.store, set(self.scheduler.resident))


def read_checkpoints(base_dir: str) -> list[dict]:
    """`Node.checkpoints_dump` of a node directory, read-only and without starting the
    node: nothing is recovered, replayed or written (safe beside a running node)."""
    store = open_store(base_dir, readonly=True)
    try:
        return dump_store(store, set())
    finally:
        store.close()


def dump_store(store: FlowStore, resident: set[str]) -> list[dict]:
    out = []
    for fid, raw in store.header_blobs():
        try:
            cp: Checkpoint = serialization.loads(raw)
        except Exception as exc:
            out.append({"flow_id": fid, "status": "UNREADABLE", "error": f"{type(exc).__name__}: {exc}",
                        "frames": [], "sessions": []})
            continue
        status = shown_status(cp, fid in resident)
        try:
            snap = store.snapshot(fid)
        except Exception as exc:
            snap = [{"function": "?", "file": "?", "line": 0,
                     "locals": {"error": f"snapshot unreadable: {exc}"}}]
        out.append({
            "flow_id": fid, "flow_class": cp.flow_class, "status": status.value,
            "progress_step": cp.progress_step, "suspended_on": suspended_on(cp),
            "error": cp.error, "resident": fid in resident,
            "suspension_count": cp.suspension_count, "journal_entries": cp.journal_len,
            "started_at": cp.started_at, "fingerprint": cp.fingerprint,
            "sessions": [{"id": s.sid, "counterparty": s.counterparty.name,
                          "role": "initiator" if s.initiator else "responder",
                          "protocol": s.protocol, "state": ("new", "open", "closed")[s.state],
                          "sent": s.send_seq, "received": s.recv_seq,
                          "peer_ended": s.peer_ended} for s in cp.sessions.values()],
            "frames": frames_mod.public(snap),
        })
    return out


def shown_status(cp: Checkpoint, resident: bool) -> FlowStatus:
    """A stored checkpoint says SUSPENDED; out of memory, that flow is HIBERNATED."""
    if not resident and cp.status == FlowStatus.SUSPENDED:
        return FlowStatus.HIBERNATED
    return cp.status


def suspended_on(cp: Checkpoint) -> Optional[str]:
    if cp.pending is None:
        return None
    kind, key, deadline = cp.pending
    text = describe(kind, key)
    if deadline is not None:
        from datetime import datetime, timezone
        text += f" (until {datetime.fromtimestamp(deadline, tz=timezone.utc).isoformat()})"
    return text


def _unpack_result(fid: str, rec: dict) -> Any:
    status = rec["status"]
    if status == FlowStatus.COMPLETED:
        return rec["value"]
    if status == FlowStatus.KILLED:
        raise FlowKilled(f"flow {fid} ({rec['flow_class']}) was killed")
    if rec.get("flow_exception") is not None:
        raise rebuild_flow_exception(*rec["flow_exception"])
    exc = None
    if rec.get("exc") is not None:
        try:
            exc = serialization.loads(rec["exc"])
        except Exception:
            exc = None
    if isinstance(exc, BaseException):
        raise exc
    raise FlowError(f"flow {fid} ({rec['flow_class']}) failed: {rec.get('error')}")
