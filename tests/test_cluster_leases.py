"""Partition leases against a real PostgreSQL: balance, renewal, takeover, fencing epochs."""
from __future__ import annotations

import threading
import time

import pytest

from cluster_pg import new_schema, server_dsn
from greenflow.cluster.leases import LeaseManager, share
from greenflow.cluster.listing import lease_table

P = 16


@pytest.fixture
def dsn() -> str:
    return server_dsn()


def manager(dsn, schema, name, events=None, **kw):
    kw.setdefault("lease_s", 1.0)
    kw.setdefault("renew_s", 0.2)
    ev = events if events is not None else {"gained": [], "lost": []}
    return LeaseManager(dsn, schema, name, partitions=P,
                        on_gained=lambda parts: ev["gained"].append(dict(parts)),
                        on_lost=lambda parts: ev["lost"].append(set(parts)), **kw)


def db_owners(dsn, schema) -> dict[int, tuple]:
    import psycopg
    with psycopg.connect(dsn, autocommit=True) as c:
        _, leases = lease_table(c, schema, lease_s=1.0)
    return {l.part: (l.owner, l.epoch, l.expires_in) for l in leases}


def test_one_worker_takes_every_partition_at_epoch_one(dsn):
    schema = new_schema()
    ev = {"gained": [], "lost": []}
    a = manager(dsn, schema, "w1", ev)
    a.tick()
    assert a.owned() == {p: 1 for p in range(P)}
    assert ev["gained"] == [{p: 1 for p in range(P)}]
    rows = db_owners(dsn, schema)
    assert all(o == "w1" and e == 1 and x > 0 for o, e, x in rows.values())
    a.tick()  # renewal keeps the epoch
    assert a.owned() == {p: 1 for p in range(P)} and ev["lost"] == []
    a.stop(release=True)


def test_workers_balance_to_their_share_and_never_overlap(dsn):
    schema = new_schema()
    ws = [manager(dsn, schema, f"w{i}") for i in range(3)]
    ws[0].tick()
    assert len(ws[0].owned()) == P
    for _ in range(4):  # the others join: w0 releases its surplus, they take it
        for w in ws:
            w.tick()
    held = [set(w.owned()) for w in ws]
    # about P/N each: nobody above ceil(P/N) = 6, so nobody below P - 2*6 = 4
    assert all(P - 2 * share(P, 3) <= len(h) <= share(P, 3) for h in held)
    assert set().union(*held) == set(range(P))
    assert sum(len(h) for h in held) == P  # disjoint
    rows = db_owners(dsn, schema)
    for w, h in zip(ws, held):
        for p in h:
            assert rows[p][0] == w.name and rows[p][1] == w.owned()[p]
    for w in ws:
        w.stop(release=False)


def test_dead_worker_partitions_are_taken_after_the_lease_with_a_new_epoch(dsn):
    schema = new_schema()
    ev_a = {"gained": [], "lost": []}
    a, b = manager(dsn, schema, "a", ev_a), manager(dsn, schema, "b")
    for _ in range(3):
        a.tick(); b.tick()
    a_parts = dict(a.owned())
    assert a_parts and len(a_parts) + len(b.owned()) == P
    # a stops renewing (killed or stalled). Before the lease runs out, b may not take.
    b.tick()
    assert not (set(b.owned()) & set(a_parts))
    time.sleep(1.1)
    assert a.owned() == {}  # a's own clock already gave them up
    for _ in range(2):
        b.tick()
    assert set(b.owned()) == set(range(P))
    for p, epoch in a_parts.items():
        assert b.owned()[p] == epoch + 1  # the fence moved
    # a wakes up: its renewal finds the rows moved and reports them lost.
    a.tick()
    assert a.owned() == {}
    assert ev_a["lost"][-1] == set(a_parts)
    assert db_owners(dsn, schema)[next(iter(a_parts))][0] == "b"
    a.stop(release=False); b.stop(release=False)


def test_graceful_stop_hands_over_at_once(dsn):
    schema = new_schema()
    a, b = manager(dsn, schema, "a", lease_s=30.0, renew_s=1.0), \
        manager(dsn, schema, "b", lease_s=30.0, renew_s=1.0)
    for _ in range(3):
        a.tick(); b.tick()
    assert len(a.owned()) == len(b.owned()) == P // 2
    a.stop(release=True)
    b.tick()  # no waiting for a 30 s lease: a is marked stopped and its rows are free
    assert set(b.owned()) == set(range(P))
    b.stop()


def test_concurrent_takers_never_share_a_partition(dsn):
    schema = new_schema()
    ws = [manager(dsn, schema, f"c{i}", lease_s=5.0, renew_s=1.0) for i in range(4)]
    barrier = threading.Barrier(len(ws))

    def run(w):
        barrier.wait()
        for _ in range(6):
            w.tick()

    threads = [threading.Thread(target=run, args=(w,)) for w in ws]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for w in ws:  # settle: everyone has seen everyone
        w.tick()
    for w in ws:
        w.tick()
    held = [set(w.owned()) for w in ws]
    assert sum(len(h) for h in held) == len(set().union(*held))
    assert set().union(*held) == set(range(P))
    assert max(len(h) for h in held) <= share(P, 4)
    for w in ws:
        w.stop(release=False)


def test_database_unreachable_gives_partitions_up_locally(dsn):
    schema = new_schema()
    ev = {"gained": [], "lost": []}
    a = manager(dsn, schema, "a", ev)
    a.tick()
    assert len(a.owned()) == P
    a.dsn = "postgresql://postgres@/postgres?host=/nonexistent&connect_timeout=1"
    a._conn.close()
    a.tick()
    assert a.errors == 1 and "OperationalError" in a.last_error
    assert len(a.owned()) == P  # still within the lease
    time.sleep(1.05)
    a.tick()
    assert a.owned() == {} and ev["lost"] == [set(range(P))]
    a.dsn = dsn
    a.tick()  # back: nobody else took them, so they come back with a bumped epoch
    assert a.owned() == {p: 2 for p in range(P)}
    a.stop()


