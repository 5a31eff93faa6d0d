"""What a peer can make a node spend (CPU, memory, store) and what a dump gives away."""
from __future__ import annotations

import json
import re
import time

import pytest
from limitflows import SECRETS, HoldsSecrets

from greenflow import FlowStatus


# ====================================================================== dump redaction
def test_a_dump_redacts_by_key_inside_containers_and_by_app_names_and_types(net):
    alice = net.create_node("Alice")
    h = alice.start_flow(HoldsSecrets())
    net.run_network()
    [entry] = alice.checkpoints_dump()
    shown = entry["frames"][-1]["locals"]
    text = json.dumps(entry)
    leaked = [s for s in SECRETS if s in text]
    assert not leaked, (leaked, shown)
    for name in ("pw", "conn_str", "auth_header", "iban", "card"):
        assert shown[name] == "<redacted>", (name, shown[name])
    assert "'password': <redacted>" in shown["creds"] and "'user': 'alice'" in shown["creds"]
    assert "'api_key': <redacted>" in shown["creds"]
    assert "'token': <redacted>" in shown["rows"] and "'Authorization': <redacted>" in shown["rows"]
    assert "'card': <redacted>" in shown["wallet"] and "'owner': 'alice'" in shown["wallet"]
    assert shown["plain"] == "{'amount': 10, 'user': 'alice'}"
    # Nor does the snapshot on disk hold them (a dump is not the only reader of a store).
    snap = alice.node.store.snapshot(h.id)
    assert snap and not [s for s in SECRETS if s in repr(snap)]


def test_a_dump_redacts_names_given_as_a_node_option(tmp_path):
    from greenflow import Node
    from greenflow.runtime.snapshots import denied_name
    assert not denied_name("sort_code_x")
    node = Node.open(tmp_path / "n", "Solo", threaded=False, sensitive_names=["sort_code"])
    try:
        assert denied_name("sort_code_x") and denied_name("SORT_CODE")
    finally:
        node.close()


# ====================================================================== inbound sessions
def _statuses(node, class_name):
    return sorted(f.status.value for f in node.flows() if f.flow_class.endswith("." + class_name))


def test_a_peer_can_hold_only_so_many_sessions_open_and_learns_why(net):
    from limitflows import Pester

    from greenflow import SessionRefused
    alice, carol = net.create_node("Alice"), net.create_node("Carol")
    bob = net.create_node("Bob", max_inbound_sessions=3)
    handles = [alice.start_flow(Pester(bob.party, wait_for_answer=True)) for _ in range(5)]
    net.run_network()
    assert _statuses(bob, "PesterResponder") in (["SUSPENDED"] * 3, ["HIBERNATED"] * 3)
    refused = [h for h in handles if h.status.value == "FAILED"]
    assert len(refused) == 2
    with pytest.raises(SessionRefused, match=r"Bob refused the session .*3 open sessions from "
                                             r"Alice \(max_inbound_sessions\)"):
        refused[0].result()
    # Per peer: Carol is served.
    carol.start_flow(Pester(bob.party, wait_for_answer=True))
    net.run_network()
    assert len(_statuses(bob, "PesterResponder")) == 4

    # The count survives a power cut: Alice still holds 3 there.
    bob = net.restart_node(bob)
    again = alice.start_flow(Pester(bob.party, wait_for_answer=True))
    net.run_network()
    with pytest.raises(SessionRefused):
        again.result()
    # One of them ends: room for one more.
    alice.kill_flow(next(h for h in handles if h not in refused).id)
    net.run_network()
    assert len(_statuses(bob, "PesterResponder")) == 4   # 3 waiting + 1 failed (peer ended)
    later = alice.start_flow(Pester(bob.party, wait_for_answer=True))
    net.run_network()
    assert later.status.value in ("SUSPENDED", "HIBERNATED")
    assert sum(s in ("SUSPENDED", "HIBERNATED") for s in _statuses(bob, "PesterResponder")) == 4


def test_many_sessions_from_one_peer_are_refused_beyond_the_default_cap(net):
    from limitflows import Pester

    from greenflow.statemachine.limits import DEFAULT_MAX_INBOUND_SESSIONS
    assert 1_000 <= DEFAULT_MAX_INBOUND_SESSIONS <= 100_000
    alice = net.create_node("Alice")
    bob = net.create_node("Bob", max_inbound_sessions=50)   # the default's behaviour, smaller
    alice.node.start_flows([Pester(bob.party, wait_for_answer=True) for _ in range(80)])
    net.run_network()
    assert len(_statuses(bob, "PesterResponder")) == 50
    assert _statuses(alice, "Pester").count("FAILED") == 30


