"""What the cyclic garbage collector has to walk per message and per waiting flow.

With thousands of flows in flight, every collection walks what those flows hold, so the
per-message objects that can take part in no reference cycle (frames, inbox items, the
events a message brings) are never tracked, and a waiting flow holds nothing beyond its
own state (no arguments of the switch it waits in). The frames themselves are still the
11-field msgpack lists every node version reads.
"""
from __future__ import annotations

import gc

import msgpack
import pytest
from flowlib import ReceiveFirst
from netutil import pair

from greenflow.errors import WireFormatError
from greenflow.flows.context import current_runtime_or_none
from greenflow.flows.flow_logic import FlowLogic
from greenflow.messages import (CONFIRM, DATA, END, ERROR, INIT, REJECT, Frame, decode_frame,
                                encode_frame)
from greenflow.party import Party
from greenflow.runtime.flow_runtime import InboxItem
from greenflow.statemachine.events import Acked, FrameArrived

FRAMES = [
    Frame(INIT, "f.1", True, 0, b"\x01", "app.Ping", 2, "app"),
    Frame(INIT, "f.1", True, 0, None, "app.Ping", 1, "app", reason="info"),
    Frame(DATA, "f.1", False, 3, b"xy", info=(1, "other"), ends=True, reason="ended"),
    Frame(END, "f.1", True, 4, reason="closed the session"),
    Frame(ERROR, "f.1", False, 5, error=("mod.Boom", "it broke", 7)),
    Frame(REJECT, "f.1", False, 0, reason="refused: busy"),
    Frame(CONFIRM, "f.1", False, 1, info=(3, "x")),
]


def _as_older_nodes_wrote(f: Frame) -> bytes:
    return msgpack.packb([f.kind | 0x10 if f.ends else f.kind, f.sid, f.to_responder, f.seq,
                          f.payload, f.protocol, f.version, f.app,
                          list(f.info) if f.info else None, f.reason,
                          list(f.error) if f.error else None], use_bin_type=True)


@pytest.mark.parametrize("frame", FRAMES, ids=lambda f: f.describe())
def test_frames_are_the_list_every_node_version_reads(frame):
    data = encode_frame(frame)
    assert data == _as_older_nodes_wrote(frame)
    assert decode_frame(data) == frame


@pytest.mark.parametrize("fields", [
    [DATA, "f.1", True, 1, b"x", "", 0, "", None, "", None, "twelfth"],   # 12 fields
    [DATA, "f.1", True, 1, "text", "", 0, "", None, "", None],           # payload not bytes
    [DATA, "", True, 1, None, "", 0, "", None, "", None],                # empty session id
    [DATA, "f.1", True, -1, None, "", 0, "", None, "", None],            # negative seq
    [DATA, "f.1", 1, 1, None, "", 0, "", None, "", None],                # to_responder not bool
    [DATA, "f.1", True, 1, None, "", 0, "", [1, "a", 3], "", None],      # info of 3
    [99, "f.1", True, 1, None, "", 0, "", None, "", None],               # unknown kind
    [END | 0x10, "f.1", True, 1, None, "", 0, "", None, "", None],       # END cannot end twice
    [DATA, [[[[]]]], True, 1, None, "", 0, "", None, "", None],          # nested lists
], ids=["12 fields", "str payload", "empty sid", "negative seq", "int flag", "info of 3",
        "unknown kind", "ends on END", "nested lists"])
def test_a_frame_of_another_shape_is_refused_by_name(fields):
    with pytest.raises(WireFormatError, match="malformed frame"):
        decode_frame(msgpack.packb(fields, use_bin_type=True))


def test_a_map_or_garbage_is_refused():
    for data in (msgpack.packb({"kind": 2}), b"\xc1", b"", encode_frame(FRAMES[0]) + b"\x00"):
        with pytest.raises(WireFormatError):
            decode_frame(data)


def test_per_message_objects_are_not_tracked_by_the_cyclic_collector():
    frame = decode_frame(encode_frame(FRAMES[2]))
    assert not gc.is_tracked(frame)
    assert not gc.is_tracked(FRAMES[4])
    assert not gc.is_tracked(InboxItem(frame, False))
    assert not gc.is_tracked(FrameArrived(Party("Bob"), b"data"))
    assert not gc.is_tracked(Acked("Bob", (("f.1", True, 1),)))


def test_a_waiting_flow_holds_no_arguments_of_its_switch(net):
    alice, bob = pair(net)
    handle = alice.start_flow(ReceiveFirst(bob.party))
    sched = alice.node.scheduler
    sched.pump()   # Alice's round only: the flow waits in receive for Bob's greeting
    if sched.reload_after_suspend:
        pytest.skip("the waiting flow is not held in memory on this node")
    rt = sched.resident[handle.id]
    entry = rt.pending
    assert entry is rt.journal[-1] and entry.outcome is None
    holders = [r for r in gc.get_referrers(entry) if r is not rt.journal and r is not rt]
    assert holders == [] or all(type(r) is not tuple for r in holders), holders
    net.run_network()
    assert handle.result() == "hello from Bob"


def test_tracked_objects_per_waiting_flow_are_few(net):
    """A bound on what every collection walks per waiting flow; it was one more (the
    switch's argument tuple) and, before their commit, two frames per ping-pong."""
    alice, bob = pair(net)
    sched = alice.node.scheduler
    alice.start_flow(ReceiveFirst(bob.party))
    sched.pump()   # warm: imports, pools, caches
    n = 300
    gc.collect()
    before = len(gc.get_objects())
    handles = [alice.start_flow(ReceiveFirst(bob.party)) for _ in range(n)]
    sched.pump()
    gc.collect()
    per_flow = (len(gc.get_objects()) - before) / n
    # The flow's runtime, checkpoint, session table and state, journal and its entry,
    # FlowSession, flow object and its __dict__, greenlet, handle: 12 (3 where waiting
    # flows are evicted).
    assert per_flow <= 12.5, per_flow   # 13 before the switch stopped holding its argument
    net.run_network()
    assert all(h.result() == "hello from Bob" for h in handles)


class MakesGarbage(FlowLogic):
    """Allocates thousands of containers in reference cycles while it runs."""

    def call(self) -> int:
        made = 0
        for _ in range(5_000):
            a: list = []
            a.append(a)
            made += 1
        return made


def test_the_collector_runs_between_rounds_not_inside_them(net):
    node = net.create_node("Alice")
    seen: list[bool] = []   # per collection: did it start while a flow ran?

    def watch(phase: str, info: dict) -> None:
        if phase == "start":
            seen.append(current_runtime_or_none() is not None)

    before = gc.get_threshold()
    gc.set_threshold(100, 10, 10)   # without the deferral a collection every 100 lists
    gc.callbacks.append(watch)
    try:
        handle = node.start_flow(MakesGarbage())
        net.run_network()
        assert handle.result() == 5_000
        assert gc.isenabled()
        assert not any(seen), f"{sum(seen)} collections started inside the flow's round"
        garbage = [[] for _ in range(1_000)]   # after the round the collector runs again
        assert seen, "no collection after the round"
        del garbage
        gc.disable()                 # a process that turned the collector off keeps it off
        try:
            node.start_flow(MakesGarbage())
            net.run_network()
            assert not gc.isenabled()
        finally:
            gc.enable()
    finally:
        gc.callbacks.remove(watch)
        gc.set_threshold(*before)
