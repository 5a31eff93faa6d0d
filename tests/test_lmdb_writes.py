"""The LMDB store's own write and read paths (below the storage interface): expiry
records shared by everything due at one time, expiry records in the layout written
before (one entry each) still honoured, and the writer thread's read transaction, which
lives until its next write."""
from __future__ import annotations

import threading

import pytest

from greenflow.storage import lmdb_store as store_mod
from greenflow.storage.interface import Batch
from greenflow.storage.lmdb_keys import EXPIRY_BYTES, EXPIRY_GROUP, _micros

pytestmark = pytest.mark.lmdb_only


@pytest.fixture
def store(tmp_path):
    s = store_mod.LmdbStore(str(tmp_path / "store"), sync=False)
    yield s
    s.close()


def _expiry_rows(store) -> int:
    with store.env.begin(db=store.db["expiry"]) as txn:
        return txn.stat(store.db["expiry"])["entries"]


def test_everything_due_at_one_time_in_a_commit_shares_one_expiry_record(store):
    b = Batch()
    for i in range(100):
        b.put_route("Bob", f"s{i}", 0, b"F", 50.0)
        b.put_result(f"f{i}", b"R", 50.0)
    b.put_result("g", b"R", 60.0)
    store.commit(b)
    assert _expiry_rows(store) == 200 // EXPIRY_GROUP + 2   # not 201
    assert store.expire(55.0) == 200 and _expiry_rows(store) == 1
    assert store.reader.get("results", b"f3") is None and store.route("Bob", "s3", 0) is None
    assert store.reader.get("results", b"g") == b"R"


def test_a_group_never_exceeds_its_bounds(store):
    b = Batch()
    for i in range(EXPIRY_GROUP * 2 + 1):
        b.put_result(f"f{i}", b"R", 50.0)
    store.commit(b)
    assert _expiry_rows(store) == 3
    with store.env.begin(db=store.db["expiry"]) as txn:
        assert max(len(k) + len(v) for k, v in txn.cursor()) < EXPIRY_BYTES + 100
    assert store.expire(51.0, limit=10) == 10          # a shared record is split at need
    assert _expiry_rows(store) == 3
    assert store.expire(51.0, limit=EXPIRY_GROUP) == EXPIRY_GROUP
    assert store.expire(51.0) == EXPIRY_GROUP + 1 - 10 and _expiry_rows(store) == 0
    assert store.reader.get("results", b"f0") is None


def test_an_expiry_record_written_before_records_were_grouped_still_expires(store):
    with store.env.begin(write=True) as txn:   # the earlier layout: one entry, value b""
        txn.put(b"f1", b"R", db=store.db["results"])
        txn.put(_micros(50.0) + b"results\0f1", b"", db=store.db["expiry"])
    b = Batch()
    b.put_result("f2", b"R", 50.0)
    store.commit(b)
    assert store.expire(51.0) == 2
    assert store.reader.get("results", b"f1") is None and store.reader.get("results", b"f2") is None


def test_long_keys_share_records_by_size(store):
    b = Batch()
    for i in range(100):
        b.put_route("Bob", f"{i:0200d}", 0, b"F", 50.0)
    store.commit(b)
    rows = _expiry_rows(store)
    assert 100 * 215 // EXPIRY_BYTES <= rows < 100
    assert store.expire(51.0) == 100 and _expiry_rows(store) == 0


def test_the_same_entry_due_at_the_same_time_from_two_commits_merges(store):
    for other in ("a", "b"):
        b = Batch()
        b.put_result("f", b"R", 50.0)
        b.put_result(other, b"R", 50.0)
        store.commit(b)
    assert _expiry_rows(store) == 1
    assert store.expire(51.0) == 3
    assert all(store.reader.get("results", k) is None for k in (b"f", b"a", b"b"))


def test_the_writers_reads_see_each_commit_and_other_threads_read_their_own(store):
    def put(value: bytes) -> None:
        b = Batch()
        b.put_route("Bob", "s", 0, value)
        store.commit(b)

    put(b"1")
    assert store.route("Bob", "s", 0) == b"1"       # read through the writer's transaction
    put(b"2")
    assert store.route("Bob", "s", 0) == b"2"       # renewed by the commit
    seen = []
    t = threading.Thread(target=lambda: seen.append(store.route("Bob", "s", 0)))
    t.start()
    t.join()
    assert seen == [b"2"]
    store.open_table("t")                           # a table made after the read began
    b = Batch()
    b.table_put("t", b"k", b"v")
    store.commit(b)
    assert store.table_get("t", b"k") == b"v"


