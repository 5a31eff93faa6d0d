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
that committed them (its outbox rows), on a connection it dials with the transport's
reply path: the peer answers that session on that connection, so its frames and
acknowledgements come back to this worker. On that connection the worker also tells the
peer its generation's partitions (the transport's partition hints), so a session the
peer opens goes to the worker that owns it too. What still lands elsewhere (a peer that
never had a connection from the owner, a hint gone stale, a re-send after a connection
closed) is handed over; acknowledgements that do land elsewhere are handed back the same
way so the sender stops re-sending.

**Starting flows** through a worker gives them an id in a partition of its generation
(`Node.new_flow_id`), so the worker that records the start runs the flow.

The concerns live in modules of their own: `greenflow.cluster.generation` (a
generation's partitions), `greenflow.cluster.routing` (frames and acknowledgements by
partition, the handoff writes, the transport a generation's node sends through),
`greenflow.cluster.starts` (starts filed for other workers, and taken from them) and
`greenflow.cluster.listing` (the party's flows and who owns them); this module holds the
`Worker` that composes them and follows its leases from generation to generation.
"""
from __future__ import annotations

import logging
import os
import socket
import threading
import time
from typing import Any, Callable, Iterable, Optional

from greenflow.cluster.generation import Generation as _Generation
from greenflow.cluster.draining import PartyDraining
from greenflow.cluster.handoff import HandoffReader, HandoffWriter
from greenflow.cluster.leases import DEFAULT_LEASE_S, DEFAULT_RENEW_S, LeaseManager, Owned
from greenflow.cluster.listing import party_listing
from greenflow.cluster.routing import HandOver as _HandOver
from greenflow.cluster.routing import Router
from greenflow.cluster.routing import TransportFacade as _Facade
from greenflow.cluster.routing import WorkerTransport as _WorkerTransport
from greenflow.cluster.starts import FiledStarts
from greenflow.errors import Fenced
from greenflow.node.node import Node
from greenflow.storage.partitions import PARTITIONS, partition_of

log = logging.getLogger("greenflow.cluster.worker")

def default_worker_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


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
        from greenflow.storage.postgres_store import node_party, schema_for, split_url
        self.node_dir = os.path.abspath(node_dir)
        self.url = url
        self.dsn, schema = split_url(url)
        self.schema = schema or schema_for(self.node_dir, self.dsn)
        self.party = node_party(self.node_dir)
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
        self.draining = PartyDraining(self.dsn, self.schema)
        self.handing = _HandOver(self)
        self.router = Router(self)
        self.starts = FiledStarts(self)
        self.reader = HandoffReader(self.dsn, self.schema, self._gen_owned,
                                    self.router.from_handoff, poll_s=poll_s)
        self.transport = _WorkerTransport(self)
        self.gen: Optional[_Generation] = None
        self._gen_lock = threading.RLock()
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
            # Peers answer on the connection this worker dialled: what they send for its
            # sessions reaches it, not whichever worker their own connection landed on.
            self.tcp.reply_path = True
        # Another party's store (a ?schema= naming it) is refused before a lease is taken.
        from greenflow.storage.postgres_store import PostgresStore
        PostgresStore(self.dsn, self.schema, owner=self.name, owned=dict,
                      party=self.party).close()
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
        self.draining.close()

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
        self.draining.close()

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
        checked = 0.0
        while not self._stop.is_set():
            self._dirty.wait(0.5)
            if self._stop.is_set():
                return
            node = self.node
            self.lease.check_stuck()   # (first: the draining check reads the database too)
            if time.monotonic() - checked >= 1.0:   # the party's draining, as set anywhere
                checked = time.monotonic()
                self.draining.apply(node, self.name)
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
            self.router.forget_handed()
            parts = self.lease.owned()
            self.generations += 1
            gen = _Generation(self.generations, parts, self.lease)
            store = PostgresStore(self.dsn, self.schema, owner=self.name, owned=gen.owned,
                                  party=self.party)
            name = self.party_name or _party_name(self.node_dir)
            options = dict(self.node_options)
            node = Node(self.node_dir, name, apps=self.apps, transport=self.transport,
                        store=store, **options)
            node.new_flow_id = gen.new_flow_id
            node.party_listing = party_listing(self)
            node.runs_flow = lambda fid: gen.holds(partition_of(fid))
            node.forward_starts = lambda items: self.starts.forward(gen, items)
            node.filed_start = self.starts.filed
            node.party_draining = self.draining.set
            self.draining.apply(node, self.name)   # (not the directory's draining file)
            gen.node = node
            self.party_name = node.party.name
            self.gen = gen
        if self.tcp is not None:
            # The peers this worker dials send the sessions they open for these
            # partitions on its connection: they reach it, not a random worker.
            self.tcp.serve_partitions(gen.parts)
        log.info("worker %s: generation %d on %d partitions", self.name, gen.number, len(parts))
        self.lease.poke()   # tell the others (the heartbeat says how many it serves)
        if self.on_generation is not None:
            self.on_generation(node)
        self.reader.poke()

    # ------------------------------------------------------------------ routing
    @property
    def events(self) -> Any:
        """The current generation's event queue (None between generations): what the
        transport looks at before it reads more from peers (`tcp_guard.wait_for_scheduler`)."""
        node = self.node
        return node.scheduler.events if node is not None else None

    def post(self, ev: Any) -> None:
        """An event from the TCP transport (any thread): to the scheduler if it concerns
        a partition of this generation, else handed to the partition's owner."""
        self.router.post(ev)

    def _ack_peer(self, peer_name: str, msg_ids: tuple) -> None:
        self.router.ack_peer(peer_name, msg_ids)

    def acked_by_scheduler(self, peer_name: str, msg_ids: tuple) -> tuple:
        """The scheduler committed these frames: delete the handoff rows of those that
        came that way; returns the rest (to acknowledge to the peer)."""
        return self.router.acked_by_scheduler(peer_name, msg_ids)


def _party_name(node_dir: str) -> str:
    from greenflow.network.node_config import NodeConfig
    return NodeConfig.load(node_dir).name
