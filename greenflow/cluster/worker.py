"""A worker of a clustered node: one process of a party whose flows live in PostgreSQL.

Every worker of a party is a `Node` of that party (same directory for ``node.toml``, the
identity key and the network map; same name and keys) whose store is a `PostgresStore`
in the party's schema, opened with this worker's name and the partitions it leases
(`greenflow.cluster.leases`). The store lists only those partitions' flows and fences
every commit on their lease epochs.

**Generations.** The set of partitions a worker acts for is pinned, with their epochs,
in a *generation*: one `Node` object. When the leases change (partitions gained, lost,
taken over, or a commit refused as `Fenced`), the worker drops the whole generation
from memory without writing anything (`Node.crash`: greenlets unwound, nothing
committed) and opens the next on the new set, which recovers exactly as a restarted node
does: the outbox is re-sent, timers re-armed, and the flows with work to do (wake flags,
inbox rows, frames handed over) are replayed. Waiting flows are rows; they are replayed
when something wakes them. Changes are debounced (`settle_s`), so a rebalance costs one
replay, not one per partition. Within a generation, a partition whose lease moved reads
as not owned, so a commit that touches it is refused, never applied.

**Messages.** Inbound frames and acknowledgements reach whichever worker the peer's
connection landed on. Each is routed by its session id's partition (`partition_of` the
session's initiating flow: a responder's id is derived into the same partition, see
`greenflow.statemachine.ids.responder_flow_id`): a partition of this generation goes to
the scheduler; any other is written to the handoff table and acknowledged, and the owner
takes it from there (`greenflow.cluster.handoff`). Outbound frames leave from the worker
that committed them (its outbox rows); acknowledgements that land elsewhere are handed
back the same way so the sender stops re-sending.

**Starting flows** through a worker gives them an id in a partition of its generation
(`Node.new_flow_id`), so the worker that records the start runs the flow.
"""
from __future__ import annotations

import logging
import os
import random
import socket
import threading
import time
from typing import Any, Callable, Iterable, Optional

from greenflow.cluster.handoff import ACK, FRAME, START, HandoffReader, HandoffWriter, Row
from greenflow.cluster.leases import DEFAULT_LEASE_S, DEFAULT_RENEW_S, LeaseManager, Owned
from greenflow.errors import Fenced, FlowError, WireFormatError
from greenflow.messages import decode_frame
from greenflow.node.node import Node
from greenflow.party import Party
from greenflow.statemachine.events import Acked, FrameArrived
from greenflow.statemachine.ids import client_flow_id, flow_id_in
from greenflow.storage.partitions import PARTITIONS, partition_of, session_partition

log = logging.getLogger("greenflow.cluster.worker")


def default_worker_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


class _Generation:
    """The partitions (and epochs) one `Node` object acts for."""

    def __init__(self, number: int, parts: Owned, lease: LeaseManager) -> None:
        self.number = number
        self.parts = dict(parts)
        self.lease = lease
        self.node: Optional[Node] = None
        self._order = sorted(self.parts)
        self._next = random.randrange(len(self._order)) if self._order else 0

    def owned(self) -> Owned:
        """What the store may commit for: this generation's partitions whose lease this
        worker still holds at the same epoch (a partition lost and taken back in between
        is not: the flows in memory may be stale)."""
        live = self.lease.owned()
        return {p: e for p, e in self.parts.items() if live.get(p) == e}

    def holds(self, part: int) -> bool:
        return part in self.parts and self.lease.owned().get(part) == self.parts[part]

    def new_flow_id(self) -> str:
        if not self._order:   # `Worker._forward_starts` files such starts for the owners
            raise FlowError("this worker owns no partition yet: start the flow through "
                            "another worker, or again in a moment")
        self._next = (self._next + 1) % len(self._order)
        return flow_id_in(self._order[self._next])


class _Facade:
    """What the TCP transport sees as its node: its events come to the worker's router,
    its outbox reads go to the current generation's store."""

    def __init__(self, worker: "Worker") -> None:
        self.scheduler = worker   # .post(event)
        self._worker = worker

    @property
    def store(self) -> Any:
        node = self._worker.node
        return node.store if node is not None else None