def test_the_map_grows_while_the_writer_holds_a_read(tmp_path, monkeypatch):
    monkeypatch.setattr(store_mod, "INITIAL_MAP", 256 * 1024)
    s = store_mod.LmdbStore(str(tmp_path / "store"), sync=False)
    try:
        b = Batch()
        b.put_route("Bob", "s", 0, b"1")
        s.commit(b)
        assert s.route("Bob", "s", 0) == b"1"        # a read transaction is open now
        before = s.env.info()["map_size"]
        b = Batch()
        for i in range(400):
            b.put_result(f"f{i}", b"x" * 4000, 50.0)
        s.commit(b)
        assert s.env.info()["map_size"] > before
        assert s.route("Bob", "s", 0) == b"1" and s.reader.get("results", b"f399") == b"x" * 4000
    finally:
        s.close()


def test_a_header_with_its_start_in_the_batch_is_written_and_one_after_a_drop_refused(store):
    """A header staged with its flow's start record is written without reading the store
    for it; a drop later in the same batch still makes a following header be refused."""
    b = Batch()
    b.start_flow("f1", b"logic")
    b.put_header("f1", b"h1")
    b.start_flow("f2", b"logic")
    b.drop_flow("f2", 0, (), False)
    b.put_header("f2", b"h2")
    b.put_header("f3", b"h3")   # never started
    store.commit(b)
    assert store.header_blob("f1") == b"h1"
    assert store.header_blob("f2") is None and store.header_blob("f3") is None
    assert sorted(store.writer.refused) == ["f2", "f3"]


def test_outbox_keys_keep_their_layout(store):
    """Outbox rows written before and now share one key layout (peer, session, role as
    an ASCII digit, big-endian sequence), so a restarted node re-sends and deletes them."""
    b = Batch()
    b.put_outbox("Bob", "s.1", True, 7, b"to-responder")
    b.put_outbox("Bob", "s.1", False, 7, b"to-initiator")
    store.commit(b)
    with store.env.begin(db=store.db["outbox"]) as txn:
        keys = [bytes(k) for k, _ in txn.cursor()]
    assert keys == [b"Bob\0s.1\x000\0\0\0\0\x07", b"Bob\0s.1\x001\0\0\0\0\x07"]
    b = Batch()
    b.delete_outbox("Bob", "s.1", True, 7)
    store.commit(b)
    assert [d for _, d in store.outbox("Bob")] == [b"to-initiator"]


GROW = """
import os, sys
from greenflow.storage.lmdb_store import LmdbStore
from greenflow.storage.interface import Batch
st = LmdbStore(sys.argv[1], sync=False)
st.open_table("t")
for i in range(int(sys.argv[2])):
    b = Batch()
    for j in range(100):
        b.table_put("t", b"k%06d%03d" % (i, j), os.urandom(4000))
    st.commit(b)
st.close()
"""


def test_a_read_only_view_keeps_reading_while_the_node_grows_its_map(tmp_path):
    """`checkpoints dump` and `replay` beside a running node: once the node had grown its
    store's map past the view's, every read the view began failed (MDB_MAP_RESIZED), and
    the tools reported most flows unreadable or not replaying."""
    import os
    import subprocess
    import sys

    import greenflow
    path = str(tmp_path / "store")
    writer = store_mod.LmdbStore(path, sync=False)
    writer.open_table("t")
    b = Batch()
    b.table_put("t", b"first", b"x")
    writer.commit(b)
    writer.close()
    view = store_mod.LmdbStore(path, readonly=True)
    try:
        view.open_table("t")
        assert view.flow_count() == 0 and view.table_count("t") == 1
        root = os.path.dirname(os.path.dirname(greenflow.__file__))
        subprocess.run([sys.executable, "-c", GROW, path, "400"], check=True, timeout=300,
                       env=dict(os.environ, PYTHONPATH=root))   # ~160 MB: the map grows
        assert view.flow_count() == 0 and view.table_count("t") == 40_001
        assert len(list(view.table_items("t", b"k000399"))) == 100
    finally:
        view.close()


def test_bytes_in_use_fall_when_records_are_deleted_though_the_file_does_not(store):
    """`greenflow_store_bytes` ("in use") was the file's high-water mark: it never fell,
    and rose while 100,000 flows were killed."""
    store.open_table("t")
    b = Batch()
    for i in range(2_000):
        b.table_put("t", b"k%05d" % i, b"v" * 1_000)
    store.commit(b)
    full = store.bytes_used()
    b = Batch()
    for i in range(2_000):
        b.table_delete("t", b"k%05d" % i)
    store.commit(b)
    emptied = store.bytes_used()
    assert full > 2_000_000 and emptied < full / 10, (full, emptied)
    assert (store.env.info()["last_pgno"] + 1) * store.env.stat()["psize"] >= full
