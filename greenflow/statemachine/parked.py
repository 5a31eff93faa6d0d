"""The index of parked flows: the ids of stored flows that wait for an operator or for
the hospital's retry (HOSPITALIZED), and of flows whose checkpoint cannot be read.

Counting or listing parked flows otherwise means decoding every stored checkpoint,
which the metrics and the console cannot afford above a few tens of thousands of flows
(a node may hold millions, nearly all hibernated). So the scheduler keeps this table in
the same commits that park a flow (`Loading._park`, `Loading._hospitalize_stored`) and
take it out again (`Loading.retry`, `Ending.kill`), on either store. A store written by
a version without the index gets it built once when a node opens it (every checkpoint
read once, logged); the row keyed by a NUL says the index is complete, so a
read-only view of an older store is told there is no index rather than an empty one.
"""
from __future__ import annotations

import logging
import time
from typing import Any, Iterator, Optional

from greenflow import serialization
from greenflow.status import FlowStatus
from greenflow.storage.interface import Batch
from greenflow.storage.partitions import partition_of

log = logging.getLogger("greenflow.scheduler")

TABLE = "parked_flows"
_COMPLETE = b"\0"   # the marker row (no flow id has a NUL): every parked flow is in the table


def mark(batch: Any, fid: str) -> None:
    batch.table_put(TABLE, fid.encode(), b"")


def unmark(batch: Any, fid: str) -> None:
    batch.table_delete(TABLE, fid.encode())


def open_index(store: Any, batch: Batch, name: str = "") -> None:
    """Open the table; where the store was written without it, build it into ``batch``
    (the scheduler's first round commits it, on the scheduler's thread)."""
    store.open_table(TABLE)
    if store.readonly or store.table_get(TABLE, _COMPLETE) is not None:
        return
    t0 = time.monotonic()
    seen, parked = 0, 0
    # The index is the party's: a clustered worker's store lists only the partitions it
    # holds, so the build reads them all (before the worker serves anything).
    for fid, raw in store.header_blobs(party_wide=True):
        seen += 1
        try:
            cp = serialization.loads(raw)
            stuck = cp.status == FlowStatus.HOSPITALIZED
        except Exception:  # noqa: BLE001 - an unreadable checkpoint waits for an operator too
            stuck = True
        if stuck:
            mark(batch, fid)
            parked += 1
    batch.table_put(TABLE, _COMPLETE, b"")
    if seen:
        log.info("%s: indexed the parked flows of its store: %d of %d stored flows, in %.1f s",
                 name or store.path, parked, seen, time.monotonic() - t0)


def indexed(store: Any) -> bool:
    """Whether the store has the index (not a read-only view of a store no node of this
    version has opened, nor one whose first round after an upgrade has not committed)."""
    return store.table_get(TABLE, _COMPLETE) is not None


def count(store: Any) -> Optional[int]:
    """How many flows are parked; None for a store without the index (`indexed`)."""
    if not indexed(store):
        return None
    owned = getattr(store, "owned", None)
    if owned is not None:   # a clustered worker: the parked flows of its partitions
        parts = set(owned())
        return sum(1 for fid in flow_ids(store) if partition_of(fid) in parts)
    return max(0, store.table_count(TABLE) - 1)


def flow_ids(store: Any, reverse: bool = False, after: Optional[str] = None) -> Iterator[str]:
    """The parked flows' ids in id order, so oldest first (``reverse``: newest first);
    ``after``: only ids strictly past it in that order. None without the index."""
    start = None if after is None else after.encode()
    for key, _ in store.table_items(TABLE, reverse=reverse, after=start):
        if key != _COMPLETE:
            yield key.decode("utf-8", "replace")


def headers(store: Any, reverse: bool = False, after: Optional[str] = None
            ) -> Iterator[tuple[str, bytes]]:
    """(id, stored header) of each parked flow, as `FlowStore.header_blobs` gives them."""
    for fid in flow_ids(store, reverse, after):
        raw = store.header_blob(fid)
        if raw is not None:
            yield fid, raw
