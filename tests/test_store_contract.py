"""The storage interface's contract (`greenflow.storage.interface`), run against the store
the test run was asked for (``pytest --store=...``): every implementation must pass it.

Each test opens a fresh node store through `open_store`, writes through `Batch` and reads
through `FlowStore` only: no database names, keys or cursors.
"""
from __future__ import annotations

import re

import pytest

from greenflow import serialization
from greenflow.errors import KeyTooLong, StoreError, StoreMissing
from greenflow.runtime.checkpoint import Checkpoint
from greenflow.runtime.journal import Entry, Kind
from greenflow.status import FlowStatus
from greenflow.storage import open_store
from greenflow.storage.interface import (MAX_KEY_BYTES, Batch, FlowStore, dump_result,
                                         journal_chunk, load_checkpoint)

F, G = "0" * 31 + "f", "0" * 31 + "g"


@pytest.fixture
def node_dir(tmp_path):
    return str(tmp_path / "node")


@pytest.fixture
def store(node_dir):
    s = open_store(node_dir, sync=False)
    yield s
    s.close()


def commit(store: FlowStore, *ops) -> None:
    """Commit one batch made of ``(method name, *args)`` ops."""
    b = Batch()
    for name, *args in ops:
        getattr(b, name)(*args)
    store.commit(b)


def header(fid: str, **kw) -> bytes:
    return serialization.dumps(Checkpoint(fid, "tests.Flow", **kw))


def chunk(*values, at: float = 1000.0) -> bytes:
    return journal_chunk(at, serialization.dumps([Entry(Kind.NOW, (), (v,)) for v in values]))


def values(entries) -> list:
    return [e.outcome[0] for e in entries]


# ====================================================================== the batch
def test_a_batch_records_operations_in_order_and_counts_them():
    b = Batch()
    assert not b and len(b) == 0
    b.start_flow(F, b"logic")
    b.put_outbox("Bob", "s", True, 0, b"frame")
    b.table_put("t", b"k", b"v")
    assert b and len(b) == 3
    assert [op[1:] for op in b.ops] == [(F, b"logic"), ("Bob", "s", True, 0, b"frame"),
                                       ("t", b"k", b"v")]


def test_the_store_satisfies_the_protocol_and_counts_commits(store):
    assert isinstance(store, FlowStore)
    assert store.readonly is False and store.path
    before = store.commits
    store.commit(Batch())
    commit(store, ("start_flow", F, b"logic"))
    assert store.commits == before + 2


# ====================================================================== flows
def test_a_flow_is_its_start_record_header_journal_and_snapshot(store):
    commit(store, ("start_flow", F, b"logic"), ("put_header", F, header(F, journal_len=2)),
           ("append_journal", F, 0, chunk("a", "b")), ("put_snapshot", F, serialization.dumps([{"line": 3}])))
    assert store.has_flow(F) and not store.has_flow(G)
    assert store.logic_blob(F) == b"logic"
    assert store.checkpoint(F).flow_id == F and store.checkpoint(G) is None
    assert load_checkpoint(store.header_blob(F)).journal_len == 2
    assert values(store.journal(F, 2)) == ["a", "b"]
    assert store.snapshot(F) == [{"line": 3}] and store.snapshot(G) is None
    assert store.flow_count() == 1
    assert [(fid, cp.flow_id) for fid, cp in store.checkpoints()] == [(F, F)]
    assert [fid for fid, _ in store.header_blobs()] == [F]


def test_a_header_without_its_start_record_is_refused(store, caplog):
    commit(store, ("put_header", F, header(F)))
    assert store.checkpoint(F) is None and store.flow_count() == 0
    assert any(F in r.getMessage() for r in caplog.records)
    # With the start record earlier in the same batch, it is written.
    commit(store, ("start_flow", G, b"logic"), ("put_header", G, header(G)))
    assert store.has_flow(G)
    # A flow dropped earlier in the batch is not brought back by a header.
    commit(store, ("drop_flow", G, 0), ("put_header", G, header(G)))
    assert not store.has_flow(G) and store.logic_blob(G) is None
    # An unchecked header (hospital, kill) needs no start record.
    commit(store, ("put_header_unchecked", F, header(F, status=FlowStatus.HOSPITALIZED)))
    assert store.checkpoint(F).status == FlowStatus.HOSPITALIZED


def test_a_flow_started_and_dropped_in_one_batch_ends_dropped(store):
    commit(store, ("start_flow", F, b"logic"), ("put_header", F, header(F)),
           ("append_journal", F, 0, chunk("a")), ("drop_flow", F, 1))
    assert not store.has_flow(F) and store.logic_blob(F) is None and store.flow_count() == 0


