"""The party-wide view a clustered worker gives: which worker owns each partition now
(`lease_table`, also for ``greenflow cluster status``), and pages of every flow of the
party (this worker's resident ones from memory, the rest from the shared tables), each
named with its worker. See `greenflow.cluster.worker`."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Optional

from greenflow.cluster.leases import DEFAULT_LEASE_S, _ident
from greenflow.node.flow_listing import PartyListing

if TYPE_CHECKING:
    from greenflow.cluster.worker import Worker


def lease_owners(dsn: str, schema: str, lease_s: float) -> dict[int, str]:
    """Partition -> the worker whose lease on it is live now."""
    import psycopg
    with psycopg.connect(dsn, autocommit=True, connect_timeout=5) as c:
        _, leases = lease_table(c, schema, lease_s)
    return {l.part: l.owner for l in leases if l.owner and l.expires_in > 0}


def worker_rpc(dsn: str, schema: str, name: str) -> Optional[str]:
    """The RPC address the worker ``name`` registered (None: none, or no such worker)."""
    import psycopg
    with psycopg.connect(dsn, autocommit=True, connect_timeout=5) as c:
        row = c.execute(f"SELECT rpc FROM {_ident(schema)}.workers WHERE name = %s",
                        (name,)).fetchone()
    return row[0] if row else None


def party_listing(worker: "Worker") -> PartyListing:
    """How the worker's node pages through the party's flows (`Node.flow_page`): the
    shared tables read a page at a time on the caller's thread, not every row."""
    from greenflow.storage.postgres_store import PostgresStore
    return PartyListing(
        open_store=lambda: PostgresStore(worker.dsn, worker.schema, readonly=True),
        owners=lambda: lease_owners(worker.dsn, worker.schema, worker.lease.lease_s),
        me=worker.name, rpc_of=lambda name: worker_rpc(worker.dsn, worker.schema, name))


@dataclass
class LeaseStatus:
    """One row of `lease_table`, for ``greenflow cluster status``."""
    part: int
    owner: Optional[str]
    epoch: int
    expires_in: float  # seconds; negative once expired


@dataclass
class WorkerStatus:
    name: str
    host: str
    pid: int
    address: Optional[str]
    rpc: Optional[str]
    heartbeat_age: float
    live: bool
    serving: int = 0   # partitions its running generation acts for (0 while it switches)
    partitions: list[int] = field(default_factory=list)


def lease_table(conn, schema: str, lease_s: float = DEFAULT_LEASE_S
                ) -> tuple[list[WorkerStatus], list[LeaseStatus]]:
    """Workers and leases as the database sees them now (for ``cluster status``); a
    worker is live if it is not stopped and its heartbeat is younger than ``lease_s``."""
    s = _ident(schema)
    leases = [LeaseStatus(p, o, e, x) for p, o, e, x in conn.execute(
        f"SELECT part, owner, epoch, GREATEST(-1e9, LEAST(1e9, "
        f"extract(epoch FROM COALESCE(expires_at, '-infinity') - now())))::float8 "
        f"FROM {s}.leases ORDER BY part")]
    workers = []
    for name, host, pid, address, rpc, age, stopped, serving in conn.execute(
            f"SELECT name, host, pid, address, rpc, extract(epoch FROM now() - heartbeat_at)::float8, "
            f"stopped, serving FROM {s}.workers ORDER BY name"):
        workers.append(WorkerStatus(name, host, pid, address, rpc, age,
                                    not stopped and age < lease_s, serving))
    by_name = {w.name: w for w in workers}
    for l in leases:
        if l.owner in by_name and l.expires_in > 0:
            by_name[l.owner].partitions.append(l.part)
    return workers, leases
