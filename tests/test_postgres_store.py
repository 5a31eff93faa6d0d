"""The PostgreSQL store's own behaviour: a batch's order semantics in one transaction,
lease fencing, partition-limited listings, the single-writer lock, a missing schema,
reconnecting after the server restarts, and the local server launcher.

(The operations shared with the LMDB store are checked for both stores by the store
contract tests; these are what only the PostgreSQL store has.)"""
from __future__ import annotations

import logging
import os
import time
import uuid

import pytest

psycopg = pytest.importorskip("psycopg")

from greenflow import serialization  # noqa: E402
from greenflow.errors import Fenced, StoreError, StoreLocked, StoreMissing  # noqa: E402
from greenflow.storage.interface import Batch, journal_chunk  # noqa: E402
from greenflow.storage.partitions import PARTITIONS, partition_of  # noqa: E402
from greenflow.storage.postgres_store import PostgresStore, schema_for, split_url  # noqa: E402


@pytest.fixture
def schema() -> str:
    return "t_" + uuid.uuid4().hex[:16]


@pytest.fixture
def store(pg_url: str, schema: str):
    st = PostgresStore(pg_url, schema)
    for t in ("t", "rows", "rowz"):
        st.open_table(t)
    yield st
    st.drop_schema()
    st.close()


def _header(n: int) -> bytes:
    return serialization.dumps({"n": n})


def test_batch_order_semantics_in_one_commit(store: PostgresStore, caplog) -> None:
    b = Batch()
    b.start_flow("a", b"logic-a")
    b.put_header("a", _header(1))
    b.append_journal("a", 0, journal_chunk(1.0, serialization.dumps(["e0", "e1"])))
    b.put_inbox("a", "s", 1, b"frame")
    b.set_wake("a", True)
    b.put_header("ghost", _header(0))          # no start record anywhere: refused
    store.commit(b)
    assert store.header_blob("a") == _header(1)
    assert store.journal("a", 2) == ["e0", "e1"]
    assert store.journal_with_times("a", 2)[1] == [1.0, 1.0]
    assert not store.has_flow("ghost")
    assert "ghost" in caplog.text

    # Dropped and started again in one batch: it ends started, with only the new records.
    b = Batch()
    b.drop_flow("a", 2)
    b.start_flow("a", b"logic-a2")
    b.put_header("a", _header(2))
    b.append_journal("a", 0, journal_chunk(2.0, serialization.dumps(["new"])))
    store.commit(b)
    assert store.logic_blob("a") == b"logic-a2"
    assert store.journal("a", 1) == ["new"]
    assert store.inbox("a") == [] and store.flows_to_wake() == set()

    # Started, then dropped, then a header in one batch: the header is refused.
    caplog.clear()
    b = Batch()
    b.start_flow("c", b"logic-c")
    b.put_header("c", _header(1))
    b.drop_flow("c", 0)
    b.put_header("c", _header(2))
    store.commit(b)
    assert not store.has_flow("c") and store.logic_blob("c") is None
    assert "flow c" in caplog.text

    # A key written then deleted in one batch ends deleted; deleted then written ends written.
    b = Batch()
    b.put_outbox("P", "a.1", True, 1, b"x")
    b.delete_outbox("P", "a.1", True, 1)
    b.put_timer(5.0, "a")
    b.delete_timer(5.0, "a")
    b.put_timer(6.0, "a")
    b.table_delete("t", b"k")
    b.table_put("t", b"k", b"v")
    store.commit(b)
    assert list(store.outbox()) == []
    assert list(store.timers()) == [(6.0, "a")]
    assert store.table_get("t", b"k") == b"v"


