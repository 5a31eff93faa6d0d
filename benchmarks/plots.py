"""PNG plots of a suite's JSON, for the suites where a curve says more than a table.

``write_plots(suite, data, out)`` writes ``<out>/<suite>.png`` (or ``<suite>-<what>.png``
for a suite that draws several) from the dict the suite wrote to ``<out>/<suite>.json``, and
returns the paths. It needs matplotlib (``pip install '.[bench]' in greenflow's checkout``); the base
install does not. ``plot_safely`` is what the runner calls: without matplotlib it prints
one hint on stderr, and a plot that fails prints a one-line warning; neither fails a suite.

Figures are drawn on matplotlib's Agg canvas (no display, no pyplot global state).
"""
from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any

HINT = "(no plots: pip install '.[bench]' in greenflow's checkout gives PNG plots of the results)"
DPI = 100
SIZE = (7.5, 4.5)                 # inches; at DPI 100 a PNG of a few tens of KB

_hinted = False
Plots = list[tuple[str | None, Any]]   # (what, Figure): what names the PNG, None: the only one


def available() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def plot_safely(suite: str, data: dict, out: str, stream: Any = None) -> list[str]:
    """``write_plots``, never raising: prints the install hint once per process when
    matplotlib is missing, and one warning line when a plot fails."""
    global _hinted
    stream = stream if stream is not None else sys.stderr
    if not available():
        if not _hinted:
            print(HINT, file=stream)
            _hinted = True
        return []
    try:
        return write_plots(suite, data, out)
    except Exception as e:  # noqa: BLE001 - a plot must never fail a suite
        first = (str(e).splitlines() or [""])[0][:200]
        print(f"(warning: plotting {suite} failed: {type(e).__name__}: {first})", file=stream)
        return []


def write_plots(suite: str, data: dict, out: str) -> list[str]:
    """Write the suite's PNGs into ``out``; returns their paths ([] for a suite without
    plots, or one whose figures hold nothing to draw)."""
    plotter = PLOTTERS.get(suite)
    if plotter is None:
        return []
    figs = [(what, fig) for what, fig in plotter(data.get("figures") or {}) if fig is not None]
    if figs:
        os.makedirs(out, exist_ok=True)
    paths = []
    for what, fig in figs:
        path = os.path.join(out, f"{suite}.png" if what is None else f"{suite}-{what}.png")
        _caption(fig, data)
        fig.savefig(path, dpi=DPI, metadata={"Software": None})
        paths.append(path)
    return paths


# ---------------------------------------------------------------------- helpers
def _figure(ncols: int = 1, size: tuple = SIZE) -> tuple[Any, list]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    fig = Figure(figsize=size, layout="constrained")
    FigureCanvasAgg(fig)
    axes = [fig.add_subplot(1, ncols, i + 1) for i in range(ncols)]
    for ax in axes:
        ax.grid(True, which="major", alpha=0.3)
    return fig, axes


def _caption(fig: Any, data: dict) -> None:
    m = data.get("machine") or {}
    text = f"{(m.get('date') or '')[:16]}  python {m.get('python', '?')}  {m.get('cpu_count', '?')} cpus"
    if data.get("quick"):
        text += "  --quick: sizes too small to be representative"
    fig.supxlabel(text, fontsize=7, color="0.4", ha="right", x=0.99)


def _ok(d: Any) -> bool:
    return isinstance(d, dict) and "error" not in d


def _by_concurrency(block: Any, key: str) -> tuple[list[int], list[float]]:
    """``{"1": {...}, "100": {...}}`` -> sorted concurrencies and ``key`` of each run
    (runs with an error, or without the key, left out)."""
    if not _ok(block):
        return [], []
    pts = sorted((int(c), d[key]) for c, d in block.items()
                 if c.isdigit() and _ok(d) and d.get(key) is not None)
    return [c for c, _v in pts], [v for _c, v in pts]


def _log_x(ax: Any, xs: list[int], label: str) -> None:
    """Log x axis with a tick, written out in full, at each measured x."""
    ax.set_xscale("log")
    ax.set_xticks(xs, [f"{x:,}" for x in xs])
    ax.minorticks_off()
    ax.set_xlabel(label)


def _log_y(ax: Any, label: str) -> None:
    """Log y axis labelled in plain numbers, at 1-2-5 steps when it spans little."""
    from matplotlib import ticker
    ax.set_yscale("log")
    lo, hi = ax.get_ylim()
    ax.yaxis.set_major_locator(ticker.LogLocator(subs=(1.0, 2.0, 5.0) if hi < 300 * lo else (1.0,)))
    ax.yaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _pos: f"{v:,g}"))
    ax.yaxis.set_minor_formatter(ticker.NullFormatter())
    ax.set_ylabel(label)