def test_a_later_journal_chunk_supersedes_the_overlapping_tail(store):
    commit(store, ("start_flow", F, b"logic"), ("append_journal", F, 0, chunk("a", "b", "c", at=1.0)))
    commit(store, ("append_journal", F, 2, chunk("C", "d", at=2.0)))
    assert values(store.journal(F, 4)) == ["a", "b", "C", "d"]
    assert values(store.journal(F, 3)) == ["a", "b", "C"]
    entries, times = store.journal_with_times(F, 4)
    assert times == [1.0, 1.0, 2.0, 2.0]
    commit(store, ("append_journal", F, 2, chunk("X", at=3.0)))   # same start: replaced
    assert values(store.journal(F, 3)) == ["a", "b", "X"]
    with pytest.raises(StoreError, match=f"journal of flow {F} has 3 entries, its checkpoint says 5"):
        store.journal(F, 5)
    commit(store, ("append_journal", G, 2, chunk("z")))
    with pytest.raises(StoreError, match=f"journal of flow {G} has a gap before entry 2"):
        store.journal(G, 3)
    assert store.journal("nobody", 0) == []


def test_drop_flow_removes_the_flow_and_nothing_else(store):
    longer = F + "1"     # an id that extends F's: its records must survive F's drop
    ops = []
    for fid in (F, longer):
        ops += [("start_flow", fid, b"logic"), ("put_header", fid, header(fid)),
                ("append_journal", fid, 0, chunk("a")), ("put_snapshot", fid, serialization.dumps("s")),
                ("set_wake", fid, True), ("put_inbox", fid, "s1", 0, b"frame"),
                ("put_payload", fid, "s1", 0, b"payload")]
    ops += [("put_timer", 50.0, F), ("put_outbox", "Bob", "s1", True, 0, b"out"),
            ("put_route", "Bob", "s2", 0, F.encode(), None), ("put_result", F, dump_result(
                {"status": FlowStatus.COMPLETED, "flow_class": "x", "value": 1}), 1e12)]
    commit(store, *ops)
    commit(store, ("drop_flow", F, 1))
    assert not store.has_flow(F) and store.logic_blob(F) is None and store.snapshot(F) is None
    assert store.journal(F, 0) == [] and store.inbox(F) == []
    assert store.payload(F, "s1", 0) is None
    assert store.flows_to_wake() == {longer}
    # Not part of the flow's own records: timers, outbox, routes and the result stay.
    assert list(store.timers()) == [(50.0, F)]
    assert list(store.outbox()) == [("Bob", b"out")]
    assert store.route("Bob", "s2", 0) == F.encode()
    assert store.result(F)["value"] == 1
    # The other flow is whole.
    assert store.has_flow(longer) and values(store.journal(longer, 1)) == ["a"]
    assert store.inbox(longer) == [("s1", 0, b"frame")] and store.payload(longer, "s1", 0) == b"payload"


# ====================================================================== inbox and wake
def test_inbox_rows_come_by_session_then_sequence_and_wake_the_flow(store):
    commit(store, ("put_inbox", F, "s2", 1, b"c"), ("put_inbox", F, "s1", 10, b"b"),
           ("put_inbox", F, "s1", 2, b"a"), ("put_inbox", G, "s1", 0, b"other"))
    assert store.inbox(F) == [("s1", 2, b"a"), ("s1", 10, b"b"), ("s2", 1, b"c")]
    assert store.flows_to_wake() == {F, G}
    commit(store, ("delete_inbox", G, "s1", 0), ("set_wake", F + "w", True))
    assert store.flows_to_wake() == {F, F + "w"}
    commit(store, ("set_wake", F + "w", False), ("set_wake", "never-set", False))
    assert store.flows_to_wake() == {F}


def test_payloads_are_kept_by_flow_session_and_sequence(store):
    big = bytes(range(256)) * 1024
    commit(store, ("put_payload", F, "s1", 3, big))
    assert store.payload(F, "s1", 3) == big
    assert store.payload(F, "s1", 4) is None and store.payload(G, "s1", 3) is None


