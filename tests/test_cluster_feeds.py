"""Vault feeds on a clustered party: a feed opened through one worker delivers every
state the party records or consumes, whichever worker's flow recorded it, each update
once, in the shapes and with the criteria filtering of a single node's feeds; the change
log is read only while a feed is open; a feed nobody reads is dropped, not grown."""
from __future__ import annotations

import time

import pytest

from greenflow.ledger.finance import Cash, CashExitFlow
from greenflow.ledger.vault_query import QueryCriteria, StateStatus
from greenflow.samples.trade import IssueCashFlow, money
from test_cluster_ledger import COIN, party, settle  # noqa: F401  (party: a fixture)


def issue_one(w, coins: int = 1):
    """``coins`` coins of ``COIN`` each to the party in one transaction recorded by a
    flow on ``w``."""
    me = w.node.party
    [h] = w.node.start_flows([IssueCashFlow(COIN * coins, me, me, coins=coins)])
    return h.result(timeout=30)


def collect(feed, n: int, timeout: float = 20.0) -> list:
    """``n`` updates from ``feed``, then a moment more to catch any extra one."""
    got = []
    end = time.monotonic() + timeout
    while len(got) < n and time.monotonic() < end:
        u = feed.next(timeout=0.5)
        if u is not None:
            got.append(u)
    time.sleep(0.6)
    return got + feed.poll()


