"""Every error of the errors reference (docs/reference/errors.md), raised where it says, with its message checked."""
from __future__ import annotations

import re
import typing

import pytest
from flowlib import (STATE, Ask, StartsFromInside, ChainStart, CustomPing, Doomed, Fickle, Holding, Leaky, Patient,
                     ReceiveFirst, Refusal, RefuseEveryone, SendUnsafe, Stubborn, SwallowingFickle)
from netutil import error_of, only_flow, pair, result_of, run

from greenflow import (FlowError, FlowException, FlowKilled, FlowStatus, FlowTimeout,
                       NonDeterminismError, NotSerializable, NotStartable, ReceiveTypeError,
                       UnexpectedFlowEnd, UnknownFlow)
from greenflow.cli.flow_args import check_startable
from greenflow.flows.registry import is_startable
from greenflow.samples.ping import Ping
from greenflow.testing import MockNetwork


# ====================================================================== FlowException
def test_a_flow_exception_reaches_the_peer_with_its_class_message_and_error_id(net):
    alice, bob = pair(net)
    h = run(net, alice, Ask(bob.party, "refuse"))
    at_alice = error_of(h)
    at_bob = error_of(bob.handle(only_flow(bob, "AskResponder").id))
    assert type(at_alice) is Refusal and type(at_bob) is Refusal
    assert str(at_alice) == str(at_bob) == "refused the offer 3 times"
    assert at_alice.error_id is not None and at_alice.error_id == at_bob.error_id
    assert only_flow(bob, "AskResponder").status == FlowStatus.FAILED
    assert only_flow(alice, "Ask").status == FlowStatus.FAILED


def test_the_receiver_of_a_flow_exception_never_runs_its_constructor(net):
    alice, bob = pair(net)
    h = run(net, alice, Ask(bob.party, "refuse"))
    assert isinstance(error_of(h), Refusal)
    error_of(bob.handle(only_flow(bob, "AskResponder").id))
    assert STATE["refusal_inits"] == 1     # only where it was raised


def test_a_flow_exception_of_a_class_the_receiver_cannot_import_arrives_as_flow_exception(net):
    alice, bob = pair(net)
    h = run(net, alice, Ask(bob.party, "refuse-unimportable"))
    err = error_of(h)
    assert type(err) is FlowException
    assert str(err) == "refused by a class nobody can import"


def test_a_flow_exception_that_is_also_an_exception_group_arrives_as_flow_exception(net):
    """Its class cannot be made without arguments (ExceptionGroup.__new__): the peer's
    receive and both handles raised TypeError from inside greenflow instead."""
    alice, bob = pair(net)
    h = run(net, alice, Ask(bob.party, "refuse-as-group"))
    for err in (error_of(h), error_of(bob.handle(only_flow(bob, "AskResponder").id))):
        assert type(err) is FlowException and str(err) == "refused, with reasons"


def test_a_flow_exception_goes_to_every_peer_with_an_open_session(net):
    alice, bob, carol = (net.create_node(n) for n in ("Alice", "Bob", "Carol"))
    h = run(net, alice, RefuseEveryone([bob.party, carol.party]))
    assert isinstance(error_of(h), Refusal)
    for peer in (bob, carol):
        assert result_of(peer, "RefuseEveryoneResponder") == "Refusal: refused everyone 2 times"


def test_a_propagated_flow_exception_passes_only_up_the_invocation_chain(net):
    a, b, c, d = (net.create_node(n) for n in ("A", "B", "C", "D"))
    h = a.start_flow(ChainStart(b.party, c.party, d.party))
    net.run_network()
    # C raised; B did not catch it: A, who started B, gets the same class and message.
    err = error_of(h)
    assert type(err) is Refusal and str(err) == "refused the offer 3 times"
    assert only_flow(b, "ChainMiddle").status == FlowStatus.FAILED
    assert only_flow(c, "ForkResponder").status == FlowStatus.FAILED
    # D, an unrelated peer of B, only sees B's flow end.
    seen_by_d = result_of(d, "ForkResponder")
    assert seen_by_d.startswith("UnexpectedFlowEnd: B failed while ")
    assert "refused" not in seen_by_d and "Refusal" not in seen_by_d


# ====================================================================== UnexpectedFlowEnd
@pytest.mark.parametrize("command, what", [
    ("end", "ended"),
    ("close", "closed the session"),
    ("crash", "failed"),
])
def test_unexpected_flow_end_names_the_peer_and_the_expected_type(net, command, what):
    alice, bob = pair(net)
    h = run(net, alice, Ask(bob.party, command, int))
    err = error_of(h)
    assert type(err) is UnexpectedFlowEnd
    text = str(err)
    assert "Bob" in text and what in text and "int" in text


