"""Node processes on loopback: ping-pong between two processes, clean shutdown, and
``kill -9`` of either node at several points of a flow; after a restart the flow
completes exactly once (checked on both nodes).

The processes run ``python -m greenflow.rpc.node_process`` and import tests/procflows.py."""
from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

import greenflow
from greenflow.testing.node_processes import ProcessNetwork

HERE = os.path.dirname(os.path.abspath(__file__))
# Where this run's greenflow comes from (site-packages, or the checkout of an editable
# install): child processes must import the same one, not the checkout's bare package.
SOURCE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(greenflow.__file__)))
APPS = ["samples.ping", "samples.trade", "procflows"]


@pytest.fixture(scope="module")
def net(tmp_path_factory):
    with ProcessNetwork(tmp_path_factory.mktemp("procs"), ["Alice", "Bob"], apps=APPS,
                        pythonpath=[HERE]) as n:
        n.start_all()
        yield n


@pytest.fixture(autouse=True)
def _slow_only_when_asked(request):
    """The kill -9 matrix takes ~30 s: it runs only under ``-m slow``."""
    if request.node.get_closest_marker("slow") and "slow" not in (request.config.getoption("-m") or ""):
        pytest.skip("slow: run with -m slow")


def ensure_running(net: ProcessNetwork) -> None:
    for name in net.names:
        if not net.running(name):
            net.start(name)


def cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([SOURCE_ROOT, HERE]))
    # -P: the current directory (the checkout, when run from it) must not shadow the
    # greenflow this run imported.
    return subprocess.run([sys.executable, "-P", "-m", "greenflow.cli", *args], capture_output=True,
                          text=True, timeout=timeout, env=env)


def test_ping_pong_between_two_node_processes_from_the_cli(net):
    ensure_running(net)
    out = cli("flow", "start", "--node", net.dir("Alice"), "samples.ping.Ping", "peer=Bob", "n=5", "--wait")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "15"
    pongs = [f for f in net.client("Bob").flows() if f["flow_class"].endswith("ping.Pong")]
    assert pongs and all(f["status"] == "COMPLETED" for f in pongs)


def test_cli_errors_have_exit_codes(net):
    ensure_running(net)
    out = cli("flow", "start", "--node", net.dir("Alice"), "procflows.NotForRpc")
    assert out.returncode == 2 and "is not @startable" in out.stderr
    out = cli("flow", "start", "--node", net.dir("Alice"), "procflows.Fails", "--wait")
    assert out.returncode == 1 and "FAILED: ValueError: on purpose" in out.stderr
    out = cli("flow", "list", "--node", net.dir("Alice"), "--password", "wrong")
    assert out.returncode == 2 and "wrong username or password" in out.stderr


def test_a_string_too_long_for_a_store_key_fails_its_flow_and_the_node_serves_on(net):
    ensure_running(net)
    out = cli("flow", "start", "--node", net.dir("Alice"), "samples.trade.SetPriceLimitFlow",
              "amount=5", f"currency={'X' * 600}", "--wait")
    assert out.returncode == 1, out.stderr
    assert "KeyTooLong" in out.stderr and "'trade_policy'" in out.stderr, out.stderr
    assert "600 bytes" in out.stderr and "511 bytes" in out.stderr
    assert net.running("Alice")
    out = cli("flow", "start", "--node", net.dir("Alice"), "samples.ping.Ping", "peer=Bob", "--wait")
    assert out.returncode == 0 and out.stdout.strip() == "6", out.stderr


def test_sigterm_stops_cleanly_and_a_restart_resumes_a_waiting_flow(net):
    ensure_running(net)
    alice = net.client("Alice")
    fid = alice.start_flow("procflows.Sleeper", {"seconds": 1.5})["flow_id"]
    assert net.stop("Alice") == 0
    with open(os.path.join(net.dir("Alice"), "node.log")) as fh:
        assert "Alice: stopped" in fh.read()
    alice = net.start("Alice")
    assert alice.result(fid, wait=30)["result"] == "woke"


