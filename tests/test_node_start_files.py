"""``greenflow node start`` on a node directory whose own files are lost, wrong or cannot
be written: one error naming the file and what to do, the exit code of the cause (2 the
node's configuration and identity, 1 a directory it cannot write), no traceback, and
nothing written. Above all a node that exists never gets a new ``identity.key``: that
would be another identity, refused by every peer, and would hide the lost key for good.
Real commands, on directories ``greenflow network bootstrap`` and ``node init`` made."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

import greenflow

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(greenflow.__file__)))


def cli(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, HERE]))
    return subprocess.run([sys.executable, "-P", "-m", "greenflow.cli", *args],
                          capture_output=True, text=True, timeout=120, env=env)


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    root = tmp_path_factory.mktemp("net")
    out = cli("network", "bootstrap", "--dir", str(root / "net"), "--nodes", "Alice,Bob",
              "--base-port", "0")
    assert out.returncode == 0, out.stderr
    return str(root / "net" / "Alice")


@pytest.fixture
def node(tmp_path, pristine):
    d = str(tmp_path / "Alice")
    shutil.copytree(pristine, d)
    return d


def listing(d: str) -> dict[str, bytes]:
    out = {}
    for name in sorted(os.listdir(d)):
        path = os.path.join(d, name)
        if os.path.isfile(path):
            with open(path, "rb") as fh:
                out[name] = fh.read()
    return out


def refused(d: str, code: int, *says: str) -> None:
    """``node start`` on ``d`` ends with one error line saying ``says``, exit ``code``,
    and leaves the directory's files as they were."""
    before = listing(d)
    out = cli("node", "start", "--dir", d)
    assert out.returncode == code, (out.returncode, out.stderr[-2000:])
    assert "Traceback" not in out.stderr, out.stderr[-2000:]
    assert out.stderr.count("\n") == 1, out.stderr
    for text in says:
        assert text in out.stderr, out.stderr
    assert listing(d) == before


def test_a_node_whose_identity_key_is_gone_gets_no_new_one(node):
    key = os.path.join(node, "identity.key")
    os.remove(key)
    refused(node, 2, key, "is missing", "Restore identity.key from a backup")
    assert not os.path.exists(key)


@pytest.mark.lmdb_only   # removes the store's directory
def test_a_node_whose_store_is_gone_too_gets_no_new_key(node):
    os.remove(os.path.join(node, "identity.key"))
    shutil.rmtree(os.path.join(node, "store"))
    refused(node, 2, os.path.join(node, "identity.key"), "is missing")


def test_a_key_the_network_map_does_not_list_is_refused_naming_both_files(node):
    with open(os.path.join(node, "identity.key"), "wb") as fh:
        fh.write(os.urandom(32))
    refused(node, 2, os.path.join(node, "identity.key"), os.path.join(node, "network-map.json"),
            "does not hold the key", "restore")


def test_a_key_file_of_the_wrong_size_is_refused(node):
    with open(os.path.join(node, "identity.key"), "wb") as fh:
        fh.write(b"\x00" * 31)
    refused(node, 2, os.path.join(node, "identity.key"), "32-byte", "restore")


def test_a_network_map_that_does_not_list_the_node_is_refused_naming_it(node):
    path = os.path.join(node, "network-map.json")
    with open(path, encoding="utf-8") as fh:
        doc = json.load(fh)
    doc["nodes"] = [n for n in doc["nodes"] if n["name"] != "Alice"]
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(doc, fh)
    refused(node, 2, path, "does not list Alice")


@pytest.mark.parametrize("content", [b"\xff\xfe", b"\n"])
def test_an_unreadable_identity_name_is_refused_naming_it(node, content):
    path = os.path.join(node, "identity.name")
    with open(path, "wb") as fh:
        fh.write(content)
    refused(node, 2, path, "write 'Alice' into it")


def test_a_node_opened_in_a_program_gets_no_new_key_either(node):
    from greenflow.node.identity import IdentityMissing
    from greenflow.node.node import Node

    os.remove(os.path.join(node, "identity.key"))
    with pytest.raises(IdentityMissing, match="identity.key is missing"):
        Node(node, "Alice", threaded=False)
    assert not os.path.exists(os.path.join(node, "identity.key"))


def test_a_new_node_still_gets_its_key(tmp_path):
    d = str(tmp_path / "Carol")
    out = cli("node", "init", "--dir", d, "--name", "Carol")
    assert out.returncode == 0, out.stderr
    assert os.path.getsize(os.path.join(d, "identity.key")) == 32


# ---------------------------------------------------------------- directories it cannot write
@pytest.fixture
def small_fs(tmp_path):
    """A 1 MiB file system of its own (tmpfs), where the test may fill or remount it."""
    mnt = str(tmp_path / "mnt")
    os.mkdir(mnt)
    out = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1M", "tmpfs", mnt],
                         capture_output=True, text=True)
    if out.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {out.stderr.strip()}")
    try:
        out = cli("node", "init", "--dir", os.path.join(mnt, "Carol"), "--name", "Carol",
                  "--p2p-address", "127.0.0.1:0", "--rpc-address", "127.0.0.1:0")
        assert out.returncode == 0, out.stderr
        yield mnt
    finally:
        subprocess.run(["umount", "-l", mnt], capture_output=True)