def test_unexpected_flow_end_never_carries_the_peers_internal_error_text(net):
    alice, bob = pair(net)
    h = run(net, alice, Ask(bob.party, "crash", int))
    err = error_of(h)
    assert type(err) is UnexpectedFlowEnd
    assert "password" not in str(err) and "ValueError" not in str(err)
    assert "password" not in (only_flow(alice, "Ask").error or "")
    bob_flow = only_flow(bob, "AskResponder")
    assert bob_flow.status == FlowStatus.FAILED and "ValueError" in bob_flow.error


# ====================================================================== ReceiveTypeError
def test_receive_type_error_fails_the_receiver_and_the_sender_sees_the_end(net):
    alice, bob = pair(net)
    h = run(net, alice, Ask(bob.party, "wrong-type", int))
    err = error_of(h)
    assert type(err) is ReceiveTypeError
    assert "int" in str(err) and "str" in str(err) and "Bob" in str(err)
    seen_by_bob = result_of(bob, "AskResponder")
    assert seen_by_bob.startswith("UnexpectedFlowEnd: ") and "Alice" in seen_by_bob


def test_receive_type_error_in_a_responder_ends_the_initiators_wait(net):
    alice, bob = pair(net)
    h = alice.start_flow(Ask(bob.party, 3.5, int))     # AskResponder receives str first
    net.run_network()
    bob_flow = only_flow(bob, "AskResponder")
    assert bob_flow.status == FlowStatus.FAILED
    err = error_of(bob.handle(bob_flow.id))
    assert type(err) is ReceiveTypeError
    assert "str" in str(err) and "float" in str(err) and "Alice" in str(err)
    assert type(error_of(h)) is UnexpectedFlowEnd


# ====================================================================== FlowTimeout
def test_a_receive_timeout_raises_flow_timeout_and_the_session_stays_usable(net):
    alice, bob = pair(net)
    h = run(net, alice, Patient(bob.party, 10))
    net.advance_clock(9)
    net.run_network()
    assert only_flow(alice, "Patient").status in (FlowStatus.SUSPENDED, FlowStatus.HIBERNATED)
    net.advance_clock(1)
    net.run_network()
    net.advance_clock(20)      # the responder's sleep(30) ends; its message still arrives
    net.run_network()
    message, value = h.result()
    assert value == 1
    assert "10" in message and "int" in message and "Bob" in message


def test_a_receive_that_is_answered_in_time_does_not_time_out(net):
    alice, bob = pair(net)
    h = run(net, alice, Patient(bob.party, 31))
    net.advance_clock(30)
    net.run_network()
    assert h.result() == ("in time", 1)
    net.advance_clock(100)          # the stale timer must not disturb anything
    net.run_network()
    assert h.result() == ("in time", 1)


_NO_DURATION = r"takes a duration from 0 to 3155760000 seconds \(a century\), got "


@pytest.mark.parametrize("seconds, error, says", [
    *((s, ValueError, _NO_DURATION) for s in (float("nan"), float("inf"), -1, 1e300, 2 ** 1100)),
    # "5" slept 5 s and True 1 s; 2 ** 1100 raised OverflowError
    *((s, TypeError, rf"takes a number of seconds, got {type(s).__qualname__}")
      for s in ("5", True, b"1"))])
def test_a_sleep_or_timeout_that_is_no_duration_fails_the_flow_and_the_node_goes_on(
        net, seconds, error, says):
    """A NaN deadline once stopped the node's scheduler (every start after it timed out),
    an infinite one its commit. Refused at the call, in the flow that made it."""
    from flowlib import Sleeper
    alice, bob = pair(net)
    for flow, what in ((Sleeper(seconds), "sleep()"), (Patient(bob.party, seconds),
                                                       "receive(timeout=...)")):
        h = run(net, alice, flow)
        with pytest.raises(error, match=rf"^{re.escape(what)} {says}"):
            h.result()
    assert run(net, alice, Sleeper(0)).result()          # the node goes on
    assert run(net, alice, Ask(bob.party, "echo", int)).result() == 42


@pytest.mark.parametrize("expected", ["str", None, list[int], typing.List[int], typing.Any])
def test_receive_of_something_isinstance_cannot_check_fails_before_the_message_is_taken(net, expected):
    """It raised isinstance()'s TypeError after the message had been taken."""
    alice, bob = pair(net)
    h = run(net, alice, Ask(bob.party, "echo", expected))
    with pytest.raises(TypeError, match=r"^receive\(\) checks the payload with isinstance\(\): "
                                        r"pass a type, a tuple of types or a union of types, not "):
        h.result()
    assert run(net, alice, Ask(bob.party, "echo", int | str)).result() == 42


def test_flow_timeout_is_a_flow_error():
    assert issubclass(FlowTimeout, FlowError)