def test_failed_commit_applies_nothing(store: PostgresStore) -> None:
    b = Batch()
    b.start_flow("a", b"l")
    b.put_header("a", _header(1))
    b.put_inbox("a", "s", 1, b"\0" * 10)
    b.ops.append((99, "bogus"))                 # an op no store knows
    with pytest.raises(StoreError, match="unknown batch operation"):
        store.commit(b)
    assert not store.has_flow("a") and store.inbox("a") == []
    b = Batch()
    b.start_flow("a", b"l")
    b.put_header("a", _header(1))
    b.put_inbox("a", "s", 1, b"ok")
    b.put_outbox("P", "a.1", True, 2 ** 70, b"x")   # cannot be stored: the whole batch goes
    with pytest.raises(StoreError, match="nothing of it was applied.*cannot be stored"):
        store.commit(b)
    b.ops.pop()
    b.put_route("P", "a.1", 1, b"x", float("nan"))
    b.put_timer(1.0, "a")
    b.put_timer(1.0, os.urandom(6000).hex())   # longer than a btree index row: server refuses
    with pytest.raises(StoreError, match="nothing of it was applied"):
        store.commit(b)
    assert not store.has_flow("a") and store.inbox("a") == []
    b.ops.pop()
    store.commit(b)                             # the connection is usable afterwards
    assert store.has_flow("a")


def _take(conn_url: str, schema: str, parts: dict[int, tuple[str, int]]) -> None:
    with psycopg.connect(conn_url, autocommit=True) as c:
        for p, (owner, epoch) in parts.items():
            c.execute(f'INSERT INTO "{schema}".leases (part, owner, epoch) VALUES (%s, %s, %s) '
                      "ON CONFLICT (part) DO UPDATE SET owner = EXCLUDED.owner, "
                      "epoch = EXCLUDED.epoch", (p, owner, epoch))


def _fids_in(part: int, n: int) -> list[str]:
    out, i = [], 0
    while len(out) < n:
        f = f"flow-{i}"
        if partition_of(f) == part:
            out.append(f)
        i += 1
    return out


def test_fencing_refuses_a_commit_for_a_lost_partition(pg_url: str, schema: str,
                                                      store: PostgresStore) -> None:
    (a1, a2), (b1,) = _fids_in(3, 2), _fids_in(4, 1)
    owned = {3: 1, 4: 1}
    w1 = PostgresStore(pg_url, schema, owner="w1", owned=lambda: dict(owned))
    try:
        _take(pg_url, schema, {3: ("w1", 1), 4: ("w1", 1)})
        b = Batch()
        for f in (a1, b1):
            b.start_flow(f, b"l")
            b.put_header(f, _header(1))
        w1.commit(b)
        assert w1.has_flow(a1) and w1.has_flow(b1)

        # Another worker takes partition 4 at epoch 2: w1's commit touching it is
        # refused as a whole (its write to partition 3 too).
        _take(pg_url, schema, {4: ("w2", 2)})
        b = Batch()
        b.start_flow(a2, b"l")
        b.put_header(a2, _header(1))
        b.put_header(b1, _header(2))
        with pytest.raises(Fenced, match=r"partitions \{4\}"):
            w1.commit(b)
        assert not w1.has_flow(a2) and w1.header_blob(b1) == _header(1)

        # Same owner, stale epoch: refused too.
        _take(pg_url, schema, {4: ("w1", 3)})
        with pytest.raises(Fenced):
            w1.commit(b)
        # What the worker believes it owns decides before the database is asked.
        del owned[4]
        with pytest.raises(Fenced, match="does not own"):
            w1.commit(b)
        # A commit within its partitions goes through; deliveries to others are not fenced.
        b = Batch()
        b.start_flow(a2, b"l")
        b.put_header(a2, _header(1))
        b.put_inbox(b1, "x.1", 1, b"for another partition")
        w1.commit(b)
        assert w1.has_flow(a2) and w1.inbox(b1) == [("x.1", 1, b"for another partition")]
    finally:
        w1.close()


