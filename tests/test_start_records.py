"""A flow's start record: a small typed record (tag R) where it can hold the new flow
exactly, a pickle otherwise; both load back into the object pickle would give, and
flows stored either way resume after a restart."""
from __future__ import annotations

import pickle

import pytest
from netutil import pair

from greenflow import (FlowLogic, FlowSession, Party, UnexpectedFlowEnd, initiated_by, initiating_flow,
                       serialization)
from greenflow.flows.start_records import START_TAG, encode_start
from greenflow.testing import MockNetwork

BOB = Party("O=Bob,L=London,C=GB", bytes(range(32)))


@initiating_flow
class Asker(FlowLogic):
    def __init__(self, peer: Party, n: int) -> None:
        self.peer, self.n = peer, n

    def call(self) -> int:
        s = self.initiate_flow(self.peer)
        total = 0
        for i in range(self.n):
            total += s.send_and_receive(int, i)
        return total


@initiated_by(Asker)
class Answerer(FlowLogic):
    def __init__(self, session: FlowSession) -> None:
        self.session = session
        self.other_name = session   # the same object twice
        self.step, self.label, self.flag, self.none = 1, "x", True, None

    def call(self) -> None:
        while True:
            try:
                n = self.session.receive(int)
            except UnexpectedFlowEnd:
                return
            self.session.send(n + self.step)


@initiating_flow
class Asker2(Asker):
    pass


@initiated_by(Asker2)
class ListAnswerer(Answerer):
    """State the record cannot hold (a list): pickled as before."""

    def __init__(self, session: FlowSession) -> None:
        super().__init__(session)
        self.seen: list = []


class Custom(FlowLogic):
    def __init__(self, session: FlowSession) -> None:
        self.session = session

    def __reduce__(self):
        return (Custom, (self.session,))


def test_a_plain_responder_is_stored_as_a_typed_record_and_loads_as_pickle_would():
    session = FlowSession("0123456789abcdef0123456789abcdef.1", BOB)
    logic = Answerer(session)
    blob = encode_start(logic, session)
    assert blob is not None and blob[:1] == START_TAG
    assert len(blob) < len(serialization.dumps(logic))
    back = serialization.loads(blob)
    via_pickle = pickle.loads(pickle.dumps(logic))
    assert type(back) is Answerer and vars(back) == vars(via_pickle) == vars(logic)
    assert list(vars(back)) == list(vars(logic))          # attribute order kept
    assert back.session is back.other_name                # shared, as pickle shares it
    assert back.session.counterparty == BOB and back.session.counterparty.owning_key == BOB.owning_key


def test_an_initiator_with_parties_and_constants_is_stored_as_a_typed_record():
    logic = Asker(BOB, 3)
    logic.big, logic.data, logic.ratio = 1 << 63, b"\x00\xff", 0.1
    blob = encode_start(logic)
    assert blob is not None and blob[:1] == START_TAG
    back = serialization.loads(blob)
    assert type(back) is Asker and vars(back) == vars(pickle.loads(pickle.dumps(logic)))
    assert type(back.peer) is Party and back.peer.owning_key == BOB.owning_key
    assert list(vars(back)) == list(vars(logic))


def test_an_initiator_with_other_state_is_pickled_as_before(tmp_path):
    logic = Asker(BOB, 3)
    logic.items = [1, 2]
    assert encode_start(logic) is None
    logic.items, logic.huge = None, 1 << 64          # past what the record holds
    assert encode_start(logic) is None


@pytest.mark.parametrize("make", [
    lambda s: ListAnswerer(s),                             # an attribute that is not a constant
    lambda s: Custom(s),                                   # its own pickling
])
def test_responders_the_record_cannot_hold_exactly_are_left_to_pickle(make):
    session = FlowSession("0123456789abcdef0123456789abcdef.1", BOB)
    assert encode_start(make(session), session) is None


def test_a_record_naming_a_class_that_is_not_a_flow_is_refused():
    import msgspec
    blob = START_TAG + msgspec.msgpack.encode(("builtins", "dict", "s.1", "Bob", b"", []))
    with pytest.raises(ValueError, match="builtins.dict.*not a flow class"):
        serialization.loads(blob)