# ====================================================================== NonDeterminismError
def _hospitalized(node, class_name):
    info = only_flow(node, class_name)
    assert info.status == FlowStatus.HOSPITALIZED, info
    assert info.error is not None and "NonDeterminismError" in info.error
    return info.error


@pytest.mark.parametrize("flow_class", [Fickle, SwallowingFickle])
def test_a_flow_that_branches_differently_on_replay_is_hospitalized(net, tmp_path, flow_class):
    alice = net.create_node("Alice")
    log = str(tmp_path / "fickle.log")
    h = run(net, alice, flow_class(log))
    STATE["mode"] = "b"                  # outside data the flow read without recording it
    alice = net.restart_node(alice)
    net.advance_clock(10)
    net.run_network()
    reason = _hospitalized(alice, flow_class.__name__)
    assert "sleep 10" in reason and "side_effect append_line" in reason
    with pytest.raises(FlowError):
        alice.handle(h.id).result()
    # Still parked after another restart: nothing runs it silently.
    alice = net.restart_node(alice)
    net.run_network()
    _hospitalized(alice, flow_class.__name__)


def test_a_flow_that_returns_before_its_pending_request_on_replay_is_hospitalized(net, tmp_path):
    alice = net.create_node("Alice")
    run(net, alice, Fickle(str(tmp_path / "fickle.log")))
    STATE["mode"] = "c"
    alice = net.restart_node(alice)
    net.advance_clock(10)
    net.run_network()
    assert "sleep 10" in _hospitalized(alice, "Fickle")


def test_a_reloaded_flow_that_diverges_is_hospitalized_without_any_restart(tmp_path, flow_state):
    with MockNetwork(tmp_path, reload_after_suspend=True) as net:
        alice = net.create_node("Alice")
        run(net, alice, Fickle(str(tmp_path / "fickle.log")))
        flow_state["mode"] = "b"
        net.advance_clock(10)           # wakes it: rebuilt by replay, which now differs
        net.run_network()
        assert "side_effect append_line" in _hospitalized(alice, "Fickle")


def test_a_hospitalized_flow_raised_nothing_into_flow_code(net, tmp_path):
    alice = net.create_node("Alice")
    alice.start_flow(SwallowingFickle(str(tmp_path / "fickle.log")))
    net.run_network()
    STATE["mode"] = "b"
    alice = net.restart_node(alice)
    net.advance_clock(10)
    net.run_network()
    assert _hospitalized(alice, "SwallowingFickle")
    assert not (tmp_path / "fickle.log").exists()    # the diverging side effect never ran


def test_a_sent_payload_that_differs_on_replay_is_caught_as_non_determinism(net):
    alice, bob = pair(net)
    alice.start_flow(Leaky(bob.party))
    net.run_network()
    STATE["mode"] = "b"
    alice = net.restart_node(alice)
    net.advance_clock(10)                # wake it, so it replays
    net.run_network()
    reason = _hospitalized(alice, "Leaky")
    assert "send to Bob" in reason


def test_non_determinism_error_is_a_flow_error():
    assert issubclass(NonDeterminismError, FlowError)


# ====================================================================== FlowKilled
def test_a_killed_flow_raises_flow_killed_and_its_peer_sees_the_end(net):
    alice, bob = pair(net)
    h = run(net, alice, Doomed(bob.party))
    assert alice.kill_flow(h.id) is True
    net.run_network()
    err = error_of(h)
    assert type(err) is FlowKilled and h.id in str(err)
    assert only_flow(alice, "Doomed").status == FlowStatus.KILLED
    seen_by_bob = result_of(bob, "AskResponder")
    assert seen_by_bob.startswith("UnexpectedFlowEnd: ")
    assert "Alice" in seen_by_bob and "killed" in seen_by_bob
    assert "bye" not in seen_by_bob


def test_finally_blocks_of_a_killed_flow_can_do_no_io(net):
    alice, bob = pair(net)
    h = run(net, alice, Doomed(bob.party))
    alice.kill_flow(h.id)
    net.run_network()
    assert STATE["unwinding"], "the finally block did not run"
    assert all(entry.startswith("refused: ") for entry in STATE["unwinding"]), STATE["unwinding"]
    assert "bye" not in result_of(bob, "AskResponder")


def test_a_flow_cannot_catch_its_own_killing(net):
    alice, bob = pair(net)
    h = run(net, alice, Stubborn(bob.party))
    alice.kill_flow(h.id)
    net.run_network()
    assert type(error_of(h)) is FlowKilled
    seen_by_bob = result_of(bob, "AskResponder")
    assert seen_by_bob.startswith("UnexpectedFlowEnd: ") and "carrying on" not in seen_by_bob


