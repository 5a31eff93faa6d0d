"""`greenflow run sample.trade`: the first command of the README, and its options."""
from __future__ import annotations

import json
import re

from click.testing import CliRunner

from greenflow.cli.main import main


def trade(*args: str):
    return CliRunner().invoke(main, ["run", "sample.trade", *args], catch_exceptions=False)


def test_the_trade_shows_both_sides_live_and_a_summary():
    result = trade()
    assert result.exit_code == 0, result.output
    out = result.output
    for line in ("Seller │ Offering the asset and its price", "Buyer  │ Checking the price against our limit",
                 "Buyer  │ Notarising and recording / Notarising", "Seller │ ✓ done", "Buyer  │ ✓ done"):
        assert line in out
    assert "Trade settled in" in out and "recorded by both sides" in out
    assert "Seller  paper CP-0001 (1,000 GBP face)" in out
    assert "paper CP-0001 (1,000 GBP face), cash 500 GBP" in out


def test_json_prints_only_the_summary():
    result = trade("--json")
    assert result.exit_code == 0
    summary = json.loads(result.stdout)
    assert summary["ok"] and summary["trades"] == 1 and len(summary["tx_id"]) == 64
    assert summary["seller"]["after"]["cash"] == {"GBP": 1000}
    assert summary["buyer"]["after"]["paper"]["references"] == ["CP-0001"]


def test_concurrent_trades_report_trades_per_second():
    result = trade("--trades", "30", "--json")
    summary = json.loads(result.stdout)
    assert summary["trades"] == 30 and summary["trades_per_second"] > 0
    assert summary["buyer"]["after"]["paper"]["count"] == 30


def test_crash_power_cuts_the_buyer_and_the_trade_completes():
    result = trade("--crash")
    assert result.exit_code == 0, result.output
    assert "power cut: Buyer stops at 'Collecting the seller's signature" in result.output
    assert "Buyer reopened: 1 flow(s) resume from their checkpoints" in result.output
    assert "finished the trade after its restart" in result.output


def test_a_price_above_the_limit_exits_non_zero_with_the_reason():
    result = trade("--price", "1500")
    assert result.exit_code == 1
    assert ("Error: sample.trade failed: UnacceptablePrice: Buyer will not pay 1,500 GBP for "
            "CP-0001: its limit is 1,200 GBP") in result.output


def test_the_trade_runs_on_real_node_processes_and_survives_a_sigkill(tmp_path):
    result = trade("--processes", "--crash", "--data-dir", str(tmp_path / "procs"))
    assert result.exit_code == 0, result.output
    assert "power cut: Buyer killed (SIGKILL)" in result.output
    # 1 when the kill caught the buyer's flow mid-trade (the usual case); 0 if the flow had
    # already finished the trade when the signal landed.
    assert re.search(r"Buyer restarted: [01] flow\(s\) unfinished", result.output)
    assert "Trade settled in" in result.output
    assert "paper CP-" in result.output and "cash 500 GBP" in result.output


def test_the_trade_benchmark_runs_quick_and_writes_json(tmp_path):
    from greenflow.benchmarks.__main__ import main as bench
    assert bench(["trade", "--quick", "--no-progress", "--out", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "trade.json").read_text())
    run = data["figures"]["durable"]["10"]
    assert "error" not in run, run
    assert run["trades"] >= 10 and run["calls_per_trade"]["signing"] == 3
    assert set(run["share_pct"]) == {"signing", "signature_checks", "contracts", "tx_id_hashing"}
