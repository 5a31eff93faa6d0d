"""The party-wide view a clustered worker gives: which worker owns each partition now,
and every flow of the party (this worker's from memory, the others' from the shared
tables), each named with its worker. See `greenflow.cluster.worker`."""
from __future__ import annotations

from typing import TYPE_CHECKING

from greenflow.node.flow_listing import PartyListing
from greenflow.storage.partitions import partition_of

if TYPE_CHECKING:
    from greenflow.cluster.worker import Worker


def lease_owners(dsn: str, schema: str, lease_s: float) -> dict[int, str]:
    """Partition -> the worker whose lease on it is live now."""
    import psycopg
    from greenflow.cluster.leases import lease_table
    with psycopg.connect(dsn, autocommit=True, connect_timeout=5) as c:
        _, leases = lease_table(c, schema, lease_s)
    return {l.part: l.owner for l in leases if l.owner and l.expires_in > 0}


def party_flows(worker: "Worker", mine: list) -> list:
    """This worker's flows plus every other flow of the party, read from the shared
    tables, each with the worker that owns its partition now."""
    import dataclasses
    from greenflow import serialization
    from greenflow.node.node import FlowInfo, shown_status, suspended_on
    from greenflow.storage.postgres_store import PostgresStore
    owners = lease_owners(worker.dsn, worker.schema, worker.lease.lease_s)
    out = [dataclasses.replace(f, worker=owners.get(partition_of(f.id), worker.name))
           for f in mine]
    seen = {f.id for f in mine}
    store = PostgresStore(worker.dsn, worker.schema, readonly=True)
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


def party_listing(worker: "Worker") -> PartyListing:
    """How the worker's node pages through the party's flows (`Node.flow_page`): the
    shared tables read a page at a time on the caller's thread, not every row."""
    from greenflow.storage.postgres_store import PostgresStore
    return PartyListing(
        open_store=lambda: PostgresStore(worker.dsn, worker.schema, readonly=True),
        owners=lambda: lease_owners(worker.dsn, worker.schema, worker.lease.lease_s),
        me=worker.name)
