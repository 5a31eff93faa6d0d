"""Ordinary Python is safe in flows: uuid4/uuid1, os.urandom, secrets, the random module,
time.time/time_ns and datetime.now/utcnow/date.today give a flow the same values when it
is replayed (after a restart, or at every wake in reload mode), while code outside flows
keeps getting fresh values from the real functions.
"""
from __future__ import annotations

import ast
import os
import random
import secrets
import threading
import time
import uuid
from datetime import datetime

import pytest
import replayflows
from netutil import assert_all_finished, pair
from replayflows import Draws, IssueTicketFlow, Ticket

from greenflow import FlowStatus
from greenflow.ledger import SignedTransaction
from greenflow.samples.trade import TradeNetwork
from greenflow.testing import MockNetwork


def _first_seen(log: str) -> list:
    with open(log, encoding="utf-8") as fh:
        return [ast.literal_eval(line) for line in fh.read().splitlines()]


def _draws_run(base, options, k=None, who="both"):
    log = str(base) + ".log"
    net = MockNetwork(base, **options)
    try:
        alice, bob = pair(net)
        h = alice.start_flow(Draws(bob.party, log))
        if k is not None:
            net.run_network(max_messages=k)
            if who in ("initiator", "both"):
                alice = net.restart_node(alice)
            if who in ("responder", "both"):
                bob = net.restart_node(bob)
        net.run_network()
        info = alice.node.flow_info(h.id)
        assert info.status == FlowStatus.COMPLETED, info
        result = alice.handle(h.id).result()
        [responder] = bob.flows()
        assert responder.status == FlowStatus.COMPLETED, responder
        theirs = bob.handle(responder.id).result()
        assert_all_finished(alice, bob)
        return result, theirs, _first_seen(log), net.delivered
    finally:
        net.close()


def test_flows_drawing_from_every_source_complete_with_the_values_they_first_saw(tmp_path, net_options):
    result, theirs, first, total = _draws_run(tmp_path / "full", net_options)
    assert [mine for mine, _ in result] == first          # the initiator's values, as first seen
    assert [peer for _, peer in result] == theirs          # the responder's, as the initiator saw them
    values = [v for row in first for v in row] + [v for row in theirs for v in row]
    ids = [row[0] for row in first + theirs]
    assert len(set(ids)) == 6 and all(uuid.UUID(i).version == 4 for i in ids)
    assert len({row[1] for row in first + theirs}) == 6    # os.urandom: fresh per draw
    assert len({row[3] for row in first + theirs}) == 6    # secrets.token_hex
    assert all(isinstance(v, (str, int, float)) for v in values)
    # time.time() in a flow is the node's clock (MockNetwork's virtual clock), and so is
    # what reads the clock for a calendar (strftime, ctime...: the real one before)
    assert first[0][4] == pytest.approx(1_700_000_000.0, abs=1)
    assert str(tuple(time.gmtime(first[0][4])[:6])) == first[0][19]
    assert first[0][17] == time.ctime(first[0][4])
    assert first[0][16] == time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(first[0][4]))
    assert total >= 6   # three rounds, two messages each (the ends ride on the last ones)


@pytest.mark.parametrize("who", ["initiator", "responder", "both"])
def test_values_survive_a_restart_after_every_number_of_delivered_frames(tmp_path, net_options, who):
    _, _, _, total = _draws_run(tmp_path / "count", net_options)
    for k in range(total + 2):
        result, theirs, first, _ = _draws_run(tmp_path / f"{who}-{k}", net_options, k, who)
        assert [mine for mine, _ in result] == first, f"restart after {k} frames"
        assert [peer for _, peer in result] == theirs, f"restart after {k} frames"