# ====================================================================== outbox
def test_the_outbox_gives_each_peers_frames_in_session_and_sequence_order(store):
    ops = [("put_outbox", "Bob", "s2", True, seq, b"bob-s2-%d" % seq) for seq in (10, 2, 1)]
    ops += [("put_outbox", "Bob", "s1", False, 0, b"bob-s1-resp"),
            ("put_outbox", "Bob", "s1", True, 0, b"bob-s1-init"),
            ("put_outbox", "Al", "s9", True, 0, b"al"),
            ("put_outbox", "Bobby", "s0", True, 0, b"bobby")]
    commit(store, *ops)
    assert [d for _, d in store.outbox("Bob")] == [
        b"bob-s1-resp", b"bob-s1-init", b"bob-s2-1", b"bob-s2-2", b"bob-s2-10"]
    assert list(store.outbox("Bobby")) == [("Bobby", b"bobby")]
    assert list(store.outbox("Nobody")) == []
    every = list(store.outbox())
    assert sorted(every) == sorted([("Bob", d) for _, d in store.outbox("Bob")]
                                   + [("Al", b"al"), ("Bobby", b"bobby")])
    commit(store, ("delete_outbox", "Bob", "s2", True, 2), ("delete_outbox", "Bob", "s1", False, 0))
    assert [d for _, d in store.outbox("Bob")] == [b"bob-s1-init", b"bob-s2-1", b"bob-s2-10"]


def test_a_long_outbox_reads_whole_and_in_order(store):
    commit(store, *[("put_outbox", "Bob", "s", True, seq, seq.to_bytes(4, "big")) for seq in range(1000)])
    assert [int.from_bytes(d, "big") for _, d in store.outbox("Bob")] == list(range(1000))


# ====================================================================== routes, timers
def test_routes_are_kept_until_their_expiry(store):
    commit(store, ("put_route", "Bob", "s1", 0, b"fid-1", None),
           ("put_route", "Bob", "s1", 1, b"fid-2", None))
    assert store.route("Bob", "s1", 0) == b"fid-1" and store.route("Bob", "s1", 1) == b"fid-2"
    assert store.route("Bob", "s2", 0) is None and store.route("Al", "s1", 0) is None
    commit(store, ("put_route", "Bob", "s1", 0, b"Ffid-1", 100.0))   # finished, kept until 100
    assert store.route("Bob", "s1", 0) == b"Ffid-1"
    assert store.expire(99.0) == 0 and store.route("Bob", "s1", 0) == b"Ffid-1"
    assert store.expire(101.0) == 1
    assert store.route("Bob", "s1", 0) is None and store.route("Bob", "s1", 1) == b"fid-2"


def test_timers_come_earliest_first_and_are_deleted_by_deadline_and_flow(store):
    commit(store, ("put_timer", 30.5, F), ("put_timer", 10.25, G), ("put_timer", 30.5, G),
           ("put_timer", 1_700_000_000.123456, F))
    assert list(store.timers()) == [(10.25, G), (30.5, F), (30.5, G), (1_700_000_000.123456, F)]
    commit(store, ("delete_timer", 30.5, F), ("delete_timer", 1_700_000_000.123456, F),
           ("delete_timer", 99.0, F))   # never set: nothing happens
    assert list(store.timers()) == [(10.25, G), (30.5, G)]


# ====================================================================== results, clients
def test_results_and_client_ids_are_kept_until_they_expire(store):
    rec = {"status": FlowStatus.COMPLETED, "flow_class": "x", "value": [1, 2]}
    commit(store, ("put_client", "c-1", F), ("put_client", "c-2", G),
           ("put_result", F, dump_result(rec), 100.0), ("expire_client", "c-1", 100.0),
           ("put_result", G, dump_result({**rec, "value": 2}), 200.0))
    assert store.result(F) == {**rec, "status": FlowStatus.COMPLETED}
    assert store.result(F)["status"] is FlowStatus.COMPLETED and store.result("x") is None
    assert store.client("c-1") == F and store.client("c-2") == G and store.client("c-3") is None
    assert [fid for fid, _ in store.results()] == [F, G]
    assert [fid for fid, _ in store.result_blobs(reverse=True)] == [G, F]
    assert store.expire(150.0) == 2          # F's result and client c-1
    assert store.result(F) is None and store.client("c-1") is None
    assert store.result(G) is not None and store.client("c-2") == G


