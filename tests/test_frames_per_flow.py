"""How many frames a flow costs: a session's END travels on its sender's last message
when that message has not left yet, and no END goes to a peer that has ended its side.

Every test runs with flows resident and with ``reload_after_suspend`` (``net`` fixture).
"""
from __future__ import annotations

import pytest
from endflows import AskThenLinger, SessionAfterSession, TellOnce
from netutil import assert_all_finished, pair, result_of, run

from greenflow.messages import DATA, END, ENDS, INIT, Frame, decode_frame, encode_frame
from greenflow.samples.ping import Ping
from greenflow.testing.mock_network import MockTransport


@pytest.fixture
def wire_log(monkeypatch) -> list:
    """Every frame the nodes hand to the network, as (sender, kind, ends)."""
    seen: list = []
    send = MockTransport.send

    def recording(self, peer, data):
        f = decode_frame(data)
        seen.append((self.name, f.kind, f.ends))
        send(self, peer, data)

    monkeypatch.setattr(MockTransport, "send", recording)
    return seen


@pytest.mark.parametrize("rounds", [1, 3])
def test_a_ping_pong_takes_three_frames_and_each_further_round_two(net, wire_log, rounds):
    alice, bob = pair(net)
    before = net.delivered
    h = run(net, alice, Ping(bob.party, rounds))
    assert h.result() == sum(range(1, rounds + 1))
    # The initiation with the count, then per round: Alice's number and Bob's answer,
    # Bob's last answer also ending his side; Alice, seeing Bob ended, sends no END.
    assert net.delivered - before == 1 + 2 * rounds
    assert wire_log == ([("Alice", INIT, False)]
                        + [("Alice", DATA, False), ("Bob", DATA, False)] * (rounds - 1)
                        + [("Alice", DATA, False), ("Bob", DATA, True)])
    assert_all_finished(alice, bob)


def test_an_initiation_can_carry_the_initiators_end(net, wire_log):
    alice, bob = pair(net)
    assert run(net, alice, TellOnce(bob.party)).result() == "told"
    assert wire_log == [("Alice", INIT, True)]
    first, ended = result_of(bob, "HearOnce")
    assert first == "only message"
    assert "Alice ended its flow while" in ended
    assert_all_finished(alice, bob)


@pytest.mark.parametrize("restart", [False, True])
def test_the_end_on_a_last_message_shows_at_the_next_receive_as_a_separate_end_did(
        net, wire_log, restart):
    alice, bob = pair(net)
    h = alice.start_flow(AskThenLinger(bob.party))
    net.run_network()
    if restart:   # the end, consumed with the answer, must survive in the checkpoint
        alice = net.restart_node(alice)
        h = alice.handle(h.id)
    net.advance_clock(10)
    net.run_network()
    answer, ended, after = h.result()
    assert answer == "QUESTION"
    assert "Bob ended its flow while endflows.AskThenLinger expected to receive str" in ended
    # A send before the end was seen goes out (and is dropped by the finished peer), as
    # it did when the end came as a frame of its own; after it, a send is refused.
    assert after == "send refused"
    assert ("Bob", END, False) not in wire_log and ("Alice", END, False) not in wire_log
    assert_all_finished(alice, bob)


@pytest.mark.parametrize("restart_at", [None, 25, 61])
def test_sessions_whose_peers_ended_leave_the_checkpoint_and_come_back_ended_when_used(
        net, restart_at):
    """A flow opening one session after another re-encoded every session it ever had at
    each commit (4,000 sessions: 4.4 s of CPU, 16 times 1,000's). Ended ones now leave
    the checkpoint; used again (or replayed), a session comes back as ended, and the
    duplicates a restarted peer re-sends on one are dropped."""
    from greenflow.statemachine.commit import RETIRE_AFTER
    alice, bob = pair(net)
    n = 40
    h = alice.start_flow(SessionAfterSession(bob.party, n))
    if restart_at is not None:
        net.run_network(max_messages=restart_at)
        [dump] = alice.checkpoints_dump()
        assert 0 < len(dump["sessions"]) <= RETIRE_AFTER + 1, dump["sessions"]
        alice = net.restart_node(alice)
        bob = net.restart_node(bob)   # re-sends what Alice had not acknowledged
        h = alice.handle(h.id)
    net.run_network()
    total, after, sent, info = h.result()
    assert total == sum(range(1, n + 1))
    assert "Bob ended its flow while endflows.SessionAfterSession expected to receive int" in after
    assert "cannot send to Bob: the session has ended (ended its flow)" in sent
    # The peer's flow info is all a retired session forgets: asked for, it is its end.
    assert info == "Bob ended its flow before telling its flow version", info
    assert_all_finished(alice, bob)


def test_frames_stored_before_the_end_flag_existed_still_decode():
    old = b"\x9b\x03\xa3s.1\xc3\x05\xc0\xa0\x00\xa0\xc0\xa5ended\xc0"  # an END, 11 fields
    f = decode_frame(old)
    assert (f.kind, f.sid, f.seq, f.reason, f.ends) == (END, "s.1", 5, "ended", False)
    last = Frame(DATA, "s.1", False, 4, b"\x01", reason="ended", ends=True)
    assert decode_frame(encode_frame(last)) == last


def test_only_a_frame_carrying_a_message_can_carry_an_end():
    from greenflow.errors import WireFormatError
    bad = Frame(END, "s.1", False, 4, None, reason="ended")
    data = bytearray(encode_frame(bad))
    data[1] = END | ENDS
    with pytest.raises(WireFormatError, match="malformed"):
        decode_frame(bytes(data))