def test_a_ledger_flow_with_a_default_salt_and_a_uuid4_state_id_survives_restarts(tmp_path, net_options):
    counted = None
    for k in [None, *range(0, 12)]:
        tn = TradeNetwork.create(str(tmp_path / f"net-{k}"), **net_options)
        try:
            issuer, holder = tn.seller, tn.buyer
            h = issuer.start_flow(IssueTicketFlow(holder.party, tn.notary.party))
            if k is not None:
                tn.net.run_network(max_messages=k)
                for role in ("seller", "buyer", "notary"):
                    tn.restart(role)
                issuer, holder = tn.seller, tn.buyer
            tn.net.run_network()
            info = issuer.node.flow_info(h.id)
            assert info.status == FlowStatus.COMPLETED, (k, info)
            stx: SignedTransaction = issuer.handle(h.id).result()
            for node in (issuer, holder):
                vault = node.services.vault
                [ticket] = vault.query(Ticket)
                assert ticket.state.linear_id == stx.tx.outputs[0].linear_id
                assert vault.has_transaction(stx.id)
                assert node.checkpoints_dump() == []
            if k is None:
                counted = tn.net.delivered
            elif k > counted:
                break
        finally:
            tn.close()


def test_code_outside_flows_gets_fresh_values_while_flows_run(tmp_path, net_options):
    stop = threading.Event()
    seen: dict[str, list] = {k: [] for k in ("uuid4", "urandom", "random", "token", "time", "now")}
    errors: list = []

    def other_thread() -> None:
        try:
            while not stop.is_set():
                seen["uuid4"].append(uuid.uuid4())
                seen["urandom"].append(os.urandom(16))
                seen["random"].append(random.random())
                seen["token"].append(secrets.token_hex(16))
                seen["time"].append(time.time())
                seen["now"].append(datetime.now())
                time.sleep(0.0005)
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    t = threading.Thread(target=other_thread)
    t.start()
    try:
        for i in range(4):
            _draws_run(tmp_path / f"run-{i}", net_options, k=i)
    finally:
        stop.set()
        t.join()
    assert not errors
    n = len(seen["uuid4"])
    assert n >= 3
    for name in ("uuid4", "urandom", "token", "random"):
        assert len(set(seen[name])) == n, name
    wall = time.time()
    assert abs(seen["time"][-1] - wall) < 60            # the real clock, not the virtual one
    assert seen["time"] == sorted(seen["time"]) and seen["time"][0] < seen["time"][-1]
    assert abs((datetime.now() - seen["now"][-1]).total_seconds()) < 60
    # and in this (main) thread, outside any flow, too
    assert uuid.uuid4() != uuid.uuid4() and os.urandom(16) != os.urandom(16)
    assert abs(time.time() - wall) < 60


def test_outside_a_flow_the_functions_behave_as_before():
    assert isinstance(datetime.now(), datetime) and type(datetime.now()) is datetime
    assert datetime.__name__ == "datetime" and datetime.now.__doc__
    random.seed(42)
    a = [random.random() for _ in range(3)]
    random.seed(42)
    assert a == [random.random() for _ in range(3)]
    assert uuid.uuid1().version == 1 and len(os.urandom(5)) == 5


def test_randomness_is_not_the_same_in_two_flows(tmp_path):
    with MockNetwork(tmp_path) as net:
        alice, bob = pair(net)
        h1 = alice.start_flow(Draws(bob.party, str(tmp_path / "a.log"), rounds=1))
        h2 = alice.start_flow(Draws(bob.party, str(tmp_path / "b.log"), rounds=1))
        net.run_network()
        r1, r2 = h1.result(), h2.result()
        assert r1[0][0][0] != r2[0][0][0] and r1[0][0][1] != r2[0][0][1]


def test_many_values_per_suspension_cost_one_small_journal_entry(tmp_path):
    with MockNetwork(tmp_path) as net:
        alice = net.create_node("Alice")
        h = alice.start_flow(replayflows.ManyDraws())
        net.run_network()
        [dump] = alice.checkpoints_dump()
        assert dump["journal_entries"] <= 2     # one clock entry and the pending sleep
        commits = alice.node.scheduler.stats["commits"]
        net.advance_clock(2)
        net.run_network()
        assert h.result() == 1
        assert alice.node.scheduler.stats["commits"] - commits <= 2