def test_a_killed_flow_stays_killed_after_a_restart(net):
    alice, bob = pair(net)
    h = run(net, alice, Doomed(bob.party))
    alice.kill_flow(h.id)
    alice = net.restart_node(alice)
    net.run_network()
    assert type(error_of(alice.handle(h.id))) is FlowKilled
    assert alice.checkpoints_dump() == []
    assert result_of(bob, "AskResponder").startswith("UnexpectedFlowEnd: ")


def test_a_flow_killed_before_it_ran_never_reaches_its_peer(net):
    alice, bob = pair(net)
    h = alice.start_flow(Ask(bob.party, "echo"))
    assert alice.kill_flow(h.id) is True
    net.run_network()
    assert type(error_of(h)) is FlowKilled
    assert bob.flows() == [] and net.delivered == 0
    assert alice.kill_flow(h.id) is False          # finished: nothing to kill
    with pytest.raises(UnknownFlow, match="no-such-flow"):   # not there at all: said so
        alice.kill_flow("no-such-flow")


def test_start_flow_inside_a_flow_is_refused_by_name(net):
    alice = net.create_node("Alice")
    STATE["node"] = alice.node
    h = alice.start_flow(StartsFromInside())
    net.run_network()
    msg = h.result()
    assert "start_flow was called inside flow" in msg and h.id in msg and "sub_flow" in msg
    assert [f.flow_class.rpartition(".")[2] for f in alice.flows()] == ["StartsFromInside"]


def test_killing_a_responder_ends_the_initiators_wait(net):
    alice, bob = pair(net)
    h = run(net, alice, Holding(bob.party))
    assert bob.kill_flow(only_flow(bob, "AskResponder").id) is True
    net.run_network()
    err = error_of(h)
    assert type(err) is UnexpectedFlowEnd
    assert "Bob was killed" in str(err) and "object" in str(err)
    assert alice.checkpoints_dump() == [] and bob.checkpoints_dump() == []


# ====================================================================== UnknownFlow
@pytest.mark.parametrize("flow_class", [Ask, ReceiveFirst])
def test_a_peer_without_a_responder_makes_the_initiator_raise_unknown_flow(net, flow_class):
    alice = net.create_node("Alice")
    bob = net.create_node("Bob", apps=["samples.ping"])
    flow = Ask(bob.party, "echo") if flow_class is Ask else ReceiveFirst(bob.party)
    h = run(net, alice, flow)
    err = error_of(h)
    assert type(err) is UnknownFlow
    assert "Bob" in str(err) and f"flowlib.{flow_class.__qualname__}" in str(err)
    assert bob.flows() == []


@pytest.mark.parametrize("broken", ["no session", "raises"])
def test_a_responder_that_cannot_be_made_rejects_the_session(net, broken, caplog):
    """The initiation was dropped unacknowledged: the initiator waited for ever, and every
    re-send logged the error again. The peer gets UnknownFlow, not the error's text."""
    from flowlib import AskBroken
    STATE["broken"] = broken
    alice, bob = pair(net)
    h = run(net, alice, AskBroken(bob.party))
    with pytest.raises(UnknownFlow, match=r"Bob has no flow registered to answer "
                                          r"flowlib.AskBroken: its responder "
                                          r"flowlib.BrokenResponder cannot be started on Bob"):
        h.result()
    assert "the secret reason" not in str(error_of(h))
    assert "cannot start responder flowlib.BrokenResponder" in caplog.text
    assert alice.flows()[0].status == FlowStatus.FAILED and bob.flows() == []
    assert run(net, alice, Ping(bob.party, 2)).result() == 3


def test_flow_decorators_refuse_what_is_no_flow_class_and_versions_out_of_range():
    from greenflow import initiated_by, initiating_flow, startable
    from flowlib import Ask as AnInitiator
    for decorate, name in ((initiating_flow, "@initiating_flow"), (startable, "@startable"),
                           (initiated_by(AnInitiator), "@initiated_by(flowlib.Ask)")):
        with pytest.raises(TypeError, match=rf"^{re.escape(name)} applies to FlowLogic "
                                            r"subclasses, not int"):
            decorate(int)
    for version in (0, 2**31, "2", True):
        with pytest.raises(ValueError, match=r"version must be an int from 1 to 2147483647"):
            initiating_flow(version=version)(Ping)


def test_a_node_with_apps_still_answers_flows_of_its_apps(net):
    alice = net.create_node("Alice")
    bob = net.create_node("Bob", apps=["samples.ping"])
    h = run(net, alice, Ping(bob.party, 2))
    assert h.result() == 3


def test_handle_of_a_flow_id_the_node_never_had_raises_unknown_flow(net):
    alice = net.create_node("Alice")
    with pytest.raises(UnknownFlow, match="no-such-flow"):
        alice.handle("no-such-flow")