def test_a_feed_on_one_worker_sees_what_every_worker_records_once(party):
    w1, w2 = party("w1"), party("w2")
    settle(w1, w2)
    v1 = w1.node.services.vault
    assert v1._feeds._reader is None                 # no feed open: the log is not read
    every = v1.track_by(QueryCriteria(Cash))
    consumed_only = v1.track_by(QueryCriteria(Cash, status=StateStatus.CONSUMED))
    big = v1.track_by(QueryCriteria(Cash, where=lambda c: c.amount.quantity >= COIN * 100))
    assert every.snapshot.total_states_available == 0 and every.updates.poll() == []
    # Recorded by flows on the other worker (one after the other) and on this one.
    on_w2 = [issue_one(w2, coins=2), issue_one(w2)]
    on_w1 = issue_one(w1)
    # Half a coin taken off the ledger by a flow on the other worker: a coin consumed,
    # its change produced, in one update.
    exit_tx = w2.node.start_flows([CashExitFlow(money(COIN // 2))])[0].result(timeout=30)
    updates = collect(every.updates, 4)
    assert len(updates) == 4, updates
    issued = {stx.id: stx for stx in on_w2 + [on_w1]}
    seen_produced = [s.ref for u in updates for s in u.produced]
    assert len(seen_produced) == len(set(seen_produced)) == 5
    by_tx = {u.produced[0].ref.tx_id: u for u in updates if u.produced}
    for tx_id, stx in issued.items():
        u = by_tx[tx_id]
        assert u.consumed == ()
        assert [s.state for s in u.produced] == list(stx.tx.outputs)
    # A worker's commits in the order it made them.
    order = [u.produced[0].ref.tx_id for u in updates if u.produced]
    assert order.index(on_w2[0].id) < order.index(on_w2[1].id) < order.index(exit_tx.id)
    [spent] = exit_tx.tx.inputs
    u = by_tx[exit_tx.id]
    assert [s.ref for s in u.consumed] == [spent]
    assert u.consumed[0].state == issued[spent.tx_id].tx.outputs[spent.index]
    assert [s.state.amount.quantity for s in u.produced] == [COIN * 50]
    # Criteria: the consumed feed has only the exit's consumed coin; the "big" one
    # every coin of a whole COIN or more, and the exit's consumed coin, not its change.
    [c] = collect(consumed_only.updates, 1)
    assert [s.ref for s in c.consumed] == [spent] and c.produced == ()
    bigs = collect(big.updates, 4)
    assert sorted(len(b.produced) for b in bigs) == [0, 1, 1, 2]
    assert [s.ref for b in bigs for s in b.consumed] == [spent]
    # A feed opened now starts from a snapshot that has all of it, and gets what
    # follows only.
    later = v1.track_by(QueryCriteria(Cash))
    assert later.snapshot.total_states_available == 4
    stx = issue_one(w2)
    [u] = collect(later.updates, 1)
    assert [s.ref.tx_id for s in u.produced] == [stx.id]
    assert [s.ref.tx_id for s in collect(every.updates, 1)[0].produced] == [stx.id]
    for f in (every, consumed_only, big, later):
        f.updates.close()
    assert v1._feeds._reader is None                 # the last feed closed: no reader


def test_a_refused_query_leaves_no_feed_open(party):
    from greenflow.ledger.vault_query import VaultQueryError
    w1, w2 = party("w1"), party("w2")
    settle(w1, w2)
    issue_one(w2, coins=201)                          # more than the default page
    v1 = w1.node.services.vault
    with pytest.raises(VaultQueryError, match="more than the default page"):
        v1.track_by(QueryCriteria(Cash))
    assert v1._feeds.feeds == [] and v1._feeds._reader is None


def test_a_feed_nobody_reads_is_dropped_not_grown(party, monkeypatch):
    from greenflow.ledger.vault_feed import Feed
    monkeypatch.setattr(Feed, "max_buffered", 2)
    w1, w2 = party("w1"), party("w2")
    settle(w1, w2)
    v1 = w1.node.services.vault
    feed = v1.track_by(QueryCriteria(Cash)).updates
    read = v1.track_by(QueryCriteria(Cash)).updates
    got = []
    for _ in range(4):
        issue_one(w2)
        got += collect(read, 1, timeout=10)
    assert len(got) == 4                              # the feed that is read keeps up
    end = time.monotonic() + 10
    while not feed.closed and time.monotonic() < end:
        time.sleep(0.1)
    assert feed.dropped and "max_buffered" in feed.dropped
    assert feed.next(timeout=0.1) is None and feed.poll() == [] and not feed._items
    assert feed not in v1._feeds.feeds and read in v1._feeds.feeds
    read.close()


def test_a_feed_goes_on_after_its_readers_connection_is_cut(party):
    """The reader reads again from the snapshot of its last good read: what was
    committed while its connection was gone comes once, nothing twice."""
    import psycopg
    w1, w2 = party("w1"), party("w2")
    settle(w1, w2)
    v1 = w1.node.services.vault
    feed = v1.track_by(QueryCriteria(Cash)).updates
    first = issue_one(w2)
    assert [u.produced[0].ref.tx_id for u in collect(feed, 1)] == [first.id]
    reader = v1._feeds._reader
    with reader.cycle:                               # cut while it waits between reads
        pid = reader.rows.run("pid", lambda c: c.execute("SELECT pg_backend_pid()").fetchone()[0])
        with psycopg.connect(reader.rows.dsn, autocommit=True) as c:
            c.execute("SELECT pg_terminate_backend(%s)", (pid,))
        txs = [issue_one(w2), issue_one(w1)]
    got = collect(feed, 2)
    assert sorted(u.produced[0].ref.tx_id.value for u in got) == sorted(t.id.value for t in txs)
    assert v1._feeds._reader is reader and not feed.closed
    feed.close()


def test_a_feed_whose_worker_fell_behind_the_log_is_dropped(party, monkeypatch):
    """Log rows go after five minutes: a reader that could not read for longer drops
    its feeds instead of handing out a gap (here "longer" is made 0.3 s)."""
    import greenflow.ledger.vault_feed_pg as feed_pg
    w1, w2 = party("w1"), party("w2")
    settle(w1, w2)
    v1 = w1.node.services.vault
    feed = v1.track_by(QueryCriteria(Cash)).updates
    reader = v1._feeds._reader
    with reader.cycle:                                # the reader held up for a while
        monkeypatch.setattr(feed_pg, "BEHIND_S", 0.3)
        time.sleep(0.5)
    end = time.monotonic() + 5
    while not feed.closed and time.monotonic() < end:
        time.sleep(0.05)
    assert feed.dropped and "change log" in feed.dropped
    assert v1._feeds._reader is None


def test_vault_updates_over_rpc_of_a_cluster_worker(tmp_path):
    """``GET /vault/updates`` through one worker process (in this process, with its RPC
    server) streams what a flow started through the other worker records."""
    import threading
    from cluster_pg import worker_processes
    from greenflow.rpc.client import RpcClient
    procs = worker_processes(tmp_path, ["greenflow.ledger.finance"], notary=True)
    try:
        for p in procs:
            p.start()
        settle(*(p.worker for p in procs))
        c1, c2 = (RpcClient("%s:%d" % p.rpc.address, "admin", "pw", timeout=30) for p in procs)
        issue = {"amount": "100.00 GBP", "notary": "Alice", "coins": 3}
        out = c2.start_flow("greenflow.ledger.finance.CashIssueFlow", issue, wait=30)
        assert out["status"] == "COMPLETED", out
        # Through worker 1, which recorded nothing itself: the type is known, the page
        # has the other worker's states, and its exit comes as an update.
        page = c1.vault_query(type="greenflow.ledger.finance:Cash")
        assert page["total"] == 3
        stream = c1.vault_updates(timeout=10, type="greenflow.ledger.finance:Cash")
        kind, snapshot = next(stream)
        assert kind == "snapshot" and snapshot["total"] == 3
        threading.Thread(target=lambda: c2.start_flow("greenflow.ledger.finance.CashExitFlow",
                                                      {"amount": "10.00 GBP"}, wait=30)).start()
        kind, update = next(stream)
        stream.close()
        assert kind == "update" and len(update["consumed"]) == 1 and update["produced"]
        assert sum(s["state"]["quantity"] for s in update["consumed"]) - 1_000 == \
            sum(s["state"]["quantity"] for s in update["produced"])
    finally:
        for p in procs:
            if p.worker is not None:
                p.stop()
