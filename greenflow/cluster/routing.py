"""A worker's message routing: inbound frames and acknowledgements go to the scheduler
when their session's partition is in the worker's generation, else to the handoff table
for the owner (`HandOver`, on a thread of its own); rows handed to this worker's
partitions come back in through `Router.from_handoff`. See `greenflow.cluster.worker`."""
from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Any, Optional

from greenflow.cluster.handoff import ACK, FRAME, START, Row
from greenflow.errors import WireFormatError
from greenflow.messages import decode_frame
from greenflow.party import Party
from greenflow.statemachine.events import Acked, FrameArrived
from greenflow.storage.partitions import session_partition

if TYPE_CHECKING:
    from greenflow.cluster.worker import Worker

log = logging.getLogger("greenflow.cluster.worker")


class TransportFacade:
    """What the TCP transport sees as its node: its events come to the worker's router,
    its outbox reads go to the current generation's store."""

    def __init__(self, worker: "Worker") -> None:
        self.scheduler = worker   # .post(event)
        self._worker = worker

    @property
    def store(self) -> Any:
        node = self._worker.node
        return node.store if node is not None else None


class WorkerTransport:
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


class Router:
    """Routes a worker's inbound events by partition, and remembers which frames came
    through the handoff table, so that their acknowledgement deletes the row instead of
    going to the peer."""

    def __init__(self, worker: "Worker") -> None:
        self.w = worker
        self._handed: dict[tuple, tuple] = {}   # (peer, msg_id) -> handoff row key
        self._handed_lock = threading.Lock()

    def forget_handed(self) -> None:
        """A new generation: the frames taken over by the last one are given again."""
        with self._handed_lock:
            self._handed.clear()

    def post(self, ev: Any) -> None:
        t = type(ev)
        if t is FrameArrived:
            self.route_frame(ev)
        elif t is Acked:
            self.route_acks(ev)
        else:
            node = self.w.node
            if node is not None:
                node.scheduler.post(ev)

    def route_frame(self, ev: FrameArrived) -> None:
        w = self.w
        try:
            frame = decode_frame(ev.data)
        except WireFormatError:
            node = w.node
            if node is not None:
                node.scheduler.post(ev)   # the scheduler logs and drops it
            return
        part = session_partition(frame.sid)
        gen = w.gen
        if gen is not None and gen.holds(part):
            w.stats["routed_local"] += 1
            gen.node.scheduler.post(ev)
            return
        w.handing.add(Row(part, FRAME, ev.sender.name, frame.msg_id, ev.data))

    def route_acks(self, ev: Acked) -> None:
        w = self.w
        gen = w.gen
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
            w.handing.add(row)

    def ack_peer(self, peer_name: str, msg_ids: tuple) -> None:
        w = self.w
        if w.tcp is not None:
            w.tcp.ack(peer_name, msg_ids)
        elif peer_name == w.party_name:
            w.post(Acked(peer_name, msg_ids))

    def from_handoff(self, rows: list[Row]) -> None:
        """Rows of our partitions from the handoff table (the reader's thread)."""
        w = self.w
        gen = w.gen
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
                party = w.transport.party(r.peer) or Party(r.peer)
                with self._handed_lock:
                    self._handed[(r.peer, r.msg_id)] = r.key
                w.stats["taken_over"] += 1
                sched.post(FrameArrived(party, r.data))
            else:
                acks.setdefault(r.peer, []).append(r.msg_id)
                done.append(r.key)
        for peer, mids in acks.items():
            sched.post(Acked(peer, tuple(mids)))
            if w.tcp is not None:
                w.tcp.acked(peer, tuple(mids))
        if done:
            w.reader.consumed(done)
        if starts:
            w.starts.start_filed(gen, starts)

    def acked_by_scheduler(self, peer_name: str, msg_ids: tuple) -> tuple:
        rest, done = [], []
        with self._handed_lock:
            for mid in msg_ids:
                key = self._handed.pop((peer_name, tuple(mid)), None)
                if key is None:
                    rest.append(mid)
                else:
                    done.append(key)
        if done:
            self.w.reader.consumed(done)
        return tuple(rest)


class HandOver:
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