def test_flow_and_result_listings_go_on_after_a_flow_id_in_either_order(store):
    ids = [f"{i:031d}x" for i in range(5)]
    rec = dump_result({"status": FlowStatus.COMPLETED, "flow_class": "x", "value": 1})
    commit(store, *[op for fid in ids for op in (("start_flow", fid, b"logic"),
                                                 ("put_header", fid, header(fid)))])
    commit(store, *[("put_result", fid, rec, 1e12) for fid in ids])
    for rows in (store.header_blobs, store.result_blobs):
        assert [f for f, _ in rows(after=ids[1])] == ids[2:]
        assert [f for f, _ in rows(reverse=True, after=ids[3])] == [ids[2], ids[1], ids[0]]
        assert [f for f, _ in rows(reverse=True, after=ids[2] + "!")] == ids[2::-1]  # between ids
        assert [f for f, _ in rows(reverse=True, after="z")] == ids[::-1]            # past the last
        assert [f for f, _ in rows(reverse=True, after=ids[0])] == []
        assert [f for f, _ in rows(after="0")] == ids and [f for f, _ in rows(after="z")] == []


def test_expire_deletes_at_most_limit_per_call_earliest_first(store):
    commit(store, *[("put_route", "Bob", f"s{i}", 0, b"F", 10.0 + i) for i in range(5)])
    assert store.expire(100.0, limit=2) == 2
    assert store.route("Bob", "s0", 0) is None and store.route("Bob", "s1", 0) is None
    assert store.route("Bob", "s2", 0) == b"F"
    assert store.expire(100.0) == 3 and store.expire(100.0) == 0


def test_records_due_at_the_same_time_expire_together_and_only_once_due(store):
    # What a round that ends many flows writes: their results, finished routes and
    # client ids, all due at the same time; a route put twice in the batch (the flow
    # started and ended within it) keeps its last value and expiry.
    rec = {"status": FlowStatus.COMPLETED, "flow_class": "x", "client_id": None,
           "started_at": 1.0, "finished_at": 2.0, "value": 1}
    fids = [f"{i:032d}" for i in range(300)]
    ops = []
    for i, fid in enumerate(fids):
        ops += [("put_route", "Bob", f"s{i}", 0, fid.encode(), None),
                ("put_route", "Bob", f"s{i}", 0, b"F" + fid.encode(), 100.0),
                ("put_result", fid, dump_result(rec), 100.0)]
    commit(store, *ops, ("put_client", "c-1", F), ("expire_client", "c-1", 100.0),
           ("put_result", G, dump_result(rec), 200.0))
    commit(store, ("put_route", "Bob", "s0", 1, b"G", 100.0),   # same time, a later batch
           ("put_result", F, dump_result(rec), 100.0))
    assert store.route("Bob", "s7", 0) == b"F" + fids[7].encode()
    assert store.expire(100.0) == 0 and store.result(fids[0]) is not None
    assert store.expire(101.0, limit=5) == 5                 # the limit holds here too
    assert store.expire(101.0) == 2 * 300 + 3 - 5
    assert all(store.result(fid) is None for fid in fids) and store.result(F) is None
    assert store.route("Bob", "s7", 0) is None and store.route("Bob", "s0", 1) is None
    assert store.client("c-1") is None and store.result(G) is not None
    assert store.expire(101.0) == 0 and store.expire(201.0) == 1


# ====================================================================== app tables
def test_a_key_longer_than_any_store_holds_is_refused_at_the_write_not_the_commit(store):
    store.open_table("t")
    longest, over = b"k" * MAX_KEY_BYTES, b"k" * (MAX_KEY_BYTES + 1)
    b = Batch()
    for write in (lambda: b.table_put("t", over, b"v"), lambda: b.table_delete("t", over)):
        with pytest.raises(KeyTooLong, match=r"512 bytes for the table 't'.*the 511 bytes"):
            write()
    assert not b
    b.table_put("t", longest, b"v")
    store.commit(b)
    assert store.table_get("t", longest) == b"v"
    assert store.table_get("t", over) is None and list(store.table_items("t", over)) == []


@pytest.mark.parametrize("table, key, value, error, says", [
    ("t", "k", b"v", TypeError, "a key of the table 't' is bytes, not str (encode it"),
    ("t", b"", b"v", ValueError, "a key of the table 't' is at least one byte long"),
    ("t", b"k", "v", TypeError, "a value of the table 't' is bytes, not str"),
    ("t", b"k", None, TypeError, "a value of the table 't' is bytes, not NoneType"),
    ("", b"k", b"v", ValueError, "an app table is named by a non-empty str"),
    (5, b"k", b"v", TypeError, "an app table is named by a non-empty str, not int"),
])
def test_a_row_no_store_takes_is_refused_at_the_write_not_the_commit(store, table, key, value,
                                                                     error, says):
    """Taken by the batch, such a row failed the commit: on LMDB a str key wedged the
    node (every later round failed the same way), an empty key stopped its commits."""
    store.open_table("t")
    b = Batch()
    with pytest.raises(error, match="^" + re.escape(says)):
        b.table_put(table, key, value)
    if value == b"v":
        with pytest.raises(error, match="^" + re.escape(says)):
            b.table_delete(table, key)
    assert not b
    b.table_put("t", bytearray(b"k"), memoryview(b"v"))   # bytes-like: taken as bytes
    store.commit(b)
    assert store.table_get("t", b"k") == b"v" and store.has_table("t")
    assert not store.has_table("never_opened")


