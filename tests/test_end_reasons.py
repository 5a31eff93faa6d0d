"""Why a session ended travels as one of `messages.EndReason`'s words, the same on the
wire as ever; the receiving flow words it from the same table."""
from __future__ import annotations

import pytest
from flowlib import Ask, Holding
from netutil import error_of, only_flow, pair

from greenflow import UnexpectedFlowEnd
from greenflow.errors import WireFormatError
from greenflow.messages import END, EndReason, Frame, decode_frame, encode_frame
from greenflow.runtime.journal import Outcome
from greenflow.statemachine.transitions import end_reason, frame_outcome
from greenflow.testing.mock_network import MockTransport

WORDS = {"ended", "failed", "was killed", "closed the session"}


def test_the_end_reasons_are_the_words_on_the_wire():
    words = {v for k, v in vars(EndReason).items() if k.isupper()}
    assert words == WORDS
    for word in words:
        frame = decode_frame(encode_frame(Frame(END, "s1", True, 3, reason=word)))
        assert frame.reason == word and type(frame.reason) is str
        assert frame_outcome(frame) == (Outcome.END, end_reason(word))
    assert end_reason("") == end_reason(EndReason.ENDED) == "ended its flow"
    assert end_reason("left for lunch") == "left for lunch"   # a word this node does not know


def test_a_session_id_is_bounded_in_bytes_since_the_store_keys_by_it():
    assert decode_frame(encode_frame(Frame(END, "s" * 200, True, 3))).sid == "s" * 200
    with pytest.raises(WireFormatError, match="session id longer than 200 bytes"):
        decode_frame(encode_frame(Frame(END, "\U0001f600" * 200, True, 3)))


@pytest.fixture
def ends_sent(monkeypatch):
    """The reason of every frame that ends a session, as the transport sends it."""
    seen: list[str] = []
    send = MockTransport.send

    def sending(self, peer, data):
        f = decode_frame(data)
        if f.kind == END or f.ends:
            seen.append(f.reason)
        return send(self, peer, data)

    monkeypatch.setattr(MockTransport, "send", sending)
    return seen


def test_flows_end_their_sessions_with_those_words_and_peers_word_them_alike(net, ends_sent):
    alice, bob = pair(net)
    said = {}
    for command in ("end", "crash", "close"):
        h = alice.start_flow(Ask(bob.party, command))
        net.run_network()
        err = error_of(h)
        assert isinstance(err, UnexpectedFlowEnd)
        said[command] = str(err)
    held = alice.start_flow(Holding(bob.party))
    net.run_network()
    alice.node.kill_flow(held.id)
    net.run_network()
    assert set(ends_sent) == WORDS
    assert "ended its flow" in said["end"]
    assert "failed" in said["crash"] and "password" not in said["crash"]
    assert "closed the session" in said["close"]
    responder = [f for f in bob.flows() if f.status.value == "COMPLETED"
                 and "was killed" in str(bob.handle(f.id).result())]
    assert len(responder) == 1, [bob.handle(f.id).result() for f in bob.flows()
                                 if f.status.value == "COMPLETED"]
    assert only_flow(alice, "Holding").status.value == "KILLED"