def test_a_responder_waiting_longer_than_the_idle_timeout_fails_and_its_peer_sees_it_end(net):
    from limitflows import Pester

    from greenflow import FlowTimeout, UnexpectedFlowEnd
    alice = net.create_node("Alice")
    bob = net.create_node("Bob", responder_idle_timeout=30.0)
    h = alice.start_flow(Pester(bob.party, wait_for_answer=True))
    net.run_network()
    net.advance_clock(29)
    net.run_network()
    assert _statuses(bob, "PesterResponder") in (["SUSPENDED"], ["HIBERNATED"])
    bob = net.restart_node(bob)        # the deadline is durable
    net.advance_clock(2)
    net.run_network()
    [responder] = [f for f in bob.flows() if f.flow_class.endswith("PesterResponder")]
    assert responder.status.value == "FAILED"
    assert "responder_idle_timeout" in responder.error and "FlowTimeout" in responder.error
    with pytest.raises(FlowTimeout, match="responder_idle_timeout"):
        bob.handle(responder.id).result()
    with pytest.raises(UnexpectedFlowEnd, match="Bob failed"):
        h.result()


def test_the_idle_timeout_is_off_by_default_and_an_explicit_timeout_wins(net):
    from limitflows import Pester
    alice, bob = net.create_node("Alice"), net.create_node("Bob")
    alice.start_flow(Pester(bob.party, wait_for_answer=True))
    net.run_network()
    net.advance_clock(10 * 24 * 3600)
    net.run_network()
    assert _statuses(bob, "PesterResponder") in (["SUSPENDED"], ["HIBERNATED"])


def test_limits_are_read_from_node_toml(tmp_path):
    from greenflow.network.node_config import ConfigError, NodeConfig
    base = {"name": "Bob", "p2p_address": "127.0.0.1:1", "rpc_address": "127.0.0.1:2"}
    cfg = NodeConfig.from_dict({**base, "limits": {"max_inbound_sessions": 7,
                                                   "responder_idle_timeout": 90},
                                "sensitive_names": ["iban"]}, "node.toml", str(tmp_path))
    assert cfg.node_options() == {"max_inbound_sessions": 7, "responder_idle_timeout": 90.0,
                                  "sensitive_names": ["iban"]}
    again = NodeConfig.from_dict(__import__("tomllib").loads(cfg.to_toml()), "x", str(tmp_path))
    assert again.node_options() == cfg.node_options()
    off = NodeConfig.from_dict({**base, "limits": {"max_inbound_sessions": False}}, "x", "")
    assert off.max_inbound_sessions is None and off.responder_idle_timeout is None
    for bad in ({"max_inbound_sessions": -1}, {"responder_idle_timeout": 0}, {"typo": 1},
                {"responder_idle_timeout": float("inf")}, {"responder_idle_timeout": float("nan")}):
        with pytest.raises(ConfigError, match="limits"):
            NodeConfig.from_dict({**base, "limits": bad}, "node.toml", "")


def test_the_flows_table_of_node_toml_sets_how_the_node_keeps_flows(tmp_path):
    from greenflow.network.node_config import ConfigError, NodeConfig
    base = {"name": "Bob", "p2p_address": "127.0.0.1:1", "rpc_address": "127.0.0.1:2"}
    cfg = NodeConfig.from_dict({**base, "flows": {"max_resident": 2, "retention": 3600,
                                                  "max_retries": 0, "retry_backoff": 0.5}},
                               "node.toml", str(tmp_path))
    opts = cfg.node_options()
    assert (opts["max_resident"], opts["retention"], opts["max_retries"],
            opts["retry_backoff"]) == (2, 3600.0, 0, 0.5)
    again = NodeConfig.from_dict(__import__("tomllib").loads(cfg.to_toml()), "x", str(tmp_path))
    assert again.node_options() == opts
    for bad, says in (({"max_resident": 0}, "flows.max_resident"), ({"typo": 1}, "'typo'"),
                      ({"retention": True}, "flows.retention"),
                      ({"max_retries": 1.5}, "flows.max_retries"),
                      ({"retention": float("inf")}, "flows.retention"), ([1], "[flows]")):
        with pytest.raises(ConfigError, match=re.escape(says)):
            NodeConfig.from_dict({**base, "flows": bad}, "node.toml", "")


