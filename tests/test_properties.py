"""Property tests: random flow programs under random power cuts give the same results
as without them, every side effect runs once, the wire decoders never raise anything
but their own clear error, and any value the wire can carry comes back equal."""
from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import programflows
from greenflow import FlowStatus, WireFormatError, wire
from greenflow.messages import decode_frame
from greenflow.testing import MockNetwork

PEERS = ["Bob", "Carol", "Dan"]

step = st.one_of(
    st.tuples(st.just("ask"), st.integers(0, 2), st.integers(-1000, 1000)),
    st.tuples(st.just("tell"), st.integers(0, 2), st.integers(-1000, 1000)),
    st.tuples(st.just("sleep"), st.just(0), st.sampled_from([0.0, 1.0, 5.0])),
    st.tuples(st.just("side"), st.just(0), st.just(0)),
)
restart = st.tuples(st.integers(0, 6), st.sampled_from(["Alice"] + PEERS))


def drive(net: MockNetwork, rounds: int = 200) -> None:
    """Run until quiet, moving virtual time to the next timer while any flow waits on one."""
    for _ in range(rounds):
        net.run_network()
        wait = net.next_timer()
        if wait is None:
            return
        net.advance_clock(wait + 0.001)


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(n_peers=st.integers(1, 3), steps=st.lists(step, max_size=10),
       cuts=st.lists(restart, max_size=4), reload=st.booleans())
def test_random_programs_survive_random_power_cuts(tmp_path_factory, n_peers, steps, cuts, reload):
    steps = [(op, peer % n_peers, value) for op, peer, value in steps]
    base = tmp_path_factory.mktemp("prop")
    log_path = str(base / "side-effects.log")
    net = MockNetwork(base / "net", reload_after_suspend=reload)
    try:
        nodes = {name: net.create_node(name) for name in ["Alice"] + PEERS[:n_peers]}
        peers = [nodes[name].party for name in PEERS[:n_peers]]
        h = nodes["Alice"].start_flow(programflows.Program(peers, steps, log_path))
        for budget, who in cuts:
            if who not in nodes:
                continue
            net.run_network(max_messages=budget)
            nodes[who] = net.restart_node(nodes[who])
        drive(net)
        alice = nodes["Alice"].node
        assert alice.handle(h.id).result() == programflows.expected_result(steps, n_peers)
        sides = [f"side-{i}" for i, s in enumerate(steps) if s[0] == "side"]
        logged = open(log_path).read().split() if os.path.exists(log_path) else []
        assert logged == sides                       # each side effect ran exactly once
        for mn in nodes.values():
            assert mn.node.checkpoints_dump() == []  # nothing left unfinished
            assert all(f.status == FlowStatus.COMPLETED for f in mn.node.flows())
    finally:
        net.close()


@pytest.mark.parametrize("decoder", [decode_frame, wire.decode], ids=["frames", "payloads"])
@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_the_decoders_raise_only_their_own_error_on_arbitrary_bytes(decoder, data):
    try:
        decoder(data)
    except WireFormatError:
        pass


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(st.none(), st.booleans(), st.integers(-2**63, 2**64 - 1),
                          st.text(max_size=20), st.binary(max_size=20),
                          st.lists(st.integers(0, 2**32), max_size=3)), min_size=11, max_size=11))
def test_the_frame_decoder_rejects_well_formed_msgpack_of_the_wrong_shape(fields):
    import msgpack
    try:
        decode_frame(msgpack.packb(fields, use_bin_type=True))
    except WireFormatError:
        pass


# Values the wire carries, nested: maps of up to 8 keys are built by msgpack itself, bigger
# ones (anywhere, also inside tuples and sets) send a payload through the decode that
# checks every map, so both paths and the switch between them are drawn.
_atoms = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=False),
                   st.text(max_size=8), st.binary(max_size=8))
_hashable = st.recursive(_atoms, lambda inner: st.one_of(st.tuples(inner, inner),
                                                         st.frozensets(inner, max_size=4)),
                         max_leaves=6)
wire_values = st.recursive(
    _atoms,
    lambda inner: st.one_of(
        st.lists(inner, max_size=5),
        st.tuples(inner, inner),
        st.dictionaries(_hashable, inner, max_size=12),
        st.sets(_hashable, max_size=10),
    ),
    max_leaves=30)


@settings(max_examples=200, deadline=None)
@given(wire_values)
def test_whatever_the_wire_carries_comes_back_equal(value):
    assert wire.decode(wire.encode(value)) == value


_TIMESTAMP_HEADERS = (b"\xd6\xff", b"\xd7\xff", b"\xc7\x0c\xff")


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(st.binary(max_size=8), st.sampled_from(
    _TIMESTAMP_HEADERS + (b"\xff", b"\xc7", b"\x0c\xff", b"\xd6", b"\xd7"))), max_size=30))
def test_a_timestamp_header_is_found_wherever_it_sits(parts):
    """The decoder's look for msgpack's own timestamp (it must take the checking path for
    those) finds exactly what a search for each header finds."""
    from greenflow.wire.decoder import _holds_timestamp_header
    data = b"".join(parts)
    assert _holds_timestamp_header(data) == any(h in data for h in _TIMESTAMP_HEADERS)
