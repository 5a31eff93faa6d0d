"""The read-only tools that open a node directory in their own process (``checkpoints
dump``, ``replay``, ``vault query``) on a directory they cannot use: each ends in one
``Error:`` line naming the file, with the exit code ``node start`` gives for the same
directory (3 a store refused, 2 the configuration, 1 a store that does not answer), never
a traceback or a SIGBUS. Real commands, on a node directory a real node process wrote."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

import greenflow
from greenflow.testing.node_processes import ProcessNetwork

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(greenflow.__file__)))
TOOLS = [("checkpoints", "dump"), ("replay",), ("vault", "query")]


def cli(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, HERE]))
    return subprocess.run([sys.executable, "-P", "-m", "greenflow.cli", *args],
                          capture_output=True, text=True, timeout=120, env=env)


def node_start(d: str) -> subprocess.CompletedProcess:
    return cli("node", "start", "--dir", d)


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    with ProcessNetwork(tmp_path_factory.mktemp("pristine"), ["Alice"],
                        apps=["samples.ping", "procflows"], pythonpath=[HERE]) as net:
        alice = net.start("Alice")
        for _ in range(20):   # a store of several pages, so a cut one misses some
            alice.start_flow("procflows.Sleeper", {"seconds": 3600})
        assert net.stop("Alice") == 0
        yield net.dir("Alice")


@pytest.fixture
def node(tmp_path, pristine):
    d = str(tmp_path / "Alice")
    shutil.copytree(pristine, d, ignore=shutil.ignore_patterns("*.log", "node.pid"))
    return d


def assert_clean(out: subprocess.CompletedProcess, code: int, *says: str) -> None:
    assert out.returncode == code, (out.returncode, out.stderr[-2000:])
    assert "Traceback" not in out.stderr and out.stderr.startswith("Error: "), out.stderr[-2000:]
    assert out.stderr.count("\n") == 1, out.stderr
    for text in says:
        assert text in out.stderr, out.stderr


def _cut(path: str, size: int) -> None:
    with open(path, "r+b") as fh:
        fh.truncate(size)


@pytest.mark.lmdb_only
@pytest.mark.parametrize("damage, says", [
    (lambda p: _cut(p, os.path.getsize(p) // 2), "is truncated"),
    (lambda p: _cut(p, 3 * 4096), "is truncated"),
    (lambda p: os.remove(p), "is missing or empty"),
    (lambda p: open(p, "r+b").write(b"\xab" * 16384), "is not an LMDB store file"),
])
def test_a_damaged_store_is_refused_by_the_read_only_tools_as_node_start_refuses_it(node, damage, says):
    path = os.path.join(node, "store", "data.mdb")
    damage(path)
    for tool in TOOLS:
        assert_clean(cli(*tool, "--node", node), 3, says, path)


@pytest.mark.parametrize("config, says", [
    ("garbage = [\n", "cannot read the node's configuration"),
    ('store = "garbage"\n', "`store` must be"),
    ("store = 5\n", "`store` must be a string"),
    (b"name2 = '\xff\xfe'\n", "not UTF-8 text"),
])
def test_an_unreadable_node_toml_is_one_error_naming_it(node, config, says):
    path = os.path.join(node, "node.toml")
    with open(path, "rb") as fh:
        text = fh.read()
    with open(path, "wb") as fh:
        fh.write((config if isinstance(config, bytes) else config.encode()) + text)
    for tool in TOOLS:
        assert_clean(cli(*tool, "--node", node), 2, says, path)


def test_a_store_that_does_not_answer_is_one_error(node):
    with open(os.path.join(node, "node.toml"), "r+", encoding="utf-8") as fh:
        text = fh.read()
        fh.seek(0)
        fh.write('store = "postgresql://nobody@127.0.0.1:1/none"\n' + text)
    for tool in TOOLS:
        assert_clean(cli(*tool, "--node", node), 1, "cannot connect to the PostgreSQL store")


def test_a_non_utf8_identity_name_is_one_error_naming_it(node):
    path = os.path.join(node, "identity.name")
    with open(path, "wb") as fh:
        fh.write(b"\xff\xfeAlice\n")
    for tool in TOOLS:
        assert_clean(cli(*tool, "--node", node), 2, path, "not UTF-8")


def test_node_start_names_a_node_toml_that_is_not_utf8(node):
    path = os.path.join(node, "node.toml")
    with open(path, "ab") as fh:
        fh.write(b"# \xff\n")
    out = node_start(node)
    assert out.returncode == 2 and path in out.stderr and "not UTF-8" in out.stderr, out.stderr


@pytest.mark.parametrize("value", ['"false"', '"yes"', "1"])
def test_a_notary_setting_that_is_not_a_bool_is_refused(node, value):
    path = os.path.join(node, "node.toml")
    with open(path, encoding="utf-8") as fh:
        lines = [ln for ln in fh.read().splitlines() if not ln.startswith("notary")]
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(f"notary = {value}\n" + "\n".join(lines) + "\n")
    out = node_start(node)
    assert out.returncode == 2 and "`notary` must be a bool" in out.stderr, out.stderr