def test_max_resident_from_node_toml_hibernates_flows_in_a_node_process(tmp_path):
    import os

    from greenflow.testing.node_processes import ProcessNetwork
    here = os.path.dirname(os.path.abspath(__file__))
    with ProcessNetwork(tmp_path, ["Alice"], apps=["procflows"], pythonpath=[here]) as pn:
        cfg = pn.config("Alice")
        cfg.flows = {"max_resident": 2}
        cfg.save()
        pn.start_all()
        alice = pn.client("Alice")
        alice.start_flow("procflows.Sleeper", {"seconds": 600}, count=6)
        deadline = time.monotonic() + 30
        while True:
            statuses = sorted(f["status"] for f in alice.flows())
            if statuses.count("HIBERNATED") >= 4:
                break
            assert time.monotonic() < deadline, statuses
            time.sleep(0.2)
        assert len(statuses) == 6 and statuses.count("SUSPENDED") <= 2, statuses


# ====================================================================== received payloads
def _store_bytes(mock_node) -> int:
    import os
    store = mock_node.node.store
    data = os.path.join(store.path, "data.mdb")
    # LMDB: the file's size; another store: what it says its tables take.
    return os.path.getsize(data) if os.path.exists(data) else store.bytes_used()


def test_large_received_payloads_are_stored_once_and_not_held_in_memory(net):
    from limitflows import SendBulk

    from greenflow.storage.payloads import ASIDE_BYTES
    n, size = 24, 512 * 1024
    alice, bob = net.create_node("Alice"), net.create_node("Bob")
    net.run_network()
    before = _store_bytes(bob)
    h = alice.start_flow(SendBulk(bob.party, n, size))
    # One frame per round: each payload reaches Bob while his flow sleeps, so it waits in
    # his inbox (committed) until the flow takes them all in one later round.
    while net.run_network(max_messages=1):
        pass
    net.advance_clock(11)
    net.run_network()
    assert h.result() == n * size
    grown = _store_bytes(bob) - before
    # The payloads themselves are n * size = 12 MiB; each used to be written twice (inbox,
    # then the journal chunk in the same commit as the inbox deletes): ~25 MiB.
    assert grown < 1.3 * n * size, grown
    [responder] = [rt for rt in bob.node.scheduler.resident.values()] or [None]
    if responder is not None:   # resident: its journal holds references, not the bytes
        held = sum(len(x) for e in responder.journal for x in (e.outcome or ())
                   if isinstance(x, bytes))
        assert held < ASIDE_BYTES, held
    # Replay reads them back from the store (the responder checks each one's first byte).
    bob = net.restart_node(bob)
    [info] = [f for f in bob.flows() if f.flow_class.endswith("ReceiveBulkLater")]
    sid = f"{h.id}.1"
    kept = [seq for seq in range(n + 2) if bob.node.store.payload(info.id, sid, seq) is not None]
    assert len(kept) == n, kept
    net.advance_clock(3600)
    net.run_network()
    assert bob.handle(info.id).result() == n * size
    # ... and they go with the flow.
    assert [seq for seq in kept if bob.node.store.payload(info.id, sid, seq) is not None] == []


# ====================================================================== hostile payloads
def test_a_payload_built_to_freeze_the_decoder_is_dropped_fast_and_others_are_served(net):
    import msgpack

    from greenflow import wire
    from greenflow.statemachine.events import FrameArrived
    from greenflow.messages import INIT, Frame, encode_frame
    from greenflow.flows.registry import initiating_info
    from greenflow.samples.ping import Ping
    alice, bob, mallory = net.create_node("Alice"), net.create_node("Bob"), net.create_node("Mallory")
    # 40,000 distinct ints with one hash value, as a set: ~9 s of the scheduler thread before.
    members = tuple(7 + i * (2**61 - 1) for i in range(1, 40_001))
    hostile = wire.encode(members).replace(msgpack.packb(msgpack.ExtType(1, b"")),
                                           msgpack.packb(msgpack.ExtType(2, b"")), 1)
    protocol, version = initiating_info(Ping)
    frame = Frame(INIT, "mallory-flow.1", True, 0, hostile, protocol, version, "samples")
    bob.node.scheduler.post(FrameArrived(mallory.party, encode_frame(frame)))
    t0 = time.perf_counter()
    net.run_network()
    assert time.perf_counter() - t0 < 2.0
    assert bob.flows() == []             # refused: no responder started for it
    h = alice.start_flow(Ping(bob.party, 3))
    net.run_network()
    assert h.result() == 6


