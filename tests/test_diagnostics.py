"""What operators see: `flows()` and `checkpoints_dump()`."""
from __future__ import annotations

import json

from flowlib import Awkward, ExecSuspended, Inspected, Shouting, Sleeper, Tracked
from netutil import pair, run

from greenflow import FlowStatus

FLOWLIB = "flowlib.py"


def dump_of(node, class_name):
    entries = [e for e in node.checkpoints_dump() if e["flow_class"] == f"flowlib.{class_name}"]
    assert len(entries) == 1, node.checkpoints_dump()
    return entries[0]


def assert_shows_the_helper_at_its_suspension(entry):
    frames = entry["frames"]
    assert [f["function"] for f in frames] == ["Inspected.call", "Inspected.ask", "wait_for_answer"]
    assert all(f["file"].endswith(FLOWLIB) and isinstance(f["line"], int) and f["line"] > 0
               for f in frames)
    helper = frames[-1]["locals"]
    assert helper["counter"] == "7"
    assert helper["note"] == "'waiting for Bob'"
    assert "session" in helper and "Bob" in helper["session"]
    assert frames[1]["locals"]["note"] == "'waiting for Bob'"


def test_a_dump_shows_a_helper_functions_locals_at_the_suspension_point(net):
    alice, bob = pair(net)
    h = run(net, alice, Inspected(bob.party))
    entry = dump_of(alice, "Inspected")
    assert entry["flow_id"] == h.id
    assert_shows_the_helper_at_its_suspension(entry)
    json.dumps(entry)     # JSON-ready


def test_an_offline_dump_says_what_the_store_holds_and_not_the_running_nodes_memory(tmp_path):
    """Read in the node's own process it said the store was damaged and to start on a
    new one; read offline it called a flow the running node held in memory HIBERNATED,
    where the node's own dump said SUSPENDED."""
    import pytest
    from greenflow.errors import StoreLocked
    from greenflow.node import read_checkpoints
    from greenflow.testing import MockNetwork
    net = MockNetwork(tmp_path / "net")
    alice, bob = pair(net)
    h = run(net, alice, Inspected(bob.party))
    assert dump_of(alice, "Inspected")["status"] == "SUSPENDED"
    from greenflow.storage.lmdb_store import LmdbStore
    if isinstance(alice.node.store, LmdbStore):   # (one open LMDB environment per process)
        with pytest.raises(StoreLocked, match=r"open in this process already .*checkpoints_dump\(\)"):
            read_checkpoints(alice.node.base_dir)
    net.close()
    [entry] = [e for e in read_checkpoints(alice.node.base_dir) if e["flow_id"] == h.id]
    assert (entry["status"], entry["resident"]) == ("SUSPENDED", None)
    assert_shows_the_helper_at_its_suspension(entry)


def test_a_dump_after_a_restart_shows_the_frames_before_the_flow_is_replayed(net):
    alice, bob = pair(net)
    h = run(net, alice, Inspected(bob.party))
    alice = net.restart_node(alice)
    entry = dump_of(alice, "Inspected")
    assert entry["resident"] is False and entry["status"] == "HIBERNATED"
    assert_shows_the_helper_at_its_suspension(entry)
    assert alice.handle(h.id).status == FlowStatus.HIBERNATED


def test_a_dump_redacts_locals_whose_names_are_on_the_deny_list(net):
    alice, bob = pair(net)
    alice.start_flow(Inspected(bob.party))
    net.run_network()
    helper = dump_of(alice, "Inspected")["frames"][-1]["locals"]
    for name in ("password", "signing_key", "client_secret"):
        assert helper[name] == "<redacted>"
    text = json.dumps(alice.checkpoints_dump())
    assert "hunter2" not in text and "s3cr3t" not in text


def test_a_dump_says_what_the_flow_waits_for_and_on_which_sessions(net):
    alice, bob = pair(net)
    alice.start_flow(Inspected(bob.party))
    net.run_network()
    entry = dump_of(alice, "Inspected")
    assert entry["suspended_on"] == "receive int from Bob"
    assert entry["progress_step"] == "Asking"
    assert entry["suspension_count"] >= 1
    [session] = entry["sessions"]
    assert session["counterparty"] == "Bob" and session["role"] == "initiator"
    [responder] = bob.checkpoints_dump()
    assert responder["flow_class"] == "flowlib.AskResponder"
    assert responder["suspended_on"] == "receive object from Alice"
    assert responder["sessions"][0]["role"] == "responder"