def _rate_and_latency(series: list[tuple[str, Any]], rate_key: str, unit: str, title: str,
                      log_rate: bool) -> Plots:
    """Two figures over concurrency: ``rate_key`` per series, and its p50/p99 latency."""
    curves = [(label, block, *_by_concurrency(block, rate_key)) for label, block in series]
    curves = [c for c in curves if c[2]]
    if not curves:
        return []
    xs = sorted({x for c in curves for x in c[2]})
    rate, (ax,) = _figure()
    for label, _block, cx, cy in curves:
        ax.plot(cx, cy, marker="o", label=label)
    _log_x(ax, xs, f"concurrency ({unit} in flight)")
    if log_rate:
        _log_y(ax, f"{unit}/s")
    else:
        ax.set_ylim(bottom=0)
        ax.set_ylabel(f"{unit}/s")
    ax.set_title(f"{title}: {unit} per second", fontsize=10)
    ax.legend(fontsize=8)
    lat, (ax,) = _figure()
    for i, (label, block, _cx, _cy) in enumerate(curves):
        color = f"C{i}"
        for key, style in (("p50_ms", "-"), ("p99_ms", "--")):
            lx, ly = _by_concurrency(block, key)
            ax.plot(lx, ly, style, marker="o", color=color, markersize=4,
                    label=label if key == "p50_ms" else None)
    _log_x(ax, xs, f"concurrency ({unit} in flight)")
    _log_y(ax, "latency, ms")
    ax.set_title(f"{title}: latency, p50 (solid) and p99 (dashed)", fontsize=10)
    ax.legend(fontsize=8)
    return [("rate", rate), ("latency", lat)]


# ---------------------------------------------------------------------- suites
def _throughput(figures: dict) -> Plots:
    from greenflow.benchmarks.throughput import SYSTEMS
    series = [(label, figures.get(key)) for key, label, _t, _e in SYSTEMS]
    series.append(("DBOS (SQLite)", figures.get("dbos")))
    return _rate_and_latency(series, "flows_per_s", "flows",
                             "Durable ping-pong, one node pair", log_rate=True)


def _trade(figures: dict) -> Plots:
    from greenflow.benchmarks.trade import VARIANTS
    series = [(label, figures.get(key)) for key, label, _p in VARIANTS if key in figures]
    return _rate_and_latency(series, "trades_per_s", "trades",
                             "Delivery versus payment (sample.trade)", log_rate=False)


def _processes(figures: dict) -> Plots:
    series = [("two node processes (TCP)", figures.get("processes")),
              ("two threaded nodes, one process", figures.get("in_process"))]
    return _rate_and_latency(series, "flows_per_s", "flows",
                             "Ping-pong between node processes", log_rate=False)


def _held(figures: dict) -> Plots:
    rows = [(label, d) for label, d in figures.items() if _ok(d) and "bytes_per_flow" in d]
    if not rows:
        return []
    fig, (ax,) = _figure(size=(7.5, 0.45 * len(rows) + 1.5))
    labels = [f"{label}  (N={d['n']:,})" for label, d in rows]
    ys = list(range(len(rows)))[::-1]
    rss = [d["bytes_per_flow"] for _l, d in rows]
    anon = [d.get("anon_bytes_per_flow") or 0 for _l, d in rows]
    ax.barh(ys, rss, height=0.7, color="C0", label="RSS per flow")
    ax.barh(ys, anon, height=0.35, color="C1", label="anonymous (RSS minus shared)")
    for y, v in zip(ys, rss):
        ax.text(v, y, f" {v:,.0f}", va="center", fontsize=8)
    ax.set_yticks(ys, labels, fontsize=8)
    ax.set_xlim(0, max(rss) * 1.15)
    ax.set_xlabel("bytes per waiting flow")
    ax.xaxis.set_major_formatter("{x:,.0f}")
    ax.set_title("Memory per flow waiting in receive, each variant in its own process",
                 fontsize=10, loc="right")
    ax.legend(fontsize=8, loc="upper right")
    return [(None, fig)]


