"""Shared plumbing for the benchmark suites: machine facts, a progress line on stderr,
plain-text tables, JSON output, RSS, and running a measurement in a fresh process.

Nothing here asserts on speed: suites print what they measured and write it down.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Optional, Sequence

PACKAGE = __package__ or "benchmarks"          # "benchmarks" or "greenflow.benchmarks"
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


# ---------------------------------------------------------------------- machine
def machine_info() -> dict:
    info: dict[str, Any] = {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "machine": platform.machine(),
    }
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    info["mem_total_bytes"] = int(line.split()[1]) * 1024
                    break
    except OSError:
        pass
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    info["cpu_model"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    versions = {}
    for mod in ("greenflow", "greenlet", "lmdb", "dill", "msgpack", "nacl", "dbos"):
        versions[mod] = package_version(mod)
    info["versions"] = versions
    info["lmdb_synced_commits_per_s"] = fsync_probe()
    return info


def fsync_probe(seconds: float = 0.5) -> Optional[float]:
    """Synced LMDB commits of one small record per second, in a scratch directory: how
    fast this disk is right now (other work on the machine shows here first)."""
    import shutil
    try:
        import lmdb
    except ImportError:
        return None
    d = scratch_dir("fsync")
    try:
        env = lmdb.open(d, map_size=1 << 24, sync=True, metasync=True)
        n = 0
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            with env.begin(write=True) as txn:
                txn.put(b"k%d" % n, b"x" * 100)
            n += 1
        rate = n / (time.perf_counter() - t0)
        env.close()
        return rate
    finally:
        shutil.rmtree(d, ignore_errors=True)


def package_version(mod: str) -> Optional[str]:
    from importlib import metadata
    dist = {"nacl": "pynacl"}.get(mod, mod)
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        if mod == "greenflow":
            try:
                import greenflow
                return getattr(greenflow, "__version__", None)
            except ImportError:
                return None
        return None


def load_average() -> Optional[list[float]]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def mem() -> tuple[int, int]:
    """(rss, anon) of this process in bytes, from /proc/self/statm: resident, and
    resident minus shared (file-backed pages such as an LMDB map)."""
    with open("/proc/self/statm") as f:
        parts = f.read().split()
    rss, shared = int(parts[1]) * _PAGE, int(parts[2]) * _PAGE
    return rss, rss - shared


# ---------------------------------------------------------------------- progress
class Progress:
    """One line on stderr: ``[suite] 3/12 label (detail)``. Redrawn in place on a
    terminal, one line per step otherwise (CI logs)."""

    def __init__(self, suite: str, total: int, stream: Any = None, enabled: bool = True) -> None:
        self.suite = suite
        self.total = max(total, 1)
        self.done = 0
        self.stream = stream if stream is not None else sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.enabled = enabled
        self.label = ""
        self._last = 0.0
        self.t0 = time.perf_counter()

    def _write(self, text: str, final: bool = False) -> None:
        if not self.enabled:
            return
        if self.tty:
            self.stream.write("\r\x1b[K" + text + ("\n" if final else ""))
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def _bar(self) -> str:
        width = 20
        filled = int(width * self.done / self.total)
        return "#" * filled + "." * (width - filled)

    def step(self, label: str) -> None:
        """Start the next measurement."""
        self.label = label
        self._write(f"[{self.suite}] [{self._bar()}] {self.done + 1}/{self.total} {label}")
        self._last = time.perf_counter()

    def detail(self, text: str) -> None:
        """Progress inside a measurement (throttled; only on a terminal)."""
        if not self.tty:
            return
        now = time.perf_counter()
        if now - self._last < 0.2:
            return
        self._last = now
        self._write(f"[{self.suite}] [{self._bar()}] {self.done + 1}/{self.total} {self.label}: {text}")

    def finish_step(self) -> None:
        self.done += 1

    def close(self) -> None:
        elapsed = time.perf_counter() - self.t0
        self.done = self.total
        self._write(f"[{self.suite}] [{self._bar()}] done in {elapsed:.1f}s", final=True)


# ---------------------------------------------------------------------- tables
@dataclass
class Table:
    title: str
    headers: list[str]
    rows: list[list[Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, *row: Any) -> None:
        self.rows.append(list(row))

    def render(self) -> str:
        cells = [[fmt(c) for c in row] for row in self.rows]
        widths = [len(h) for h in self.headers]
        for row in cells:
            for i, c in enumerate(row):
                widths[i] = max(widths[i], len(c))
        numeric = [all(_is_num(r[i]) for r in self.rows if i < len(r) and r[i] not in (None, ""))
                   for i in range(len(self.headers))]

        def line(vals: Sequence[str]) -> str:
            out = []
            for i, v in enumerate(vals):
                out.append(v.rjust(widths[i]) if numeric[i] and i > 0 else v.ljust(widths[i]))
            return "  ".join(out).rstrip()

        text = [self.title, line(self.headers), line(["-" * w for w in widths])]
        text += [line(r) for r in cells]
        text += [f"  note: {n}" for n in self.notes]
        return "\n".join(text)

    def to_json(self) -> dict:
        return {"title": self.title, "headers": self.headers, "rows": self.rows,
                "notes": self.notes}


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        if v != v:
            return "-"
        a = abs(v)
        if a >= 100:
            return f"{v:,.0f}"
        if a >= 10:
            return f"{v:.1f}"
        if a >= 0.1:
            return f"{v:.2f}"
        if a == 0:
            return "0"
        return f"{v:.3g}"
    return str(v)


def ratio(a: Optional[float], b: Optional[float]) -> Optional[float]:
    if a is None or b is None or b == 0:
        return None
    return a / b


def percentile(values: Sequence[float], q: float) -> Optional[float]:
    if not values:
        return None
    s = sorted(values)
    k = min(len(s) - 1, max(0, int(round(q / 100.0 * (len(s) - 1)))))
    return s[k]


# ---------------------------------------------------------------------- results
@dataclass
class SuiteResult:
    suite: str
    params: dict
    figures: dict
    ratios: dict
    tables: list[Table]
    not_measured: list[str] = field(default_factory=list)

    def render(self) -> str:
        parts = [t.render() for t in self.tables]
        if self.ratios:
            parts.append("ratios:\n" + "\n".join(
                f"  {k} = {fmt(v)}" + ("" if v is None else "x") for k, v in self.ratios.items()))
        if self.not_measured:
            parts.append("not measured:\n" + "\n".join(f"  - {m}" for m in self.not_measured))
        return "\n\n".join(parts)

    def to_json(self, machine: dict, quick: bool) -> dict:
        return {"suite": self.suite, "quick": quick, "machine": machine, "params": self.params,
                "figures": self.figures, "ratios": self.ratios,
                "tables": [t.to_json() for t in self.tables],
                "not_measured": self.not_measured}


def write_json(path: str, data: dict) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=2, sort_keys=False, default=str)
        f.write("\n")
    os.replace(tmp, path)


# ---------------------------------------------------------------------- subprocesses
def _import_root() -> str:
    """The directory to put on sys.path so that PACKAGE imports in a child process."""
    top = PACKAGE.split(".")[0]
    mod = sys.modules.get(top)
    here = os.path.dirname(os.path.abspath(__file__))
    if top == PACKAGE:
        return os.path.dirname(here)
    path = getattr(mod, "__file__", None) or here
    return os.path.dirname(os.path.dirname(os.path.abspath(path)))


def run_worker(task: str, params: dict, *, timeout: float = 1800,
               on_line: Optional[Callable[[str], None]] = None) -> dict:
    """Run ``worker.TASKS[task](**params)`` in a fresh interpreter and return its dict.

    The child reports progress on stderr (lines starting ``@progress``, passed to
    ``on_line``) and writes its result as JSON to a file named by the parent.
    """
    env = dict(os.environ)
    root = _import_root()
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    fd, result_path = tempfile.mkstemp(prefix="gfbench-result-", suffix=".json")
    os.close(fd)
    # -P: the current directory must not shadow the package found above (run from a
    # checkout, its bare greenflow/ has no greenflow.benchmarks).
    cmd = [sys.executable, "-P", "-m", f"{PACKAGE}.worker", task, json.dumps(params), result_path]
    err_tail: list[str] = []
    try:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                text=True, env=env)
        timer = threading.Timer(timeout, proc.kill)
        timer.start()
        try:
            assert proc.stderr is not None
            for line in proc.stderr:
                line = line.rstrip("\n")
                if line.startswith("@progress "):
                    if on_line is not None:
                        on_line(line[len("@progress "):])
                else:
                    err_tail.append(line)
                    del err_tail[:-40]
            rc = proc.wait()
        finally:
            timer.cancel()
            if proc.poll() is None:   # interrupted: the worker removes its scratch files
                proc.terminate()      # on SIGTERM; wait for that before the result file
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        with open(result_path) as f:
            text = f.read()
    finally:
        try:
            os.unlink(result_path)
        except OSError:
            pass
    if not text.strip():
        return {"error": f"worker {task} exited with {rc} and no result: "
                         + " | ".join(err_tail[-8:])}
    try:
        return json.loads(text)
    except ValueError:
        return {"error": f"worker {task} wrote no valid result: {text[:200]}"}


def child_progress(text: str) -> None:
    """From a worker: report progress to the parent (shown on its progress line). A
    parent that has gone (a closed pipe) ends the worker's task, scratch removed."""
    try:
        sys.stderr.write("@progress " + text + "\n")
        sys.stderr.flush()
    except BrokenPipeError:
        raise SystemExit("the benchmark's parent process is gone") from None


_SCRATCH: list[str] = []


def scratch_dir(prefix: str) -> str:
    """A fresh temporary directory (under $GREENFLOW_BENCH_TMP if set); a worker process
    removes the ones it made when its task is over (`remove_scratch`)."""
    base = os.environ.get("GREENFLOW_BENCH_TMP") or None
    path = tempfile.mkdtemp(prefix=f"gfbench-{prefix}-", dir=base)
    _SCRATCH.append(path)
    return path


def remove_scratch() -> None:
    import shutil
    while _SCRATCH:
        shutil.rmtree(_SCRATCH.pop(), ignore_errors=True)


def dir_bytes(path: str) -> int:
    """Bytes allocated on disk under ``path`` (st_blocks, so sparse files count as used)."""
    total = 0
    for root, _dirs, files in os.walk(path):
        for f in files:
            try:
                total += os.stat(os.path.join(root, f)).st_blocks * 512
            except OSError:
                pass
    return total


def chunks(n: int, size: int) -> Iterable[int]:
    while n > 0:
        k = min(n, size)
        yield k
        n -= k
