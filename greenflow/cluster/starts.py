"""Starts filed through the handoff table: a worker that cannot run a flow it was asked
to start (it owns no partition yet, or the start carries a client id) files it for the
partition's owner, and the owner starts what was filed for it, each once. See
`greenflow.cluster.worker`."""
from __future__ import annotations

import logging
import random
import time
from typing import TYPE_CHECKING, Optional

from greenflow.cluster.generation import Generation
from greenflow.cluster.handoff import START, Row
from greenflow.cluster.listing import lease_owners
from greenflow.errors import FlowError, NodeClosed
from greenflow.statemachine.ids import client_flow_id, flow_id_in
from greenflow.storage.partitions import partition_of

if TYPE_CHECKING:
    from greenflow.cluster.worker import Worker

log = logging.getLogger("greenflow.cluster.worker")

#: How long the partitions live workers hold, as one start read them, serve later starts.
HELD_FOR_S = 1.0


class FiledStarts:
    """Files a worker's starts for other workers, and starts those filed for it."""

    def __init__(self, worker: "Worker") -> None:
        self.w = worker
        self._held_cache: tuple[float, list[int]] = (-1e9, [])

    def forward(self, gen: Generation, items: list) -> Optional[list[str]]:
        """`Node.forward_starts`: None (start here) for starts without a client id while
        this generation has partitions; else file each start for the owner of a
        partition a live worker holds and return the flow ids. A start with a client id
        is always filed, under the id derived from the client id: a client that retries
        through another worker (its first worker died before answering) files the same
        start, which its owner starts once (its reader takes the rows one at a time)."""
        if gen._order and all(cid is None for _, cid in items):
            return None
        from greenflow import serialization
        w = self.w
        node = gen.node
        assert node is not None
        held = self._held()
        if not held:
            raise NodeClosed(f"no worker of {node.party.name} owns a partition yet: start the "
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
        import psycopg
        try:
            w.writer.put(rows)
        except psycopg.Error as exc:   # (a restarting database): 503, ask again; a 500
            # said "please file a bug". Rows filed again are the same rows, taken once.
            raise NodeClosed(f"the cluster's database did not take the start ({type(exc).__name__}: "
                             f"{str(exc).strip()[:200]}): start it again in a moment") from None
        w.stats["starts_forwarded"] += len(rows)
        return ids

    def _held(self) -> list[int]:
        """The partitions live workers hold, read at most every `HELD_FOR_S` seconds: a
        connection per start (a new one each) failed every start with a client id while
        the database was full of connections. Its trouble is the request's, answered 503
        with "retry", not a 500 asking for a bug report."""
        now = time.monotonic()
        at, held = self._held_cache
        if now - at > HELD_FOR_S:
            import psycopg
            w = self.w
            try:
                held = sorted(lease_owners(w.dsn, w.schema, w.lease.lease_s))
            except psycopg.Error as exc:
                raise NodeClosed(f"the cluster's database did not answer ({type(exc).__name__}: "
                                 f"{str(exc).strip()[:200]})") from None
            self._held_cache = (now, held)
        return held

    def filed(self, fid: str) -> Optional[str]:
        """`Node.filed_start`: the flow class of a start of ``fid`` filed and not started
        yet, read from the handoff table (a client that started it through one worker
        may ask another for its result before the owner took the start)."""
        from greenflow import serialization
        from greenflow.flows.registry import qualified_name
        try:
            data = self.w.writer.filed_start(fid, partition_of(fid))
        except Exception as exc:  # noqa: BLE001 - the caller then says it does not know it
            log.warning("worker %s: cannot read the filed starts (%s)", self.w.name, exc)
            return None
        if data is None:
            return None
        try:
            return qualified_name(type(serialization.loads(data)))
        except Exception:  # noqa: BLE001 - unreadable here; its owner will say so
            return "(filed start)"

    def start_filed(self, gen: Generation, rows: list[Row]) -> None:
        """Start the flows other workers filed for our partitions (the reader's thread),
        each once; the rows go once the starts are committed."""
        from greenflow import serialization
        from greenflow.flows.registry import qualified_name
        from greenflow.runtime.checkpoint import Checkpoint
        w = self.w
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
                          w.name, fid, exc)
                continue
            cp = Checkpoint(fid, qualified_name(type(flow)), client_id=r.peer or None,
                            started_at=node.clock.now())
            prepared.append((cp, r.data, flow))
        if prepared:
            try:
                node._start_prepared(prepared)
            except Exception as exc:  # noqa: BLE001 - the rows stay: given again later
                log.warning("worker %s: could not start %d filed flow(s): %s", w.name,
                            len(prepared), exc)
                return
            w.stats["starts_taken"] += len(prepared)
        w.reader.consumed(done)