def _restart(figures: dict) -> Plots:
    ns = sorted(int(k) for k, v in figures.items()
                if k.isdigit() and _ok(v.get("setup")) and _ok(v.get("measure")))
    if not ns:
        return []
    ms = [figures[str(n)]["measure"] for n in ns]
    fig, (reopen, answer) = _figure(ncols=2, size=(9, 4.2))
    panels = ((reopen, "reopen the node", (("open_bob_s", "Bob (N responders)"),
                                           ("open_alice_s", "Alice (N initiators)")),
               "all_recovered_s", "DBOS launch + recovery"),
              (answer, "a waiting flow answers", (("bob_answer_s", "Bob answers (replay)"),
                                                  ("first_answer_s", "first answer (round trip)")),
               "first_answer_s", "DBOS first answer"))
    dbos = figures.get("dbos") or {}
    dbos_n = (dbos.get("setup") or {}).get("n")
    for ax, title, keys, dbos_key, dbos_label in panels:
        for key, label in keys:
            ax.plot(ns, [m[key] * 1e3 for m in ms], marker="o", label=label)
        if _ok(dbos.get("measure")) and dbos_n and dbos["measure"].get(dbos_key) is not None:
            ax.plot([dbos_n], [dbos["measure"][dbos_key] * 1e3], marker="s", linestyle="none",
                    color="C3", label=f"{dbos_label} (N={dbos_n:,})")
        _log_x(ax, sorted({*ns, *([dbos_n] if dbos_n else [])}), "N waiting flows")
        _log_y(ax, "ms")
        ax.set_title(title, fontsize=10)
        ax.legend(fontsize=7)
    fig.suptitle("Restart with N waiting flows (warm page cache)", fontsize=11)
    return [(None, fig)]


def _disk(figures: dict) -> Plots:
    return [("waiting", _disk_waiting(figures)), ("growth", _disk_growth(figures))]


def _disk_waiting(figures: dict) -> Any | None:
    waiting = figures.get("waiting")
    if not _ok(waiting) or not waiting.get("n"):
        return None
    n = waiting["n"]
    nodes = [("Alice (initiators)", waiting["alice"]), ("Bob (responders)", waiting["bob"])]
    dbs = sorted({db for _l, s in nodes for db, v in s["dbs"].items() if v["bytes"]},
                 key=lambda db: -sum(s["dbs"].get(db, {}).get("bytes", 0) for _l, s in nodes))
    fig, (ax,) = _figure()
    xs = list(range(len(nodes)))
    bottom = [0.0] * len(nodes)
    for i, db in enumerate(dbs):
        vals = [s["dbs"].get(db, {}).get("bytes", 0) / n for _l, s in nodes]
        ax.bar(xs, vals, bottom=bottom, width=0.6, color=f"C{i % 10}", label=db)
        bottom = [b + v for b, v in zip(bottom, vals)]
    labels = [label for label, _s in nodes]
    files = [s["allocated_bytes"] / n for _l, s in nodes]
    dbos = figures.get("dbos_bytes_per_waiting_workflow")
    if dbos is not None:
        xs.append(len(nodes))
        labels.append("DBOS (SQLite)")
        files.append(dbos)
        ax.bar([len(nodes)], [dbos], width=0.6, color="0.6", label="DBOS file growth")
    ax.hlines(files, [x - 0.35 for x in xs], [x + 0.35 for x in xs], colors="k", linewidth=2,
              label="file (allocated blocks)")
    ax.set_ylim(0, max(files) * 1.45)
    ax.set_xticks(xs, labels, fontsize=9)
    ax.set_ylabel("bytes per waiting flow")
    ax.set_title(f"Disk per waiting flow by database ({n:,} waiting flows per node)", fontsize=10)
    ax.legend(fontsize=7, ncol=2)
    return fig


def _disk_growth(figures: dict) -> Any | None:
    growth = figures.get("growth")
    samples = growth.get("samples") if _ok(growth) else None
    if not samples:
        return None
    xs = [s["completed"] for s in samples]
    fig, (ax,) = _figure()
    for node, color in (("alice", "C0"), ("bob", "C1")):
        ax.plot(xs, [s[node]["live_bytes"] / 2**20 for s in samples], marker="o", markersize=3,
                color=color, label=f"{node.title()} live")
        ax.plot(xs, [s[node]["high_water_bytes"] / 2**20 for s in samples], linestyle="--",
                color=color, label=f"{node.title()} high-water")
    ax.xaxis.set_major_formatter("{x:,.0f}")
    ax.set_ylim(bottom=0)
    ax.set_xlabel("completed ping-pong flows")
    ax.set_ylabel("store size, MiB")
    title = "Store size over a long run of completed flows"
    ret = growth.get("retention_s")
    if ret:
        title += f"\n(results kept {ret / 86_400:g} days; the clock moves "
        title += f"{growth['clock_step_s'] / 86_400:g} days per round)"
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    return fig


# suite -> figures of its JSON -> [(what, figure)]; what None: the suite's one plot
PLOTTERS: dict[str, Callable[[dict], Plots]] = {
    "throughput": _throughput, "held": _held, "restart": _restart, "disk": _disk,
    "trade": _trade, "processes": _processes,
}
