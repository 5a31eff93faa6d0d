"""Pages of a node's flow list and checkpoint dump (`Node.flow_page`,
`Node.checkpoints_page`): bounded, filtered as the store is read, and read off the
scheduler thread, so a client listing flows does not hold the flows up."""
from __future__ import annotations

import threading

import pytest
from flowlib import Sleeper

from greenflow import FlowStatus, Node
from greenflow.node import flow_listing
from greenflow.samples.ping import Ping


@pytest.fixture
def node(tmp_path, flow_state):
    n = Node.open(tmp_path / "solo", "Solo", max_resident=3)   # some waiting flows on disk only
    yield n
    n.close()


def fill(node: Node, finished: int = 12, waiting: int = 6) -> None:
    for h in node.start_flows([Ping(node.party, 1) for _ in range(finished)]):
        assert h.result(timeout=20) == 1
    node.start_flows([Sleeper(3600) for _ in range(waiting)])
    node.flows()   # a round later: every start has run to its sleep


def all_pages(node: Node, **kw) -> tuple[list, int]:
    out, cursor, pages = [], None, 0
    while True:
        page = node.flow_page(cursor=cursor, **kw)
        out += page.flows
        pages += 1
        assert len(page.flows) <= kw.get("limit", flow_listing.DEFAULT_LIMIT)
        if not page.more:
            return out, pages
        cursor = page.next_cursor


def test_pages_list_every_flow_once_unfinished_first_newest_first(node):
    fill(node)
    whole = {f.id: f for f in node.flows()}
    for limit in (1, 4, 5, 100):
        got, pages = all_pages(node, limit=limit)
        assert [f.id for f in got] == sorted({f.id for f in got}, key=lambda i: (
            whole[i].status.finished, [-ord(c) for c in i]))
        assert {f.id: f for f in got} == whole
        assert pages >= len(whole) // limit
    waiting = [f for f in whole.values() if not f.status.finished]
    assert {f.status for f in waiting} == {FlowStatus.SUSPENDED, FlowStatus.HIBERNATED}


def test_a_status_filter_is_applied_while_reading_and_skips_the_other_table(node, monkeypatch):
    fill(node)
    whole = node.flows()
    monkeypatch.setattr(node.store, "result_blobs", lambda **kw: pytest.fail("results read"))
    got, _ = all_pages(node, statuses=[FlowStatus.HIBERNATED], limit=2)
    assert {f.id for f in got} == {f.id for f in whole if f.status == FlowStatus.HIBERNATED}
    assert len(got) == 3
    monkeypatch.undo()
    monkeypatch.setattr(node.store, "header_blobs", lambda **kw: pytest.fail("headers read"))
    got, _ = all_pages(node, statuses=[FlowStatus.COMPLETED], limit=5)
    assert len(got) == 24 and {f.status for f in got} == {FlowStatus.COMPLETED}  # pings, pongs


def test_a_page_reads_at_most_scan_limit_stored_rows_and_says_where_to_go_on(node, monkeypatch):
    fill(node)
    monkeypatch.setattr(flow_listing, "SCAN_LIMIT", 4)
    read = []
    rows = node.store.result_blobs
    monkeypatch.setattr(node.store, "result_blobs",
                        lambda **kw: (read.append(r) or r for r in rows(**kw)))
    page = node.flow_page([FlowStatus.FAILED], cursor="F")   # matches none: reads on
    assert page.flows == [] and page.more and len(read) == 4
    got, pages = all_pages(node, statuses=[FlowStatus.FAILED, FlowStatus.KILLED])
    # 24 results (pings and pongs), 4 a page; the 7th, empty, finds no more
    assert got == [] and pages == 7


def test_the_store_is_read_off_the_scheduler_thread(node, monkeypatch):
    fill(node)
    readers = set()
    for name in ("header_blobs", "result_blobs"):
        real = getattr(node.store, name)
        monkeypatch.setattr(node.store, name, lambda real=real, **kw: (
            readers.add(threading.current_thread()) or real(**kw)))
    all_pages(node, limit=3)
    node.checkpoints_page(limit=2)
    assert readers == {threading.current_thread()}


def test_an_unknown_status_is_refused_not_matched_by_nothing(node):
    with pytest.raises(ValueError, match="'DONE' is not a valid FlowStatus"):
        node.flow_page(["DONE"])
    assert node.flow_page(["COMPLETED"]).flows == node.flow_page([FlowStatus.COMPLETED]).flows


def test_a_bad_cursor_is_refused(node):
    for bad in ("X123", "U", "U" + "0" * 400):
        with pytest.raises(flow_listing.BadCursor):
            node.flow_page(cursor=bad)


def test_checkpoint_dump_pages_cover_every_waiting_flow_once(node):
    fill(node, finished=2, waiting=7)
    whole = {e["flow_id"]: e for e in node.checkpoints_dump()}
    got, cursor = [], None
    while True:
        page, cursor = node.checkpoints_page(limit=3, cursor=cursor)
        assert len(page) <= 3
        got += page
        if cursor is None:
            break
    assert [e["flow_id"] for e in got] == sorted(whole, reverse=True)
    assert {e["flow_id"]: e["status"] for e in got} == {f: e["status"] for f, e in whole.items()}
    assert all(e["frames"] for e in got)
