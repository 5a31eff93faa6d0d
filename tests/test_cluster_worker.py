"""Workers of one party on PostgreSQL, in this process: partitions split between them,
flows started through either, a worker's power cut taken over by the other, and a
worker whose partition moved refused at commit (fencing)."""
from __future__ import annotations

import time
from contextlib import contextmanager

import pytest

from cluster_pg import new_schema, server_dsn
from clusterflows import SlowPing
from greenflow.cluster.worker import Worker
from greenflow.errors import Fenced
from greenflow.status import FlowStatus
from greenflow.samples.ping import Ping
from greenflow.storage.interface import Batch
from greenflow.storage.partitions import PARTITIONS, partition_of
from greenflow.storage.postgres_store import PostgresStore

NAME = "O=Alice,L=London,C=GB"
APPS = ["greenflow.samples.ping", "clusterflows"]


@pytest.fixture
def party(tmp_path):
    url = server_dsn() + "?schema=" + new_schema()
    workers: list[Worker] = []

    def worker(name: str, start: bool = True, **kw) -> Worker:
        kw.setdefault("lease_s", 2.0)
        kw.setdefault("renew_s", 0.4)
        kw.setdefault("poll_s", 0.5)
        w = Worker(str(tmp_path / "party"), url, name=name, party_name=NAME, apps=APPS, **kw)
        workers.append(w)
        return w.start() if start else w

    yield worker
    for w in workers:
        if w.gen is not None:
            w.stop()


def results(store, ids, timeout):
    end = time.monotonic() + timeout
    while True:
        got = {i: store.result(i) for i in ids}
        if all(got.values()) or time.monotonic() > end:
            return got
        time.sleep(0.1)