def test_calls_that_take_a_flow_id_refuse_what_is_no_str_and_quote_a_long_one_cut(net):
    """None or an int failed deep in the store's key encoding (AttributeError: 'encode');
    a 10,000-character id was quoted whole in the error."""
    alice = net.create_node("Alice")
    node = alice.node
    for call in (node.handle, node.kill_flow, node.retry_flow, node.flow_info):
        for bad in (None, 123, b"abc"):
            with pytest.raises(TypeError, match=r"^a flow id is a str, got "):
                call(bad)
    with pytest.raises(TypeError, match=r"^a client id is a str, got int"):
        node.start_flow(Ping(alice.party, 1), client_id=123)
    with pytest.raises(UnknownFlow) as info:
        node.handle("x" * 10_000)
    assert len(str(info.value)) < 200 and "(+9920 chars)" in str(info.value)


def test_a_flow_that_ends_between_the_reads_of_a_lookup_is_not_unknown(net):
    """An RPC thread looks a flow up while the scheduler may end it: the result is read
    (not there yet), then the flow's commit stores its result and drops its checkpoint,
    then the checkpoint is read (gone). That flow is finished, not unknown."""
    alice = net.create_node("Alice")
    bob = net.create_node("Bob", apps=["samples.ping"])
    fid = run(net, alice, Ping(bob.party, 2)).id
    store = alice.store
    real = store.result
    calls = []

    def result_before_the_commit(flow_id):   # the first read of each lookup: too early
        calls.append(flow_id)
        return None if len(calls) % 2 else real(flow_id)

    store.result = result_before_the_commit
    try:
        assert alice.handle(fid).id == fid
        calls.clear()
        alice.scheduler.recent_results.clear()
        assert alice.handle(fid).status == FlowStatus.COMPLETED
    finally:
        store.result = real


# ====================================================================== NotSerializable
def test_sending_a_payload_that_cannot_cross_the_wire_raises_not_serializable_at_send(net):
    alice, bob = pair(net)
    h = run(net, alice, SendUnsafe(bob.party, catch=True))
    text = h.result()
    assert text.startswith("NotSerializable: ") and "NotWireSafe" in text
    assert bob.flows() == [] and net.delivered == 0


def test_an_uncaught_not_serializable_fails_the_flow_naming_the_type(net):
    alice, bob = pair(net)
    h = run(net, alice, SendUnsafe(bob.party, catch=False))
    err = error_of(h)
    assert type(err) is NotSerializable and "NotWireSafe" in str(err)
    assert only_flow(alice, "SendUnsafe").status == FlowStatus.FAILED


# ====================================================================== NotStartable
def test_starting_a_flow_that_is_not_startable_from_outside_raises_not_startable():
    check_startable(Ping)          # the CLI's and RPC's gate
    with pytest.raises(NotStartable, match=r"flowlib\.Ask is not @startable"):
        check_startable(Ask)
    assert is_startable(Ping) and not is_startable(Ask)
    assert not is_startable(CustomPing)  # @startable is not inherited


def test_start_flow_in_code_starts_flows_that_are_not_startable(net):
    alice, bob = pair(net)
    h = run(net, alice, Ask(bob.party, "echo"))
    assert h.result() == 42


# ====================================================================== what flows raise
def test_an_exception_whose_str_raises_fails_its_flow_and_reaches_the_peer(net):
    """User code may define ``__str__`` wrong: the flow still fails (it was hospitalized,
    its waiting peer never heard), its text says what happened instead."""
    from flowlib import Raises, Unprintable
    alice, bob = pair(net)
    h = run(net, alice, Raises("unprintable"))
    assert type(error_of(h)) is Unprintable
    info = alice.flow_info(h.id)
    assert info.status == FlowStatus.FAILED
    assert info.error == "Unprintable: <Unprintable.__str__ raised ValueError>"
    h = run(net, alice, Ask(bob.party, "refuse-unprintable"))
    assert type(error_of(h)) is Unprintable   # the peer heard it: no endless wait
    assert only_flow(bob, "AskResponder").status == FlowStatus.FAILED


def test_a_flow_exceptions_message_too_long_for_a_frame_reaches_the_peer_cut(net):
    """A 20 MB message made an ERROR frame no peer reads (16 MiB): it was re-sent for
    ever and the initiator waited for ever. The text is cut where the frame is made."""
    from greenflow.messages import MAX_ERROR_TEXT, MAX_TEXT
    alice, bob = pair(net)
    h = run(net, alice, Ask(bob.party, "refuse-huge"))
    at_alice = error_of(h)
    assert type(at_alice) is Refusal
    text = str(at_alice)   # cut once, where the frame was made
    assert text.startswith("refused zzz") and len(text) == MAX_TEXT
    whole = len("refused ") + 20_000_000 + len(" 1 times")
    note = "... (19998046 more characters)"
    assert text.endswith(note) and whole - (MAX_TEXT - len(note)) == 19998046
    responder = only_flow(bob, "AskResponder")
    assert responder.status == FlowStatus.FAILED and len(responder.error) < MAX_ERROR_TEXT + 100