def test_a_worker_answers_no_such_route_of_its_partitions_from_memory(
        pg_url: str, schema: str, store: PostgresStore) -> None:
    """A worker is the only writer of its partitions' routes (a route is written with its
    session's partition fenced), so "no such route" there needs no query; a route it has,
    or one of another partition, is read from the database."""
    [mine], [theirs] = _fids_in(7, 1), _fids_in(8, 1)
    b = Batch()
    b.start_flow(mine, b"l")
    b.put_header(mine, _header(0))
    b.put_route("P", mine + ".1", 1, b"stored before", None)
    store.commit(b)
    _take(pg_url, schema, {7: ("w", 1)})
    w = PostgresStore(pg_url, schema, owner="w", owned=lambda: {7: 1})
    try:
        queries = []
        one = w.reader.one
        w.reader.one = lambda q, p: queries.append(p) or one(q, p)
        assert w.route("P", mine + ".1", 1) == b"stored before"     # loaded, then read
        assert len(queries) == 1
        assert w.route("P", mine + ".2", 1) is None                  # from memory
        assert w.route("Q", mine + ".1", 1) is None
        assert len(queries) == 1
        assert w.route("P", theirs + ".1", 1) is None                # not its partition
        assert len(queries) == 2
        # Its own commit's routes are known at once.
        b = Batch()
        b.put_header(mine, _header(1))
        b.put_route("P", mine + ".2", 1, b"committed here", None)
        w.commit(b)
        assert w.route("P", mine + ".2", 1) == b"committed here"
        # A route of a session in a partition it does not hold is fenced like its flows.
        b = Batch()
        b.put_route("P", theirs + ".3", 1, b"not mine", None)
        with pytest.raises(Fenced, match="does not own"):
            w.commit(b)
        assert store.route("P", theirs + ".3", 1) is None
    finally:
        w.close()


def test_listings_are_limited_to_owned_partitions(pg_url: str, schema: str,
                                                   store: PostgresStore) -> None:
    mine, theirs = _fids_in(7, 3), _fids_in(8, 2)
    b = Batch()
    for f in mine + theirs:
        b.start_flow(f, b"l")
        b.put_header(f, _header(0))
        b.set_wake(f, True)
        b.put_timer(10.0, f)
    store.commit(b)
    w = PostgresStore(pg_url, schema, owner="w", owned=lambda: {7: 1})
    try:
        assert sorted(f for f, _ in w.checkpoints()) == sorted(mine)
        assert w.flows_to_wake() == set(mine)
        assert sorted(f for _, f in w.timers()) == sorted(mine)
        assert w.flow_count() == 3
        assert store.flow_count() == 5            # one node owns all
        assert w.has_flow(theirs[0])              # point reads are not limited
    finally:
        w.close()


def test_long_listings_page(store: PostgresStore) -> None:
    b = Batch()
    for i in range(1200):
        f = f"f{i:05d}"
        b.start_flow(f, b"l")
        b.put_header(f, _header(i))
        b.put_outbox("peer", f + ".1", True, 1, f.encode())
        b.table_put("rows", b"k%05d" % i, b"v")
    b.table_put("rowz", b"k", b"other table")
    store.commit(b)
    assert [f for f, _ in store.checkpoints()] == [f"f{i:05d}" for i in range(1200)]
    assert [d for _, d in store.outbox("peer")] == [b"f%05d" % i for i in range(1200)]
    assert len(list(store.table_items("rows"))) == 1200
    assert [k for k, _ in store.table_items("rows", b"k011")] == [b"k%05d" % i
                                                                 for i in range(1100, 1200)]
    back = [k for k, _ in store.table_items("rows", reverse=True, after=b"k00003")]
    assert back == [b"k00002", b"k00001", b"k00000"]
    assert store.table_count("rows") == 1200


def test_one_node_per_schema_and_missing_schema(pg_url: str, tmp_path) -> None:
    node = str(tmp_path / "node")
    with pytest.raises(StoreMissing, match="--new-store"):
        PostgresStore.for_node(node, pg_url, create=False)
    st = PostgresStore.for_node(node, pg_url)
    try:
        assert st.schema == schema_for(node)
        with pytest.raises(StoreLocked, match="another process"):
            PostgresStore.for_node(node, pg_url)
        ro = PostgresStore.for_node(node, pg_url, readonly=True)
        ro.close()
        with pytest.raises(StoreError, match="read-only"):
            ro.commit(Batch())
    finally:
        st.drop_schema()
        st.close()
    dsn, named = split_url(pg_url + "?schema=mine&connect_timeout=5")
    assert named == "mine" and "schema" not in dsn and "connect_timeout=5" in dsn
    with pytest.raises(StoreError, match="schema name"):
        PostgresStore(pg_url, "bad-name; drop")


