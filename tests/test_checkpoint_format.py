"""Stored headers and result records: the compact format round-trips, and what earlier
versions stored still loads (a node upgraded in place reads its old store)."""
import pickle

from greenflow import serialization
from greenflow.runtime.checkpoint import Checkpoint, SessionState, _checkpoint_state
from greenflow.party import Party
from greenflow.status import FlowStatus
from greenflow.storage.interface import dump_result, load_result


def _checkpoint() -> Checkpoint:
    bob = Party("Bob", b"k" * 32)
    cp = Checkpoint("01a2", "app.Flow", status=FlowStatus.SUSPENDED, client_id="c-1",
                    started_at=12.5, invoker_sid=None, pending=("receive", ("01a2.1", "Bob", "int"), None),
                    fingerprint={"app.Flow": "ab12"})
    cp.sessions["01a2.1"] = SessionState("01a2.1", bob, True, "app.Flow", 2, "app", state=1,
                                         send_seq=3, recv_seq=2, peer_info=(1, "app"))
    return cp


def test_a_header_round_trips_with_its_types():
    cp = _checkpoint()
    back = serialization.loads(serialization.dumps(cp))
    assert back == cp
    assert back.status is FlowStatus.SUSPENDED
    st = back.sessions["01a2.1"]
    assert type(st) is SessionState and type(st.counterparty) is Party
    assert st.counterparty.owning_key == b"k" * 32


def test_a_header_stored_by_an_earlier_version_still_loads():
    cp = _checkpoint()

    class Earlier:  # pickled as Checkpoint(*fields) with the enum and objects inside
        def __reduce__(self):
            return (Checkpoint, _checkpoint_state(cp))

    back = serialization.loads(serialization.dumps(Earlier()))
    assert back == cp and back.status is FlowStatus.SUSPENDED


def test_result_records_store_the_status_plainly_and_read_back_the_enum():
    rec = {"status": FlowStatus.COMPLETED, "value": [1, 2], "flow_class": "app.Flow"}
    raw = dump_result(rec)
    assert b"FlowStatus" not in raw
    assert load_result(raw) == rec and load_result(raw)["status"] is FlowStatus.COMPLETED
    earlier = serialization.dumps(rec)          # records stored with the enum itself
    assert load_result(earlier)["status"] is FlowStatus.COMPLETED


def test_result_records_of_plain_values_are_stored_typed_and_read_back_the_same():
    base = {"flow_class": "app.Flow", "client_id": "c-1", "started_at": 12.5,
            "finished_at": 13.25}
    for rec in ({**base, "status": FlowStatus.COMPLETED, "value": 60},
                {**base, "client_id": None, "status": FlowStatus.COMPLETED, "value": None},
                {**base, "status": FlowStatus.COMPLETED, "value": b"\x00raw"},
                {**base, "status": FlowStatus.FAILED, "error": "ValueError: no", "exc": None},
                {**base, "status": FlowStatus.KILLED, "error": "FlowKilled: killed"}):
        raw = dump_result(rec)
        assert raw[:1] == b"E"
        back = load_result(raw)
        assert back == rec and back["status"] is rec["status"]
        assert [type(v) for v in back.values()] == [type(rec[k]) for k in back]


class _Number(int):
    pass


def test_result_records_the_typed_form_cannot_carry_exactly_keep_the_pickle():
    base = {"flow_class": "app.Flow", "client_id": None, "started_at": 1.0,
            "finished_at": 2.0, "status": FlowStatus.COMPLETED}
    for value in ((1, 2), [1, 2], {"a": 1}, 1 << 70, _Number(3), FlowStatus.FAILED,
                  Party("Bob", b"k" * 32), "lone \ud800 surrogate"):
        rec = {**base, "value": value}
        raw = dump_result(rec)
        assert raw[:1] == b"P"
        back = load_result(raw)
        assert back == rec and type(back["value"]) is type(value)
    failed = {**base, "status": FlowStatus.FAILED, "error": "X: y",
              "flow_exception": ("app.X", "y", "e-1")}
    assert dump_result(failed)[:1] == b"P" and load_result(dump_result(failed)) == failed