def test_a_dump_of_a_sleeping_flow_says_until_when(net):
    alice = net.create_node("Alice")
    alice.start_flow(Sleeper(60))
    net.run_network()
    entry = dump_of(alice, "Sleeper")
    assert entry["suspended_on"].startswith("sleep 60")
    assert "until 2023-11-14T22:14:20" in entry["suspended_on"]   # virtual clock + 60 s


def test_flows_lists_each_flow_with_the_fields_operators_need(net, net_options):
    alice, bob = pair(net)
    h = run(net, alice, Inspected(bob.party))
    [info] = alice.flows()
    assert info.id == h.id
    assert info.flow_class == "flowlib.Inspected"
    assert info.progress_step == "Asking"
    assert info.suspended_on == "receive int from Bob"
    assert info.error is None
    if net_options.get("reload_after_suspend"):
        assert (info.status, info.resident) == (FlowStatus.HIBERNATED, False)
    else:
        assert (info.status, info.resident) == (FlowStatus.SUSPENDED, True)


def test_finished_flows_stay_listed_with_their_outcome(net):
    alice = net.create_node("Alice")
    h = alice.start_flow(Sleeper(1))
    net.advance_clock(1)
    net.run_network()
    net.advance_clock(1)
    net.run_network()
    [info] = alice.flows()
    assert (info.id, info.status, info.suspended_on, info.resident) == \
        (h.id, FlowStatus.COMPLETED, None, False)
    assert alice.checkpoints_dump() == []


def test_dumps_can_be_turned_off_per_node(net):
    alice = net.create_node("Alice", capture_frames=False)
    bob = net.create_node("Bob")
    alice.start_flow(Inspected(bob.party))
    net.run_network()
    entry = dump_of(alice, "Inspected")
    assert entry["frames"] == [] and entry["suspended_on"] == "receive int from Bob"


def test_a_dump_shows_a_sub_flows_frames_under_its_parents(net):
    alice, bob = pair(net)
    run(net, alice, Tracked(bob.party, 10))
    net.advance_clock(10)
    net.run_network()
    entry = dump_of(alice, "Tracked")
    assert [f["function"] for f in entry["frames"]] == ["Tracked.call", "TrackedChild.call"]
    assert entry["progress_step"] == "Delegating / Child waiting"


def test_progress_listeners_hear_every_step_listings_the_step_of_each_commit(net):
    alice, bob = pair(net)
    carol = net.create_node("Carol")
    heard = []
    alice.add_progress_listener(lambda fid, step: heard.append(step))
    for node in (alice, carol):
        node.start_flow(Tracked(bob.party, 10))
    net.run_network()
    for node in (alice, carol):
        assert dump_of(node, "Tracked")["progress_step"] == "Asking"
    net.advance_clock(10)
    net.run_network()
    # Without a listener, "Delegating" alone (never committed) is not worked out at all;
    # with one, it is heard once, also when the flow was reloaded and replayed.
    for node in (alice, carol):
        assert dump_of(node, "Tracked")["progress_step"] == "Delegating / Child waiting"
    net.advance_clock(10)
    net.run_network()
    assert heard == ["Asking", "Delegating", "Delegating / Child waiting", "Delegating", None]


def test_a_step_that_clears_while_the_flow_runs_is_not_taken_for_its_end(net):
    """A flow with no tracker of its own whose tracked sub-flow ended had its step
    cleared, and listeners heard None, which says the flow ended: RPC progress streams
    sent `end` (waiting up to 30 s for the real one) and a stream of one flow closed
    before the flow's next steps."""
    from flowlib import UntrackedParent
    alice, bob = pair(net)
    heard = []
    alice.add_progress_listener(lambda fid, step: heard.append(step))
    handle = alice.start_flow(UntrackedParent(bob.party, 10))
    for _ in range(3):
        net.run_network()
        net.advance_clock(10)
    net.run_network()
    assert handle.result() == 1
    assert heard == ["Child waiting", None]