def test_local_server_restart_and_reconnect() -> None:
    import tempfile
    from greenflow.storage.pg_server import PgServer
    # Not under pytest's base directory: a concurrent pytest session makes that private
    # again (0700) at its start, and the server's own account must reach its directory.
    server = PgServer(tempfile.mkdtemp(prefix="greenflow-pgtest-"))
    url = server.start()
    try:
        st = PostgresStore(url, "gf_restart")
        b = Batch()
        b.start_flow("a", b"l")
        b.put_header("a", _header(1))
        st.commit(b)
        server.stop()
        b = Batch()
        b.put_header("a", _header(2))
        with pytest.raises(StoreError, match="connection was lost|failed"):
            st.commit(b)
        server.start()                                 # same port, same data
        assert server.url == url
        st.commit(b)                                   # reconnects by itself
        assert st.header_blob("a") == _header(2)
        st.close()
    finally:
        server.destroy()
    assert not os.path.exists(server.directory)


def test_partitions_are_stable_and_spread() -> None:
    assert partition_of("abc") == partition_of("abc") == 0x352441C2 % PARTITIONS
    counts = [0] * PARTITIONS
    for i in range(25600):
        counts[partition_of(f"flow-{i}")] += 1
    assert min(counts) > 50 and max(counts) < 160


def test_routes_are_answered_from_memory_by_a_single_node(pg_url: str, schema: str,
                                                         store: PostgresStore) -> None:
    b = Batch()
    b.put_route("Bob", "a.1", 1, b"a", None)
    b.put_route("Bob", "old.1", 0, b"done", 1.0)
    store.commit(b)
    other = PostgresStore(pg_url, schema, readonly=True)
    try:
        assert other.route("Bob", "a.1", 1) == b"a"            # a reader asks the database
        store.route_reader._route_cache.clear()
        store.route_reader._route_keys = None
        assert store.route("Bob", "a.1", 1) == b"a"            # read back, then kept
        assert store.route("Bob", "new.1", 0) is None          # no query: no such key
        b = Batch()
        b.put_route("Bob", "new.1", 0, b"n", None)
        b.put_route("Bob", "a.1", 1, b"ended", None)
        store.commit(b)
        assert store.route("Bob", "new.1", 0) == b"n" and store.route("Bob", "a.1", 1) == b"ended"
        assert other.route("Bob", "new.1", 0) == b"n"
        assert store.expire(2.0) == 1
        assert store.route("Bob", "old.1", 0) is None and other.route("Bob", "old.1", 0) is None
    finally:
        other.close()


def test_a_worker_commit_notifies_the_partitions_it_gave_work(pg_url: str, schema: str,
                                                             store: PostgresStore) -> None:
    (a,), (b,) = _fids_in(5, 1), _fids_in(9, 1)
    _take(pg_url, schema, {5: ("w1", 1)})
    w1 = PostgresStore(pg_url, schema, owner="w1", owned=lambda: {5: 1}, notify="gf_work")
    listener = psycopg.connect(pg_url, autocommit=True)
    try:
        listener.execute("LISTEN gf_work")
        c = Batch()
        c.start_flow(a, b"l")
        c.put_header(a, _header(1))
        w1.commit(c)                                   # a start: its partition
        c = Batch()
        c.put_header(a, _header(2))
        w1.commit(c)                                   # nothing for anyone: no notification
        c = Batch()
        c.put_inbox(b, "x.1", 1, b"frame")             # delivered into partition 9
        c.set_wake(a, True)
        w1.commit(c)
        got = [n.payload for n in listener.notifies(timeout=2.0, stop_after=2)]
        assert got == ["5", "5,9"]
    finally:
        listener.close()
        w1.close()


