"""Smoke test of the benchmark suite: it runs and writes the JSON it promises.

No timing assertions: speed is reported by ``python -m benchmarks``, never asserted.
"""
from __future__ import annotations

import json

from greenflow.benchmarks.__main__ import main


def test_throughput_quick_writes_json(tmp_path, capsys):
    assert main(["throughput", "--quick", "--no-progress", "--out", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "throughput.json").read_text())
    assert data["suite"] == "throughput" and data["quick"] is True
    machine = data["machine"]
    for key in ("date", "cpu_count", "python"):
        assert machine[key]
    figures = data["figures"]
    for system in ("mock", "threaded", "asyncio"):
        for c in ("1", "100"):
            run = figures[system][c]
            assert "error" not in run, run
            assert run["flows"] > 0 and run["wrong_results"] == 0
            assert {"flows_per_s", "p50_ms", "p99_ms"} <= set(run)
    assert "dbos" in figures
    susp = figures["suspensions"]
    assert susp["capture_frames_on"]["suspensions_per_s"] > 0
    assert susp["capture_frames_off"]["suspensions_per_s"] > 0
    assert "greenflow_mock/asyncio@c=100" in data["ratios"]
    assert "greenflow_best/asyncio_best" in data["ratios"]
    assert data["tables"] and data["tables"][0]["rows"]
    out = capsys.readouterr().out
    assert "flows/s" in out and "vs asyncio" in out


def test_unknown_suite_is_refused(tmp_path, capsys):
    assert main(["nosuch", "--out", str(tmp_path)]) == 2
    assert "unknown suite" in capsys.readouterr().err
