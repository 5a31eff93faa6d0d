"""Frames handed from the worker that received them to the worker that owns their
partition, through PostgreSQL: durable before acknowledged, deduplicated, woken by
NOTIFY, given again if never consumed, deleted once consumed."""
from __future__ import annotations

import threading
import time

import pytest

from cluster_pg import new_schema, server_dsn
from greenflow.cluster.handoff import ACK, FRAME, HandoffReader, HandoffWriter, Row, pending


@pytest.fixture
def dsn() -> str:
    return server_dsn()


class Inbox:
    def __init__(self):
        self.rows: list[Row] = []
        self.cv = threading.Condition()

    def __call__(self, rows):
        with self.cv:
            self.rows.extend(rows)
            self.cv.notify_all()

    def wait(self, n, timeout=10.0):
        end = time.monotonic() + timeout
        with self.cv:
            while len(self.rows) < n and time.monotonic() < end:
                self.cv.wait(0.05)
        return list(self.rows)


def frame(part, seq, peer="O=Bob,L=Paris,C=FR"):
    return Row(part, FRAME, peer, (f"sid{part}.1", True, seq), b"frame-%d-%d" % (part, seq))


def test_a_notification_wakes_the_owner_long_before_the_poll(dsn):
    import psycopg
    schema = new_schema()
    owned = {1: 1}
    got = Inbox()
    reader = HandoffReader(dsn, schema, lambda: dict(owned), got, poll_s=30.0).start()
    try:
        w = HandoffWriter(dsn, schema)
        time.sleep(0.3)  # the reader is listening
        t0 = time.monotonic()
        assert w.put([frame(1, 0), frame(1, 1), frame(2, 0)]) == 3
        rows = got.wait(2)
        assert time.monotonic() - t0 < 2.0 and reader.notifications >= 1
        assert [(r.part, r.msg_id[2], r.data) for r in rows] == [(1, 0, b"frame-1-0"),
                                                                  (1, 1, b"frame-1-1")]
        # Re-sent by the peer (its ack was lost): one row still, nothing given twice.
        assert w.put([frame(1, 0)]) == 0
        time.sleep(0.5)
        assert len(got.rows) == 2
        # Partition 2 arrives with a takeover: a poke reads it at once.
        owned[2] = 5
        reader.poke()
        assert [r.part for r in got.wait(3)][2:] == [2]
        reader.consumed([r.key for r in got.rows])
        deadline = time.monotonic() + 5
        while reader.deleted < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        with psycopg.connect(dsn, autocommit=True) as c:
            assert pending(c, schema) == {}
        w.close()
    finally:
        reader.stop()


def test_rows_not_consumed_are_given_again_and_only_to_an_owner(dsn):
    schema = new_schema()
    w = HandoffWriter(dsn, schema)
    w.put([frame(7, 0), Row(7, ACK, "O=Bob,L=Paris,C=FR", ("x.1", False, 3), None)])
    got = Inbox()
    owned = {7: 1}
    reader = HandoffReader(dsn, schema, lambda: dict(owned), got, redeliver_after=0.3)
    reader._connect()
    assert reader.round() == 2
    assert {r.kind for r in got.rows} == {FRAME, ACK}
    assert reader.round() == 0  # given, not yet consumed: not again at once
    time.sleep(0.35)
    assert reader.round() == 2  # never acknowledged: given again
    owned.clear()                # lost the partition: nothing more, the next owner reads them
    assert reader.round() == 0
    other = Inbox()
    r2 = HandoffReader(dsn, schema, lambda: {7: 2}, other)
    r2._connect()
    assert r2.round() == 2
    r2.consumed([r.key for r in other.rows])
    r2.round()
    assert r2.round() == 0 and r2.deleted == 2
    reader.stop(); r2.stop(); w.close()


def test_a_writer_that_cannot_reach_the_database_raises_so_the_frame_is_not_acknowledged(dsn):
    w = HandoffWriter("postgresql://postgres@127.0.0.1:1/postgres?connect_timeout=1", new_schema())
    with pytest.raises(Exception):
        w.put([frame(1, 0)])