# ====================================================================== node processes
def test_node_toml_limits_hold_in_real_node_processes(tmp_path):
    """Bob's node.toml caps Alice at 2 open sessions and gives up on idle responders
    after 2 s: of 3 sessions Alice opens and never answers, one is refused at once and
    the other two end when Bob's responders give up."""
    import os

    from greenflow.testing.node_processes import ProcessNetwork
    here = os.path.dirname(os.path.abspath(__file__))
    with ProcessNetwork(tmp_path, ["Alice", "Bob"], apps=["limitflows"], pythonpath=[here]) as pn:
        cfg = pn.config("Bob")
        cfg.max_inbound_sessions, cfg.responder_idle_timeout = 2, 2.0
        cfg.save()
        pn.start_all()
        alice, bob = pn.client("Alice"), pn.client("Bob")
        out = alice.start_flow("limitflows.Pester", {"peer": "Bob", "wait_for_answer": True}, count=3)
        assert len(out["flow_ids"]) == 3
        deadline = time.monotonic() + 60
        while True:
            mine = [f for f in alice.flows() if f["flow_class"].endswith("Pester")]
            if len(mine) == 3 and all(f["status"] == "FAILED" for f in mine):
                break
            assert time.monotonic() < deadline, mine
            time.sleep(0.2)
        errors = sorted(f["error"] for f in mine)
        assert sum("SessionRefused" in e and "max_inbound_sessions" in e for e in errors) == 1, errors
        assert sum("UnexpectedFlowEnd" in e and "Bob failed" in e for e in errors) == 2, errors
        theirs = [f for f in bob.flows() if f["flow_class"].endswith("PesterResponder")]
        assert len(theirs) == 2 and all(f["status"] == "FAILED" and "responder_idle_timeout"
                                        in f["error"] for f in theirs), theirs


def test_a_frame_built_to_exhaust_the_frame_decoder_is_refused_at_once():
    from greenflow.errors import WireFormatError
    from greenflow.messages import DATA, Frame, decode_frame, encode_frame

    def tree(depth: int) -> bytes:       # 11-way tree of lists: 11**depth leaves, 1 byte each
        return b"\x90" if depth == 0 else b"\x9b" + tree(depth - 1) * 11

    head = b"\x9b\x02\xa1s\xc3\x00\xc0\xa0\x00\xa0"     # kind, sid, to_responder, seq, ...
    n = 15 * 1024 * 1024
    shapes = {"15M empty lists": head + b"\xdd" + n.to_bytes(4, "big") + b"\x90" * n + b"\xa0\xc0",
              "15M empty maps": head + b"\xdd" + n.to_bytes(4, "big") + b"\x80" * n + b"\xa0\xc0",
              "a tree of 1.9M lists": head + tree(6) + b"\xa0\xc0"}
    for name, data in shapes.items():
        t0 = time.perf_counter()
        with pytest.raises(WireFormatError):
            decode_frame(data)
        assert time.perf_counter() - t0 < 0.5, name     # ~16 s and 1.2 GB before
    ok = Frame(DATA, "f.1", True, 3, b"payload", info=(2, "app"), error=("E", "boom", 7))
    assert decode_frame(encode_frame(ok)) == ok


def test_a_record_built_to_exhaust_the_transport_decoder_is_refused_at_once():
    import msgpack

    from greenflow.network.tcp_transport import K_ACK, K_FRAME, ProtocolError, _unpack
    n = 5 * 1024 * 1024
    # 15 MiB of empty lists, of empty maps, of one-byte extension values.
    for item in (b"\x90" * 3, b"\x80" * 3, b"\xd4\x01\x00"):
        count = n * 3 // len(item)
        data = b"\xdd" + count.to_bytes(4, "big") + item * n
        t0 = time.perf_counter()
        with pytest.raises(ProtocolError):
            _unpack(data)
        assert time.perf_counter() - t0 < 1.0, item     # ~16 s and 1.2 GB before
    # What a peer really sends still decodes: a batch of frames and a full ack chunk.
    record = [[K_FRAME, b"x" * 40] for _ in range(6_000)] + \
             [[K_ACK, [["f.1", True, i] for i in range(8_192)]]]
    assert _unpack(msgpack.packb(record, use_bin_type=True)) == record
    big = [[K_FRAME, bytes(range(256)) * 60_000]]        # 15 MB of bytes that look like headers
    assert _unpack(msgpack.packb(big, use_bin_type=True)) == big


