"""Transitions decide without I/O: these tests look only at the actions they return."""
from collections import deque

from greenflow.statemachine.actions import (DROP, Accept, Ack, ArmTimer, Consume, PeerEnded, Resume,
                                            RunExternal, SendInfo, Wait)
from greenflow.runtime.checkpoint import OPEN, Checkpoint, SessionState
from greenflow.runtime.flow_runtime import InboxItem
from greenflow.runtime.journal import Entry
from greenflow.messages import DATA, END, ERROR, INIT, REJECT, Frame
from greenflow.party import Party
from greenflow.statemachine.transitions import on_external_done, on_frame, on_suspend, on_timer

BOB = Party("Bob", b"k" * 32)


def flow_with_session(initiator: bool = True, **session: object) -> Checkpoint:
    st = SessionState("s1", BOB, initiator, "x.Ping", 1, "x", state=OPEN, **session)
    return Checkpoint("f1", "x.Ping", sessions={"s1": st})


def receive_entry(deadline: float | None = None) -> Entry:
    return Entry("receive", ("s1", "Bob", "int"), None, deadline)


def data(seq: int, payload: bytes = b"\x01") -> Frame:
    return Frame(DATA, "s1", False, seq, payload)


def test_receive_with_a_buffered_frame_consumes_it_and_resumes_at_once():
    inbox = {"s1": deque([InboxItem(data(0, b"\x05"), True)])}
    actions = on_suspend(flow_with_session(), inbox, receive_entry(), now=0.0)
    assert actions == [Consume("s1"), Resume(("data", b"\x05", 0))]


def test_receive_with_nothing_buffered_waits_without_a_timer():
    assert on_suspend(flow_with_session(), {}, receive_entry(), now=0.0) == [Wait()]


def test_receive_with_a_timeout_arms_a_timer_at_the_recorded_deadline():
    actions = on_suspend(flow_with_session(), {}, receive_entry(deadline=50.0), now=10.0)
    assert actions == [ArmTimer(50.0), Wait()]


def test_receive_whose_deadline_already_passed_times_out_at_once():
    actions = on_suspend(flow_with_session(), {}, receive_entry(deadline=5.0), now=10.0)
    assert actions == [Resume(("timeout",))]


def test_receive_after_the_peer_ended_resumes_with_the_end():
    cp = flow_with_session(peer_ended="ended its flow")
    assert on_suspend(cp, {}, receive_entry(), 0.0) == [Resume(("end", "ended its flow"))]


def test_external_request_runs_after_the_commit_and_waits():
    entry = Entry("external", ("fetch",))
    assert on_suspend(flow_with_session(), {}, entry, 0.0) == [RunExternal(), Wait()]


def test_in_order_frame_for_a_waiting_flow_is_accepted_acknowledged_and_consumed():
    f = data(0, b"\x07")
    actions = on_frame(flow_with_session(), {}, receive_entry(), f)
    assert actions == [Accept(f), Ack(f.msg_id), Consume("s1"), Resume(("data", b"\x07", 0))]


def test_frame_for_a_busy_flow_is_only_buffered():
    f = data(0)
    assert on_frame(flow_with_session(), {}, None, f) == [Accept(f), Ack(f.msg_id)]


def test_duplicate_frame_is_dropped_but_acknowledged_again():
    actions = on_frame(flow_with_session(recv_seq=3), {}, receive_entry(), data(1))
    assert actions[0][0] == DROP and "duplicate" in actions[0][1]
    assert actions[1:] == [Ack(("s1", False, 1))]


def test_frame_from_the_future_is_dropped_unacknowledged_so_the_sender_resends():
    actions = on_frame(flow_with_session(recv_seq=0), {}, receive_entry(), data(2))
    assert len(actions) == 1 and actions[0][0] == DROP


def test_receive_first_initiation_is_accepted_but_wakes_nobody():
    init = Frame(INIT, "s1", True, 0, None, "x.Ping", 1, "x")
    cp = flow_with_session(initiator=False)
    assert on_frame(cp, {}, receive_entry(), init) == [Accept(init), Ack(init.msg_id)]


def test_error_and_end_frames_become_outcomes_of_the_waiting_receive():
    err = Frame(ERROR, "s1", False, 0, error=("m.Boom", "boom", 42))
    assert on_frame(flow_with_session(), {}, receive_entry(), err)[-1] == \
        Resume(("error", "m.Boom", "boom", 42))
    end = Frame(END, "s1", False, 0, reason="failed")
    assert on_frame(flow_with_session(), {}, receive_entry(), end)[-1] == Resume(("end", "failed"))


def test_rejection_answers_a_pending_flow_info_request():
    rej = Frame(REJECT, "s1", False, 0, reason="no responder")
    info = Entry("info", ("s1", "Bob"))
    assert on_frame(flow_with_session(), {}, info, rej)[-2:] == \
        [Consume("s1"), Resume(("reject", "no responder"))]


def test_timer_only_fires_for_the_deadline_the_flow_still_waits_on():
    assert on_timer(receive_entry(deadline=5.0), 5.0) == [Resume(("timeout",))]
    assert on_timer(receive_entry(deadline=9.0), 5.0) == []
    assert on_timer(Entry("sleep", (3.0,), None, 5.0), 5.0) == [Resume(("ok",))]
    assert on_timer(None, 5.0) == []


def test_external_result_for_a_flow_no_longer_waiting_is_dropped():
    assert on_external_done(Entry("external", ("f",)), ("ok", 1)) == [Resume(("ok", 1))]
    assert on_external_done(None, ("ok", 1))[0][0] == DROP


def test_flow_info_request_is_answered_with_a_confirmation_not_a_message():
    req = Frame(7, "s1", True, 0)           # INFO_REQ
    actions = on_frame(flow_with_session(initiator=False), {}, receive_entry(), req)
    assert actions == [Accept(req), Ack(req.msg_id), SendInfo("s1")]


def test_confirmation_answers_a_waiting_flow_info_request():
    confirm = Frame(6, "s1", False, 0, info=(2, "trade"))   # CONFIRM
    info = Entry("info", ("s1", "Bob"))
    assert on_frame(flow_with_session(), {}, info, confirm)[-1] == Resume(("ok", (2, "trade")))


def test_the_end_a_last_message_carried_shows_at_the_next_receive():
    cp = flow_with_session(peer_ending="ended its flow")
    assert on_suspend(cp, {}, receive_entry(), 0.0) == \
        [PeerEnded("s1"), Resume(("end", "ended its flow"))]


def test_a_last_message_carrying_the_end_is_consumed_as_a_message():
    f = Frame(DATA, "s1", False, 0, b"\x07", reason="ended", ends=True)
    actions = on_frame(flow_with_session(), {}, receive_entry(), f)
    assert actions == [Accept(f), Ack(f.msg_id), Consume("s1"), Resume(("data", b"\x07", 0))]
