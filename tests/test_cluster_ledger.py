"""The ledger on a clustered party: workers of one party, in this process, on a real
PostgreSQL. What one worker records every worker sees; a soft lock a flow takes on one
worker keeps flows on every other worker off the state; a clustered notary's uniqueness
is decided by the database, not by a worker's memory."""
from __future__ import annotations

import threading
import time

import pytest

from cluster_pg import new_schema, server_dsn
from greenflow.cluster.worker import Worker
from greenflow.ledger.crypto import SecureHash
from greenflow.ledger.states import StateRef
from greenflow.ledger.vault import InsufficientBalance
from greenflow.storage.partitions import PARTITIONS

NAME = "O=Alice,L=London,C=GB"
APPS = ["greenflow.samples.trade", "greenflow.ledger.flows", "ledgerflows"]
COIN = 1_000


@pytest.fixture
def party(tmp_path):
    url = server_dsn() + "?schema=" + new_schema()
    workers: list[Worker] = []

    def worker(name: str) -> Worker:
        w = Worker(str(tmp_path / "party"), url, name=name, party_name=NAME, apps=APPS,
                   lease_s=2.0, renew_s=0.4, poll_s=0.5, node_options={"notary": True})
        workers.append(w)
        return w.start()

    yield worker
    for w in workers:
        if w.gen is not None:
            w.stop()


