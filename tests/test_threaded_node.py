"""A node with its own scheduler thread (``Node.open``), talking to itself: what only
shows when external work and the scheduler really run concurrently."""
from __future__ import annotations

import gc
import re
import sys
import threading
import time

import pytest
from flowlib import GATE, ExternalWhileTalking, Sleeper

from greenflow import FlowError, FlowStatus, Node, NodeClosed
from greenflow.samples.ping import Ping


def wait_until(predicate, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.01)


@pytest.fixture
def node(tmp_path, flow_state):
    n = Node.open(tmp_path / "solo", "Solo", max_resident=0)   # hibernate every waiting flow
    yield n
    GATE.set()
    n.close()


def test_a_threaded_node_runs_a_flow_with_itself_to_completion(node):
    assert node.start_flow(Ping(node.party, 3)).result(timeout=20) == 6


def test_result_with_a_timeout_raises_timeout_error_while_the_flow_waits(node):
    h = node.start_flow(Sleeper(3600))
    with pytest.raises(TimeoutError):
        h.result(timeout=0.05)
    assert h.status in (FlowStatus.SUSPENDED, FlowStatus.HIBERNATED)


def test_a_result_wait_given_up_leaves_no_waiter_behind(node):
    """Each wait that timed out left its waiter registered until the flow ended: a client
    asking again and again (an RPC client polling with a wait) grew the node by ~1.5 KB
    per ask for as long as the flow waited."""
    h = node.start_flow(Sleeper(3600))
    for _ in range(50):
        with pytest.raises(TimeoutError):
            h.result(timeout=0.001)
    waiters = node.scheduler.waiters
    assert node.on_scheduler(lambda: len(waiters.get(h.id, ()))) == 0
    held: dict = {}

    def wait() -> None:
        try:
            held["r"] = h.result(timeout=30)
        except Exception as exc:   # noqa: BLE001 - what it was told is the point
            held["e"] = type(exc).__name__

    waiting = threading.Thread(target=wait)
    waiting.start()   # one that does not give up is still told of the end
    wait_until(lambda: node.on_scheduler(lambda: len(waiters.get(h.id, ()))) == 1)
    with pytest.raises(TimeoutError):
        h.result(timeout=0.001)
    assert node.kill_flow(h.id)
    waiting.join(20)
    assert held == {"e": "FlowKilled"} and not waiting.is_alive()


def test_an_external_call_runs_once_though_its_flow_is_rebuilt_while_it_runs(node, flow_state):
    h = node.start_flow(ExternalWhileTalking(node.party))
    # The flow hibernates while its call is blocked; the peer's "ping" then rebuilds it by
    # replay, up to the external request that is still running.
    wait_until(lambda: any(s["role"] == "initiator" and s["received"] >= 1
                           for e in node.checkpoints_dump() for s in e["sessions"]))
    node.flows()    # one more scheduler round: anything the rebuild started has started
    GATE.set()
    assert h.result(timeout=20) == (42, "ping")
    assert flow_state["external_calls"] == [21]


def test_a_result_waiting_when_the_node_closes_raises_instead_of_waiting_for_ever(tmp_path):
    node = Node.open(tmp_path / "solo", "Solo")
    h = node.start_flow(Sleeper(3600))
    outcome: dict = {}

    def wait() -> None:
        try:
            outcome["value"] = h.result()
        except Exception as e:  # noqa: BLE001 - the outcome under test
            outcome["error"] = e

    waiter = threading.Thread(target=wait, daemon=True)
    waiter.start()
    wait_until(lambda: node.on_scheduler(lambda: bool(node.scheduler.waiters)))
    node.close()
    waiter.join(20)
    assert not waiter.is_alive()
    assert type(outcome["error"]) is NodeClosed and "closed" in str(outcome["error"])


@pytest.mark.parametrize("what, shown", [("exit", "SystemExit: 4"), ("interrupt", "KeyboardInterrupt")])
def test_an_external_call_that_raises_system_exit_fails_its_flow(node, what, shown):
    """On a worker thread a SystemExit ended the call with no outcome: the flow waited
    for ever."""
    from flowlib import ExternalRaises
    h = node.start_flow(ExternalRaises(what))
    with pytest.raises(FlowError, match=rf"\(flowlib.ExternalRaises\) failed: {shown}"):
        h.result(timeout=20)
    assert node.start_flow(Ping(node.party, 1)).result(timeout=20) == 1