def relay_once(net: ProcessNetwork, victim: str, after_steps: int, client_id: str,
               rounds: int = 4) -> None:
    """Start a Relay from Alice to Bob; once Alice has reported ``after_steps`` progress
    steps, kill -9 ``victim`` (both: "Both"), restart it, and check the flow completed
    exactly once on both sides."""
    ensure_running(net)
    alice = net.client("Alice")
    before_bob = {f["id"] for f in net.client("Bob").flows()}
    out = alice.start_flow("procflows.Relay", {"peer": "Bob", "rounds": rounds, "delay": 0.15},
                           client_id=client_id)
    fid = out["flow_id"]
    seen = 0
    if after_steps:
        for event, _ in alice.progress(fid, timeout=30):
            seen += event == "progress"
            if seen >= after_steps or event == "end":
                break
    victims = ["Alice", "Bob"] if victim == "Both" else [victim]
    for v in victims:
        net.kill(v)
    time.sleep(0.2)
    for v in victims:
        net.start(v)
    alice = net.client("Alice")
    res = alice.result(fid, wait=60)
    assert res["status"] == "COMPLETED" and res["result"] == rounds * (rounds + 1) // 2
    # Exactly once: one flow for the client id on Alice, one new responder on Bob.
    again = alice.start_flow("procflows.Relay", {"peer": "Bob", "rounds": rounds}, client_id=client_id)
    assert again["flow_id"] == fid
    relays = [f for f in alice.flows() if f["id"] == fid]
    assert len(relays) == 1 and relays[0]["status"] == "COMPLETED"
    new_bob = [f for f in net.client("Bob").flows() if f["id"] not in before_bob]
    assert [(f["flow_class"], f["status"]) for f in new_bob] == [("procflows.RelayResponder", "COMPLETED")]
    assert not [e for e in alice.checkpoints() if e["flow_id"] == fid]


@pytest.mark.parametrize("victim, after_steps", [("Bob", 3), ("Alice", 4)])
def test_kill_9_mid_flow_then_restart_completes_exactly_once(net, victim, after_steps):
    relay_once(net, victim, after_steps, client_id=f"fast-{victim}-{after_steps}")


@pytest.mark.slow
@pytest.mark.parametrize("victim", ["Alice", "Bob", "Both"])
@pytest.mark.parametrize("after_steps", [0, 1, 2, 5, 7])
def test_kill_9_at_several_points_completes_exactly_once(net, victim, after_steps):
    relay_once(net, victim, after_steps, client_id=f"slow-{victim}-{after_steps}")


def test_a_second_process_cannot_open_a_running_nodes_directory(net):
    ensure_running(net)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([SOURCE_ROOT, HERE]))
    out = subprocess.run([sys.executable, "-P", "-m", "greenflow.rpc.node_process", "--dir", net.dir("Bob")],
                         capture_output=True, text=True, timeout=30, env=env)
    assert out.returncode == 1 and "already served by process" in out.stderr
    assert net.client("Bob").node_info()["name"] == "Bob"


def test_node_stop_returns_once_the_process_has_exited(net):
    """`node stop` said "stopped" once the RPC stopped answering, seconds before the
    process exited (closing a store of many flows): `node stop; node start` then failed
    with "already served by process ..."."""
    import fcntl
    ensure_running(net)
    out = cli("node", "stop", "--node", net.dir("Alice"))
    assert out.returncode == 0 and "Alice stopped" in out.stdout, out.stderr
    # The process let go of node.pid (its last act: after its store is closed), so a
    # `node start` now finds the directory free.
    fd = os.open(os.path.join(net.dir("Alice"), "node.pid"), os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)   # BlockingIOError while it is held
        fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
    net.procs["Alice"].wait(timeout=10)
    ensure_running(net)