def settle(*workers, timeout=15.0):
    """Until the workers hold every partition between them, each in its current generation."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        gens = [w.gen for w in workers]
        if all(g is not None for g in gens) and not any(w._dirty.is_set() for w in workers):
            parts = [set(g.owned()) for g in gens]
            if sum(map(len, parts)) == PARTITIONS and len(set().union(*parts)) == PARTITIONS \
                    and all(parts):
                return parts
        time.sleep(0.1)
    raise AssertionError(f"partitions not settled: {[len(w.lease.owned()) for w in workers]}")


@contextmanager
def serving_workers(tmp_path):
    """Two worker processes of Alice in this process, each with its RPC, serving their
    share of the partitions; stopped at the end."""
    from cluster_pg import worker_processes
    procs = worker_processes(tmp_path, APPS)
    try:
        for p in procs:
            p.start()
        settle(*(p.worker for p in procs))
        yield procs
    finally:
        for p in procs:
            if p.worker is not None and p.worker.gen is not None:
                p.stop()


def test_two_workers_split_the_partitions_and_each_runs_the_flows_it_starts(party):
    w1 = party("w1")
    settle(w1)
    h = w1.node.start_flow(Ping(w1.node.party, 3))
    assert h.result(timeout=20) == 6
    w2 = party("w2")
    p1, p2 = settle(w1, w2)
    assert abs(len(p1) - len(p2)) <= 2
    ids = {}
    for w, parts in ((w1, p1), (w2, p2)):
        handles = w.node.start_flows([Ping(w.node.party, 2) for _ in range(30)])
        assert all(partition_of(x.id) in parts for x in handles)  # started where it runs
        ids[w.name] = [x.id for x in handles]
    got = results(w1.node.store, ids["w1"] + ids["w2"], 30)
    assert all(r is not None and r["status"].name == "COMPLETED" for r in got.values())
    # A wait through the other worker sees the result too (from the shared table).
    slow = w2.node.start_flow(SlowPing(w2.node.party, 1, 0.5))
    assert w1.node.handle(slow.id).result(timeout=20) == 1
    assert w1.stats["fenced"] == w2.stats["fenced"] == 0


def test_a_workers_unfinished_flows_finish_on_the_other_after_a_power_cut(party):
    w1, w2 = party("w1"), party("w2")
    settle(w1, w2)
    handles = w1.node.start_flows([SlowPing(w1.node.party, 2, 1.0) for _ in range(40)])
    ids = [x.id for x in handles]
    time.sleep(0.3)
    t0 = time.monotonic()
    w1.crash()   # nothing released: w2 must wait out the lease, then replay
    got = results(w2.node.store, ids, 30)
    took = time.monotonic() - t0
    assert sum(1 for r in got.values() if r is not None) == 40
    assert all(r["status"].name == "COMPLETED" and r["value"] == 1 + 2
               for r in got.values()), list(got.values())[:2]
    assert took < 2.0 + 10.0  # the lease, then the flows' own sleeps and the replay
    assert set(w2.gen.owned()) == set(range(PARTITIONS))


def test_a_commit_for_a_partition_that_moved_is_refused(party):
    w1, w2 = party("w1"), party("w2")
    p1, _ = settle(w1, w2)
    stale = dict(w1.gen.parts)           # what w1 believed it held
    part = min(stale)
    w1.crash()                           # stalls past its lease ...
    end = time.monotonic() + 15
    while part not in w2.lease.owned() and time.monotonic() < end:
        time.sleep(0.1)
    assert w2.lease.owned()[part] == stale[part] + 1   # ... w2 took it, the epoch moved
    late = PostgresStore(w2.dsn, w2.schema, owner="w1", owned=lambda: stale)
    try:
        from greenflow.statemachine.ids import flow_id_in
        fid = flow_id_in(part)
        b = Batch()
        b.start_flow(fid, b"logic")
        with pytest.raises(Fenced, match="not owned by w1"):
            late.commit(b)                # its late commit: refused, nothing applied
        assert not w2.node.store.has_flow(fid) and w2.node.store.logic_blob(fid) is None
    finally:
        late.close()


def test_a_worker_with_no_partition_files_its_starts_for_the_owners(party):
    from greenflow.statemachine.ids import client_flow_id
    w1 = party("w1")
    settle(w1)
    w2 = party("w2", start=False)
    w2.lease.max_take = 0            # one worker too many: it never holds a partition
    w2.start()
    end = time.monotonic() + 15
    while (w1.gen is None or len(w1.gen.owned()) != PARTITIONS // 2 or w1._dirty.is_set()
           or w2.gen is None) and time.monotonic() < end:
        time.sleep(0.1)              # w1 gave half back (two live workers), nobody took it
    held = set(w1.gen.owned())
    assert w2.gen is not None and not w2.gen.owned()
    handles = w2.node.start_flows([Ping(w2.node.party, 2) for _ in range(20)])
    assert all(partition_of(h.id) in held for h in handles)   # filed for a live owner
    assert [h.result(timeout=30) for h in handles] == [3] * 20   # 1 + 2
    # With a client id: the id derives from it, so a retry files the same start once.
    cid = next(c for c in (f"c-{i}" for i in range(1000))
               if partition_of(client_flow_id(c)) in held)
    first = w2.node.start_flow(Ping(w2.node.party, 3), client_id=cid)
    again = w2.node.start_flow(Ping(w2.node.party, 3), client_id=cid)
    assert first.id == again.id == client_flow_id(cid)
    assert first.result(timeout=30) == 6
    assert w1.node.start_flow(Ping(w1.node.party, 3), client_id=cid).id == first.id
    assert w2.stats["starts_forwarded"] >= 21 and w1.stats["starts_taken"] == 21


def test_a_page_of_the_partys_flows_reads_a_page_of_rows_and_names_each_flows_worker(party):
    """A clustered worker's `flow_page` lists every worker's flows, each once and named
    with the worker that runs it, reading the shared tables a page at a time on the
    caller's thread (not every row of the party for each page)."""
    import dataclasses
    import threading
    w1, w2 = party("w1"), party("w2")
    settle(w1, w2)
    done = [h for w in (w1, w2) for h in w.node.start_flows([Ping(w.node.party, 1) for _ in range(15)])]
    assert [h.result(timeout=30) for h in done] == [1] * 30
    waiting = {h.id: w.name for w in (w1, w2)
               for h in w.node.start_flows([SlowPing(w.node.party, 1, 600.0) for _ in range(3)])}
    end = time.monotonic() + 15
    while len(w1.node.flows()) < 66 and time.monotonic() < end:   # pings, pongs, waiting
        time.sleep(0.1)
    whole = {f.id: f for f in w1.node.flows()}
    assert len(whole) == 66
    read, readers = [], set()
    real = w1.node.party_listing

    def counting_store():
        store = real.open_store()
        for name in ("header_blobs", "result_blobs"):
            rows = getattr(store, name)
            setattr(store, name, lambda rows=rows, **kw: (
                readers.add(threading.current_thread()) or read.append(r) or r
                for r in rows(**kw)))
        return store

    w1.node.party_listing = dataclasses.replace(real, open_store=counting_store)
    got, cursor, pages = [], None, 0
    while True:
        page = w1.node.flow_page(limit=8, cursor=cursor)
        got += page.flows
        pages += 1
        assert len(read) <= 8 * pages + 2 * pages   # a page's rows, not the party's
        if not page.more:
            break
        cursor = page.next_cursor
    assert sorted(f.id for f in got) == sorted(whole)          # each flow once
    assert readers == {threading.current_thread()}
    owners = {p: w.name for w in (w1, w2) for p in w.gen.owned()}
    assert all(f.worker == owners[partition_of(f.id)] for f in got)
    assert {f.id: f.worker for f in got if f.id in waiting} == waiting
    assert [f.status.finished for f in got] == sorted(f.status.finished for f in got)
    # The same answer through either worker: a flow waiting on the other one was listed
    # HIBERNATED (not in the asking worker's memory), so a filter by SUSPENDED showed only
    # the asking worker's own.
    w1.node.party_listing = real
    for w in (w1, w2):
        seen = {f.id: f.status for f in w.node.flow_page([FlowStatus.SUSPENDED], limit=100).flows}
        assert {fid: seen.get(fid) for fid in waiting} == {fid: FlowStatus.SUSPENDED for fid in waiting}


