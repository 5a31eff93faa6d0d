"""What the console reads from a node, in process: the flow list's bounds and filters,
one flow's journal and stack, the vault without a vault."""
from __future__ import annotations

import time

import pytest

from consoleflows import Napper, Stepper
from greenflow.console import data
from greenflow.node.node import Node


@pytest.fixture
def node(tmp_path):
    with Node(str(tmp_path / "n"), "O=Console,L=London,C=GB", apps=["consoleflows"],
              reload_after_suspend=True, sync=False) as n:
        yield n


def wait_status(node: Node, fid: str, status: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while node.flow_info(fid).status.value != status:
        assert time.monotonic() < deadline, f"{fid} never became {status}"
        time.sleep(0.02)


def test_the_flow_list_reads_at_most_the_newest_stored_flows(node):
    ids = []
    for i in range(5):
        ids.append(node.start_flow(Napper(parcel=f"p{i}")).id)
        time.sleep(0.002)  # ids start with the millisecond: keep them ordered
    for fid in ids:
        wait_status(node, fid, "HIBERNATED")
    rows, cut = data.all_flows(node, limit=3)
    assert cut and [r["id"] for r in sorted(rows, key=lambda r: r["id"])] == ids[2:]
    rows, cut = data.all_flows(node)
    assert not cut and {r["id"] for r in rows} == set(ids)
    page = data.flow_page(rows, False, {"status": "HIBERNATED", "size": "2", "page": "2"})
    assert page["total"] == 5 and page["pages"] == 3 and page["page"] == 2
    assert [r["id"] for r in page["flows"]] == [ids[2], ids[1]]  # newest first
    assert page["counts"]["HIBERNATED"] == 5


def test_flow_list_filters(node):
    nap = node.start_flow(Napper(parcel="x")).id
    step = node.start_flow(Stepper(pause=0.01))
    assert step.result(timeout=30) == 3
    wait_status(node, nap, "HIBERNATED")
    rows, _ = data.all_flows(node)
    by = lambda **q: {r["id"] for r in data.flow_page([dict(r) for r in rows], False, q)["flows"]}  # noqa: E731
    assert by(status="completed") == {step.id}
    assert by(flow_class="napper") == {nap}
    assert by(q=nap[-8:]) == {nap}
    assert by(since="1h") == {nap, step.id}
    assert by(since="2999-01-01") == set()
    counts = data.flow_page(rows, False, {"status": "COMPLETED"})["counts"]
    assert counts["COMPLETED"] == 1 and counts["HIBERNATED"] == 1  # other filters only
    for bad, word in (({"status": "SLEEPY"}, "SLEEPY"), ({"since": "yesterday"}, "since"),
                      ({"page": "two"}, "page")):
        with pytest.raises(data.FilterError, match=word):
            data.flow_page(rows, False, bad)


def test_one_flow_shows_its_journal_stack_and_progress_from_disk(node):
    fid = node.start_flow(Napper(parcel="cup")).id
    wait_status(node, fid, "HIBERNATED")
    d = data.flow_detail(node, fid)
    assert d["frames"][0]["locals"]["parcel_label"] == "'parcel:cup'"
    assert d["frames"][0]["locals"]["api_token"] == "<redacted>"
    assert [j["asked"] for j in d["journal"]] == ["sleep 600.0s"] and d["journal"][0]["pending"]
    assert [(p["label"], p["state"]) for p in d["progress"]] == [
        ("Packing the parcel", "done"), ("Waiting for the courier", "current"), ("Shipping", "todo")]
    node.kill_flow(fid)
    d = data.flow_detail(node, fid)
    assert d["status"] == "KILLED" and d["finished"] and d["started"] and d["finished_at_iso"]
    assert {p["state"] for p in d["progress"]} == {"todo"}  # not known to have done any step
    step = node.start_flow(Stepper(pause=0.01))
    step.result(timeout=30)
    assert {p["state"] for p in data.flow_detail(node, step.id)["progress"]} == {"done"}


def test_a_node_without_a_vault_says_so_and_opens_none(tmp_path):
    with Node(str(tmp_path / "plain"), "O=Plain,L=London,C=GB", apps=["consoleflows"], sync=False) as n:
        v = data.vault_overview(n, {})
        from greenflow.node.services import _FACTORIES
        assert v["open"] == ("vault" in _FACTORIES)


@pytest.mark.parametrize("reload", [False, True], ids=["resident", "reload"])
def test_the_journal_says_when_each_entry_was_committed(tmp_path, reload):
    from greenflow.testing import MockNetwork

    net = MockNetwork(tmp_path / "net", reload_after_suspend=reload)
    try:
        a = net.create_node("Alice", apps=["consoleflows"])
        h = a.start_flow(Stepper(pause=30))
        net.run_network()
        t0 = net.clock.now()
        net.advance_clock(31)
        net.run_network()
        t1 = net.clock.now()
        net.advance_clock(31)
        net.run_network()
        rows = data.flow_detail(a.node, h.id)["journal"]
        sleeps = [r for r in rows if r["kind"] == "sleep"]
        assert len(sleeps) == 3
        # The first sleep was answered in the round at t1, the second at t1 + 31; the third
        # still waits (committed nowhere but in the header: no time of its own).
        assert [r["at"] for r in sleeps] == [data.iso(t1), data.iso(t1 + 31), None]
        assert sleeps[2]["pending"] and sleeps[2]["when"] == data.iso(t1 + 31 + 30)
        assert t1 == t0 + 31
    finally:
        net.close()


def test_the_console_lists_every_flow_as_the_node_does(node):
    """Both listings come from one builder per record kind (checkpoint, result record):
    for an unfinished, a completed and a killed flow they agree field by field."""
    nap = node.start_flow(Napper(parcel="x")).id
    killed = node.start_flow(Napper(parcel="y")).id
    step = node.start_flow(Stepper(pause=0.01))
    assert step.result(timeout=30) == 3
    wait_status(node, nap, "HIBERNATED")
    wait_status(node, killed, "HIBERNATED")
    node.kill_flow(killed)
    wait_status(node, killed, "KILLED")
    fields = ("id", "flow_class", "status", "progress_step", "suspended_on", "resident", "error")
    listed = {f.id: {k: getattr(f, k) for k in fields} for f in node.flows()}
    for f in listed.values():
        f["status"] = f["status"].value
    rows, _ = data.all_flows(node)
    shown = {r["id"]: {k: r[k] for k in fields} for r in rows}
    assert shown == listed
    assert {f["status"] for f in shown.values()} == {"HIBERNATED", "COMPLETED", "KILLED"}
    assert shown[nap]["suspended_on"] and shown[nap]["progress_step"] == "Waiting for the courier"
    assert data.flow_detail(node, killed)["status"] == node.flow_info(killed).status.value


def test_a_finished_flow_shows_after_a_restart_read_from_the_store(tmp_path):
    """After a restart a finished flow is known only by its stored result record: the
    detail page reads it through the store's interface, whichever store it is."""
    path, name = str(tmp_path / "n"), "O=Console,L=London,C=GB"
    with Node(path, name, apps=["consoleflows"], sync=False) as n:
        fid = n.start_flow(Stepper(pause=0.0)).id
        assert n.handle(fid).result(timeout=20) is not None
    with Node(path, name, apps=["consoleflows"], sync=False) as n:
        d = data.flow_detail(n, fid)
        assert d["finished"] and d["status"] == "COMPLETED" and d["flow_class"].endswith("Stepper")


def test_parked_flows_are_found_past_the_newest_stored_flows(node, tmp_path, monkeypatch):
    """The console's list, the metrics and a listing by status read only the newest
    stored flows past a bound (20,000 and 10,000): parked flows older than those were
    left out (2,000 parked among a million hibernated showed as 0)."""
    from consoleflows import Fickle
    from greenflow.node import flow_listing
    from greenflow.rpc import metrics
    from greenflow.status import FlowStatus
    marker = tmp_path / "changed"
    fickles = [node.start_flow(Fickle(str(marker), seconds=1.0)).id for _ in range(2)]
    for fid in fickles:
        wait_status(node, fid, "HIBERNATED")
    marker.write_text("new code")   # replayed, they no longer match their journals
    naps = []
    for i in range(5):
        time.sleep(0.002)   # ids start with the millisecond: newer than the parked ones
        naps.append(node.start_flow(Napper(parcel=f"p{i}")).id)
    for fid in fickles:
        wait_status(node, fid, "HOSPITALIZED")
    for fid in naps:
        wait_status(node, fid, "HIBERNATED")

    monkeypatch.setattr(metrics, "STATUS_SCAN_LIMIT", 3)
    counts = node.on_scheduler(lambda: metrics._count_statuses(node))
    assert (counts["HOSPITALIZED"], counts["HIBERNATED"]) == (2, 5), counts
    assert "HIBERNATED_OR_HOSPITALIZED" not in counts
    rows, cut = data.all_flows(node, limit=3)
    assert cut and set(fickles) <= {r["id"] for r in rows}
    assert {r["status"] for r in rows if r["id"] in fickles} == {"HOSPITALIZED"}
    monkeypatch.setattr(flow_listing, "SCAN_LIMIT", 3)
    page = flow_listing.flow_page(node, [FlowStatus.HOSPITALIZED])
    assert sorted(f.id for f in page.flows) == sorted(fickles) and page.next_cursor is None

    # Retried and killed, they leave the index with their status.
    assert node.kill_flow(fickles[0])
    marker.unlink()
    assert node.retry_flow(fickles[1])
    wait_status(node, fickles[1], "COMPLETED")
    counts = node.on_scheduler(lambda: metrics._count_statuses(node))
    assert (counts["HOSPITALIZED"], counts["HIBERNATED"]) == (0, 5), counts
    assert flow_listing.flow_page(node, [FlowStatus.HOSPITALIZED]).flows == []


def test_a_store_without_the_index_of_parked_flows_gets_it_when_opened(tmp_path):
    from consoleflows import Fickle
    from greenflow.statemachine import parked
    from greenflow.storage.interface import Batch
    marker = tmp_path / "changed"
    path = str(tmp_path / "n")
    with Node(path, "O=Console,L=London,C=GB", apps=["consoleflows"],
              reload_after_suspend=True) as n:
        fid = n.start_flow(Fickle(str(marker), seconds=0.5)).id
        wait_status(n, fid, "HIBERNATED")
        marker.write_text("new code")
        wait_status(n, fid, "HOSPITALIZED")
        nap = n.start_flow(Napper()).id
        wait_status(n, nap, "HIBERNATED")
        assert list(parked.flow_ids(n.store)) == [fid]
        # As a store written by a version without the index.
        b = Batch()
        for key, _ in list(n.store.table_items(parked.TABLE)):
            b.table_delete(parked.TABLE, key)
        n.on_scheduler(lambda: n.store.commit(b))
        assert parked.count(n.store) is None
    with Node(path, "O=Console,L=London,C=GB", apps=["consoleflows"]) as n:
        deadline = time.monotonic() + 10
        while parked.count(n.store) is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert parked.count(n.store) == 1 and list(parked.flow_ids(n.store)) == [fid]