def _as_stored_before_the_packages(obj) -> bytes:
    """``obj`` pickled the way an earlier version stored it: its classes under their
    module paths from before the modules moved into packages."""
    raw = pickle.dumps(obj, protocol=0)   # text opcodes: module paths can be rewritten
    for old, new in serialization.MOVED_MODULES.items():
        raw = raw.replace(b"c" + new.encode() + b"\n", b"c" + old.encode() + b"\n")
    assert b"cgreenflow.runtime." not in raw and b"cgreenflow.flows." not in raw
    return raw


def test_a_header_stored_under_the_old_module_paths_still_loads():
    cp = _checkpoint()
    raw = _as_stored_before_the_packages(cp)
    assert b"cgreenflow.checkpoint\n" in raw
    for tag in (b"P", b"D"):   # the C pickler's blobs and dill's
        back = serialization.loads(tag + raw)
        assert back == cp and type(back) is Checkpoint
        assert type(back.sessions["01a2.1"]) is SessionState


def test_a_flow_session_stored_under_its_old_module_path_still_loads():
    from greenflow.flows.session import FlowSession
    raw = _as_stored_before_the_packages({"s": FlowSession("01a2.1", Party("Bob", b"k" * 32))})
    assert b"cgreenflow.session\n" in raw
    back = serialization.loads(b"P" + raw)
    assert type(back["s"]) is FlowSession


def test_journal_kinds_are_stored_as_the_plain_strings_earlier_versions_wrote():
    from greenflow.runtime.journal import SUSPENDING, Entry, Kind
    assert {Kind.RECEIVE, Kind.SLEEP, Kind.EXTERNAL, Kind.INFO} == SUSPENDING
    e = Entry(Kind.RECEIVE, ("01a2.1", "Bob", "int"), ("data", b"\x01", 0))
    raw = serialization.dumps(e)
    assert b"Kind" not in raw   # no class of ours in the stored entry: the bare string
    earlier = Entry.__new__(Entry)
    earlier.__setstate__(("receive", ("01a2.1", "Bob", "int"), ("data", b"\x01", 0), None))
    back = serialization.loads(raw)
    assert back.kind == earlier.kind == Kind.RECEIVE and type(back.kind) is str


def test_a_sleeping_flow_whose_header_holds_the_old_timer_key_wakes_after_an_upgrade(tmp_path):
    """Headers used to keep the store's timer key (8-byte µs deadline + flow id) where
    they now keep the deadline: an upgraded node reads the deadline back from it, and the
    flow's timer fires and is removed as before."""
    from flowlib import Sleeper

    from greenflow.storage.interface import Batch
    from greenflow.testing import MockNetwork
    net = MockNetwork(tmp_path / "net")
    alice = net.create_node("Alice")
    h = alice.start_flow(Sleeper(60))
    net.run_network()
    store = alice.node.store
    cp = store.checkpoint(h.id)
    deadline = cp.timer_at
    assert list(store.timers()) == [(deadline, h.id)]
    cp.timer_at = round(deadline * 1_000_000).to_bytes(8, "big") + h.id.encode()   # as stored before
    b = Batch()
    b.put_header_unchecked(h.id, serialization.dumps(cp))
    store.commit(b)
    alice = net.restart_node(alice)
    assert alice.node.store.checkpoint(h.id).timer_at == deadline
    net.advance_clock(61)
    net.run_network()
    before, after = alice.node.handle(h.id).result()
    assert (after - before).total_seconds() >= 60
    assert list(alice.node.store.timers()) == []
    net.close()


def test_a_header_is_stored_typed_and_reads_back_the_same():
    from greenflow.storage.interface import HEADER_TAG, encode_header
    cp = _checkpoint()
    cp.seed, cp.timer_at, cp.retries = b"s" * 32, 99.25, 2
    raw = encode_header(cp)
    assert raw[:1] == HEADER_TAG and b"Checkpoint" not in raw
    back = serialization.loads(raw)
    assert back == cp and back.status is FlowStatus.SUSPENDED
    assert type(back.pending[1]) is tuple
    assert back.sessions["01a2.1"].peer_info == (1, "app")
    assert type(back.sessions["01a2.1"].peer_info) is tuple
    assert len(raw) < len(serialization.dumps(cp))


