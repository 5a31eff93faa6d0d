"""Flow greenlets are reused: a finished flow's greenlet runs the next flow's ``call()``,
so starting a flow does not pay for a new greenlet's stack. A reused greenlet must come
back clean whatever ended its flow: no frames, locals, exception state, context variables
or references of the flow before it."""
from __future__ import annotations

import gc
from typing import Optional

import greenlet
import pytest
from flowlib import Traced
from netutil import pair, run

from greenflow import FlowStatus
from greenflow.runtime import traps
from greenflow.testing import MockNetwork


def traced() -> list[dict]:
    import flowlib
    return flowlib.STATE.setdefault("traced", [])


def pool_of(mock_node) -> list:
    return mock_node.node.scheduler.idle_greenlets


def assert_idle_and_clean(g: greenlet.greenlet, pool: Optional[list]) -> None:
    """``g`` waits (in ``pool``, unless None) holding nothing of the flow it ran."""
    if pool is not None:
        assert any(p is g for p in pool)
    assert g and g.gf_runtime is None and g.gf_result is None and g.gr_context is None
    wait = g.gr_frame
    assert wait.f_code is traps._wait.__code__ and dict(wait.f_locals) == {}
    serve = wait.f_back
    assert serve.f_code is traps._serve.__code__ and serve.f_back is None
    assert {k: v for k, v in dict(serve.f_locals).items() if k != "current"} == \
        {"rt": None, "res": None}


def assert_forgotten(record: dict) -> None:
    gc.collect()
    assert record["flow"]() is None, gc.get_referrers(record["flow"]())
    assert record["local"]() is None


def assert_started_clean(record: dict) -> None:
    assert record["context"] is None
    assert record["exc_info"] == (None, None, None)


def test_flows_started_after_others_finished_run_on_reused_greenlets(net, flow_state):
    alice, bob = pair(net)
    handles = [run(net, alice, Traced(bob.party)) for _ in range(10)]
    assert [h.result() for h in handles] == [42] * 10
    runs = traced()
    distinct = {id(r["greenlet"]) for r in runs}   # the records keep them alive: ids are unique
    assert len(runs) >= 10 and len(distinct) <= 3, (len(runs), len(distinct))
    for r in runs:
        assert_started_clean(r)
        assert_forgotten(r)
    pools = pool_of(alice) + pool_of(bob)
    for g in {id(r["greenlet"]): r["greenlet"] for r in runs}.values():
        assert_idle_and_clean(g, pools)


def test_a_reused_greenlet_holds_no_reference_to_the_flow_that_failed_on_it(net, flow_state):
    alice, bob = pair(net)
    h = run(net, alice, Traced(bob.party, "fail"))
    with pytest.raises(ValueError, match="failed as asked"):
        h.result()
    first = traced()[0]
    assert_forgotten(first)
    assert_idle_and_clean(first["greenlet"], pool_of(alice))
    assert run(net, alice, Traced(bob.party)).result() == 42
    assert traced()[-1]["greenlet"] is first["greenlet"]
    assert_started_clean(traced()[-1])


@pytest.mark.parametrize("swallow", [False, True], ids=["unwinds", "swallows-the-unwinding"])
def test_a_killed_flows_greenlet_comes_back_clean_and_runs_the_next_flow(net, flow_state, swallow):
    alice, bob = pair(net)
    h = run(net, alice, Traced(bob.party, "hold", swallow=swallow))
    assert alice.kill_flow(h.id) is True
    net.run_network()
    assert alice.handle(h.id).status == FlowStatus.KILLED
    assert flow_state["unwinding"][-1] == "refused"     # its except block ran, I/O refused
    killed = traced()[-1]
    assert_forgotten(killed)
    assert_idle_and_clean(killed["greenlet"], pool_of(alice))
    handles = alice.start_flows([Traced(bob.party) for _ in range(3)])
    net.run_network()
    assert [h.result() for h in handles] == [42] * 3
    later = traced()[traced().index(killed) + 1:]
    assert any(r["greenlet"] is killed["greenlet"] for r in later)
    for r in later:
        assert_started_clean(r)


def test_a_power_cut_returns_clean_greenlets_and_the_flow_completes_after_it(net, flow_state):
    alice, bob = pair(net)
    h = run(net, alice, Traced(bob.party, "slow"))
    cut = traced()[-1]
    old_pool = pool_of(alice)
    alice = net.restart_node(alice)
    assert_forgotten(cut)
    assert_idle_and_clean(cut["greenlet"], None)   # unwound; the dead node's pool is dropped
    assert old_pool == []
    net.advance_clock(30)
    net.run_network()
    assert alice.handle(h.id).result() == 1
    assert all(r["context"] is None and r["exc_info"] == (None, None, None) for r in traced())


def test_hibernated_flows_return_their_greenlets_clean(tmp_path, flow_state):
    net = MockNetwork(tmp_path / "net", max_resident=0)    # every waiting flow hibernates
    try:
        alice, bob = pair(net)
        # Started together: they run in one round, on five greenlets.
        handles = alice.node.start_flows([Traced(bob.party, "slow") for _ in range(5)])
        net.run_network()
        assert {only.status for only in alice.flows()} == {FlowStatus.HIBERNATED}
        first = traced()[:5]
        for r in first:
            assert_forgotten(r)
            assert_idle_and_clean(r["greenlet"], pool_of(alice))
        net.advance_clock(30)
        net.run_network()
        assert [h.result() for h in handles] == [1] * 5
        woken = traced()[5:]
        assert woken and all(any(w["greenlet"] is r["greenlet"] for r in first) for w in woken)
        assert all(r["context"] is None and r["exc_info"] == (None, None, None) for r in woken)
    finally:
        net.close()


def test_the_pool_is_bounded(net, flow_state, monkeypatch):
    monkeypatch.setattr(traps, "POOL_SIZE", 2)
    alice, bob = pair(net)
    handles = [alice.start_flow(Traced(bob.party)) for _ in range(10)]
    net.run_network()
    assert [h.result() for h in handles] == [42] * 10
    assert len(pool_of(alice)) == len(pool_of(bob)) == 2


def test_a_dump_of_a_flow_on_a_reused_greenlet_shows_only_its_own_frames(net, flow_state):
    alice, bob = pair(net)
    run(net, alice, Traced(bob.party))
    h = run(net, alice, Traced(bob.party, "hold"))
    assert traced()[-1]["greenlet"] is traced()[0]["greenlet"]
    entry = [e for e in alice.checkpoints_dump() if e["flow_id"] == h.id][0]
    assert [f["function"] for f in entry["frames"]] == ["Traced.call"]
    assert entry["frames"][0]["locals"]["marker"].startswith("<flowlib.Marker")