def test_lease_must_outlast_two_renewals():
    with pytest.raises(ValueError, match="lease time"):
        LeaseManager("postgresql://x", "s", "w", lease_s=1.0, renew_s=0.6)
    with pytest.raises(ValueError, match="schema name"):
        from greenflow.cluster.leases import _ident
        _ident('x"; drop table leases; --')


def test_status_lists_workers_with_their_partitions(dsn):
    import psycopg
    schema = new_schema()
    a, b = manager(dsn, schema, "a", address="127.0.0.1:1"), manager(dsn, schema, "b")
    for _ in range(3):
        a.tick(); b.tick()
    with psycopg.connect(dsn, autocommit=True) as c:
        workers, leases = lease_table(c, schema, lease_s=1.0)
    assert [w.name for w in workers] == ["a", "b"]
    assert all(w.live for w in workers)
    assert workers[0].address == "127.0.0.1:1"
    assert sorted(workers[0].partitions + workers[1].partitions) == list(range(P))
    assert len(leases) == P
    a.stop(); b.stop()


def _fid_in(part: int) -> str:
    from greenflow.storage.partitions import partition_of
    i = 0
    while partition_of(f"flow-{i}") != part:
        i += 1
    return f"flow-{i}"


def test_a_takeover_never_overlaps_the_old_owners_commit_and_fences_its_next(dsn):
    """The fence: a commit holds its partitions' advisory locks shared while it checks
    the epoch and writes; a takeover takes them exclusively, so it leaves a partition
    with a commit in flight for its next round, and the old owner's next commit is
    refused."""
    import psycopg
    from greenflow.errors import Fenced
    from greenflow.storage.interface import Batch
    from greenflow.storage.postgres_store import PostgresStore
    schema = new_schema()
    a = manager(dsn, schema, "a")
    a.tick()
    held = a.owned()
    assert set(held) == set(range(P))
    store = PostgresStore(dsn, schema, owner="a", owned=lambda: dict(held))
    flying = psycopg.connect(dsn)
    b = manager(dsn, schema, "b")
    try:
        fid = _fid_in(5)
        # a's commit in flight: gf_fence done, the transaction not yet committed.
        flying.execute(f'SET search_path TO "{schema}"')
        flying.execute("SELECT gf_fence(ARRAY[5], ARRAY[%s]::bigint[], 'a')", (held[5],))
        time.sleep(1.1)   # a stops renewing: its leases run out
        b.tick()
        assert 5 not in b.owned() and len(b.owned()) == P - 1
        flying.commit()
        b.tick()
        assert b.owned()[5] == held[5] + 1
        # a still believes it holds partition 5 at its old epoch: refused by the database.
        batch = Batch()
        batch.start_flow(fid, b"l")
        with pytest.raises(Fenced, match=r"partitions \{5\}"):
            store.commit(batch)
        assert not store.has_flow(fid)
    finally:
        flying.close()
        store.close()
        a.stop(release=False)
        b.stop(release=False)


def _other_process_row(dsn, schema, name, **cols):
    """A ``workers`` row of another process (pid 1 on another host) under ``name``."""
    import psycopg
    a = manager(dsn, schema, "setup")
    a._connect()   # creates the schema
    a._drop_connection()
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute(f'INSERT INTO "{schema}".workers (name, host, pid, stopped) '
                  "VALUES (%s, 'elsewhere', 1, %s)", (name, cols.get("stopped", False)))


def test_a_worker_name_belongs_to_one_live_process(dsn):
    """A second process under a live worker's name is refused at its start, naming the
    holder; the name of a process that is gone (killed: its heartbeat ages past the lease
    time) or that stopped is taken over."""
    import psycopg
    from greenflow.errors import WorkerNameInUse
    schema = new_schema()
    _other_process_row(dsn, schema, "live")
    stop = threading.Event()

    def renew():   # the other process keeps its heartbeat
        with psycopg.connect(dsn, autocommit=True) as c:
            while not stop.wait(0.1):
                c.execute(f'UPDATE "{schema}".workers SET heartbeat_at = now() WHERE name = %s',
                          ("live",))

    t = threading.Thread(target=renew, daemon=True)
    t.start()
    try:
        m = manager(dsn, schema, "live")
        t0 = time.monotonic()
        with pytest.raises(WorkerNameInUse, match=r"'live' is in use by process 1 on elsewhere"):
            m.start()
        assert time.monotonic() - t0 < 1.0   # refused once it saw the heartbeat move
        assert m.owned() == {}
    finally:
        stop.set()
        t.join()
        m.stop(release=False)
    _other_process_row(dsn, schema, "killed")   # its heartbeat is now and stays so
    k = manager(dsn, schema, "killed")
    t0 = time.monotonic()
    k.start()
    try:
        assert time.monotonic() - t0 >= 0.9 and len(k.owned()) > 0
        with psycopg.connect(dsn, autocommit=True) as c:
            assert c.execute(f'SELECT pid FROM "{schema}".workers WHERE name = %s',
                             ("killed",)).fetchone()[0] != 1
    finally:
        k.stop(release=True)
    _other_process_row(dsn, schema, "stopped", stopped=True)
    s = manager(dsn, schema, "stopped")
    t0 = time.monotonic()
    s.start()
    assert time.monotonic() - t0 < 0.9
    s.stop(release=True)