def test_a_result_waited_for_through_a_worker_whose_generation_changes_is_the_flows_own(tmp_path):
    """Waiting for results over RPC through worker 2 while worker 1, which runs the flows,
    loses power: worker 2 takes its partitions into a new generation, closing the node
    object the waits were on. They were answered FAILED ("node Alice is closed") for
    flows that then completed, and a client retrying such a payment pays twice; now
    the waits go on through the new generation."""
    import threading

    from greenflow.rpc.client import RpcClient
    with serving_workers(tmp_path) as procs:
        w1, w2 = (p.worker for p in procs)
        ids = [h.id for h in w1.node.start_flows([SlowPing(w1.node.party, 1, 1.0)
                                                  for _ in range(20)])]
        c2 = RpcClient("%s:%d" % procs[1].rpc.address, "admin", "pw", timeout=30)
        answers: dict = {}

        def wait(fid: str) -> None:
            try:
                answers[fid] = c2.result(fid, wait=60)
            except Exception as exc:  # noqa: BLE001 - a 503 is allowed: nothing known
                answers[fid] = exc

        waiters = [threading.Thread(target=wait, args=(fid,)) for fid in ids]
        for t in waiters:
            t.start()
        time.sleep(0.3)
        gen = w2.gen
        procs[0].rpc.stop()
        w1.crash()   # power cut: w2 waits out the lease, then takes over in a new generation
        for t in waiters:
            t.join(90)
        assert w2.gen is not gen
        false_ends = {f: a for f, a in answers.items()
                      if isinstance(a, dict) and a.get("status") != "COMPLETED"}
        assert not false_ends, false_ends
        # Each answer is the flow's completion, or (never wrongly) "nothing known: ask again".
        for fid, a in answers.items():
            if not isinstance(a, dict):
                assert getattr(a, "status", None) == 503, a
                a = c2.result(fid, wait=30)
            assert a["status"] == "COMPLETED" and a["result"] == 1, a