class _WorkerTransport:
    """The transport each generation's `Node` is given: sends go out through the TCP
    transport; acknowledgements of frames that were handed over delete their handoff
    rows instead of going to the peer (the receiving worker acknowledged them)."""

    def __init__(self, worker: "Worker") -> None:
        self.w = worker
        self.node: Any = None   # set by Node; unused (the worker routes)

    def send(self, peer: Party, data: bytes) -> None:
        if self.w.tcp is not None:
            self.w.tcp.send(peer, data)
        elif peer.name == self.w.party_name:
            self.w.post(FrameArrived(peer, data))
        else:
            log.error("worker %s has no network transport: cannot reach %s", self.w.name, peer.name)

    def ack(self, peer_name: str, msg_ids: tuple) -> None:
        rest = self.w.acked_by_scheduler(peer_name, msg_ids)
        if not rest:
            return
        if self.w.tcp is not None:
            self.w.tcp.ack(peer_name, rest)
        elif peer_name == self.w.party_name:
            self.w.post(Acked(peer_name, rest))

    def party(self, name: str) -> Optional[Party]:
        if self.w.tcp is not None:
            return self.w.tcp.party(name)
        node = self.w.node
        return node.party if node is not None and name == node.party.name else None


class Worker:
    """One worker process's cluster machinery around a `Node` (see the module doc).

    ``url`` is the party's PostgreSQL (``postgresql://...``; the schema comes from the
    node directory, as for `PostgresStore.for_node`). ``tcp`` is a `TcpTransport` (bound
    with ``reuse_port`` when the workers share the party's address) or None for a party
    that only talks to itself (tests).
    """

    def __init__(self, node_dir: str, url: str, *, name: Optional[str] = None,
                 party_name: Optional[str] = None, tcp: Any = None,
                 lease_s: float = DEFAULT_LEASE_S, renew_s: float = DEFAULT_RENEW_S,
                 poll_s: float = 1.0, settle_s: float = 0.3, partitions: int = PARTITIONS,
                 node_options: Optional[dict] = None, apps: Optional[Iterable[str]] = None,
                 rpc_address: Optional[str] = None,
                 on_generation: Optional[Callable[[Node], None]] = None) -> None:
        from greenflow.storage.postgres_store import schema_for, split_url
        self.node_dir = os.path.abspath(node_dir)
        self.url = url
        self.dsn, schema = split_url(url)
        self.schema = schema or schema_for(self.node_dir)
        self.name = name or default_worker_name()
        self.party_name = party_name
        self.tcp = tcp
        self.apps = list(apps) if apps is not None else None
        self.node_options = dict(node_options or {})
        self.settle_s = settle_s
        self.on_generation = on_generation
        address = None
        if tcp is not None:
            try:
                host, port = tcp.address
                address = f"{host}:{port}"
            except Exception:
                address = None
        self.lease = LeaseManager(self.dsn, self.schema, self.name, lease_s=lease_s,
                                  renew_s=renew_s, partitions=partitions,
                                  on_gained=self._changed, on_lost=self._changed,
                                  address=address, rpc=rpc_address, serving=self._serving)
        self.writer = HandoffWriter(self.dsn, self.schema)
        self.handing = _HandOver(self)
        self.reader = HandoffReader(self.dsn, self.schema, self._gen_owned, self._from_handoff,
                                    poll_s=poll_s)
        self.transport = _WorkerTransport(self)
        self.gen: Optional[_Generation] = None
        self._gen_lock = threading.RLock()
        self._handed: dict[tuple, tuple] = {}   # (peer, msg_id) -> handoff row key
        self._handed_lock = threading.Lock()
        self._dirty = threading.Event()
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self.generations = 0
        self.stats = {"handed_off": 0, "taken_over": 0, "fenced": 0, "routed_local": 0,
                      "starts_forwarded": 0, "starts_taken": 0}
        self.fatal: Optional[BaseException] = None

    # ------------------------------------------------------------------ lifecycle
    @property
    def node(self) -> Optional[Node]:
        gen = self.gen
        return gen.node if gen is not None else None

    def start(self) -> "Worker":
        if self.tcp is not None:
            self.tcp.node = _Facade(self)
        self.lease.start()          # the first round: what we hold now
        self._rebuild()
        self.reader.start()
        self.handing.start()
        if self.tcp is not None:
            self.tcp.start()
        self._thread = threading.Thread(target=self._run, name=f"worker-{self.name}", daemon=True)
        self._thread.start()
        return self

    def stop(self, release: bool = True) -> None:
        """Stop cleanly: the current round commits, then the leases are handed back
        (with ``release``) so the other workers take over at once."""
        self._stop.set()
        self._dirty.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        with self._gen_lock:
            gen, self.gen = self.gen, None
        if gen is not None and gen.node is not None:
            try:
                gen.node.close()
            except Exception as exc:
                log.warning("worker %s: closing its node: %s", self.name, exc)
        self.reader.stop()
        self.handing.stop()
        self.lease.stop(release=release)
        if self.tcp is not None:
            self.tcp.close()
        self.writer.close()

    def crash(self) -> None:
        """Power cut (tests): drop everything without committing or releasing anything;
        the leases lapse and other workers take the partitions over."""
        self._stop.set()
        self._dirty.set()
        self.lease.abandon()
        if self._thread is not None:
            self._thread.join(timeout=30)
        with self._gen_lock:
            gen, self.gen = self.gen, None
        if gen is not None and gen.node is not None:
            gen.node.crash()
        self.reader.stop()
        self.handing.stop()
        if self.tcp is not None:
            self.tcp.close()
        self.writer.close()

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Until this worker has a generation with partitions (tests, ``cluster up``)."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            gen = self.gen
            if gen is not None and gen.parts and not self._dirty.is_set():
                return
            time.sleep(0.05)
        raise TimeoutError(f"worker {self.name} holds no partition after {timeout}s")

    # ------------------------------------------------------------------ generations
    def _changed(self, parts: Any) -> None:
        self._dirty.set()

    def _serving(self) -> int:
        gen = self.gen
        return len(gen.owned()) if gen is not None and not self._dirty.is_set() else 0

    def _gen_owned(self) -> Owned:
        gen = self.gen
        return gen.owned() if gen is not None else {}

    def _run(self) -> None:
        while not self._stop.is_set():
            self._dirty.wait(0.5)
            if self._stop.is_set():
                return
            node = self.node
            if node is not None and node.scheduler.dead:
                err = node.scheduler.commit_error
                if isinstance(err, Fenced):
                    self.stats["fenced"] += 1
                    log.warning("worker %s: a commit was refused (%s); starting over on the "
                                "partitions it holds now", self.name, err)
                    self._dirty.set()
                elif err is not None:
                    # The database went away mid-commit: nothing of the round was applied.
                    # Start over (reconnecting) once leases say what we still hold.
                    log.error("worker %s: commit failed (%s); starting over", self.name, err)
                    self._dirty.set()
            if not self._dirty.is_set():
                continue
            # Debounce: a rebalance changes many partitions over a few lease rounds.
            time.sleep(self.settle_s)
            self._dirty.clear()
            try:
                self._rebuild()
            except Exception as exc:
                log.error("worker %s: could not open the next generation: %s", self.name, exc)
                self._dirty.set()
                self._stop.wait(1.0)

    def _rebuild(self) -> None:
        from greenflow.storage.postgres_store import PostgresStore
        with self._gen_lock:
            old = self.gen
            if old is not None:
                self.gen = None
                if old.node is not None:
                    # Drop everything in memory, write nothing: what was committed is the
                    # truth, and the partitions' next owner (maybe us) replays from it.
                    old.node.crash()
            with self._handed_lock:
                self._handed.clear()
            parts = self.lease.owned()
            self.generations += 1
            gen = _Generation(self.generations, parts, self.lease)
            store = PostgresStore(self.dsn, self.schema, owner=self.name, owned=gen.owned)
            name = self.party_name or _party_name(self.node_dir)
            options = dict(self.node_options)
            node = Node(self.node_dir, name, apps=self.apps, transport=self.transport,
                        store=store, **options)
            node.new_flow_id = gen.new_flow_id
            node.party_flows = self._party_flows
            node.runs_flow = lambda fid: gen.holds(partition_of(fid))
            node.forward_starts = lambda items: self._forward_starts(gen, items)
            gen.node = node
            self.party_name = node.party.name
            self.gen = gen
        log.info("worker %s: generation %d on %d partitions", self.name, gen.number, len(parts))
        self.lease.poke()   # tell the others (the heartbeat says how many it serves)
        if self.on_generation is not None:
            self.on_generation(node)
        self.reader.poke()

    # ------------------------------------------------------------------ listing
    def _party_flows(self, mine: list) -> list:
        """This worker's flows plus every other flow of the party, read from the shared
        tables, each with the worker that owns its partition now."""
        import dataclasses
        from greenflow import serialization
        from greenflow.node.node import FlowInfo, shown_status, suspended_on
        from greenflow.storage.postgres_store import PostgresStore
        owners = self._owners()
        out = [dataclasses.replace(f, worker=owners.get(partition_of(f.id), self.name))
               for f in mine]
        seen = {f.id for f in mine}
        store = PostgresStore(self.dsn, self.schema, readonly=True)
        try:
            for fid, raw in store.header_blobs():
                if fid in seen:
                    continue
                cp = serialization.loads(raw)
                seen.add(fid)
                out.append(FlowInfo(fid, cp.flow_class, shown_status(cp, False),
                                    cp.progress_step, suspended_on(cp), False, cp.error,
                                    owners.get(partition_of(fid))))
            for fid, rec in store.results():
                if fid not in seen:
                    out.append(FlowInfo(fid, rec["flow_class"], rec["status"], None, None,
                                        False, rec.get("error"), owners.get(partition_of(fid))))
        finally:
            store.close()
        return out

    def _owners(self) -> dict[int, str]:
        import psycopg
        from greenflow.cluster.leases import lease_table
        with psycopg.connect(self.dsn, autocommit=True, connect_timeout=5) as c:
            _, leases = lease_table(c, self.schema, self.lease.lease_s)
        return {l.part: l.owner for l in leases if l.owner and l.expires_in > 0}

    # ------------------------------------------------------------------ routing
    def post(self, ev: Any) -> None:
        """An event from the TCP transport (any thread): to the scheduler if it concerns
        a partition of this generation, else handed to the partition's owner."""
        t = type(ev)
        if t is FrameArrived:
            self._route_frame(ev)
        elif t is Acked:
            self._route_acks(ev)
        else:
            node = self.node
            if node is not None:
                node.scheduler.post(ev)

    def _route_frame(self, ev: FrameArrived) -> None:
        try:
            frame = decode_frame(ev.data)
        except WireFormatError:
            node = self.node
            if node is not None:
                node.scheduler.post(ev)   # the scheduler logs and drops it
            return
        part = session_partition(frame.sid)
        gen = self.gen
        if gen is not None and gen.holds(part):
            self.stats["routed_local"] += 1
            gen.node.scheduler.post(ev)
            return
        self.handing.add(Row(part, FRAME, ev.sender.name, frame.msg_id, ev.data))

    def _route_acks(self, ev: Acked) -> None:
        gen = self.gen
        mine, rows = [], []
        for mid in ev.msg_ids:
            part = session_partition(mid[0])
            if gen is not None and gen.holds(part):
                mine.append(mid)
            else:
                rows.append(Row(part, ACK, ev.peer, tuple(mid), None))
        if mine and gen is not None:
            gen.node.scheduler.post(Acked(ev.peer, tuple(mine)))
        for row in rows:
            self.handing.add(row)

    def _ack_peer(self, peer_name: str, msg_ids: tuple) -> None:
        if self.tcp is not None:
            self.tcp.ack(peer_name, msg_ids)
        elif peer_name == self.party_name:
            self.post(Acked(peer_name, msg_ids))

    def _from_handoff(self, rows: list[Row]) -> None:
        """Rows of our partitions from the handoff table (the reader's thread)."""
        gen = self.gen
        if gen is None or gen.node is None:
            return
        sched = gen.node.scheduler
        acks: dict[str, list] = {}
        done = []
        starts = []
        for r in rows:
            if not gen.holds(r.part):
                continue
            if r.kind == START:
                starts.append(r)
            elif r.kind == FRAME:
                party = self.transport.party(r.peer) or Party(r.peer)
                with self._handed_lock:
                    self._handed[(r.peer, r.msg_id)] = r.key
                self.stats["taken_over"] += 1
                sched.post(FrameArrived(party, r.data))
            else:
                acks.setdefault(r.peer, []).append(r.msg_id)
                done.append(r.key)
        for peer, mids in acks.items():
            sched.post(Acked(peer, tuple(mids)))
            if self.tcp is not None:
                self.tcp.acked(peer, tuple(mids))
        if done:
            self.reader.consumed(done)
        if starts:
            self._start_filed(gen, starts)

    # ------------------------------------------------------------------ starts filed
    def _forward_starts(self, gen: _Generation, items: list) -> Optional[list[str]]:
        """`Node.forward_starts`: None (start here) for starts without a client id while
        this generation has partitions; else file each start for the owner of a
        partition a live worker holds and return the flow ids. A start with a client id
        is always filed, under the id derived from the client id: a client that retries
        through another worker (its first worker died before answering) files the same
        start, which its owner starts once (its reader takes the rows one at a time)."""
        if gen._order and all(cid is None for _, cid in items):
            return None
        from greenflow import serialization
        node = gen.node
        assert node is not None
        held = sorted(self._owners())
        if not held:
            raise FlowError(f"no worker of {node.party.name} owns a partition yet: start the "
                            "flow again in a moment")
        rows, ids = [], []
        for flow, client_id in items:
            if client_id is not None:
                existing = node.store.client(client_id)
                if existing is not None:
                    ids.append(existing)
                    continue
                fid = client_flow_id(client_id)
            else:
                fid = flow_id_in(random.choice(held))
            try:
                blob = serialization.dumps(flow)
            except Exception as exc:
                raise FlowError(f"{type(flow).__qualname__} cannot be checkpointed: {exc}") from exc
            rows.append(Row(partition_of(fid), START, client_id or "", (fid, False, 0), blob))
            ids.append(fid)
        self.writer.put(rows)
        self.stats["starts_forwarded"] += len(rows)
        return ids

    def _start_filed(self, gen: _Generation, rows: list[Row]) -> None:
        """Start the flows other workers filed for our partitions (the reader's thread),
        each once; the rows go once the starts are committed."""
        from greenflow import serialization
        from greenflow.flows.registry import qualified_name
        from greenflow.runtime.checkpoint import Checkpoint
        node = gen.node
        assert node is not None
        store = node.store
        prepared, done = [], []
        for r in rows:
            fid = r.msg_id[0]
            done.append(r.key)
            if fid in node.scheduler.resident or store.has_flow(fid) \
                    or store.result(fid) is not None:
                continue   # started already (the row outlived its start)
            try:
                flow = serialization.loads(r.data)
            except Exception as exc:  # noqa: BLE001 - one bad row must not block the rest
                log.error("worker %s: a start filed for flow %s cannot be read (%s); dropped",
                          self.name, fid, exc)
                continue
            cp = Checkpoint(fid, qualified_name(type(flow)), client_id=r.peer or None,
                            started_at=node.clock.now())
            prepared.append((cp, r.data, flow))
        if prepared:
            try:
                node._start_prepared(prepared)
            except Exception as exc:  # noqa: BLE001 - the rows stay: given again later
                log.warning("worker %s: could not start %d filed flow(s): %s", self.name,
                            len(prepared), exc)
                return
            self.stats["starts_taken"] += len(prepared)
        self.reader.consumed(done)

    def acked_by_scheduler(self, peer_name: str, msg_ids: tuple) -> tuple:
        """The scheduler committed these frames: delete the handoff rows of those that
        came that way; returns the rest (to acknowledge to the peer)."""
        rest, done = [], []
        with self._handed_lock:
            for mid in msg_ids:
                key = self._handed.pop((peer_name, tuple(mid)), None)
                if key is None:
                    rest.append(mid)
                else:
                    done.append(key)
        if done:
            self.reader.consumed(done)
        return tuple(rest)