def test_a_schema_made_by_another_version_gets_this_commit_function(pg_url: str, schema: str,
                                                                   store: PostgresStore) -> None:
    with psycopg.connect(pg_url, autocommit=True) as c:
        c.execute(f'UPDATE "{schema}".meta SET value = %s WHERE name = %s',
                  (b"old", "greenflow.commit-function"))
    store.close()
    again = PostgresStore(pg_url, schema)
    try:
        b = Batch()
        b.start_flow("a", b"l")
        b.put_header("a", _header(1))
        again.commit(b)
        assert again.has_flow("a")
    finally:
        again.close()


def test_commits_find_their_rows_by_key_never_by_scanning_a_table(pg_url: str,
                                                                  store: PostgresStore) -> None:
    """Tables that churn (a row per flow in flight, deleted when it ends) keep statistics
    that say they are nearly empty while they fill with live and dead rows: a commit that
    scanned them (the drops did, once per commit) grew slower as they grew."""
    fids = [f"f{i:04d}" for i in range(300)]
    b = Batch()
    for f in fids:
        b.start_flow(f, b"l")
        b.put_header(f, _header(1))
        b.append_journal(f, 0, journal_chunk(1.0, serialization.dumps(["e"])))
        b.put_snapshot(f, b"s")
        b.set_wake(f, True)
        b.put_inbox(f, "s", 1, b"i")
        b.put_outbox("P", f + ".1", True, 1, b"o")
    store.commit(b)

    def scans() -> dict:
        time.sleep(1.1)          # a backend reports its statistics at most once a second
        store.has_flow(fids[0])  # ... at the end of a transaction
        with psycopg.connect(pg_url, autocommit=True) as c:
            return dict(c.execute("SELECT relname, seq_scan FROM pg_stat_user_tables "
                                  "WHERE schemaname = %s", (store.schema,)).fetchall())

    before = scans()
    for i in range(0, 40, 4):
        b = Batch()
        for f in fids[i:i + 4]:
            b.drop_flow(f, 1, 1, 1)
            b.delete_outbox("P", f + ".1", True, 1)
            b.set_wake(f, False)
            b.put_result(f, b"r", None)
        store.commit(b)
    after = scans()
    assert {t: after[t] - before[t] for t in after if after[t] != before[t]} == {}
    assert not store.has_flow(fids[0]) and store.has_flow(fids[-1])


def _node_dir(path, name: str, key=None):
    """A directory with a node's identity (name and key), as bootstrap makes one."""
    from greenflow.keys import KeyPair, save_keypair
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "identity.name"), "w", encoding="utf-8") as fh:
        fh.write(name + "\n")
    key = key or KeyPair.generate()
    save_keypair(os.path.join(path, "identity.key"), key)
    return str(path), key


def test_a_party_store_is_found_from_any_copy_of_its_directory(pg_url: str, tmp_path) -> None:
    """The schema followed the directory's absolute path: a worker whose copy of the
    directory sat elsewhere opened an empty schema of its own (a second, split "cluster"
    of one party), and a moved directory found no store. It follows the party's key now."""
    import shutil
    alice, _ = _node_dir(tmp_path / "here" / "Alice", "Alice")
    st = PostgresStore.for_node(alice, pg_url)
    st.open_table("t")
    b = Batch()
    b.table_put("t", b"k", b"done")
    st.commit(b)
    st.close()
    copy = str(tmp_path / "elsewhere" / "Alice")
    shutil.copytree(alice, copy)
    again = PostgresStore.for_node(copy, pg_url)
    try:
        again.open_table("t")
        assert again.schema == st.schema and list(again.table_items("t")) == [(b"k", b"done")]
        with pytest.raises(StoreLocked):   # and both copies at once: one holds it
            PostgresStore.for_node(alice, pg_url)
    finally:
        again.drop_schema()
        again.close()