@pytest.mark.parametrize("initiator", [Asker, Asker2])
def test_responders_stored_either_way_resume_after_a_restart(tmp_path, initiator):
    net = MockNetwork(tmp_path / "net")
    try:
        alice, bob = pair(net)
        h = alice.start_flow(initiator(bob.party, 3))
        net.run_network(max_messages=1)   # the initiation: Bob's responder starts, answers
        [(fid, _cp)] = list(bob.node.store.checkpoints())
        tag = bob.node.store.logic_blob(fid)[:1]
        assert tag == (START_TAG if initiator is Asker else b"P")
        assert alice.node.store.logic_blob(h.id)[:1] == START_TAG
        bob = net.restart_node(bob)
        alice = net.restart_node(alice)
        net.run_network()
        assert alice.node.handle(h.id).result() == 1 + 2 + 3
        assert bob.node.checkpoints_dump() == []
    finally:
        net.close()


FAILS = {"n": 0}


@initiating_flow
class Asker3(Asker):
    pass


@initiated_by(Asker3)
class FlakyAnswerer(Answerer):
    """Fails transiently in its first step, before anything of it was committed."""

    def call(self) -> None:
        if FAILS["n"] > 0:
            FAILS["n"] -= 1
            from greenflow.errors import TransientError
            raise TransientError("briefly unavailable")
        super().call()


def test_a_responder_parked_before_its_first_commit_goes_back_to_its_starting_state(tmp_path):
    net = MockNetwork(tmp_path / "net")
    FAILS["n"] = 1
    try:
        alice, bob = pair(net)
        h = alice.start_flow(Asker3(bob.party, 2))
        net.run_network()
        [(fid, cp)] = list(bob.node.store.checkpoints())
        assert cp.status.name == "HOSPITALIZED" and cp.flow_class.endswith("FlakyAnswerer")
        [st] = cp.sessions.values()
        # As at its start (no frame sent yet), with the initiation it took in kept.
        assert (st.send_seq, st.recv_seq, st.sent_info) == (0, 1, False)
        assert cp.invoker_sid == st.sid and cp.journal_len == 0
        net.advance_clock(5)
        net.run_network()
        assert h.result() == 1 + 2
    finally:
        net.close()
        FAILS["n"] = 0


def test_a_checkpoint_at_start_is_the_one_the_flow_started_with_whatever_happened_since():
    from greenflow.runtime.checkpoint import Checkpoint, SessionState
    from greenflow.status import FlowStatus
    initiator = Checkpoint("a" * 32, "m.Asker", client_id="c-1", started_at=12.5)
    answering = SessionState.answering("b" * 32 + ".1", BOB, "m.Asker", 3, "app")
    responder = Checkpoint("c" * 32, "m.Answerer", started_at=13.0,
                           sessions={answering.sid: answering}, invoker_sid=answering.sid)
    for cp in (initiator, responder):
        at_first = cp.clone()
        for st in cp.sessions.values():
            st.send_seq, st.recv_seq, st.sent_info, st.peer_ending = 4, 5, True, "done"
        cp.sessions["x.1"] = SessionState("x.1", BOB, True, "m.Other", 1, "app")
        cp.status, cp.suspension_count, cp.journal_len = FlowStatus.HOSPITALIZED, 3, 7
        cp.pending, cp.seed, cp.fingerprint, cp.progress_step = (1, "k", None), b"s", {}, "p"
        again = cp.at_start()
        assert again == at_first
        assert all(again.sessions[sid] is not st for sid, st in cp.sessions.items()
                   if sid in again.sessions)


def test_checkpoints_and_session_states_are_not_walked_by_the_cyclic_collector(tmp_path):
    """One checkpoint per flow in flight: the collector need not walk them (they hold no
    cycles), and they still load from every stored form (test_checkpoint_format)."""
    import gc
    net = MockNetwork(tmp_path / "net")
    try:
        alice, bob = pair(net)
        h = alice.start_flow(Asker(bob.party, 2))
        net.run_network(max_messages=1)
        for node in (alice, bob):
            [rt] = node.node.scheduler.resident.values()
            assert not gc.is_tracked(rt.cp) and not gc.is_tracked(rt.cp.sessions)
            assert not any(gc.is_tracked(st) for st in rt.cp.sessions.values())
        net.run_network()
        assert h.result() == 1 + 2
    finally:
        net.close()


def test_a_class_its_module_no_longer_names_is_left_to_pickle():
    """Pickle stores classes by name and refuses one its module names differently; the
    record must not name a class that would load as another."""
    global Answerer
    original = Answerer

    class Answerer(original):   # noqa: F811 - the module's name now means another class
        pass
    Answerer.__qualname__ = original.__qualname__
    session = FlowSession("s.1", BOB)
    try:
        assert encode_start(original(session), session) is None
    finally:
        Answerer = original
    assert encode_start(original(session), session) is not None
