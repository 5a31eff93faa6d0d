"""Runs one measurement in a fresh interpreter (so variants do not share a heap):
``python -m benchmarks.worker TASK PARAMS_JSON RESULT_PATH``.

The task's dict is written to RESULT_PATH as JSON; progress goes to stderr.
"""
from __future__ import annotations

import json
import os
import signal
import sys
import traceback


def tasks() -> dict:
    from greenflow.benchmarks import dbos_peer, design_floor, disk, held, hibernated, restart, throughput, trade
    out: dict = {}
    for mod in (throughput, design_floor, held, restart, disk, dbos_peer, trade, hibernated):
        out.update(mod.TASKS)
    return out


def _stop(signum: int, _frame: object) -> None:
    raise SystemExit(f"stopped by signal {signum}")   # unwinds: scratch files are removed


def main(argv: list[str]) -> int:
    task, params, result_path = argv[0], json.loads(argv[1]), argv[2]
    # Interrupted (the parent's Ctrl-C or kill), the task unwinds and its scratch files
    # (stores of millions of flows: gigabytes) are removed; a closed pipe to a parent
    # that died raises (`child_progress`) instead of killing the worker where it stands.
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, _stop)
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    # Every variant, greenflow's and its peers', runs with the garbage-collector settings
    # of a greenflow node process (greenflow.node.gc_tuning), so the comparison stays fair.
    from greenflow.node.gc_tuning import tune
    tune()
    try:
        result = tasks()[task](**params)
        rc = 0
    except BaseException as exc:  # noqa: BLE001 - reported to the parent as the result
        result = {"error": f"{type(exc).__name__}: {exc}",
                  "traceback": traceback.format_exc()[-4000:]}
        rc = 1
    if os.path.exists(result_path):   # (a parent that is gone removed it, or will not)
        with open(result_path, "w") as f:
            json.dump(result, f, default=str)
    from greenflow.benchmarks.common import remove_scratch
    try:
        os.chdir("/")          # DBOS workers run inside their scratch directory
    except OSError:
        pass
    remove_scratch()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except OSError:   # the parent's end of the pipe is closed
            pass
    # Some peers (DBOS) keep non-daemon threads alive; the result is written: leave now.
    os._exit(rc)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