def test_another_partys_store_is_refused(pg_url: str, tmp_path) -> None:
    """A worker or node given another party's schema (`?schema=`) ran that party's flows
    as its own (as Carol: "no party named 'Bob' on the network of Carol")."""
    alice, _ = _node_dir(tmp_path / "Alice", "Alice")
    carol, _ = _node_dir(tmp_path / "Carol", "Carol")
    st = PostgresStore.for_node(alice, pg_url)
    schema = st.schema
    st.close()
    with pytest.raises(StoreError, match=r"belongs to the party Alice \(key [0-9a-f]{16}\.\.\.\), "
                                         r"not to Carol"):
        PostgresStore.for_node(carol, pg_url + ("&" if "?" in pg_url else "?") + f"schema={schema}")
    st = PostgresStore.for_node(alice, pg_url)   # Alice's own is untouched
    st.drop_schema()
    st.close()


def test_a_store_an_earlier_version_named_by_path_is_still_found(pg_url: str, tmp_path) -> None:
    from greenflow.storage.postgres_store import path_schema
    dsn, _ = split_url(pg_url)
    alice, _ = _node_dir(tmp_path / "Alice", "Alice")
    old = PostgresStore(dsn, path_schema(alice))   # as earlier versions made it
    old.open_table("t")
    b = Batch()
    b.table_put("t", b"k", b"old")
    old.commit(b)
    old.close()
    st = PostgresStore.for_node(alice, pg_url)
    try:
        assert st.schema == path_schema(alice) == schema_for(alice, dsn)
        st.open_table("t")
        assert list(st.table_items("t")) == [(b"k", b"old")]
    finally:
        st.drop_schema()
        st.close()


def test_a_worker_whose_clock_runs_ahead_expires_by_the_databases_clock(pg_url: str, schema: str,
                                                                        store: PostgresStore) -> None:
    """One worker's clock 8 days ahead deleted the results and client ids of the whole
    party (its sweep reaches every partition); a client retrying one of those ids had its
    flow run again."""
    now = time.time()
    b = Batch()
    b.put_result("f1", b"r1", now + 3600)        # an hour left, by every honest clock
    b.put_result("f0", b"r0", now - 60)          # due
    b.put_client("c1", "f1")
    b.expire_client("c1", now + 3600)
    store.commit(b)
    w = PostgresStore(pg_url, schema, owner="w1", owned=dict)
    try:
        assert w.expire(now + 8 * 86400) == 1     # only what is due by the database's clock
        assert store.result_blobs and [f for f, _ in store.result_blobs()] == ["f1"]
        assert store.client("c1") == "f1"
    finally:
        w.close()
    assert store.expire(now + 8 * 86400) == 2     # a single node goes by its own clock


def test_a_workers_build_of_the_parked_index_covers_the_whole_party(pg_url: str, schema: str,
                                                                   store: PostgresStore) -> None:
    """A clustered worker's store lists only the partitions it holds: the index of parked
    flows, built once for a store of an earlier version, must still be the party's (one
    built from a worker's own partitions would leave the others' parked flows out for
    good), and a worker counts the parked flows of its own partitions."""
    from greenflow.runtime.checkpoint import Checkpoint
    from greenflow.statemachine import parked
    from greenflow.status import FlowStatus
    from greenflow.storage.interface import encode_header
    ids = _fids_in(3, 2) + _fids_in(4, 1) + _fids_in(5, 1)
    b = Batch()
    for i, fid in enumerate(ids):
        cp = Checkpoint(fid, "x.Flow")
        if i != 3:
            cp.status = FlowStatus.HOSPITALIZED
        b.put_header_unchecked(fid, encode_header(cp))
    store.commit(b)
    w = PostgresStore(pg_url, schema, owner="w1", owned=lambda: {3: 1})
    try:
        assert [f for f, _ in w.header_blobs()] == sorted(ids[:2])   # its partitions only
        b = Batch()
        parked.open_index(w, b, "w1")
        w.commit(b)
        assert sorted(parked.flow_ids(store)) == sorted(ids[:3])
        assert parked.count(w) == 2 and parked.count(store) == 3
        assert w.owned is not None and [f for f, _ in w.header_blobs()] == sorted(ids[:2])
    finally:
        w.close()