def test_a_read_only_node_directory_is_one_error_naming_the_file(small_fs):
    d = os.path.join(small_fs, "Carol")
    assert subprocess.run(["mount", "-o", "remount,ro", small_fs]).returncode == 0
    out = cli("node", "start", "--dir", d)
    assert out.returncode == 1, out.stderr[-2000:]
    assert "Traceback" not in out.stderr and out.stderr.count("\n") == 1, out.stderr[-2000:]
    assert os.path.join(d, "node.log") in out.stderr and "Read-only file system" in out.stderr


@pytest.mark.skipif(os.geteuid() == 0, reason="permissions do not stop root")
def test_a_node_directory_without_write_permission_is_one_error_naming_the_file(node):
    os.chmod(node, 0o555)
    try:
        out = cli("node", "start", "--dir", node)
    finally:
        os.chmod(node, 0o755)
    assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr[-2000:]
    assert os.path.join(node, "node.log") in out.stderr, out.stderr


def test_a_full_file_system_names_the_file_it_could_not_write(small_fs):
    d = os.path.join(small_fs, "Carol")
    with open(os.path.join(small_fs, "filler"), "wb", buffering=0) as fh:
        try:
            while True:
                fh.write(b"\0" * 4096)
        except OSError:
            pass
    out = cli("node", "start", "--dir", d)
    assert out.returncode == 1, out.stderr[-2000:]
    assert "Traceback" not in out.stderr and "Logging error" not in out.stderr, out.stderr[-2000:]
    assert f"cannot write {os.path.join(d, 'node.pid')}: No space left on device" in out.stderr


# ---------------------------------------------------------------- the RPC's own files and port
def rpc_address(d: str) -> tuple[str, int]:
    from greenflow.network.node_config import NodeConfig
    return NodeConfig.load(d).rpc_address


@pytest.mark.lmdb_only   # starts a copy of a node directory, whose PostgreSQL schema is another
def test_an_rpc_port_in_use_is_named(node):
    import socket

    host, port = rpc_address(node)
    with socket.socket() as taken:
        taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        taken.bind((host, port))
        taken.listen(1)
        out = cli("node", "start", "--dir", node)
    assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr[-2000:]
    assert f"cannot listen for RPC clients on {host}:{port}: Address already in use" in out.stderr


@pytest.fixture
def running(node):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, HERE]))
    proc = subprocess.Popen([sys.executable, "-P", "-m", "greenflow.cli", "node", "start",
                             "--dir", node], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        for _ in range(300):
            if cli("node", "status", "--node", node).returncode == 0:
                break
            assert proc.poll() is None, "the node did not start"
        yield node
    finally:
        proc.terminate()
        proc.wait(60)


@pytest.mark.lmdb_only   # starts a copy of a node directory, whose PostgreSQL schema is another
@pytest.mark.parametrize("content, says", [
    (b"garbage\n", "is not an RPC credentials file"),
    (b'{"username": "admin"}\n', "is not an RPC credentials file"),
    (b"\xff\xfe", "is not an RPC credentials file"),
    (None, "no RPC credentials for"),
])
def test_rpc_credentials_a_client_cannot_use_are_named_not_blamed_on_the_node(running, content, says):
    path = os.path.join(running, "rpc-credentials")
    if content is None:
        os.remove(path)
    else:
        with open(path, "wb") as fh:
            fh.write(content)
    out = cli("node", "status", "--node", running)
    assert out.returncode == 2, (out.returncode, out.stderr[-2000:])
    assert out.stderr.startswith("Error: ") and out.stderr.count("\n") == 1, out.stderr
    assert says in out.stderr and path in out.stderr and "is it running" not in out.stderr


@pytest.mark.lmdb_only   # starts a copy of a node directory, whose PostgreSQL schema is another
def test_a_node_with_no_rpc_user_says_every_login_will_be_refused(node):
    """It started without a word and then refused every login."""
    import time
    path = os.path.join(node, "node.toml")
    with open(path, encoding="utf-8") as fh:
        text = fh.read()
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(text[:text.index("[[rpc_users]]")])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, HERE]))
    proc = subprocess.Popen([sys.executable, "-P", "-m", "greenflow.cli", "node", "start",
                             "--dir", node], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    log = os.path.join(node, "node.log")
    try:
        end = time.monotonic() + 60
        while time.monotonic() < end and proc.poll() is None:
            if os.path.exists(log) and "is up" in open(log, encoding="utf-8").read():
                break
            time.sleep(0.1)
        time.sleep(0.3)
        said = open(log, encoding="utf-8").read()
        assert "node.toml lists no [[rpc_users]]: every RPC and console login is refused" in said, said
    finally:
        proc.terminate()
        proc.wait(60)