def test_a_huge_error_message_is_kept_cut_in_the_result(net):
    from flowlib import Raises
    from greenflow.messages import MAX_ERROR_TEXT
    alice, _ = pair(net)
    h = run(net, alice, Raises("huge"))
    error_of(h)
    info = alice.flow_info(h.id)
    assert info.status == FlowStatus.FAILED
    assert info.error.startswith("ValueError: xxx") and len(info.error) < MAX_ERROR_TEXT + 100


@pytest.mark.parametrize("what", ["exit", "generator-exit"])
def test_a_flow_that_raises_system_exit_or_the_like_fails_and_its_caller_gets_a_flow_error(net, what):
    """Raised again in the caller, a flow's SystemExit or KeyboardInterrupt would stop the
    caller's program (or an RPC request's thread, which then answered nothing). (A
    KeyboardInterrupt in a flow run inline on the main thread is the process's Ctrl-C:
    `test_ctrl_c_while_a_flow_runs_inline_stops_the_run_and_is_not_the_flows_failure`.)"""
    from flowlib import Raises
    alice, _ = pair(net)
    h = run(net, alice, Raises(what))
    with pytest.raises(FlowError, match=r"\(flowlib.Raises\) failed: (SystemExit: 3|KeyboardInterrupt|GeneratorExit)"):
        h.result()
    assert alice.flow_info(h.id).status == FlowStatus.FAILED


def test_a_flow_that_raises_keyboard_interrupt_on_a_nodes_own_thread_fails(tmp_path):
    from flowlib import Raises
    from greenflow import Node
    node = Node.open(str(tmp_path / "solo"), name="Solo")
    try:
        h = node.start_flow(Raises("interrupt"))
        with pytest.raises(FlowError, match=r"\(flowlib.Raises\) failed: KeyboardInterrupt"):
            h.result(timeout=30)
        assert node.flow_info(h.id).status == FlowStatus.FAILED
    finally:
        node.close()


@pytest.mark.parametrize("name", ["", "O=" + "x" * 1000, "O=" + "é" * 150])
def test_a_session_to_a_name_no_network_could_hold_fails_its_flow_not_the_node(net, name):
    """A party name over the store's key size (say, a participant named in a peer's
    transaction) stopped the node at its commit (the outbox key); refused at
    initiate_flow, in that flow."""
    from greenflow import Party
    alice, bob = pair(net)
    h = run(net, alice, Ping(Party(name, b"\1" * 32), 1))
    with pytest.raises(ValueError, match=r"^initiate_flow\(\): no network has a party named "):
        h.result()
    assert run(net, alice, Ping(bob.party, 2)).result() == 3


def test_a_flow_written_as_a_generator_or_async_def_fails_saying_so(net):
    """Its call() returned a generator or coroutine without running: the flow failed with
    "cannot pickle 'generator' object" (and a coroutine warned it was never awaited)."""
    import gc
    import warnings
    from flowlib import AsyncCall, GeneratorCall, NotPlain
    alice, bob = pair(net)
    plain = r"so none of it ran: flow code is plain blocking Python"
    gc.collect()   # (earlier tests' garbage warns of its own things)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        for flow, how in ((GeneratorCall(), r"a generator \(it has a yield\)"),
                          (AsyncCall(), "an async def"),
                          (NotPlain("sub-flow"), r"a generator \(it has a yield\)")):
            h = run(net, alice, flow)
            name = "GeneratorCall" if isinstance(flow, NotPlain) else type(flow).__name__
            with pytest.raises(FlowError, match=rf"flowlib\.{name}\.call is {how}, {plain}"):
                h.result()
            assert alice.flow_info(h.id).status == FlowStatus.FAILED
        h = run(net, alice, NotPlain("responder", bob.party))
        with pytest.raises(UnexpectedFlowEnd):
            h.result()
        assert "NotPlainResponder.call is an async def" in only_flow(bob, "NotPlainResponder").error
        gc.collect()
    assert not [w for w in seen if "never awaited" in str(w.message)]


def test_a_generator_a_flow_made_and_returned_is_a_value_not_a_generator_call(net):
    """It was reported as "call is a generator (it has a yield), so none of it ran" of a
    call() that has no yield and ran: a sub-flow hands it back; a flow's result cannot
    hold one, and says so."""
    from flowlib import MakesGenerator, UsesMadeGenerator
    alice, _ = pair(net)
    assert run(net, alice, UsesMadeGenerator()).result() == [0, 2, 4]
    h = run(net, alice, MakesGenerator())
    with pytest.raises(FlowError, match=r"the result of flowlib\.MakesGenerator cannot be "
                                        r"stored: .*cannot pickle 'generator' object"):
        h.result()