def settle(*workers, timeout=20.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        gens = [w.gen for w in workers]
        if all(g is not None for g in gens) and not any(w._dirty.is_set() for w in workers):
            parts = [set(g.owned()) for g in gens]
            if sum(map(len, parts)) == PARTITIONS and all(parts):
                return
        time.sleep(0.1)
    raise AssertionError("partitions not settled")


def issue(w: Worker, coins: int) -> None:
    """Cash to the party, issued and notarised by itself (it is its own notary)."""
    from greenflow.samples.trade import IssueCashFlow
    me = w.node.party
    handles = w.node.start_flows([IssueCashFlow(COIN, me, me) for _ in range(coins)])
    for h in handles:
        h.result(timeout=30)


def test_states_one_worker_records_are_seen_and_locked_across_workers(party):
    from ledgerflows import HoldCashFlow
    w1, w2 = party("w1"), party("w2")
    settle(w1, w2)
    issue(w1, 4)
    v1, v2 = w1.node.services.vault, w2.node.services.vault
    assert v2.balance(type(v1.query(object)[0].state), "quantity") == 4 * COIN * 100
    # Eight flows, four per worker, each selecting one coin at once: four get one
    # coin each, no coin twice; the other four are told there is not enough free.
    handles = []
    barrier = threading.Barrier(2)

    def start(w, out):
        barrier.wait()
        out.extend(w.node.start_flows([HoldCashFlow(COIN, 3.0) for _ in range(4)]))

    got1, got2 = [], []
    ts = [threading.Thread(target=start, args=(w, out)) for w, out in ((w1, got1), (w2, got2))]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    handles = got1 + got2
    picked, short = [], 0
    for h in handles:
        try:
            picked += h.result(timeout=30)
        except InsufficientBalance:
            short += 1
    assert len(picked) == len(set(picked)) == 4 and short == 4
    # The locks went with the flows: all four coins are free again, on both workers.
    again = w2.node.start_flows([HoldCashFlow(COIN, 2.0) for _ in range(2)]) + \
        w1.node.start_flows([HoldCashFlow(COIN, 2.0) for _ in range(2)])
    refs = [r for h in again for r in h.result(timeout=30)]
    assert len(set(refs)) == 4
    end = time.monotonic() + 10   # a result is readable just before its commit lands
    while (v1.locks() or v2.locks()) and time.monotonic() < end:
        time.sleep(0.1)
    assert v1.locks() == {} and v2.locks() == {}


def test_a_lock_left_by_a_flow_that_never_committed_goes_stale(party, monkeypatch):
    from greenflow.ledger import vault_backend_pg
    from ledgerflows import HoldCashFlow
    w1 = party("w1")
    settle(w1)
    issue(w1, 1)
    vault = w1.node.services.vault
    ref = vault.query(object)[0].ref
    # A lock row of a flow that has no checkpoint (its worker died before committing it).
    vault._take([ref], "000000000000-never-committed")
    with pytest.raises(InsufficientBalance, match="locked by other flows"):
        w1.node.start_flow(HoldCashFlow(COIN, 0)).result(timeout=30)
    monkeypatch.setattr(vault_backend_pg, "STALE_LOCK_S", 0.0)
    vault._stale_at = 0.0
    assert w1.node.start_flow(HoldCashFlow(COIN, 0)).result(timeout=30) == [ref]


def test_a_flow_that_ends_releases_locks_an_earlier_run_of_it_took(party):
    """A run of a flow that never committed (its worker killed) may have locked states
    the worker that ends the flow never read: its end releases every lock row of its id."""
    from ledgerflows import HoldCashFlow
    w1 = party("w1")
    settle(w1)
    issue(w1, 2)
    vault = w1.node.services.vault
    handle = w1.node.start_flow(HoldCashFlow(COIN, 1.5))
    deadline = time.monotonic() + 10
    while not vault.locks() and time.monotonic() < deadline:
        time.sleep(0.05)
    held = set(vault.locks())
    other = next(s.ref for s in vault.query(object) if s.ref not in held)
    assert vault._take([other], handle.id) == {other}   # as the earlier run did
    assert handle.result(timeout=30) == list(held)

    def lock_rows():
        return vault._rows.run("reading locks", lambda c: c.execute(
            "SELECT key FROM app_rows WHERE tbl = 'vault_locks'").fetchall())
    deadline = time.monotonic() + 10   # a result is readable just before its commit lands
    while lock_rows() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert lock_rows() == []


def test_a_clustered_notary_claims_each_input_once_whichever_worker_asks(party):
    w1, w2 = party("w1"), party("w2")
    settle(w1, w2)
    n1 = w1.node.services.notary_service
    n2 = w2.node.services.notary_service
    refs = [StateRef(SecureHash(bytes([i]) * 32), 0) for i in range(3)]
    tx_a, tx_b = b"a" * 32, b"b" * 32
    assert n1._claim(refs[:2], tx_a) == []
    conflicts = n2._claim(refs[1:], tx_b)          # refs[1] is tx_a's
    assert len(conflicts) == 1 and tx_a.hex() in conflicts[0] and str(refs[1]) in conflicts[0]
    assert n2.consumed_by(refs[2]) is None         # nothing of the refused claim stayed
    assert n2._claim(refs[:2], tx_a) == []          # asking again is not a double spend
    # Racing: ten claims of one input from both workers at once: exactly one wins.
    ref = StateRef(SecureHash(b"r" * 32), 0)
    wins = []

    def race(n, tid):
        if not n._claim([ref], tid):
            wins.append(tid)

    ts = [threading.Thread(target=race, args=((n1, n2)[i % 2], bytes([65 + i]) * 32))
          for i in range(10)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert len(wins) == 1


def test_a_refresh_reads_only_what_changed_since_the_last(party):
    """After its first read, a worker's vault reads the change log, not every state:
    what it reads is what the other workers changed since, whatever the vault's size."""
    import psycopg
    w1, w2 = party("w1"), party("w2")
    settle(w1, w2)
    issue(w1, 12)
    v1, v2 = w1.node.services.vault, w2.node.services.vault
    cash = type(v1.query(object)[0].state)
    assert v2.balance(cash, "quantity") == 12 * COIN * 100
    full_at, reads = v2._full_at, v2.refreshes
    assert v2.balance(cash, "quantity") == 12 * COIN * 100
    assert v2.last_read_rows == 1          # nothing changed: only the new snapshot
    issue(w1, 2)                           # two states recorded by the other worker
    assert v2.balance(cash, "quantity") == 14 * COIN * 100
    assert 3 <= v2.last_read_rows <= 5     # those two (and their issue's rows), not 14
    # A state consumed by another worker's commit goes from this worker's vault too,
    # and a lock row taken by another worker keeps this worker's flows off its state.
    gone, held = [s.ref for s in v2.query(cash)[:2]]
    from greenflow.ledger.vault import ref_key
    with psycopg.connect(v2._rows.dsn) as conn:
        conn.execute(f'SET search_path TO "{v2._rows.schema}"')
        conn.execute("DELETE FROM app_rows WHERE tbl = 'vault_states' AND key = %s",
                     (ref_key(gone),))
        conn.execute("INSERT INTO app_rows (tbl, key, value) VALUES ('vault_locks', %s, %s)",
                     (ref_key(held), b"elsewhere\0" + bytes(8)))
    assert v2.balance(cash, "quantity") == 13 * COIN * 100
    assert gone not in {s.ref for s in v2.query(cash)}
    assert v2.locks().get(held) == "elsewhere"
    assert v2._full_at == full_at and v2.refreshes > reads


def test_a_select_locks_and_reads_the_changes_in_one_round_trip(party, monkeypatch):
    """A select picks from what the vault last read, then takes its lock rows and reads
    what changed since in one statement: a state another worker consumed meanwhile is
    refused by the database, taken in from that answer, and another one picked."""
    import psycopg
    from ledgerflows import HoldCashFlow
    from greenflow.ledger.vault import ref_key
    w1, w2 = party("w1"), party("w2")
    settle(w1, w2)
    issue(w1, 3)
    v2 = w2.node.services.vault
    cash = type(w1.node.services.vault.query(object)[0].state)
    assert v2.balance(cash, "quantity") == 3 * COIN * 100     # read: the last one for a while
    calls = []
    run = v2._rows.run
    v2._rows.run = lambda what, fn: calls.append(what) or run(what, fn)
    [ref] = w2.node.start_flows([HoldCashFlow(COIN, 0)])[0].result(timeout=30)
    assert calls == ["taking soft locks"]                    # no refresh of its own before
    # Every coin but one consumed elsewhere, unseen here: the select picks one of them
    # (or the free one), the database refuses the consumed ones, and it ends with the
    # one still there.
    left = [s.ref for s in v2.query(cash)]
    keep = left[0]
    with psycopg.connect(v2._rows.dsn) as conn:
        conn.execute(f'SET search_path TO "{v2._rows.schema}"')
        for r in left[1:]:
            conn.execute("DELETE FROM app_rows WHERE tbl = 'vault_states' AND key = %s",
                         (ref_key(r),))
    v2._free[cash] = {r: v2._free[cash][r] for r in left[1:] + [keep]}   # the gone ones first
    import greenflow.ledger.vault_locks_pg as locks_pg
    monkeypatch.setattr(locks_pg.random, "randrange", lambda n: 0)   # from the first
    del calls[:]
    [got] = w2.node.start_flows([HoldCashFlow(COIN, 0)])[0].result(timeout=30)
    assert got == keep
    # Refused once, in an answer that also said which coins had gone, then taken: two
    # round trips, no refresh of their own.
    assert calls == ["taking soft locks"] * 2
    assert {s.ref for s in v2.query(cash)} == {keep}


def test_recording_marks_only_this_partys_inputs_consumed(party):
    """Recording a transaction marks consumed the inputs that were this party's states,
    also those it had not seen (recorded by another worker), and not another party's
    inputs: which is which comes with the recording's one prefetch, not a read each."""
    w1, w2 = party("w1"), party("w2")
    settle(w1, w2)
    issue(w1, 2)
    v1, v2 = w1.node.services.vault, w2.node.services.vault
    cash = type(v1.query(object)[0].state)
    ours = v2.query(cash)[0].ref
    stranger = StateRef(SecureHash(bytes(32)), 7)        # never a state of this party
    store = w2.node.store
    reads = []
    table_get = store.table_get
    store.table_get = lambda t, k: reads.append((t, k)) or table_get(t, k)

    class Tx:   # what `_apply` reads of a transaction
        inputs = [ours, stranger]
        outputs: list = []
        notary = None

    class Stx:
        id = SecureHash(b"\x01" * 32)
        tx = Tx()

    from greenflow.ledger.vault import ref_key
    from greenflow.storage.interface import TABLE_DELETE, TABLE_PUT, Batch
    v2._local.pop(ref_key(ours), None)          # as if another worker had recorded it
    for by_type in v2._unconsumed.values():
        by_type.pop(ours, None)
    with v2._lock:
        v2._prefetch([], [], [ref_key(ours), ref_key(stranger)])
        try:
            b = Batch()
            v2._apply(b, Stx())
        finally:
            v2._forget_prefetch()
            store.table_get = table_get
    assert reads == []                           # answered by the prefetch
    marked = [bytes(op[2]) for op in b.ops if op[0] == TABLE_PUT and op[1] == "vault_consumed"]
    deleted = [bytes(op[2]) for op in b.ops if op[0] == TABLE_DELETE and op[1] == "vault_states"]
    assert marked == [ref_key(ours)] and deleted == [ref_key(ours)]