def test_kill_and_retry_through_a_worker_that_does_not_run_the_flow(tmp_path):
    """A kill through a worker that does not run the flow answered killed: true, and
    that worker then showed the flow KILLED, while its owner ran it on to COMPLETED (a
    retry likewise showed COMPLETED and left the flow parked). Such a worker now does
    nothing and names the owner (421 NotHere); RpcClient follows it there."""
    from greenflow.errors import NotHere
    from greenflow.rpc.client import RpcClient, RpcClientError
    with serving_workers(tmp_path) as procs:
        w1, w2 = (p.worker for p in procs)
        fid = w1.node.start_flow(SlowPing(w1.node.party, 1, 30.0)).id
        with pytest.raises(NotHere, match=f"flow {fid} runs on worker w1 "):
            w2.node.kill_flow(fid)
        c2 = RpcClient("%s:%d" % procs[1].rpc.address, "admin", "pw", timeout=30)
        with pytest.raises(RpcClientError) as info:
            c2.request("POST", f"/flows/{fid}/kill", redirected=True)   # not followed
        assert info.value.status == 421 and info.value.type == "NotHere"
        assert "%s:%d" % procs[0].rpc.address in info.value.message
        assert c2.result(fid)["status"] != "KILLED"
        assert c2.kill(fid) == {"flow_id": fid, "killed": True}   # followed to w1
        c1 = RpcClient("%s:%d" % procs[0].rpc.address, "admin", "pw", timeout=30)
        assert c1.result(fid, wait=10)["status"] == c2.result(fid, wait=10)["status"] == "KILLED"
        assert c2.retry(fid) == {"flow_id": fid, "retried": False}   # (followed: it ended)


def test_a_worker_of_another_party_is_refused_the_store_before_it_takes_a_lease(tmp_path):
    """A worker given another party's schema (`?schema=`) took a share of its partitions
    and ran its flows as its own party, failing some of them for good."""
    import psycopg

    from greenflow.errors import StoreError
    from greenflow.network.bootstrap import bootstrap_network
    alice, carol = bootstrap_network(str(tmp_path), ["Alice", "Carol"], base_port=0, apps=APPS)
    url = server_dsn() + "?schema=" + new_schema()
    a = Worker(alice.base_dir, url, name="a1", apps=APPS, lease_s=2.0, renew_s=0.4).start()
    try:
        c = Worker(carol.base_dir, url, name="c1", apps=APPS, lease_s=2.0, renew_s=0.4)
        with pytest.raises(StoreError, match="belongs to the party O=Alice.*not to O=Carol|"
                                             "belongs to the party Alice.*not to Carol"):
            c.start()
        dsn, schema = url.split("?schema=")
        with psycopg.connect(dsn, autocommit=True) as conn:
            owners = {r[0] for r in conn.execute(f'SELECT owner FROM "{schema}".leases')}
        assert "c1" not in owners and "a1" in owners
    finally:
        a.stop()


def test_a_worker_given_another_schema_than_its_partys_store_is_refused(tmp_path):
    """A worker started with a `?schema=` naming another schema made an empty store there,
    took every partition of it and served as a second copy of the party."""
    import psycopg

    from greenflow.errors import StoreError
    from greenflow.network.bootstrap import bootstrap_network
    (alice,) = bootstrap_network(str(tmp_path), ["Alice"], base_port=0, apps=APPS)
    right, wrong = new_schema(), new_schema()
    a = Worker(alice.base_dir, server_dsn() + "?schema=" + right, name="a1", apps=APPS,
               lease_s=2.0, renew_s=0.4).start()
    try:
        stray = Worker(alice.base_dir, server_dsn() + "?schema=" + wrong, name="a9", apps=APPS,
                       lease_s=2.0, renew_s=0.4)
        with pytest.raises(StoreError, match=f"has its store in the schema {right} "):
            stray.start()
        with psycopg.connect(server_dsn(), autocommit=True) as conn:
            made = conn.execute("SELECT to_regclass(%s)", (f'"{wrong}".flows',)).fetchone()[0]
        assert made is None   # nothing was made there
    finally:
        a.stop()


