"""``python -m benchmarks [SUITE ...] [--quick] [--out DIR]`` (also ``greenflow bench``).

Each suite prints a table, writes ``<out>/<suite>.json`` (machine, parameters, figures,
ratios) and, with matplotlib installed (``pip install '.[bench]' in greenflow's checkout``), PNG plots
beside it; it shows its progress on stderr. No suite asserts on speed.
``--plot-only [SUITE ...]`` redraws the plots from the JSON already in ``<out>``.
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional

from greenflow.benchmarks import common, plots

SUITES = ("throughput", "held", "restart", "disk", "trade", "processes", "hibernated", "cluster")
# cluster needs the cluster extra (PostgreSQL): run it by name, `python -m benchmarks cluster`
DEFAULT_SUITES = tuple(s for s in SUITES if s != "cluster")


@dataclass
class Context:
    quick: bool
    out: str
    n: Optional[int]
    profile: bool
    show_progress: bool

    def progress(self, suite: str, total: int) -> common.Progress:
        return common.Progress(suite, total, enabled=self.show_progress)


def default_out_dir(quick: bool = False) -> str:
    """benchmarks/results in a writable checkout (the figures the docs quote), else
    ./greenflow-bench-results; for ``--quick`` a directory under the system's temporary
    one, so smoke-sized figures never replace the reference ones."""
    if quick:
        import tempfile
        return os.path.join(tempfile.gettempdir(), "greenflow-bench-quick")
    here = os.path.dirname(os.path.abspath(__file__))
    if "site-packages" in here.split(os.sep) or not os.access(here, os.W_OK):
        return os.path.abspath("greenflow-bench-results")
    return os.path.join(here, "results")


def _suite_module(name: str):
    import importlib
    return importlib.import_module(f".{name}", __package__ or "benchmarks")


def _count(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"a flow count is 1 or more, not {n}")
    return n


def positive(kind: type) -> Callable[[str], Any]:
    """An argparse type: a number of ``kind`` above 0."""
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not value > 0:
            raise argparse.ArgumentTypeError(f"must be above 0, not {text}")
        return value
    return parse


def standalone(prog: str, suite: Any, argv: Optional[list[str]],
               add_options: Callable[[argparse.ArgumentParser], None],
               configure: Callable[[Any, argparse.Namespace], None]) -> int:
    """``python -m benchmarks.SUITE``: one suite with its own options, its ``--out``
    checked before it runs, its JSON and plots written, exit 1 if a measurement failed."""
    from greenflow.benchmarks.plots import plot_safely
    p = argparse.ArgumentParser(prog=prog)
    p.add_argument("--quick", action="store_true",
                   help="small sizes and short runs; figures are not representative")
    p.add_argument("--out", metavar="DIR", default=None,
                   help="where to write the JSON (default: as python -m benchmarks)")
    add_options(p)
    args = p.parse_args(argv)
    out = args.out if args.out is not None else default_out_dir(args.quick)
    why = _out_dir(out)
    if why:
        p.error(why)
    ctx = Context(quick=args.quick, out=out, n=None, profile=False, show_progress=True)
    configure(ctx, args)
    result = suite.run(ctx)
    data = result.to_json(common.machine_info(), args.quick)
    common.write_json(os.path.join(out, f"{suite.NAME}.json"), data)
    plot_safely(suite.NAME, data, out)
    print(result.render())
    broken = list(_errors(result.figures))
    for where, error in broken:
        print(f"measurement FAILED: {where}: {error}", file=sys.stderr)
    return 1 if broken else 0


def _out_dir(path: str) -> Optional[str]:
    """Why ``path`` cannot take the suites' results (None: it can, made if needed):
    checked before anything runs, not after a suite spent its minutes."""
    if not path.strip():
        return "--out is empty: give a directory (or leave the option out)"
    if os.path.exists(path) and not os.path.isdir(path):
        return f"--out {path} is a file, not a directory"
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as exc:
        return f"--out {path}: cannot create it: {exc.strerror or exc}"
    if not os.access(path, os.W_OK | os.X_OK):
        return f"--out {path}: cannot write in it"
    return None


def build_parser(prog: str = "python -m benchmarks") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog,
        description="greenflow benchmark suites: each prints a table and writes JSON.")
    p.add_argument("suites", nargs="*", metavar="SUITE",
                   help=f"suites to run (default: all but cluster): {', '.join(SUITES)}")
    p.add_argument("--quick", action="store_true",
                   help="small sizes and short runs (CI smoke test); figures are not representative")
    p.add_argument("--out", metavar="DIR", default=None,
                   help="where to write <suite>.json (default: benchmarks/results of the "
                        "checkout, ./greenflow-bench-results when installed; with --quick "
                        "$TMPDIR/greenflow-bench-quick)")
    p.add_argument("-n", dest="n", type=_count, default=None, metavar="N",
                   help="flow count for held/restart/disk/hibernated (overrides their defaults)")
    # (also --n; shown once: Python 3.13 words an option of two names otherwise than 3.11)
    p.add_argument("--n", dest="n", type=_count, default=None, help=argparse.SUPPRESS)
    p.add_argument("--profile", action="store_true",
                   help="throughput and trade: also profile greenflow and print the top functions")
    p.add_argument("--no-progress", action="store_true", help="no progress line on stderr")
    p.add_argument("--no-plots", action="store_true",
                   help="write no PNG plots (they need matplotlib: pip install '.[bench]' in greenflow's checkout)")
    p.add_argument("--plot-only", action="store_true",
                   help="run nothing: redraw the PNG plots from <out>/<suite>.json")
    return p


def plot_only(names: list[str], out: str, explicit: bool) -> int:
    """Redraw the plots of ``names`` from ``<out>/<suite>.json``; suites without a JSON
    file (or without plots) are skipped, and said to be when asked for by name."""
    import json
    if not plots.available():
        print(plots.HINT, file=sys.stderr)
        return 1
    failed = 0
    for name in names:
        path = os.path.join(out, f"{name}.json")
        if name not in plots.PLOTTERS or not os.path.exists(path):
            if explicit:
                print(f"{name}: " + ("no plots for this suite" if name not in plots.PLOTTERS
                                     else f"no {path}"), file=sys.stderr)
                failed += name in plots.PLOTTERS
            continue
        with open(path) as f:
            written = plots.plot_safely(name, json.load(f), out)
        failed += not written
        for png in written:
            print(f"{png}  {os.path.getsize(png) / 1024:.0f} KiB")
    return 1 if failed else 0


def main(argv: Optional[list[str]] = None, prog: str = "python -m benchmarks") -> int:
    args = build_parser(prog).parse_args(argv)
    names = args.suites or list(DEFAULT_SUITES)
    unknown = [s for s in names if s not in SUITES]
    if unknown:
        print(f"unknown suite(s): {', '.join(unknown)}; choose from {', '.join(SUITES)}",
              file=sys.stderr)
        return 2
    out = default_out_dir(args.quick) if args.out is None else args.out
    why = None if args.plot_only else _out_dir(out)
    if why:
        print(why, file=sys.stderr)
        return 2
    ctx = Context(quick=args.quick, out=out, n=args.n,
                  profile=args.profile, show_progress=not args.no_progress)
    if args.plot_only:
        return plot_only(names, ctx.out, explicit=bool(args.suites))
    machine = common.machine_info()
    print(f"greenflow benchmarks  {machine['date']}  python {machine['python']}  "
          f"{machine['cpu_count']} cpus  {(machine.get('mem_total_bytes') or 0) / 2**30:.1f} GiB  "
          f"synced LMDB commits/s now: {common.fmt(machine.get('lmdb_synced_commits_per_s'))}"
          + ("  (--quick: sizes too small to be representative)" if args.quick else ""))
    failed = 0
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _interrupted)   # as Ctrl-C: workers stop, clean up
    for name in names:
        load_before = common.load_average()
        try:
            result = _suite_module(name).run(ctx)
        except KeyboardInterrupt:
            print(f"\n== {name} == interrupted: its worker was stopped and its scratch files "
                  "removed; nothing of this suite was written", file=sys.stderr)
            return 130
        except Exception:  # noqa: BLE001 - report, go on with the other suites
            import traceback
            print(f"\n== {name} == FAILED", file=sys.stderr)
            traceback.print_exc()
            failed += 1
            continue
        data = result.to_json(machine, args.quick)
        data["load_average"] = {"before": load_before, "after": common.load_average()}
        path = os.path.join(ctx.out, f"{name}.json")
        common.write_json(path, data)
        print()
        print(f"== {name} ==")
        print(result.render())
        if load_before and load_before[0] > (os.cpu_count() or 1):
            print(f"(load average {load_before[0]:.2f} before this suite, on {os.cpu_count()} cpus: "
                  f"other work, or a previous suite's threads that the average still counts)")
        written = [] if args.no_plots else plots.plot_safely(name, data, ctx.out)
        print(f"(written to {path}" + "".join(f", {p}" for p in written) + ")")
        broken = list(_errors(result.figures))
        if broken:   # a table of dashes is not a result: say so, and exit 1
            print(f"\n== {name} == {len(broken)} measurement(s) FAILED:", file=sys.stderr)
            for where, error in broken:
                print(f"  {where}: {error}", file=sys.stderr)
            failed += 1
        sys.stdout.flush()
    return 1 if failed else 0


def _interrupted(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


def _errors(figures: object, where: str = "") -> Iterator[tuple[str, str]]:
    """(path, first line) of every measurement in a suite's figures that failed: the
    workers report a failure as a dict with an ``error`` (its traceback); a peer that is
    not installed (``not_installed``) is no failure: the suite says so in its table."""
    if isinstance(figures, dict):
        if figures.get("not_installed"):
            return
        if isinstance(figures.get("error"), str):
            lines = figures["error"].strip().splitlines() or ["(no message)"]
            yield where or "(suite)", lines[0][:300]
            return
        for key, value in figures.items():
            yield from _errors(value, f"{where} / {key}" if where else str(key))
    elif isinstance(figures, list):
        for i, value in enumerate(figures):
            yield from _errors(value, f"{where}[{i}]")


if __name__ == "__main__":
    sys.exit(main(prog=f"python -m {__package__ or 'benchmarks'}"))