def test_mock_network_misuse_is_refused_naming_it_and_the_network_goes_on(tmp_path):
    """``advance_clock(nan)`` or ``(inf)`` was taken, and every flow after it failed with
    "cannot convert float NaN to integer" (or never woke); ``run_network()`` called from
    inside a flow ran a round inside that flow's round; a node of another network given
    to ``restart_node`` was a KeyError."""
    from flowlib import RunsNetwork
    net, other = MockNetwork(str(tmp_path / "net")), MockNetwork(str(tmp_path / "other"))
    alice, bob = pair(net)
    for seconds in (float("nan"), float("inf"), float("-inf")):
        with pytest.raises(ValueError, match=r"^advance\(\) takes a finite number of seconds"):
            net.advance_clock(seconds)
    with pytest.raises(TypeError, match=r"^advance\(\) takes a number of seconds, got str"):
        net.advance_clock("5")
    with pytest.raises(FlowError, match=r"restart_node\(MockNode\('Carol'\)\): that node is "
                                        r"not on this network"):
        net.restart_node(other.create_node("Carol"))
    STATE["net"] = net
    h = run(net, alice, RunsNetwork())
    with pytest.raises(FlowError, match=r"run_network was called inside flow \w+ "
                                        r"\(flowlib.RunsNetwork\); call it from the test"):
        h.result()
    net.advance_clock(5)
    assert run(net, alice, Ping(bob.party, 3)).result() == 6
    net.close()
    other.close()


@pytest.mark.parametrize("how, error, says", [
    ("unopened", ValueError, "the table 'never_opened' was never opened on this node's store"),
    ("str key", TypeError, "a key of the table 'rows' is bytes, not str"),
    ("empty key", ValueError, "a key of the table 'rows' is at least one byte long"),
])
def test_an_app_row_no_store_takes_fails_its_flow_and_the_node_commits_on(net, how, error, says):
    """The store refused such a row at the round's commit: the node stopped committing
    (a table never opened, an empty key) or failed every later round (a str key)."""
    from flowlib import AppRows
    alice, bob = pair(net)
    alice.node.store.open_table("rows")
    h = run(net, alice, AppRows(how))
    with pytest.raises(error, match=re.escape(says)):
        h.result()
    assert not alice.node.scheduler.dead
    assert run(net, alice, Ping(bob.party, 2)).result() == 3


def test_rows_written_after_a_suspension_inside_writes_are_kept(net):
    """The block's batch was the one of the round it began in: rows written after the
    flow slept inside it went into a batch already committed, and were lost."""
    from flowlib import AppRows
    alice = net.create_node("Alice")
    alice.node.store.open_table("rows")
    h = run(net, alice, AppRows("suspend"))
    net.advance_clock(2)
    net.run_network()
    assert h.result() == "written"
    alice = net.restart_node(alice)
    store = alice.node.store
    store.open_table("rows")
    assert (store.table_get("rows", b"before"), store.table_get("rows", b"after")) == (b"1", b"2")


def test_an_open_file_or_a_lock_in_a_flow_is_refused_not_rebuilt(net, tmp_path):
    """dill, the fallback pickler, took them: a file came back reopened by name and mode
    at every load of the flow (a file opened "w" was emptied each time), a lock as a new
    lock nobody else held; a result or side effect of one likewise."""
    import threading

    from flowlib import KeepsInField, ReturnsWhatItMakes
    alice = net.create_node("Alice")
    kept = tmp_path / "kept.txt"
    kept.write_text("important\n")
    with open(kept, "w", encoding="utf-8") as fh:
        fh.write("important\n")
        fh.flush()
        for thing, says in ((fh, r"an open file \(TextIOWrapper '.*kept\.txt'\): loaded back "
                                 r"it would be reopened by name and mode"),
                            (threading.Lock(), r"a lock \(lock\): loaded back it would be a "
                                               r"new lock that nobody else holds")):
            with pytest.raises(FlowError, match=r"flowlib\.KeepsInField cannot be checkpointed: "
                                                r"cannot pickle " + says):
                alice.start_flow(KeepsInField(thing))
    assert kept.read_text() == "important\n"
    for what in ("file", "lock"):
        h = run(net, alice, ReturnsWhatItMakes(what, str(kept), "result"))
        with pytest.raises(FlowError, match=r"the result of flowlib\.ReturnsWhatItMakes cannot "
                                            r"be stored: cannot pickle an? (open file|lock)"):
            h.result()
        h = run(net, alice, ReturnsWhatItMakes(what, str(kept), "side_effect"))
        assert re.search(r"cannot pickle an? (open file|lock)", h.result()), h.result()
    assert kept.read_text() == "important\n"


