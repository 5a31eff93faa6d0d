"""Python's own behaviours inside flows. A node restarted in a new process draws a new
hash seed, so a set of strings iterates in another order there: a flow that sent one
must still replay (its recorded send is compared with what the replay sends). A thread a
flow starts is outside the flow, and the error says so."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from greenflow import wire

HERE = os.path.dirname(os.path.abspath(__file__))

DRIVE = """
import os, sys
from greenflow.testing import MockNetwork
import seedflows
d, phase = sys.argv[1:3]
net = MockNetwork(d)
alice, bob = net.create_node("Alice"), net.create_node("Bob")
if phase == "start":
    alice.start_flow(seedflows.SendSets(bob.party))
    net.run_network()
    os._exit(0)   # a power cut: Alice waits for Bob, who sleeps
net.run_network()
net.advance_clock(11)
net.run_network()
(info,) = alice.flows()
print(info.status.name, info.error or "", alice.node.handle(info.id).result(5) if info.error is None else "")
net.close()
"""


def _run(store: str, phase: str, seed: str) -> str:
    import greenflow
    root = os.path.dirname(os.path.dirname(os.path.abspath(greenflow.__file__)))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([HERE, root]), PYTHONHASHSEED=seed)
    r = subprocess.run([sys.executable, "-c", DRIVE, store, phase], cwd=HERE, env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    return r.stdout.strip()


@pytest.mark.parametrize("seeds", [("1", "5"), ("7", "2")])
def test_a_flow_that_sent_sets_of_strings_replays_in_a_process_with_another_seed(
        tmp_path, seeds) -> None:
    store = str(tmp_path / "net")
    _run(store, "start", seeds[0])
    out = _run(store, "resume", seeds[1])
    import seedflows
    expected = 2 * len(seedflows.WORDS) + sum(map(len, seedflows.WORDS))
    assert out.split() == ["COMPLETED", str(expected)], out


def test_a_set_of_strings_encodes_alike_whatever_the_seed() -> None:
    import greenflow
    root = os.path.dirname(os.path.dirname(os.path.abspath(greenflow.__file__)))
    script = ("from greenflow import wire; print(wire.encode(({'b', 'a', 'c', b'x'}, "
              "frozenset({('k', 1), ('j', 2)}), {3, 100000, 7})).hex())")
    outs = set()
    for seed in ("1", "2", "3", "4"):
        env = dict(os.environ, PYTHONPATH=root, PYTHONHASHSEED=seed)
        outs.add(subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                                text=True, check=True).stdout.strip())
    assert len(outs) == 1
    assert wire.decode(bytes.fromhex(outs.pop())) == ({"a", "b", "c", b"x"},
                                                       frozenset({("k", 1), ("j", 2)}),
                                                       {3, 100000, 7})


def test_the_flow_api_called_from_a_thread_a_flow_started_says_so(tmp_path) -> None:
    import threading

    from greenflow import FlowError, FlowLogic, Party, initiating_flow
    from greenflow.testing import MockNetwork

    @initiating_flow
    class Threaded(FlowLogic):
        def __init__(self, peer: Party) -> None:
            self.peer = peer

        def call(self) -> str:
            s = self.initiate_flow(self.peer)
            seen: list = []

            def work() -> None:
                try:
                    s.send(1)
                except FlowError as exc:
                    seen.append(str(exc))
            t = threading.Thread(target=work, name="helper")
            t.start()
            t.join()
            return seen[0]

    net = MockNetwork(str(tmp_path))
    a, b = net.create_node("Alice"), net.create_node("Bob")
    h = a.start_flow(Threaded(b.party))
    net.run_network()
    text = h.result()
    assert "thread 'helper'" in text and "run_external" in text
    net.close()


def test_a_flow_that_iterates_a_set_of_strings_replays_in_a_restarted_node_process(
        tmp_path) -> None:
    """A node process runs with its party's hash seed (`greenflow.node.hash_seed`), so a
    set of strings iterates alike at every start: a flow that sent a set's items one by
    one, killed with its node, completes after the restart."""
    import time

    from greenflow.testing.node_processes import ProcessNetwork
    with ProcessNetwork(tmp_path, ["Alice", "Bob"], apps=["seedflows"],
                        pythonpath=[HERE]) as pn:
        pn.start_all()
        alice = pn.client("Alice")
        fid = alice.start_flow("seedflows.SendEach", {"peer": "Bob"})["flow_id"]
        deadline = time.monotonic() + 30
        while alice.flow(fid)["status"] not in ("SUSPENDED", "HIBERNATED"):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        pn.kill("Alice")
        pn.start("Alice")
        res = pn.client("Alice").result(fid, wait=60)
        assert res.get("status") == "COMPLETED" and res.get("result") == 8, res