def test_draining_through_one_worker_drains_the_whole_party(party):
    """Draining (the upgrade procedure) acted on the worker reached only: the others
    went on starting flows, the count of unfinished flows was that worker's own, and
    `drain off` left the others refusing starts once a rebalance had spread the draining
    file to them."""
    from greenflow.errors import FlowError
    w1, w2 = party("w1"), party("w2")
    settle(w1, w2)
    slow = w2.node.start_flows([SlowPing(w2.node.party, 1, 3.0) for _ in range(4)])
    w1.node.set_draining(True)
    deadline = time.monotonic() + 5
    while not w2.node.draining and time.monotonic() < deadline:
        time.sleep(0.1)
    assert w2.node.draining
    with pytest.raises(FlowError, match="draining"):
        w2.node.start_flow(Ping(w2.node.party, 1))
    assert w1.node.pending_flows_count >= 4      # the party's, not w1's own
    w3 = party("w3")                              # a new generation drains from its start
    settle(w1, w2, w3)
    assert w3.node.draining and w2.node.draining
    w2.node.set_draining(False)
    deadline = time.monotonic() + 5
    while (w1.node.draining or w3.node.draining) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not w1.node.draining and not w3.node.draining
    assert w1.node.start_flow(Ping(w1.node.party, 2)).result(timeout=20) == 3
    assert all(w1.node.handle(h.id).result(timeout=30) == 1 for h in slow)
    assert w3.node.pending_flows_count == 0


def test_starts_with_client_ids_read_the_leases_once_a_second_and_a_database_refusal_is_503(
        party, monkeypatch):
    """Each start with a client id opened a connection of its own to read the leases: while
    the database was full of connections every such start failed, as a 500 "please file
    a bug". One read serves the starts of a second; a refusal is the node not serving
    just now (503, retry)."""
    import psycopg
    from greenflow.cluster import starts
    from greenflow.errors import NodeClosed
    w1 = party("w1")
    settle(w1)
    reads, real = [], starts.lease_owners
    monkeypatch.setattr(starts, "lease_owners", lambda *a: reads.append(1) or real(*a))
    handles = [w1.node.start_flow(Ping(w1.node.party, 1), client_id=f"c{i}") for i in range(20)]
    assert len(reads) <= 2 and {h.result(timeout=30) for h in handles} == {1}

    def refused(*a):
        raise psycopg.OperationalError("connection failed: FATAL: sorry, too many clients already")
    monkeypatch.setattr(starts, "lease_owners", refused)
    time.sleep(starts.HELD_FOR_S + 0.1)
    with pytest.raises(NodeClosed, match="too many clients"):
        w1.node.start_flow(Ping(w1.node.party, 1), client_id="c-late")


def test_a_start_filed_on_a_connection_the_database_ended_is_filed_on_a_new_one(party):
    """A restart of PostgreSQL ends every connection; a start with a client id filed on
    the handoff writer's ended connection failed as a 500 "please file a bug"."""
    import psycopg
    from cluster_pg import server_dsn
    w1 = party("w1")
    settle(w1)
    assert w1.node.start_flow(Ping(w1.node.party, 1), client_id="before").result(timeout=30) == 1
    pid = w1.writer._conn.info.backend_pid
    with psycopg.connect(server_dsn(), autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
    time.sleep(0.3)
    h = w1.node.start_flow(Ping(w1.node.party, 1), client_id="after")
    assert h.result(timeout=30) == 1
    assert w1.writer._conn.info.backend_pid != pid


def test_a_lease_round_stuck_on_a_silent_database_is_said_and_the_partitions_lapse(
        party, monkeypatch, caplog):
    """A database that stops answering (stopped, cut off) raises nothing: the lease round
    waited, the worker said nothing for as long as that lasted, and gave its partitions
    up only once the database answered again."""
    import logging
    import threading
    w1 = party("w1")
    settle(w1)
    assert w1.lease.owned()
    release = threading.Event()
    real = w1.lease._tick
    monkeypatch.setattr(w1.lease, "_tick", lambda: release.wait(20) and real())
    with caplog.at_level(logging.WARNING, logger="greenflow.cluster"):
        end = time.monotonic() + 10
        while w1.lease._owned and time.monotonic() < end:
            time.sleep(0.05)
        stuck = time.monotonic()
    try:
        assert not w1.lease._owned and w1.lease._round_began is not None   # still waiting
        said = [r.getMessage() for r in caplog.records]
        assert any("a lease round has waited" in m and "does not answer" in m for m in said), said
        assert any("giving up partitions" in m for m in said), said
    finally:
        release.set()
    settle(w1, timeout=20)   # the database answers again: it takes them back
    assert time.monotonic() - stuck < 20
