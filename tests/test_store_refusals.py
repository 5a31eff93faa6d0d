"""What a node process refuses at start, and how it ends when its store fails, on real
processes: a missing or empty store (unless ``--new-store``), a truncated or overwritten
``data.mdb``, a store of another format, a store already in use by another process (a
deleted ``node.pid``, a second directory linking to the same store), and a commit that
fails while running (exit status 4, the cause named)."""
from __future__ import annotations

import contextlib
import os
import resource
import shutil
import signal
import subprocess
import sys
import time

from typing import Any

import lmdb
import pytest

import greenflow

from greenflow.storage import store_guard
from greenflow.network.bootstrap import free_port, init_node
from greenflow.rpc.node_process import (EXIT_START_FAILED, EXIT_STORE_FAILED,
                                    EXIT_STORE_REFUSED)
from greenflow.rpc.client import RpcClient, RpcClientError
from greenflow.testing.node_processes import ProcessNetwork

# The LMDB store file's guard (its checks at open, its lock, its failures): the PostgreSQL
# store's own refusals are in test_postgres_store.py.
pytestmark = pytest.mark.lmdb_only

HERE = os.path.dirname(os.path.abspath(__file__))
# Where this run's greenflow comes from (site-packages, or the checkout of an editable
# install): the node processes must import the same one.
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(greenflow.__file__)))
APPS = ["samples.ping", "procflows"]


def _env() -> dict:
    return dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, HERE]))


def node_cmd(base_dir: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "greenflow.rpc.node_process", "--dir", base_dir, *extra]