def _party_name(node_dir: str) -> str:
    from greenflow.network.node_config import NodeConfig
    return NodeConfig.load(node_dir).name


class _HandOver:
    """Frames and acknowledgements for other workers' partitions, written to the handoff
    table by a thread of their own: whatever arrived while one write was in flight goes
    in the next, as one statement, so the transport's thread never waits for the
    database and a burst of frames costs one transaction, not one each. A frame is
    acknowledged to its sender only once its write committed; one that could not be
    written is not acknowledged, and its sender re-sends it."""

    MAX = 500

    def __init__(self, worker: "Worker") -> None:
        self.worker = worker
        self._rows: list[Row] = []
        self._cond = threading.Condition()
        self._stop = False
        self._thread: Optional[threading.Thread] = None
        self.writes = 0

    def start(self) -> None:
        self._stop = False
        self._thread = threading.Thread(target=self._run, name=f"handover-{self.worker.name}",
                                        daemon=True)
        self._thread.start()

    def stop(self) -> None:
        with self._cond:
            self._stop = True
            self._rows = []    # not acknowledged: their senders re-send them
            self._cond.notify()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def add(self, row: Row) -> None:
        with self._cond:
            self._rows.append(row)
            self._cond.notify()

    def _run(self) -> None:
        w = self.worker
        while True:
            with self._cond:
                while not self._rows and not self._stop:
                    self._cond.wait()
                if self._stop:
                    return
                rows, self._rows = self._rows[:self.MAX], self._rows[self.MAX:]
            try:
                w.writer.put(rows)
            except Exception as exc:
                log.warning("worker %s: could not hand over %d frame(s) and "
                            "acknowledgement(s): %s", w.name, len(rows), exc)
                continue
            self.writes += 1
            acks: dict[str, list] = {}
            for r in rows:
                if r.kind == FRAME:
                    acks.setdefault(r.peer, []).append(r.msg_id)
            w.stats["handed_off"] += sum(len(v) for v in acks.values())
            for peer, mids in acks.items():
                w._ack_peer(peer, tuple(mids))