def test_a_row_put_in_a_batch_past_its_checks_fails_the_commit_as_a_store_error(store):
    """The LMDB store let a TypeError out of its commit: the node did not stop, and failed
    every later round the same way."""
    from greenflow.storage.interface import TABLE_PUT
    store.open_table("t")
    b = Batch()
    b.table_put("t", b"first", b"1")
    b.ops.append((TABLE_PUT, "t", "a str key", b"v"))   # (by hand: table_put refuses it)
    with pytest.raises(StoreError, match="nothing of it was"):
        store.commit(b)
    assert store.table_get("t", b"first") is None
    b = Batch()
    b.table_put("t", b"first", b"1")
    store.commit(b)
    assert store.table_get("t", b"first") == b"1"


def test_app_tables_hold_rows_in_key_order(store):
    store.open_table("t")
    store.open_table("t")            # idempotent
    commit(store, ("table_put", "t", b"b\x00", b"2"), ("table_put", "t", b"a", b"1"),
           ("table_put", "t", b"b\xff", b"3"), ("table_put", "t", b"c", b"4"))
    assert store.table_get("t", b"a") == b"1" and store.table_get("t", b"z") is None
    assert list(store.table_items("t")) == [(b"a", b"1"), (b"b\x00", b"2"), (b"b\xff", b"3"), (b"c", b"4")]
    assert store.table_count("t") == 4
    assert list(store.table_items("t", b"b")) == [(b"b\x00", b"2"), (b"b\xff", b"3")]
    assert list(store.table_items("t", b"b", after=b"b\x00")) == [(b"b\xff", b"3")]
    assert list(store.table_items("t", after=b"b\xff")) == [(b"c", b"4")]
    assert list(store.table_items("t", b"b", reverse=True)) == [(b"b\xff", b"3"), (b"b\x00", b"2")]
    assert list(store.table_items("t", reverse=True))[0] == (b"c", b"4")
    assert list(store.table_items("t", b"b", reverse=True, after=b"b\xff")) == [(b"b\x00", b"2")]
    assert list(store.table_items("t", b"\xff", reverse=True)) == []
    commit(store, ("table_delete", "t", b"a"), ("table_put", "t", b"c", b"44"))
    assert store.table_get("t", b"a") is None and store.table_get("t", b"c") == b"44"
    assert store.table_count("t") == 3


def test_tables_are_separate_and_an_unopened_one_reads_empty(store):
    store.open_table("t1")
    store.open_table("t2")
    commit(store, ("table_put", "t1", b"k", b"one"), ("table_put", "t2", b"k", b"two"))
    assert store.table_get("t1", b"k") == b"one" and store.table_get("t2", b"k") == b"two"
    assert store.table_get("never", b"k") is None and list(store.table_items("never")) == []
    assert store.table_count("never") == 0


# ====================================================================== atomicity, durability
def test_a_failing_batch_writes_nothing_and_the_store_goes_on(store):
    store.open_table("t")
    commit(store, ("table_put", "t", b"kept", b"1"))
    b = Batch()
    b.start_flow(F, b"logic")
    b.put_header(F, header(F))
    b.put_outbox("Bob", "s", True, 0, b"frame")
    b.table_delete("t", b"kept")
    b.table_put("not-opened", b"k", b"v")
    with pytest.raises(StoreError, match="not-opened"):
        store.commit(b)
    assert not store.has_flow(F) and store.logic_blob(F) is None
    assert list(store.outbox()) == [] and store.table_get("t", b"kept") == b"1"
    commit(store, ("start_flow", F, b"logic"), ("put_header", F, header(F)))
    assert store.has_flow(F)


