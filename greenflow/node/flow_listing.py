"""Pages of a node's flow list and of its checkpoint dump, each bounded in what it reads.

A node keeps finished flows' results for days: a listing of every flow read on the
scheduler thread held up every flow for as long as it read, and answered a document the
size of all of them. A page here reads:

- on the scheduler thread, memory only: the resident flows (their live checkpoints,
  which other threads must not read) and the results of the round in progress, whose
  commit is not in the store yet;
- on the caller's thread, the store (its readers take concurrent threads: an LMDB read
  transaction, or the PostgreSQL store's connection a short query at a time), newest
  first, the status filter applied to each row as it is read, at most `SCAN_LIMIT` rows.

A clustered worker (`PartyListing`) pages the same way through the whole party: its own
resident flows from memory, every partition's rows from the shared tables on the
caller's thread, each flow named with the worker that owns its partition now.

Order: unfinished flows first, then finished ones, each newest first (flow ids start
with their start time). A cursor names the phase and the last flow id a page covered;
a flow that finishes while a client pages may be listed in both phases or in neither.
"""
from __future__ import annotations

import dataclasses
import heapq
import logging
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Optional

from greenflow.node.flow_views import (FlowInfo, dump_store, info_from_checkpoint, info_from_result,
                                       stored_info)
from greenflow.statemachine import parked, stacks
from greenflow.status import FlowStatus
from greenflow.storage.interface import load_result
from greenflow.storage.partitions import partition_of

if TYPE_CHECKING:
    from greenflow.node.node import Node

log = logging.getLogger("greenflow.node")

DEFAULT_LIMIT = 1000
MAX_LIMIT = 1000
#: Stored rows one page reads at most: a filter that matches little answers a short
#: page (even an empty one) and a cursor, rather than read every kept result.
SCAN_LIMIT = 10_000
CHECKPOINTS_LIMIT = 20
MAX_CHECKPOINTS_LIMIT = 200
#: Flows whose stacks one turn of the scheduler works out for a dump: a stack may need a
#: replay, so a page's are taken a few at a time and flows run in between.
_STACKS_PER_TURN = 10
UNFINISHED = frozenset(s for s in FlowStatus if not s.finished)
FINISHED = frozenset(s for s in FlowStatus if s.finished)
_PARKED = frozenset((FlowStatus.HOSPITALIZED,))
_MAX_CURSOR = 300
#: What a flow id looks like (`greenflow.statemachine.ids`): a `checkpoints_page` cursor is one.
_FLOW_ID = re.compile(r"[0-9a-f]{8,64}")


class BadCursor(ValueError):
    """A cursor that no page gave out."""


@dataclass(frozen=True)
class FlowPage:
    flows: list[FlowInfo]
    #: What to pass as ``cursor`` for the next page; None: this was the last one.
    next_cursor: Optional[str]

    @property
    def more(self) -> bool:
        return self.next_cursor is not None


@dataclass(frozen=True)
class PartyListing:
    """What a clustered worker gives its node (``Node.party_listing``) so a page covers
    the whole party: ``open_store()``, a read-only store of every partition (closed when
    the page is read), ``owners()``, partition -> the worker whose lease on it is live,
    and ``me``, this worker's name (its resident flows are its own whatever the leases
    say)."""

    open_store: Callable[[], Any]
    owners: Callable[[], dict]
    me: str
    #: A worker's RPC address by its name (None: not known).
    rpc_of: Optional[Callable[[str], Optional[str]]] = None


def parse_cursor(cursor: Optional[str]) -> tuple[str, Optional[str]]:
    """``(phase, after)``: ``U`` (unfinished) or ``F`` (finished), and the last flow id
    covered (None: the phase's start)."""
    if cursor is None or cursor == "":
        return "U", None
    if not isinstance(cursor, str) or len(cursor) > _MAX_CURSOR or cursor[:1] not in ("U", "F") \
            or (cursor[:1] == "U" and len(cursor) == 1):
        raise BadCursor(f"bad cursor {str(cursor)[:40]!r}: pass a page's next_cursor as it was")
    return cursor[0], cursor[1:] or None