def test_the_cache_of_recent_results_is_bounded_in_bytes_once_committed(net, monkeypatch):
    """Twenty flows that returned 50 MB each held a gigabyte in the cache of recent
    results (bounded only by count, 15,000 records): once committed, big records are
    kept only within a byte budget, the latest first, and the rest read from the store."""
    from flowlib import Returns
    from greenflow.statemachine import ending
    monkeypatch.setattr(ending, "RECENT_BIG_RESULTS_BYTES", 10_000)
    alice = net.create_node("Alice")
    huge = alice.start_flow(Returns(20_000))   # over the whole budget by itself
    small = alice.start_flow(Returns(100))
    net.run_network()
    recent = alice.node.scheduler.recent_results
    assert huge.id not in recent and small.id in recent
    assert huge.result() == b"r" * 20_000 and small.result() == b"r" * 100
    medium = []
    for _ in range(12):   # ~2 KB each, a round each: the budget holds the latest four
        medium.append(alice.start_flow(Returns(2_000)))
        net.run_network()
    kept = [h.id in recent for h in medium]
    assert kept == [False] * 8 + [True] * 4, kept
    assert alice.node.scheduler.kept_big_bytes <= 10_000
    assert all(h.result() == b"r" * 2_000 for h in medium)
    listed = {f.id: f.status for f in alice.node.flows()}
    assert listed[huge.id] == listed[small.id] == listed[medium[0].id] == FlowStatus.COMPLETED


def test_timers_a_flow_no_longer_waits_on_do_not_pile_up(net, monkeypatch):
    """Every receive with a timeout left its timer in the scheduler's heap until the
    deadline, answered or not: a flow receiving with a timeout of an hour in a loop held
    an hour's worth of them (10,000 after 10,000 answers). Stale ones are dropped once
    the heap outgrows its bound; the timer of the receive still waiting fires."""
    from limitflows import AskInTime
    from netutil import assert_all_finished, pair

    from greenflow.statemachine import running
    monkeypatch.setattr(running, "TIMERS_BOUND", 16)
    monkeypatch.setattr(running.Running, "timers_bound", 16)
    alice, bob = pair(net)
    h = alice.start_flow(AskInTime(bob.party, 200))
    net.run_network(max_messages=300)
    assert 0 < len(alice.node.scheduler.timers) <= 2 * 16 + 1
    net.run_network()
    assert not h.status.finished   # the last receive waits
    net.advance_clock(3601)
    net.run_network()
    assert h.result() == (sum(range(1, 200)), "timed out")
    assert_all_finished(alice, bob)


@pytest.mark.parametrize("cap", ["messages", "bytes"])
@pytest.mark.parametrize("restart", [False, True])
def test_a_peer_that_sends_more_than_a_session_holds_unread_gets_the_session_ended(
        net, monkeypatch, cap, restart):
    """Nothing bounded what a peer could make one session hold unread: 2,000 messages of
    100 KB sent to a responder that read one held ~800 MB. Past the bound the session is
    ended: the reader reads what it holds, then sees the end; the sender is told why;
    the frames past the bound are acknowledged and dropped, also after a restart."""
    from limitflows import Flood
    from netutil import assert_all_finished, pair

    from greenflow.statemachine import transitions
    if cap == "messages":
        monkeypatch.setattr(transitions, "MAX_UNREAD_MESSAGES", 20)
        size, held = 10, 20
    else:
        monkeypatch.setattr(transitions, "MAX_UNREAD_BYTES", 1000)
        size, held = 300, 3
    alice, bob = pair(net)
    h = alice.start_flow(Flood(bob.party, 100, size))
    net.run_network()
    for rt in bob.node.scheduler.resident.values():
        assert sum(len(q) for q in rt.inbox.values()) <= held
    [dump] = bob.checkpoints_dump()
    [session] = dump["sessions"]
    assert session["received"] is None and session["state"] == "closed"   # takes no more
    assert session["peer_ended"].startswith("sent more than "), session
    if restart:
        bob = net.restart_node(bob)
        alice = net.restart_node(alice)
        h = alice.handle(h.id)
        net.run_network()
    net.advance_clock(3601)
    net.run_network()
    said = h.result()
    assert said.startswith("Bob ended the session: more than ") and "were unread" in said, said
    [responder] = bob.flows()
    read, seen = bob.handle(responder.id).result()
    assert read == held   # (the first one too waited unread: all came in one round)
    assert seen.startswith("Alice sent more than ") and "the session was ended" in seen, seen
    assert_all_finished(alice, bob)