def test_a_node_or_handle_held_by_a_flow_is_refused_saying_what_to_hold_instead(net):
    """It said "a KeyPair is never pickled" (the node's key, deep inside the node)."""
    from flowlib import KeepsInField, Sleeper
    alice = net.create_node("Alice")
    handle = run(net, alice, Sleeper(0))
    for thing, name, instead in ((alice.node, "Node", "reach the node through self.services"),
                                 (alice, "MockNode", "reach the node through self.services"),
                                 (alice.start_flow, "MockNode", "reach the node through"),
                                 (handle, "FlowHandle", r"hold its id \(handle\.id\)")):
        with pytest.raises(FlowError, match=rf"flowlib\.KeepsInField cannot be checkpointed: a "
                                            rf"{name} is never checkpointed with a flow .*{instead}"):
            alice.start_flow(KeepsInField(thing))


def test_a_session_to_a_party_not_on_the_network_fails_the_flow_at_once(net, tmp_path):
    """The flow waited for ever (its frames dropped by MockNetwork, kept in the outbox of
    a real node for a party its network map does not have), with one log line to show."""
    from greenflow import Node, Party, UnknownParty
    from greenflow.ledger.identity_service import UnknownParty as LedgerUnknownParty
    assert LedgerUnknownParty is UnknownParty
    alice, bob = pair(net)
    h = run(net, alice, Ping(Party("Bobb"), 1))
    with pytest.raises(UnknownParty, match=r"^initiate_flow\(\): no party named 'Bobb' on the "
                                           r"network of Alice: its frames could never be "
                                           r"delivered$"):
        h.result()
    assert run(net, alice, Ping(bob.party, 1)).result() == 1   # (a known one still answers)
    solo = Node.open(tmp_path / "solo", "Solo")   # no network at all: itself only
    try:
        assert solo.start_flow(Ping(solo.party, 2)).result(timeout=20) == 3
        with pytest.raises(UnknownParty, match="no party named 'Alice' on the network of Solo"):
            solo.start_flow(Ping(Party("Alice"), 1)).result(timeout=20)
    finally:
        solo.close()


def test_ctrl_c_while_a_flow_runs_inline_stops_the_run_and_is_not_the_flows_failure(tmp_path):
    """A KeyboardInterrupt that landed in a flow running on the caller's thread (MockNetwork,
    `greenflow run`) was taken as that flow's failure: the run went on, and the flow was
    FAILED for good with "KeyboardInterrupt"."""
    import flowlib
    net = MockNetwork(tmp_path / "net")
    alice, bob = pair(net)
    flowlib.CTRL_C["on"] = True
    try:
        h = alice.start_flow(flowlib.CtrlC(bob.party))
        with pytest.raises(KeyboardInterrupt):
            net.run_network()
        assert alice.node.scheduler.dead           # stopped as at a power cut: nothing more
    finally:
        flowlib.CTRL_C["on"] = False
    alice = net.restart_node(alice)                # run again: it goes on from its last commit
    net.run_network()
    assert alice.node.handle(h.id).result() == 30
    net.close()


def test_a_flows_own_exception_comes_back_with_its_attributes(net):
    """handle.result() raised the flow's class with its message, but `e.shortfall` was
    gone (also in the process that ran the flow): rebuilt without its constructor."""
    from flowlib import Pays, ShortOfFunds
    alice = net.create_node("Alice")
    h = run(net, alice, Pays())
    for restart in (False, True):
        node = net.restart_node(alice) if restart else alice
        with pytest.raises(ShortOfFunds, match="^short by 42$") as caught:
            node.node.handle(h.id).result()
        assert caught.value.shortfall == 42 and caught.value.error_id


@pytest.mark.parametrize("kind", ["decision", "bug", "transient"])
def test_an_error_message_cannot_forge_log_records_or_restyle_a_terminal(net, kind, caplog):
    """A flow's error text (from a client's argument, say) went into node.log raw: a
    newline started a forged record, an ESC sequence restyled the terminal."""
    import logging
    from flowlib import FailsWith
    alice = net.create_node("Alice")
    forged = "x\n2026-12-07 10:00:00,000 INFO    greenflow.node_process: FORGED\x1b[31mred"
    with caplog.at_level(logging.INFO):
        run(net, alice, FailsWith(kind, forged))
    lines = [r.getMessage() for r in caplog.records if "FORGED" in r.getMessage()]
    assert lines, caplog.text
    for text in lines:
        assert "\n2026-12-07" not in text and "\x1b" not in text, text
        assert "\n    2026-12-07" in text and "FORGED\\x1b[31mred" in text, text