@pytest.mark.parametrize("how", ["side effect", "external"])
def test_a_result_that_cannot_be_journaled_is_raised_at_the_call_and_can_be_caught(node, how):
    """From run_external such a result failed the flow's commit ("checkpoint failed"), out
    of the flow's reach; side_effect raised it at the call but left the call out of the
    journal, so the flow, replayed after hibernating (max_resident=0 here), diverged
    there and was hospitalized."""
    from flowlib import UnrecordableResult
    h = node.start_flow(UnrecordableResult(how))
    assert h.result(timeout=20) == ("the result of a_generator (generator) cannot be "
                                    "checkpointed: cannot pickle 'generator' object")


@pytest.mark.parametrize("option, value, error, says", [
    ("max_resident", "10", TypeError, "max_resident takes a whole number or None, got str '10'"),
    ("max_resident", -1, ValueError, "max_resident takes a whole number from 0 or None"),
    ("max_resident", 1.5, TypeError, "max_resident takes a whole number or None, got float"),
    ("retention", "x", TypeError, "retention takes a number of seconds, got str 'x'"),
    ("retention", float("nan"), ValueError, "retention takes a duration from 0"),
    ("retention", float("inf"), ValueError, "retention takes a duration from 0"),
    ("retention", -1, ValueError, "retention takes a duration from 0"),
    ("max_retries", None, TypeError, "max_retries takes a whole number, got NoneType"),
    ("retry_backoff", float("inf"), ValueError, "retry_backoff takes a duration from 0"),
    ("responder_idle_timeout", "1h", TypeError,
     "responder_idle_timeout takes a number of seconds or None, got str '1h'"),
    ("max_inbound_sessions", 2.5, TypeError, "max_inbound_sessions takes a whole number or None"),
    ("sync", "no", TypeError, "sync takes True or False, got str 'no'"),
    ("apps", "greenflow.samples.ping", TypeError,
     "apps takes a list of module names, not one name: apps=['greenflow.samples.ping']"),
    ("apps", [123], TypeError, "apps takes module names (text), got int 123"),
    ("sensitive_names", "pin", TypeError,
     "register_sensitive(names=...) takes a list, not one: names=['pin']"),
    ("name", "", ValueError, "a node's name is 1 to 200 bytes of text, got str ''"),
    ("name", "O=" + "x" * 300, ValueError, "a node's name is 1 to 200 bytes of text"),
])
def test_a_node_option_of_the_wrong_kind_is_refused_naming_it_before_anything_is_made(
        tmp_path, option, value, error, says):
    """Taken unchecked from Python, ``max_resident="10"`` or ``retention="x"`` failed the
    scheduler's every round (starts timed out after two minutes; flows never ended), an
    infinite retention stopped the node at its first flow's end, a str as ``apps`` was
    read letter by letter, and a node could be named ""."""
    kw = {"name": "O=Solo,L=London,C=GB", option: value}
    with pytest.raises(error, match="^" + re.escape(says)):
        Node.open(str(tmp_path / "node"), **kw)
    assert not (tmp_path / "node").exists()
    # What is right still opens: a tuple of apps, a century's retention, no caps.
    with Node.open(str(tmp_path / "ok"), "O=Solo,L=London,C=GB", apps=("greenflow.samples.ping",),
                   retention=100 * 365.25 * 86400, max_resident=None,
                   max_inbound_sessions=None, responder_idle_timeout=None) as node:
        assert node.start_flow(Ping(node.party, 2)).result(timeout=30) == 3


def test_a_result_timeout_is_a_number_of_seconds_and_inf_waits_for_ever(node):
    """inf overflowed the wait (OverflowError: timestamp out of range), NaN did not wait
    and said "did not finish within nans", a str failed a comparison."""
    h = node.start_flow(Ping(node.party, 2))
    for timeout, error, says in ((float("nan"), ValueError, "from 0, got nan"),
                                 (-1, ValueError, "from 0, got -1"),
                                 ("5", TypeError, "or None, got str")):
        with pytest.raises(error, match=r"^result\(timeout=\.\.\.\) takes a number of seconds "
                                        + re.escape(says)):
            h.result(timeout=timeout)
    assert h.result(timeout=float("inf")) == 3
    assert node.start_flow(Ping(node.party, 1)).result(timeout=1e300) == 1