def test_a_frame_nobody_ever_takes_is_deleted_after_its_time(dsn):
    schema = new_schema()
    w = HandoffWriter(dsn, schema)
    w.put([frame(3, 0)])
    got = Inbox()
    reader = HandoffReader(dsn, schema, lambda: {3: 1}, got, max_age_s=0.5)
    reader._connect()
    assert reader.round() == 1          # given; the scheduler drops it, never acknowledges
    time.sleep(0.6)                     # past its age, and past the next sweep (max_age / 2)
    reader.round()
    assert reader.expired == 1
    import psycopg
    with psycopg.connect(dsn, autocommit=True) as c:
        assert pending(c, schema) == {}
    reader.stop(); w.close()


def test_frames_arriving_during_a_write_are_handed_over_together_and_acked_after(dsn):
    """A worker hands frames over on a thread of its own: a burst that arrives while one
    write is in flight costs one more write, not one each, and no frame is acknowledged
    to its sender before its row is committed."""
    import types

    import psycopg

    from greenflow.cluster.worker import _HandOver
    schema = new_schema()
    acked: list = []
    w = types.SimpleNamespace(name="w1", writer=HandoffWriter(dsn, schema),
                              stats={"handed_off": 0},
                              _ack_peer=lambda peer, mids: acked.extend(mids))
    w.writer.put([frame(9, 99)])   # connected, schema made
    hand = _HandOver(w)
    hand.start()
    try:
        with w.writer._lock:       # a write in flight: the database is slow
            for seq in range(50):
                hand.add(frame(3, seq))
            time.sleep(0.3)
            assert acked == []     # nothing is durable yet: nothing acknowledged
        deadline = time.monotonic() + 10
        while len(acked) < 50 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert sorted(m[2] for m in acked) == list(range(50))
        assert hand.writes <= 2 and w.stats["handed_off"] == 50
        with psycopg.connect(dsn, autocommit=True) as c:
            assert pending(c, schema).get(3) == 50
    finally:
        hand.stop()
        w.writer.close()


def test_a_start_filed_for_another_worker_is_known_before_that_worker_takes_it(dsn, tmp_path):
    """A client that starts a flow (with a client id: filed for its partition's owner)
    through one worker and asks another for it at once is told it is runnable and can
    wait for it, not that no such flow exists; once the filing is gone and no flow
    started, it is unknown again."""
    import types

    import psycopg

    from greenflow import serialization
    from greenflow.cluster.handoff import START, _ident
    from greenflow.cluster.starts import FiledStarts
    from greenflow.errors import UnknownFlow
    from greenflow.status import FlowStatus
    from greenflow.storage.partitions import partition_of
    from greenflow.testing import MockNetwork
    from greenflow.samples.ping import Ping
    schema = new_schema()
    starts = FiledStarts(types.SimpleNamespace(name="w1", writer=HandoffWriter(dsn, schema)))
    net = MockNetwork(str(tmp_path / "net"))
    try:
        alice, bob = net.create_node("Alice"), net.create_node("Bob")
        fid = "0123456789abcdef0123456789abcdef"
        with pytest.raises(UnknownFlow):
            alice.node.handle(fid)
        alice.node.filed_start = starts.filed
        with pytest.raises(UnknownFlow):
            alice.node.handle(fid)
        starts.w.writer.put([Row(partition_of(fid), START, "client-1", (fid, False, 0),
                                 serialization.dumps(Ping(bob.party, 1)))])
        handle = alice.node.handle(fid)
        assert handle.status == FlowStatus.RUNNABLE
        info = alice.node.flow_info(fid)
        assert (info.flow_class, info.status) == ("greenflow.samples.ping.Ping", FlowStatus.RUNNABLE)
        with psycopg.connect(dsn, autocommit=True) as c:
            c.execute(f"DELETE FROM {_ident(schema)}.handoff")
        with pytest.raises(UnknownFlow):
            alice.node.handle(fid)
    finally:
        starts.w.writer.close()
        net.close()