def run_node(base_dir: str, *extra: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """Start a node process that is expected to refuse and exit."""
    return subprocess.run(node_cmd(base_dir, *extra), capture_output=True, text=True,
                          timeout=timeout, env=_env())


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    """A node directory whose node ran one flow to completion and left one waiting, then
    stopped cleanly: made once, copied for each test."""
    with ProcessNetwork(tmp_path_factory.mktemp("pristine"), ["Alice"], apps=APPS,
                        pythonpath=[HERE]) as net:
        alice = net.start("Alice")
        assert alice.start_flow("procflows.Fails", {"why": "x"}, wait=30)["status"] == "FAILED"
        fid = alice.start_flow("procflows.Sleeper", {"seconds": 3600})["flow_id"]
        assert net.stop("Alice") == 0
        yield net.dir("Alice"), fid


@pytest.fixture
def stopped(tmp_path, pristine):
    """(a copy of the pristine node directory, the waiting flow's id)."""
    src, fid = pristine
    d = str(tmp_path / "Alice")
    shutil.copytree(src, d, ignore=shutil.ignore_patterns("*.log", "node.pid"))
    return d, fid


@contextlib.contextmanager
def running(d: str, *extra: str):
    """A node process serving ``d``: yields (process, RPC client); SIGTERM at the end."""
    proc = subprocess.Popen(node_cmd(d, *extra), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=_env())
    client = RpcClient.for_node(d, timeout=10)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if client.node_info()["pid"] == proc.pid:
                    break
            except RpcClientError:
                pass
            assert proc.poll() is None, f"the node exited with {proc.returncode}"
            assert time.monotonic() < deadline, "the node did not answer RPC within 30s"
            time.sleep(0.05)
        yield proc, client
    finally:
        client.close()
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def waiting(client: RpcClient, fid: str) -> bool:
    return client.flow(fid)["status"] in ("SUSPENDED", "HIBERNATED")


def data_mdb(base_dir: str) -> str:
    return os.path.join(base_dir, "store", "data.mdb")


# ------------------------------------------------------------------ missing / empty store
@pytest.mark.parametrize("how", ["deleted", "emptied", "directory removed"])
def test_a_node_refuses_to_start_without_its_store(stopped, how):
    d, fid = stopped
    path = data_mdb(d)
    if how == "deleted":
        os.remove(path)
    elif how == "emptied":
        open(path, "wb").close()
    else:
        shutil.rmtree(os.path.dirname(path))
    out = run_node(d)
    assert out.returncode == EXIT_STORE_REFUSED, out.stderr
    assert path in out.stderr and "missing or empty" in out.stderr and "--new-store" in out.stderr


@pytest.mark.parametrize("new_store", [False, True])
def test_a_store_that_is_a_file_is_named_as_one(stopped, new_store):
    d, fid = stopped
    store = os.path.join(d, "store")
    shutil.rmtree(store)
    with open(store, "w") as fh:
        fh.write("hi\n")
    out = run_node(d, *(["--new-store"] if new_store else []))
    assert out.returncode == EXIT_STORE_REFUSED, out.stderr
    assert f"{store} is not a directory" in out.stderr, out.stderr
    assert "Errno" not in out.stderr


def test_new_store_starts_a_node_afresh_only_when_asked(stopped):
    d, fid = stopped
    os.remove(data_mdb(d))
    with running(d, "--new-store") as (proc, client):
        assert client.flows() == []                    # it forgot, as the operator asked
    assert proc.returncode == 0
    assert store_guard.present(os.path.join(d, "store"))


# ------------------------------------------------------------------ damaged store
def _truncate(path: str) -> None:
    size = os.path.getsize(path)
    with open(path, "r+b") as fh:
        fh.truncate(size // 2)


def _overwrite_pages(path: str) -> None:
    """Garbage over every page but the two meta pages: LMDB opens the file, its trees
    are nonsense."""
    size = os.path.getsize(path)
    with open(path, "r+b") as fh:
        fh.seek(2 * 4096)
        fh.write(bytes((i * 37 + 11) & 0xFF for i in range(size - 2 * 4096)))


def _overwrite_head(path: str) -> None:
    with open(path, "r+b") as fh:
        fh.write(b"\xab" * 16384)


def _foreign_format(path: str) -> None:
    env = lmdb.open(os.path.dirname(path), max_dbs=32)
    meta = env.open_db(b"meta")
    with env.begin(write=True, db=meta) as txn:
        txn.put(store_guard.FORMAT_KEY, b"somebody-else 7")
    env.close()


@pytest.mark.parametrize("damage, says", [
    (_truncate, "is truncated"),
    (_overwrite_pages, "is damaged"),
    (_overwrite_head, "is not an LMDB store file"),
    (_foreign_format, "does not hold a greenflow store"),
])
def test_a_damaged_store_is_refused_at_start_naming_the_file(stopped, damage, says):
    d, fid = stopped
    path = data_mdb(d)
    damage(path)
    out = run_node(d)
    assert out.returncode == EXIT_STORE_REFUSED, (out.returncode, out.stderr[-2000:])
    assert says in out.stderr and path in out.stderr, out.stderr[-2000:]
    assert "backup" in out.stderr                     # and what to do
    assert "Traceback" not in out.stderr


def test_a_store_written_by_a_newer_version_is_refused(stopped):
    d, fid = stopped
    env = lmdb.open(os.path.join(d, "store"), max_dbs=32)
    with env.begin(write=True, db=env.open_db(b"meta")) as txn:
        txn.put(store_guard.FORMAT_KEY, b"%s %d" % (store_guard.FORMAT_NAME.encode(),
                                                    store_guard.FORMAT_VERSION + 1))
    env.close()
    out = run_node(d)
    assert out.returncode == EXIT_STORE_REFUSED and "newer greenflow" in out.stderr


def test_a_sound_store_still_starts_and_resumes_its_flows(stopped):
    d, fid = stopped
    with running(d) as (proc, alice):
        assert waiting(alice, fid)


# ------------------------------------------------------------------ the store lock
def test_deleting_node_pid_does_not_let_a_second_process_share_the_store(stopped):
    d, fid = stopped
    with running(d) as (proc, alice):
        os.remove(os.path.join(d, "node.pid"))
        out = run_node(d)
        assert out.returncode == EXIT_START_FAILED, out.stderr
        assert f"is in use by process {proc.pid}" in out.stderr
        assert waiting(alice, fid)                    # the first one serves on


def test_deleting_both_lock_files_does_not_let_a_second_process_share_the_store(stopped):
    """node.pid and store/greenflow.lock look like stale locks; with both deleted a
    second process started on the store (two schedulers, two views of each flow)."""
    d, fid = stopped
    with running(d) as (proc, alice):
        os.remove(os.path.join(d, "node.pid"))
        os.remove(os.path.join(d, "store", "greenflow.lock"))
        _other_ports(d)   # so that only the store can stop the second process
        out = run_node(d)
        assert out.returncode == EXIT_START_FAILED, out.stderr
        assert "is in use by another process (its data file" in out.stderr
        assert waiting(alice, fid)


def _other_ports(d: str) -> None:
    import re
    toml = os.path.join(d, "node.toml")
    with open(toml) as fh:
        text = fh.read()
    for key in ("p2p_address", "rpc_address"):
        text, n = re.subn(rf'(?m)^{key} = .*$', f'{key} = "127.0.0.1:{free_port()}"', text)
        assert n == 1, text
    with open(toml, "w") as fh:
        fh.write(text)


@pytest.mark.parametrize("name", ["node.pid", "store/greenflow.lock", "store/lock.mdb",
                                  "store/data.mdb", "node.log"])
def test_a_file_the_node_writes_that_is_a_symbolic_link_is_refused_and_its_target_kept(
        stopped, tmp_path, name):
    """Each was opened through the link: a lock file truncated whatever it pointed at, and
    LMDB made the target of a linked lock.mdb its reader table (/etc/passwd, as root)."""
    d, fid = stopped
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    path = os.path.join(d, name)
    if os.path.exists(path):
        os.remove(path)   # (a linked data.mdb: the store, now without its data)
    os.symlink(victim, path)
    out = run_node(d)
    assert out.returncode != 0
    assert f"{path}: it is a symbolic link (a node writes its files only as plain files" \
        in out.stderr, out.stderr
    assert victim.read_text() == "precious\n"


def test_lmdb_files_that_are_not_plain_files_are_named_not_called_damaged(stopped):
    """A directory in place of lock.mdb made the store 'damaged' (advice: throw it away)."""
    d, fid = stopped
    path = os.path.join(d, "store", "lock.mdb")
    if os.path.exists(path):
        os.remove(path)
    os.mkdir(path)
    out = run_node(d)
    assert out.returncode != 0
    assert f"{path}: it is not a plain file" in out.stderr and "damaged" not in out.stderr, out.stderr
    os.rmdir(path)
    with running(d) as (proc, client):
        assert any(f["id"] == fid for f in client.flows())


def test_a_second_directory_linking_to_the_store_is_refused(stopped, tmp_path):
    d, fid = stopped
    m = str(tmp_path / "Mallory")
    init_node(m, "Mallory", p2p_address=("127.0.0.1", free_port()),
              rpc_address=("127.0.0.1", free_port()), apps=APPS)
    shutil.rmtree(os.path.join(m, "store"))
    os.symlink(os.path.join(d, "store"), os.path.join(m, "store"))
    with running(d) as (proc, alice):
        out = run_node(m)
        assert out.returncode == EXIT_START_FAILED, out.stderr
        assert f"is in use by process {proc.pid}" in out.stderr
        assert waiting(alice, fid)


# ------------------------------------------------------------------ a commit fails
def _limit_file_size(limit: int):
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


def _fill_until_dead(proc: subprocess.Popen, d: str) -> None:
    client = RpcClient.for_node(d, timeout=10)
    deadline = time.monotonic() + 60
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            try:
                client.start_flow("procflows.Fails", {"why": "y" * 100_000}, wait=5)
            except RpcClientError:
                time.sleep(0.1)
    finally:
        client.close()


def test_a_failed_commit_ends_the_process_non_zero_naming_the_cause(stopped):
    d, fid = stopped
    limit = os.path.getsize(data_mdb(d)) + 512 * 1024   # the store cannot grow past this
    code, text = _serve_until_dead(d, os.path.join(d, "limited.log"),
                                   preexec_fn=_limit_file_size(limit))
    assert code == EXIT_STORE_FAILED, text[-3000:]
    # LMDB itself says "Input/output error" for the short write; the node names the cause.
    assert "file size limit" in text and "exit status 4" in text
    with running(d) as (proc, alice):                 # the limit lifted: nothing lost
        assert waiting(alice, fid)


def test_a_data_file_deleted_under_the_running_node_stops_it_before_it_commits_more(stopped):
    """It went on accepting and completing flows into the unlinked file, logged nothing,
    and lost them all at the next start (which then refused the missing store)."""
    d, fid = stopped

    def delete_once_serving(proc: subprocess.Popen) -> None:
        client = RpcClient.for_node(d, timeout=10)
        deadline = time.monotonic() + 30
        while True:   # up and serving
            try:
                client.flows()
                break
            except RpcClientError:
                assert time.monotonic() < deadline and proc.poll() is None
                time.sleep(0.1)
        os.remove(data_mdb(d))

    code, text = _serve_until_dead(d, os.path.join(d, "deleted.log"), first=delete_once_serving)
    assert code == EXIT_STORE_FAILED, text[-3000:]
    assert f"the node store file {data_mdb(d)} was deleted while the node ran" in text, text[-3000:]


def _serve_until_dead(d: str, log_path: str, first: Any = None, **popen: Any) -> tuple[int, str]:
    """Start the node of ``d`` (then ``first(process)``), feed it flows until its store
    fails and it exits; its exit status and its output."""
    with open(log_path, "w+") as log:
        proc = subprocess.Popen(node_cmd(d), stdout=log, stderr=subprocess.STDOUT, env=_env(),
                                **popen)
        try:
            if first is not None:
                first(proc)
            _fill_until_dead(proc, d)
            code = proc.wait(30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        log.seek(0)
        return code, log.read()


def _can_mount() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0 and shutil.which("mount") is not None


@pytest.mark.skipif(not _can_mount(), reason="needs root to mount a small tmpfs")
def test_a_full_disk_is_named_disk_full_and_ends_the_process_non_zero(stopped, tmp_path):
    d, fid = stopped
    mnt = tmp_path / "small"
    mnt.mkdir()
    size = os.path.getsize(data_mdb(d)) + 3 * 1024 * 1024
    if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mnt)],
                      capture_output=True).returncode != 0:
        pytest.skip("mount refused (no privilege in this container)")
    try:
        small = str(mnt / "Alice")
        shutil.copytree(d, small, ignore=shutil.ignore_patterns("*.log", "node.pid"))
        code, text = _serve_until_dead(small, str(tmp_path / "full.log"))
        assert code == EXIT_STORE_FAILED, text[-3000:]
        assert "disk full" in text, text[-3000:]
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_the_draining_mark_is_not_written_through_a_symbolic_link(tmp_path, caplog):
    from greenflow.testing import MockNetwork
    net = MockNetwork(str(tmp_path / "net"))
    alice = net.create_node("Alice")
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    os.symlink(victim, os.path.join(alice.node.base_dir, "draining"))
    alice.node.set_draining(True)
    assert alice.node.draining   # drains all the same; the mark could not be kept
    assert victim.read_text() == "precious\n"
    assert "it is a symbolic link" in caplog.text
    net.close()