def test_names_bound_before_greenflow_was_imported_are_replay_safe_too():
    """``from time import time`` (PEP 8 puts it before greenflow's import) still gets the
    flow's clock inside a flow, and the real one outside."""
    import subprocess
    import sys
    code = (
        "from time import time\n"
        "from os import urandom\n"
        "from random import randint\n"
        "import greenflow.runtime.flow_runtime, greenflow.runtime.replay_safe as rs, sys\n"
        "g = sys.modules['__main__'].__dict__\n"
        "assert all(hasattr(g[n], '__gf_real__') for n in ('time', 'urandom', 'randint')), g\n"
        "assert abs(time() - rs.real_time()) < 5 and len(urandom(3)) == 3\n"
        "print('ok')\n")
    import greenflow
    root = os.path.dirname(os.path.dirname(os.path.abspath(greenflow.__file__)))
    r = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True,
                       env=dict(os.environ, PYTHONPATH=root), timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr


def test_a_flow_unwound_while_hibernated_reads_the_real_clock_in_its_finally(tmp_path):
    with MockNetwork(tmp_path, reload_after_suspend=True) as net:
        alice = net.create_node("Alice")
        h = alice.start_flow(replayflows.ClockInFinally(str(tmp_path / "finally.log")))
        net.run_network()               # suspended, then hibernated: its finally runs
        net.advance_clock(2)
        net.run_network()
        assert h.result() == 1_700_000_000.0
        with open(tmp_path / "finally.log", encoding="utf-8") as fh:
            readings = [float(x) for x in fh.read().split()]
        assert readings and all(abs(r - time.time()) < 60 for r in readings)  # real, not virtual


def test_time_sleep_in_a_flow_is_reported_once_per_place_and_not_repeated_on_replay(
        tmp_path, monkeypatch, caplog):
    """time.sleep in flow code blocks every flow of the node, silently; a flow replayed
    after a restart slept all over again."""
    from greenflow.runtime import replay_safe
    slept: list[float] = []
    monkeypatch.setattr(replay_safe, "real_sleep", slept.append)
    monkeypatch.setattr(replay_safe, "_SLEEPS_SEEN", set())
    net = MockNetwork(tmp_path / "net", reload_after_suspend=True)   # replayed at the wake
    alice = net.create_node("Alice")
    h = alice.start_flow(replayflows.TimeSleeper())
    net.run_network()
    net.advance_clock(5)
    net.run_network()
    assert h.result() == "slept"
    assert slept == [0.01, 0.01]   # the first run's two calls; none while replaying
    warned = [r.getMessage() for r in caplog.records if "called time.sleep" in r.getMessage()]
    assert len(warned) == 2 and all("blocks every flow of this node" in w and
                                    "use self.sleep(seconds)" in w for w in warned)
    time.sleep(0.001)   # outside flows: the real function, no report
    assert len([r for r in caplog.records if "called time.sleep" in r.getMessage()]) == 2
    net.close()


def test_a_long_running_flow_holds_only_its_unstored_journal_and_still_replays_whole(
        tmp_path, net_options):
    """A resident flow kept every journal entry it ever made in memory (~1 KB per round
    trip: 200,000 round trips of ping-pong held ~200 MB of heap). It now lets go of the
    entries the store holds; a restart replays the whole stored journal, clock readings
    and randomness included, and gets the values the first run drew."""
    from greenflow.statemachine.commit import FORGET_AT
    rounds, log = FORGET_AT * 4, str(tmp_path / "long.log")
    with MockNetwork(tmp_path / "net", **net_options) as net:
        alice, bob = pair(net)
        h = alice.start_flow(replayflows.LongDraws(bob.party, log, rounds))
        net.run_network(max_messages=rounds)   # about half of the round trips
        for node in (alice, bob):
            held = [len(rt.journal) for rt in node.node.scheduler.resident.values()]
            assert max(held, default=0) < FORGET_AT + 8, (node.name, held)
        [dump] = alice.checkpoints_dump()
        assert dump["journal_entries"] > FORGET_AT * 2   # the store has all of them
        alice = net.restart_node(alice)
        net.run_network(max_messages=rounds // 2)
        bob = net.restart_node(bob)
        net.run_network()
        result = alice.handle(h.id).result()
        assert len(result) == rounds
        assert [mine for mine, _ in result] == _first_seen(log)   # as first drawn
        assert all(theirs[2] == mine for mine, theirs in result)
        [responder] = bob.flows()
        assert bob.handle(responder.id).result() == [theirs for _, theirs in result]
        assert_all_finished(alice, bob)