def test_a_progress_hub_wants_every_step_only_while_a_stream_is_open(net):
    from greenflow.rpc.progress_hub import ProgressHub
    alice, bob = pair(net)
    hub = ProgressHub(buffer=100)
    alice.add_progress_listener(hub)
    assert not alice.scheduler.progress_wanted()   # no stream: steps are worked out lazily
    sub = hub.subscribe(None)
    assert alice.scheduler.progress_wanted()
    alice.start_flow(Tracked(bob.party, 10))
    net.run_network()
    net.advance_clock(10)
    net.run_network()
    heard = []
    while not sub.queue.empty():
        heard.append(sub.queue.get_nowait()[1])
    assert heard == ["Asking", "Delegating", "Delegating / Child waiting"]
    hub.unsubscribe(sub)
    assert not alice.scheduler.progress_wanted()
    # A stream of ends only does not make the node work out every step, and hears ends.
    ends = hub.subscribe(None, steps=False)
    assert not alice.scheduler.progress_wanted()
    handle = alice.start_flow(Tracked(bob.party, 10))
    for _ in range(3):
        net.run_network()
        net.advance_clock(10)
    net.run_network()
    assert handle.result() == "Delegating"
    heard = []
    while not ends.queue.empty():
        heard.append(ends.queue.get_nowait())
    assert (handle.id, None) in heard and all(step is None for _, step in heard)
    with_steps = hub.subscribe(None)
    assert alice.scheduler.progress_wanted()
    hub.unsubscribe(with_steps)
    assert not alice.scheduler.progress_wanted()


def test_a_tracker_subclass_words_its_own_progress_step(net):
    alice = net.create_node("Alice")
    handle = alice.start_flow(Shouting())
    net.run_network()
    assert alice.flow_info(handle.id).progress_step == "ASKING"
    net.advance_clock(10)
    net.run_network()
    assert handle.result() == "done"


def test_a_dump_bounds_large_locals_survives_bad_reprs_and_redacts_private_keys(net):
    alice = net.create_node("Alice")
    h = run(net, alice, Awkward())
    shown = dump_of(alice, "Awkward")["frames"][-1]["locals"]
    assert len(shown["big"]) <= 200
    assert "BadRepr" in shown["odd"]        # its __repr__ raised: the dump still works
    assert shown["thing"] == "<redacted>"
    net.advance_clock(1)
    net.run_network()
    assert h.result() == "100000 BadRepr 32"


def test_frame_capture_leaves_an_exec_namespace_it_suspends_in_alone(net):
    alice, bob = pair(net)
    h = run(net, alice, ExecSuspended(bob.party))
    assert h.result() == (42, "still here", ["answer", "kept", "session"])


def test_frames_of_code_in_a_directory_named_like_greenlet_are_the_flows_own(tmp_path):
    # Only the greenlet package's own files are plumbing; a project directory that merely
    # has "greenlet" in its name holds the flow's code, whose frames a dump must show.
    import sys

    from greenflow.runtime import snapshots as frames

    path = str(tmp_path / "my-greenlet-app" / "flows.py")
    namespace: dict = {"sys": sys}
    exec(compile("def where(note):\n    return sys._getframe()\n", path, "exec"), namespace)
    where = namespace["where"]
    snap = frames.capture(where("waiting for Bob"), stop_code=where.__code__)
    assert [(f["function"], f["file"]) for f in snap] == [("where", path)]
    assert frames.public(snap)[0]["locals"]["note"] == "'waiting for Bob'"


def test_steps_and_trackers_are_checked_and_a_deep_progress_path_is_cut():
    """A step's label was anything (a million characters, stored with every checkpoint
    and shown in every listing; None, which broke str()), a tracker took any arguments,
    and a progress_tracker that was no tracker (a list) was silently none."""
    import pytest
    from greenflow import FlowLogic, ProgressTracker, Step
    for label, error in (("x" * 1_001, ValueError), ("", ValueError), (None, TypeError)):
        with pytest.raises(error, match=r"^a step's label is text of 1 to 1,000 characters"):
            Step(label)
    assert Step("x" * 1_000).label == "x" * 1_000
    with pytest.raises(TypeError, match=r"^ProgressTracker takes Steps"):
        ProgressTracker("Offering")
    with pytest.raises(TypeError, match=r"Listed.progress_tracker is a ProgressTracker\(...\) "
                                        r"or None, not list"):
        class Listed(FlowLogic):
            progress_tracker = ["Offering"]


def test_a_progress_path_of_sub_flows_nested_deep_is_cut_to_its_innermost_steps(net):
    from flowlib import DeepTracked
    alice, _ = pair(net)
    h = run(net, alice, DeepTracked(20))
    step = alice.flow_info(h.id).progress_step
    assert len(step) == 4_000 and step.startswith("... ") and step.endswith("y" * 900)
    net.advance_clock(2)
    net.run_network()
    assert h.result() == "bottom"