def test_a_flow_failing_in_a_deep_recursion_logs_a_bounded_traceback(net, caplog):
    """Its failure logged the whole traceback: ~2,900 lines for this flow."""
    import logging

    from limitflows import SubFlowsAllTheWayDown
    alice = net.create_node("Alice")
    h = alice.start_flow(SubFlowsAllTheWayDown())
    with caplog.at_level(logging.WARNING, logger="greenflow.scheduler"):
        net.run_network()
    with pytest.raises(RecursionError):
        h.result()
    [logged] = [r.getMessage() for r in caplog.records if "failed:" in r.getMessage()]
    assert len(logged.splitlines()) < 200, len(logged.splitlines())
    assert "more parts of the traceback" in logged
    assert "RecursionError: maximum recursion depth exceeded" in logged.rstrip().splitlines()[-1]
    assert "in call" in logged and "limitflows.py" in logged   # the flow's frames shown


def test_a_burst_of_small_messages_read_in_order_is_not_cut(net):
    """A sender's burst arrives whole before the reader runs again: 1,200 messages wait
    unread at once, within the bound, and the session goes on."""
    from limitflows import Burst
    from netutil import assert_all_finished, pair
    alice, bob = pair(net)
    h = alice.start_flow(Burst(bob.party, 1200))
    net.run_network()
    assert h.result() == sum(range(1200))
    assert_all_finished(alice, bob)


def _waiting_unread(node, peer: str) -> int:
    """What ``peer``'s messages waiting unread in ``node``'s resident flows amount to, by
    the bound's measure (payload and `FRAME_COST` each)."""
    from greenflow.messages import FRAME_COST
    total = 0
    for rt in node.node.scheduler.resident.values():
        for sid, q in rt.inbox.items():
            if rt.cp.sessions[sid].counterparty.name == peer:
                total += sum(FRAME_COST + len(i.frame.payload or b"") for i in q)
    return total


@pytest.mark.parametrize("restart", [False, True])
def test_what_a_peer_has_waiting_unread_on_all_its_sessions_is_bounded(net, monkeypatch, restart):
    """The bound per session held, but a peer could fill every session it may open to it
    (10,000 by default, 64 MiB each). Past what one peer may have waiting unread on all
    its sessions, the session its next message would wait in is ended, as for one
    session; the count comes back to nothing when the flows have read or ended."""
    from limitflows import FloodAndWait
    from netutil import assert_all_finished, pair

    from greenflow.statemachine import transitions
    monkeypatch.setattr(transitions, "MAX_UNREAD_PER_PEER", 5000)
    alice, bob = pair(net)
    hs = alice.node.start_flows([FloodAndWait(bob.party, 4, 300) for _ in range(6)])
    net.run_network()
    held = bob.node.scheduler.unread["Alice"][0]
    assert held == _waiting_unread(bob, "Alice") and held <= 5000, held
    cut = [d for d in bob.checkpoints_dump() if d["sessions"][0]["state"] == "closed"]
    assert 0 < len(cut) < 6, cut
    if restart:
        bob = net.restart_node(bob)
        alice = net.restart_node(alice)
        hs = [alice.handle(h.id) for h in hs]
        net.run_network()
    net.advance_clock(3601)
    net.run_network()
    said = [h.result() for h in hs]
    ended = "Bob ended the session: more than 5,000 bytes sent to it on all sessions were unread"
    assert said.count("answered 4") == 6 - len(cut), said
    assert sum(1 for s in said if s.startswith(ended)) == len(cut), said
    read = sorted(bob.handle(f.id).result() for f in bob.flows())
    seen = ("Alice sent more than 5,000 bytes on all its sessions that waited unread, so the "
            "session was ended")
    assert [r for r in read if r[1] == "all"] == [(4, "all")] * (6 - len(cut)), read
    assert all(r[0] < 4 and r[1].startswith(seen) for r in read if r[1] != "all"), read
    assert bob.node.scheduler.unread["Alice"] == [0]
    assert_all_finished(alice, bob)