def flow_page(node: "Node", statuses: Optional[Iterable[FlowStatus]] = None,
              limit: int = DEFAULT_LIMIT, cursor: Optional[str] = None) -> FlowPage:
    """One page of `Node.flows`: at most ``limit`` flows with one of ``statuses`` (None:
    any), from ``cursor`` (a page's ``next_cursor``) on."""
    if limit < 1:
        raise ValueError("a page holds at least one flow")
    phase, after = parse_cursor(cursor)
    wanted = frozenset(map(FlowStatus, statuses)) if statuses is not None else None
    party = node.party_listing
    if party is None:
        return _page(node, node.store, wanted, limit, phase, after)
    owners = party.owners()
    store = party.open_store()
    try:
        # A flow another worker owns may be in that worker's memory or not: this one
        # cannot tell, so its stored status stands (not HIBERNATED, as for its own).
        page = _page(node, store, wanted, limit, phase, after,
                     elsewhere=lambda fid: owners.get(partition_of(fid)) not in (None, party.me))
    finally:
        store.close()
    return FlowPage([dataclasses.replace(f, worker=owners.get(
        partition_of(f.id), party.me if f.resident else None)) for f in page.flows],
        page.next_cursor)


def every_flow(node: "Node") -> list[FlowInfo]:
    """Every page of `flow_page`, each flow once (one that ended between two pages is
    listed where it was seen first)."""
    out: dict[str, FlowInfo] = {}
    cursor: Optional[str] = None
    while True:
        page = flow_page(node, None, MAX_LIMIT, cursor)
        for f in page.flows:
            out.setdefault(f.id, f)
        if page.next_cursor is None:
            return list(out.values())
        cursor = page.next_cursor


def _page(node: "Node", store: Any, wanted: Optional[frozenset], limit: int, phase: str,
          after: Optional[str], elsewhere: Optional[Callable[[str], bool]] = None) -> FlowPage:
    want_u = wanted is None or bool(wanted & UNFINISHED)
    want_f = wanted is None or bool(wanted & FINISHED)
    out: list[FlowInfo] = []
    budget = SCAN_LIMIT
    if phase == "U" and want_u:
        rows, last, budget = _unfinished(node, store, wanted, limit, after, budget, elsewhere)
        out += rows
        if last is not None:
            return FlowPage(out, "U" + last)
    if phase == "U":
        phase, after = "F", None
        if want_f and (len(out) >= limit or budget <= 0):
            return FlowPage(out, "F")
    if not want_f:
        return FlowPage(out, None)
    rows, last, budget = _finished(node, store, wanted, limit - len(out), after, budget)
    out += rows
    return FlowPage(out, None if last is None else "F" + last)


def _unfinished(node: "Node", store: Any, wanted: Optional[frozenset], limit: int,
                after: Optional[str], budget: int, elsewhere: Optional[Callable[[str], bool]] = None
                ) -> tuple[list[FlowInfo], Optional[str], int]:
    def resident() -> tuple[list[FlowInfo], frozenset]:
        res = node.scheduler.resident
        mine = (rt.cp for fid, rt in res.items() if after is None or fid < after)
        if wanted is not None:
            mine = (cp for cp in mine if cp.status in wanted)
        top = heapq.nlargest(limit + 1, mine, key=lambda cp: cp.flow_id)
        return [info_from_checkpoint(cp, True) for cp in top], frozenset(res)

    mem, skip = node.on_scheduler(resident)

    def stored(fid: str, raw: bytes) -> FlowInfo:
        info = stored_info(fid, raw)
        if elsewhere is not None and info.status == FlowStatus.HIBERNATED and elsewhere(fid):
            return dataclasses.replace(info, status=FlowStatus.SUSPENDED)
        return info

    decode = _decoder("checkpoint", stored, wanted)
    rows = store.header_blobs(reverse=True, after=after)
    if wanted is not None and wanted <= _PARKED and parked.indexed(store):
        rows = parked.headers(store, reverse=True, after=after)   # not every flow's header
    return _merge(mem, rows, decode, skip, limit, budget)


def _decoder(what: str, to_info: Any, wanted: Optional[frozenset]) -> Any:
    """A stored row's `FlowInfo` if its status is wanted; None for one that is not, or
    that cannot be read (logged: one bad row does not end a listing)."""
    def decode(fid: str, raw: bytes) -> Optional[FlowInfo]:
        try:
            info = to_info(fid, raw)
        except Exception as exc:  # noqa: BLE001 - one bad row does not end a listing
            log.warning("flow %s: stored %s unreadable, left out of a listing: %s", fid, what, exc)
            return None
        return info if wanted is None or info.status in wanted else None
    return decode


