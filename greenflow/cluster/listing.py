"""The party-wide view a clustered worker gives: which worker owns each partition now,
and pages of every flow of the party (this worker's resident ones from memory, the rest
from the shared tables), each named with its worker. See `greenflow.cluster.worker`."""
from __future__ import annotations

from typing import TYPE_CHECKING

from greenflow.node.flow_listing import PartyListing

if TYPE_CHECKING:
    from greenflow.cluster.worker import Worker


def lease_owners(dsn: str, schema: str, lease_s: float) -> dict[int, str]:
    """Partition -> the worker whose lease on it is live now."""
    import psycopg
    from greenflow.cluster.leases import lease_table
    with psycopg.connect(dsn, autocommit=True, connect_timeout=5) as c:
        _, leases = lease_table(c, schema, lease_s)
    return {l.part: l.owner for l in leases if l.owner and l.expires_in > 0}


def party_listing(worker: "Worker") -> PartyListing:
    """How the worker's node pages through the party's flows (`Node.flow_page`): the
    shared tables read a page at a time on the caller's thread, not every row."""
    from greenflow.storage.postgres_store import PostgresStore
    return PartyListing(
        open_store=lambda: PostgresStore(worker.dsn, worker.schema, readonly=True),
        owners=lambda: lease_owners(worker.dsn, worker.schema, worker.lease.lease_s),
        me=worker.name)