@pytest.mark.parametrize("source, says", [
    ("x = 1\n1 / 0\n", r"failed while it was imported at .*broken_app_\w+\.py:2: "
                       r"ZeroDivisionError: division by zero"),
    ("import no_such_dependency_here\n", r"cannot be imported: it imports "
                                         r"'no_such_dependency_here', which is not installed"),
    ("raise SystemExit(3)\n", r"failed while it was imported at .*: SystemExit: 3"),
])
def test_an_app_that_fails_to_import_is_named_with_where_and_why(tmp_path, monkeypatch,
                                                                  source, says):
    """Its error came out raw (ZeroDivisionError, a ModuleNotFoundError for a dependency,
    even SystemExit), naming neither the app nor, without a traceback, the place."""
    import uuid
    name = f"broken_app_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(FlowError, match=rf"^app module '{name}' " + says):
        Node.open(str(tmp_path / "node"), "O=Solo,L=London,C=GB", apps=[name])


def test_a_node_that_fails_while_it_opens_lets_go_of_its_store(tmp_path):
    """Its store stayed open and locked: opening the node again in the same process was
    refused as "in use by process <this one>: stop that process first"."""
    class Unattachable:
        @property
        def node(self) -> None:
            return None

        @node.setter
        def node(self, value: object) -> None:
            raise RuntimeError("this transport takes no node")

    with pytest.raises(RuntimeError, match="this transport takes no node"):
        Node.open(str(tmp_path / "solo"), "O=Solo,L=London,C=GB", transport=Unattachable())
    with Node.open(str(tmp_path / "solo"), "O=Solo,L=London,C=GB") as node:
        assert node.start_flow(Ping(node.party, 1)).result(timeout=20) == 1


def test_a_clean_close_lets_a_running_external_call_return_and_keeps_its_outcome(tmp_path, flow_state):
    """A close abandoned the external calls in flight: the call went on to its end on its
    thread, its outcome was dropped, and the flow made the call again when the node
    reopened (two lines here, where the flow made the call once); the calls' threads
    stayed behind after the close. Now the close waits for the call, commits its
    outcome, starts no further call (the second one is made after the reopen) and lets
    go of the threads."""
    from flowlib import TwoSlowCalls, lines
    out = tmp_path / "calls.txt"
    node = Node.open(tmp_path / "solo", "Solo")
    h = node.start_flow(TwoSlowCalls(str(out), 0.6))
    wait_until(lambda: any(t.name.startswith("gf-ext-Solo") for t in threading.enumerate()))
    node.close()
    assert lines(out) == ["first"]   # waited for: it ran once, and nothing else started
    wait_until(lambda: not any(t.name.startswith("gf-ext-Solo") for t in threading.enumerate()))
    node = Node.open(tmp_path / "solo", "Solo")
    try:
        assert node.handle(h.id).result(timeout=20) == ("first", "second")
    finally:
        node.close()
    assert lines(out) == ["first", "second"]


def test_an_external_call_that_outlasts_the_close_is_made_again_at_the_reopen(tmp_path, flow_state, caplog):
    from flowlib import TwoSlowCalls, lines
    out = tmp_path / "calls.txt"
    node = Node.open(tmp_path / "solo", "Solo")
    h = node.start_flow(TwoSlowCalls(str(out), 1.0))
    wait_until(lambda: any(t.name.startswith("gf-ext-Solo") for t in threading.enumerate()))
    t0 = time.monotonic()
    node.close(external_grace=0.1)
    assert time.monotonic() - t0 < 0.9   # did not wait for the call
    assert f"closing with 1 external call(s) still running after 0.1s (flows {h.id})" in caplog.text
    assert lines(out) == []
    wait_until(lambda: lines(out) == ["first"])   # it ends on its thread; its outcome is lost
    node = Node.open(tmp_path / "solo", "Solo")
    try:
        assert node.handle(h.id).result(timeout=20) == ("first", "second")
    finally:
        node.close()
    assert lines(out) == ["first", "first", "second"]   # at least once, as after a crash


@pytest.mark.parametrize("grace, error", [(-1, ValueError), (float("nan"), ValueError),
                                          ("5", TypeError), (True, TypeError)])