def _finished(node: "Node", store: Any, wanted: Optional[frozenset], limit: int,
              after: Optional[str], budget: int) -> tuple[list[FlowInfo], Optional[str], int]:
    # The latest results (a bounded cache, copied whole: one C-level copy) cover the
    # flows that ended in the round in progress, whose records are not committed yet.
    recent: dict[str, dict] = node.on_scheduler(lambda: dict(node.scheduler.recent_results))
    mine = ((fid, rec) for fid, rec in recent.items() if after is None or fid < after)
    if wanted is not None:
        mine = ((fid, rec) for fid, rec in mine if rec["status"] in wanted)
    mem = [info_from_result(fid, rec) for fid, rec in heapq.nlargest(limit + 1, mine,
                                                                     key=lambda r: r[0])]

    decode = _decoder("result", lambda fid, raw: info_from_result(fid, load_result(raw)),
                      wanted)
    return _merge(mem, store.result_blobs(reverse=True, after=after), decode, recent,
                  limit, budget)


def _merge(mem: list[FlowInfo], stored: Iterator[tuple[str, bytes]],
           decode: Callable[[str, bytes], Optional[FlowInfo]], skip: Any, limit: int,
           budget: int) -> tuple[list[FlowInfo], Optional[str], int]:
    """Up to ``limit`` flows from ``mem`` (newest first, ahead of the store) and the
    ``stored`` rows (newest first) whose ids ``skip`` does not hold; and the id to go on
    after (None: both ran out), and what is left of ``budget`` (stored rows to read).

    Every flow newer than the id returned was listed or left out by the filter, so the
    next page starts right after it."""
    out: list[FlowInfo] = []
    i = 0

    def take_mem(bound: Optional[str]) -> None:
        nonlocal i
        while i < len(mem) and len(out) < limit and (bound is None or mem[i].id > bound):
            out.append(mem[i])
            i += 1

    try:
        for fid, raw in stored:
            take_mem(fid)
            if len(out) >= limit:
                return out, out[-1].id, budget
            budget -= 1
            if fid not in skip:
                info = decode(fid, raw)
                if info is not None:
                    out.append(info)
                    if len(out) >= limit:
                        return out, fid, budget
            if budget <= 0:
                return out, fid, 0
    finally:
        close = getattr(stored, "close", None)
        if close is not None:
            close()   # ends the store's read transaction now, not when collected
    take_mem(None)
    return out, (out[-1].id if i < len(mem) else None), budget


# ---------------------------------------------------------------------- checkpoints
def checkpoints_page(node: "Node", limit: int = CHECKPOINTS_LIMIT,
                     cursor: Optional[str] = None) -> tuple[list[dict], Optional[str]]:
    """One page of `Node.checkpoints_dump` (newest first) and the cursor of the next
    (None: the last page). The headers are read off the scheduler; the stacks (live
    frames, or a replay) on it, `_STACKS_PER_TURN` flows at a time."""
    if limit < 1:
        raise ValueError("a page holds at least one flow")
    if cursor is not None and (not isinstance(cursor, str) or len(cursor) > _MAX_CURSOR
                               or not _FLOW_ID.fullmatch(cursor)):
        # (a cursor is the last flow id of a page: anything else, e.g. a `/flows` page's
        # cursor, started the listing again from the top without a word)
        raise BadCursor(f"bad cursor {str(cursor)[:40]!r}: pass a page's next_cursor as it was")
    rows: list[tuple[str, bytes]] = []
    stored = node.store.header_blobs(reverse=True, after=cursor)
    try:
        for row in stored:
            rows.append(row)
            if len(rows) > limit:
                break
    finally:
        close = getattr(stored, "close", None)
        if close is not None:
            close()
    more = len(rows) > limit
    rows = rows[:limit]
    sched = node.scheduler
    stacks_of: dict[str, Any] = {}
    resident: set[str] = set()

    def turn(fids: list[str]) -> None:
        for fid in fids:
            if fid in sched.resident:
                resident.add(fid)
            try:
                stacks_of[fid] = (stacks.snapshot(sched, fid), None)
            except Exception as exc:  # noqa: BLE001 - shown in the dump
                stacks_of[fid] = (None, exc)

    fids = [fid for fid, _ in rows]
    for at in range(0, len(fids), _STACKS_PER_TURN):
        chunk = fids[at:at + _STACKS_PER_TURN]
        node.on_scheduler(lambda c=chunk: turn(c))

    def frames_of(fid: str) -> Any:
        snap, exc = stacks_of.get(fid, (None, None))
        if exc is not None:
            raise exc
        return snap

    out = dump_store(node.store, resident, frames_of, rows)
    return out, (rows[-1][0] if more else None)