def test_the_typed_header_layout_is_the_one_earlier_versions_wrote():
    """A msgpack array of the fields in order, the status as its string, each session a
    row (sid, party name, party key, its other fields): what older nodes read back."""
    import msgspec
    from greenflow.runtime.checkpoint import _FIELDS
    from greenflow.storage.interface import encode_header
    cp = _checkpoint()
    cp.sessions["01a2.2"] = SessionState("01a2.2", Party("Carol", b"c" * 32), False, "app.Other",
                                         1, "app2", state=2, send_seq=1, recv_seq=4)
    state = [getattr(cp, f) for f in _FIELDS]
    state[_FIELDS.index("status")] = "SUSPENDED"
    state[_FIELDS.index("sessions")] = [
        (st.sid, st.counterparty.name, st.counterparty.owning_key,
         *(getattr(st, f) for f in SessionState.__struct_fields__[2:]))
        for st in cp.sessions.values()]
    assert encode_header(cp) == b"H" + msgspec.msgpack.encode(state)


def test_a_header_the_typed_format_cannot_hold_is_pickled():
    from greenflow.storage.interface import encode_header
    cp = _checkpoint()
    cp.pending = ("side_effect", (("nested",),), None)
    assert encode_header(cp)[:1] == b"P" and serialization.loads(encode_header(cp)) == cp
    cp = _checkpoint()
    cp.retries = 1 << 70
    assert serialization.loads(encode_header(cp)) == cp
    cp = _checkpoint()
    cp.client_id = "sent as a JSON escape: \ud800"   # msgpack refuses a lone surrogate
    assert encode_header(cp)[:1] == b"P" and serialization.loads(encode_header(cp)) == cp


def test_journal_entries_are_stored_as_plain_tuples_and_read_back():
    from greenflow.runtime.journal import Entry
    from greenflow.storage.interface import ENTRIES_TAG, encode_entries
    entries = [Entry("send", ("s.1", "Bob", b"d"), ("ok",), None, b"sent"),
               Entry("receive", ("s.1",), ("data", b"\x01", 0), 12.5)]
    raw = encode_entries(entries)
    assert raw[:1] == ENTRIES_TAG and b"Entry" not in raw
    back = serialization.loads(raw)
    assert [(e.kind, e.key, e.outcome, e.deadline, e.sent) for e in back] == \
           [(e.kind, e.key, e.outcome, e.deadline, e.sent) for e in entries]
    # Entry objects pickled whole, as chunks were stored before, still load.
    old = serialization.loads(serialization.dumps(entries))
    assert [e.outcome for e in old] == [e.outcome for e in entries]


def test_journal_entries_the_c_pickler_refuses_fall_back_to_dill():
    from greenflow.runtime.journal import Entry
    from greenflow.storage.interface import encode_entries
    raw = encode_entries([Entry("side_effect", ("f",), ("ok", lambda: 42))])
    assert raw[:1] == b"D"
    assert serialization.loads(raw)[0].outcome[1]() == 42


def test_flows_stored_with_pickled_headers_and_journals_finish_after_an_upgrade(tmp_path, monkeypatch):
    """Ping-pong flows stopped mid-protocol by a node that wrote headers and journal
    chunks as pickles (the format before the typed ones) resume and finish on a node
    that writes the typed formats."""
    from greenflow.samples.ping import Ping
    from greenflow.statemachine import commit
    from greenflow.testing import MockNetwork
    monkeypatch.setattr(commit, "encode_header", serialization.dumps)
    monkeypatch.setattr(commit, "encode_entries", serialization.dumps)
    net = MockNetwork(tmp_path / "net")
    alice, bob = net.create_node("Alice"), net.create_node("Bob")
    ids = [h.id for h in alice.node.start_flows([Ping(bob.party, 3) for _ in range(20)])]
    net.run_network(max_messages=50)
    tags = {raw[:1] for node in (alice, bob) for _, raw in node.node.store.header_blobs()}
    assert tags == {b"P"}
    monkeypatch.undo()
    alice, bob = net.restart_node(alice), net.restart_node(bob)
    net.run_network()
    assert [alice.node.handle(i).result() for i in ids] == [6] * 20
    assert alice.node.store.flow_count() == bob.node.store.flow_count() == 0
    net.close()