def test_what_was_committed_is_there_after_reopening_and_read_only(node_dir):
    s = open_store(node_dir, sync=True)
    s.open_table("t")
    commit(s, ("start_flow", F, b"logic"), ("put_header", F, header(F, journal_len=1)),
           ("append_journal", F, 0, chunk("a")), ("put_outbox", "Bob", "s", True, 0, b"out"),
           ("put_timer", 5.0, F), ("table_put", "t", b"k", b"v"))
    s.close()
    ro = open_store(node_dir, readonly=True)
    try:
        assert ro.readonly and ro.checkpoint(F).flow_id == F
        assert values(ro.journal(F, 1)) == ["a"] and list(ro.outbox()) == [("Bob", b"out")]
        assert list(ro.timers()) == [(5.0, F)] and ro.table_get("t", b"k") == b"v"
        assert list(ro.table_items("t")) == [(b"k", b"v")]
        assert ro.table_get("never", b"k") is None
    finally:
        ro.close()
    again = open_store(node_dir, create=False)
    try:
        assert again.logic_blob(F) == b"logic" and again.meta("no-such-name") is None
    finally:
        again.close()


def test_a_missing_store_is_refused_when_it_must_exist(tmp_path):
    with pytest.raises(StoreMissing):
        open_store(str(tmp_path / "nothing-here"), create=False)
    with pytest.raises(StoreMissing):
        open_store(str(tmp_path / "nothing-here"), readonly=True)


# ====================================================================== choosing the store
def test_open_store_prefers_the_callers_url_then_node_toml_then_the_environment(tmp_path, monkeypatch):
    from greenflow import storage
    d = tmp_path / "n"
    d.mkdir()
    monkeypatch.setenv(storage.STORE_ENV, "postgresql://env/db")
    assert storage.store_url(str(d)) == "postgresql://env/db"
    (d / "node.toml").write_text('name = "A"\nstore = "lmdb"\n')
    assert storage.store_url(str(d)) == "lmdb"
    assert storage.store_url(str(d), "postgresql://arg/db") == "postgresql://arg/db"
    monkeypatch.delenv(storage.STORE_ENV)
    (d / "node.toml").write_text('name = "A"\n')
    assert storage.store_url(str(d)) == "lmdb"
    (d / "node.toml").write_text('name = "A"\nstore = 5\n')
    with pytest.raises(StoreError, match="`store` must be a string"):
        storage.store_url(str(d))
    with pytest.raises(StoreError, match="unknown store 'mysql://x'"):
        storage.open_store(str(d), url="mysql://x")


def test_a_postgresql_url_without_the_cluster_extra_says_what_to_install(tmp_path, monkeypatch):
    import sys
    monkeypatch.setitem(sys.modules, "greenflow.storage.postgres_store", None)   # not importable
    with pytest.raises(StoreError, match=r"pip install '\.\[cluster\]' in greenflow's checkout"):
        open_store(str(tmp_path / "n"), url="postgresql://localhost/x")


def test_node_toml_names_the_store_and_refuses_what_is_not_one(tmp_path):
    import tomllib

    from greenflow.network.node_config import ConfigError, NodeConfig
    base = {"name": "A", "p2p_address": "127.0.0.1:1", "rpc_address": "127.0.0.1:2"}
    assert NodeConfig.from_dict(base, "x", "").store is None
    cfg = NodeConfig.from_dict({**base, "store": "postgresql://u:secret@h/db"}, "x", str(tmp_path))
    again = NodeConfig.from_dict(tomllib.loads(cfg.to_toml()), "x", str(tmp_path))
    assert again.store == "postgresql://u:secret@h/db"
    with pytest.raises(ConfigError, match="`store` must be") as err:
        NodeConfig.from_dict({**base, "store": "mysql://u:secret@h/db"}, "node.toml", "")
    assert "secret" not in str(err.value)
    with pytest.raises(ConfigError, match="found 3"):
        NodeConfig.from_dict({**base, "store": 3}, "node.toml", "")


def test_a_drop_told_what_was_stored_removes_it_and_nothing_else(store):
    commit(store, ("start_flow", F, b"logic"), ("put_header", F, header(F)),
           ("set_wake", F, True), ("append_journal", F, 0, chunk("a")),
           ("append_journal", F, 1, chunk("b")),
           ("start_flow", G, b"logic"), ("put_header", G, header(G)),
           ("append_journal", G, 0, chunk("c")))
    commit(store, ("drop_flow", F, 2, (0, 1), False))
    assert store.checkpoint(F) is None and store.logic_blob(F) is None
    assert F not in store.flows_to_wake() and store.flow_count() == 1
    store2_journal = store.journal(G, 1)
    assert [e.outcome for e in store2_journal] == [("c",)]
    with pytest.raises(StoreError):
        store.journal(F, 1)       # its chunks are gone