def test_a_close_refuses_a_grace_that_is_no_duration_and_stays_open(node, grace, error):
    with pytest.raises(error, match="external_grace takes a number of seconds"):
        node.close(external_grace=grace)
    assert node.start_flow(Ping(node.party, 1)).result(timeout=20) == 1


def test_a_flow_that_keeps_the_scheduler_to_itself_is_reported_with_where_it_is(
        tmp_path, flow_state, caplog, monkeypatch):
    """A flow computing (or blocking in a call) without suspending stopped every other flow
    of its node, and nothing said so. It is now logged with its flow, class and stack
    once it has run past the warning time, and again when it lets the node go on; a flow
    that runs as long but suspends often is not."""
    import logging

    from flowlib import NapsOften, Spins

    from greenflow.node import stall_watch
    monkeypatch.setattr(stall_watch, "STALL_WARNING", 0.4)
    monkeypatch.setattr(stall_watch, "INTERVAL", 0.1)
    # The threads' frames are read only for a flow already past the warning time, with
    # the collector off: on CPython 3.11 a collection inside sys._current_frames can
    # deadlock the process (it hung a test run: read every second, it was a matter of time).
    reads: list = []
    current_frames = sys._current_frames

    def counted() -> dict:
        reads.append(gc.isenabled())
        return current_frames()

    monkeypatch.setattr(sys, "_current_frames", counted)
    node = Node.open(tmp_path / "solo", "Solo")
    try:
        with caplog.at_level(logging.INFO, logger="greenflow.scheduler"):
            assert node.start_flow(NapsOften(25, 0.04)).result(timeout=20) == 25
            time.sleep(0.3)
            assert "without suspending" not in caplog.text and reads == []
            h = node.start_flow(Spins(1.5))
            assert h.result(timeout=20) == "spun"
            wait_until(lambda: "let the node go on" in caplog.text)
    finally:
        node.close()
    [warned] = [r.getMessage() for r in caplog.records if "without suspending:" in r.getMessage()]
    assert warned.startswith(f"Solo: flow {h.id} (flowlib.Spins) has run for "), warned
    assert "every other flow of this node waits until it does" in warned
    assert "in call\n    spin(self.secs)" in warned and "in spin\n" in warned, warned
    [after] = [r for r in caplog.records if "let the node go on" in r.getMessage()]
    assert after.levelname == "INFO" and h.id in after.getMessage()
    assert reads and not any(reads)


def test_an_operator_retry_starts_the_retry_count_afresh_on_a_threaded_node_too(tmp_path):
    """A threaded node retries within a round: a failure in that round went back to the
    checkpoint stored before the retry, with its count of retries, so the next failure
    parked the flow for good "after 6 retries" (MockNetwork, which commits the retry
    first, counted afresh)."""
    from flowlib import FailsWith

    node = Node.open(tmp_path / "solo", "Solo", retry_backoff=0.02, max_retries=3)
    try:
        h = node.start_flow(FailsWith("transient", "down"))

        def parked() -> bool:
            info = node.flow_info(h.id)
            return info.status == FlowStatus.HOSPITALIZED and "still failing" in info.error

        wait_until(parked)
        assert "after 3 retries" in node.flow_info(h.id).error
        assert node.retry_flow(h.id)
        time.sleep(0.1)
        wait_until(parked)
        assert "after 3 retries" in node.flow_info(h.id).error, node.flow_info(h.id).error
    finally:
        node.close()


@pytest.mark.lmdb_only   # (stops the scheduler by deleting the LMDB data file)
def test_a_call_into_a_node_whose_scheduler_stopped_is_refused_at_once(tmp_path):
    """A call posted to a scheduler that had stopped (its store failed; a clustered
    worker's generation replaced) was never run, and its caller (an RPC request, a
    listing) waited the whole minute of its timeout before hearing anything."""
    import glob
    import os

    from flowlib import Sleeper

    from greenflow.errors import StoreError
    node = Node.open(tmp_path / "solo", "Solo")
    try:
        node.start_flow(Sleeper(3600))
        [data] = glob.glob(os.path.join(str(tmp_path / "solo"), "store", "data.mdb"))
        os.remove(data)   # the next commit finds it gone: the scheduler stops committing
        with pytest.raises(StoreError):
            node.start_flow(Sleeper(3600))
        t0 = time.monotonic()
        with pytest.raises(NodeClosed, match="stopped before it answered"):
            node.flows()
        assert time.monotonic() - t0 < 5
    finally:
        node.close()
