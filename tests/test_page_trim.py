"""The store's map is trimmed out of the node's RSS without losing anything."""
import os

import pytest

from greenflow.storage import page_trim
from greenflow.storage.interface import Batch
from greenflow.storage.lmdb_store import LmdbStore as Store

pytestmark = [pytest.mark.skipif(not page_trim.supported(), reason="needs Linux /proc"),
              pytest.mark.lmdb_only]


def _fill(store: Store, rows: int) -> dict:
    data = {}
    for start in range(0, rows, 500):
        b = Batch()
        for i in range(start, start + 500):
            k, v = "k%08d" % i, os.urandom(700)
            data[k] = v
            b.put_header_unchecked(k, v)
        store.commit(b)
    return data


def _read_all(store: Store) -> dict:
    return dict(store.header_blobs())


def test_trim_drops_map_pages_from_rss_and_keeps_every_row(tmp_path):
    store = Store(str(tmp_path / "node"), sync=False)
    try:
        data = _fill(store, 40_000)          # ~30 MB of pages touched through the map
        assert _read_all(store) == data
        before = page_trim.file_backed_rss()
        store.trimmer.budget = 1
        assert store.trimmer.trim_if_over()
        after = page_trim.file_backed_rss()
        assert before - after > 20 * 1024 * 1024, (before, after)
        assert _read_all(store) == data      # pages come back from the page cache
        store.commit(Batch())                # and the store keeps committing
        _fill(store, 1_000)
        assert len(_read_all(store)) == 40_000
    finally:
        store.close()


def test_trimmer_checks_only_every_so_many_commits_and_stays_under_budget(tmp_path):
    store = Store(str(tmp_path / "node"), sync=False)
    try:
        store.trimmer.budget = page_trim.file_backed_rss() + 8 * 1024 * 1024
        _fill(store, 60_000)                 # 120 commits
        assert store.trimmer.trims == 0      # fewer than CHECK_EVERY commits: not looked yet
        for _ in range(page_trim.CHECK_EVERY):
            store.commit(Batch())
        assert store.trimmer.trims == 1
        assert page_trim.file_backed_rss() <= store.trimmer.budget
    finally:
        store.close()


def test_read_only_store_never_trims(tmp_path):
    Store(str(tmp_path / "node"), sync=False).close()
    ro = Store(str(tmp_path / "node"), readonly=True)
    try:
        assert not ro.trimmer.enabled
    finally:
        ro.close()


def test_an_idle_node_trims_the_pages_its_reads_mapped(tmp_path):
    """The trim ran after commits only: a node that read much (a listing of every flow)
    and then committed nothing kept the pages in its RSS."""
    import time

    from greenflow import Node
    node = Node.open(str(tmp_path / "solo"), name="Solo", retention=1)   # upkeep each 0.1 s
    try:
        store = node.store
        trims = store.trimmer.trims
        store.trimmer.budget = 1
        end = time.monotonic() + 10
        while store.trimmer.trims == trims and time.monotonic() < end:
            time.sleep(0.05)
        assert store.trimmer.trims > trims
    finally:
        node.close()
