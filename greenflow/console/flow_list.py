"""The console's flow list: every flow, stored, resident and finished, as rows; filtered,
sorted and paged per request."""
from __future__ import annotations

import itertools
import time
from datetime import datetime, timezone
from typing import Any, Optional

from greenflow import serialization
from greenflow.node.node import FlowInfo, info_from_checkpoint, info_from_result
from greenflow.statemachine import parked
from greenflow.storage.interface import load_result
from greenflow.console.formatting import (MAX_PAGE_SIZE, ORDER, PAGE_SIZE, SCAN_LIMIT,
                                          FilterError, iso)


# ---------------------------------------------------------------------- the flow list
def all_flows(node: Any, limit: int = SCAN_LIMIT) -> tuple[list[dict], bool]:
    """The flows the node knows (unfinished, and finished ones still kept), one small
    dict each, and whether the list was cut at ``limit`` stored flows (the newest kept).

    Resident flows are read on the scheduler thread (a pass over memory); the stored ones
    by the store's readers on the caller's thread, newest first (flow ids start
    with their start time), so a long list never holds up the scheduler."""
    def snapshot() -> dict[str, dict]:
        return {fid: _cp_row(rt.cp, True) for fid, rt in node.scheduler.resident.items()}

    out = node.on_scheduler(snapshot)
    store = node.store
    truncated = False
    for name, rows in (("flows", store.header_blobs), ("results", store.result_blobs)):
        seen = 0
        for fid, raw in rows(reverse=True):
            if fid in out:
                continue
            seen += 1
            if seen > limit:
                truncated = True
                break
            out[fid] = _stored_row(name, fid, raw)
        if name == "flows" and truncated:
            # Past the newest ``limit``: the parked flows still, which wait for an operator.
            for fid, raw in itertools.islice(parked.headers(store, reverse=True), limit):
                if fid not in out:
                    out[fid] = _stored_row(name, fid, raw)
    return list(out.values()), truncated


def _stored_row(db: str, fid: str, raw: bytes) -> dict:
    try:
        if db == "results":
            return _result_row(fid, load_result(raw))
        return _cp_row(serialization.loads(raw), False)
    except Exception as exc:  # noqa: BLE001 - shown, not fatal
        return {"id": fid, "flow_class": "?", "status": "UNREADABLE",
                "error": f"{type(exc).__name__}: {exc}", "progress_step": None,
                "suspended_on": None, "started_at": None, "finished_at": None,
                "resident": False}


def _cp_row(cp: Any, resident: bool) -> dict:
    return _row(info_from_checkpoint(cp, resident), cp.started_at, None)


def _result_row(fid: str, rec: dict) -> dict:
    return _row(info_from_result(fid, rec), rec.get("started_at"), rec.get("finished_at"))


def _row(info: FlowInfo, started_at: Optional[float], finished_at: Optional[float]) -> dict:
    return {"id": info.id, "flow_class": info.flow_class, "status": info.status.value,
            "progress_step": info.progress_step, "suspended_on": info.suspended_on,
            "error": info.error, "resident": info.resident, "started_at": started_at or None,
            "finished_at": finished_at}


def parse_since(text: str) -> Optional[float]:
    """``started since``: an ISO 8601 date/time (UTC unless it says otherwise), or a
    duration back from now like ``30s``, ``15m``, ``2h``, ``7d``."""
    text = (text or "").strip()
    if not text:
        return None
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    if text[-1:].lower() in units and text[:-1].replace(".", "", 1).isdigit():
        return time.time() - float(text[:-1]) * units[text[-1].lower()]
    try:
        dt = datetime.fromisoformat(text)
    except ValueError:
        raise FilterError(f"`since` must be an ISO date/time (2026-01-31T09:00) or a duration "
                          f"back from now (30s, 15m, 2h, 7d), not {text!r}") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.timestamp()


def flow_page(rows: list[dict], truncated: bool, query: dict) -> dict:
    """Filter (status, class, started since, text in the id), count per status, sort
    (newest first) and page the flow list."""
    statuses = {s.strip().upper() for s in (query.get("status") or "").split(",") if s.strip()}
    unknown = statuses - set(ORDER) - {"UNREADABLE"}
    if unknown:
        raise FilterError(f"unknown status {', '.join(sorted(unknown))} (known: {', '.join(ORDER)})")
    cls = (query.get("flow_class") or "").strip().lower()
    text = (query.get("q") or "").strip().lower()
    since = parse_since(query.get("since") or "")
    try:
        page = max(1, int(query.get("page") or 1))
        size = int(query.get("size") or PAGE_SIZE)
    except ValueError:
        raise FilterError("`page` and `size` must be whole numbers") from None
    if size < 1:   # (it was read as 1: a page of one flow, without a word)
        raise FilterError(f"`size` must be at least 1 (at most {MAX_PAGE_SIZE} is used)")
    size = min(MAX_PAGE_SIZE, size)

    def keep(r: dict, with_status: bool) -> bool:
        if with_status and statuses and r["status"] not in statuses:
            return False
        if cls and cls not in (r["flow_class"] or "").lower():
            return False
        if text and text not in r["id"].lower():
            return False
        if since is not None and (r["started_at"] or r["finished_at"] or 0) < since:
            return False
        return True

    # Counts per status follow the other filters, not the status filter itself, so the
    # operator sees what each status button would show.
    counts = {s: 0 for s in ORDER}
    for r in rows:
        if keep(r, False):
            counts[r["status"]] = counts.get(r["status"], 0) + 1
    chosen = [r for r in rows if keep(r, True)]
    chosen.sort(key=lambda r: (r["started_at"] or r["finished_at"] or 0, r["id"]), reverse=True)
    pages = max(1, (len(chosen) + size - 1) // size)
    page = min(page, pages)
    shown = chosen[(page - 1) * size: page * size]
    for r in shown:
        r["started"] = iso(r["started_at"])
        r["finished"] = iso(r["finished_at"])
    return {"flows": shown, "counts": counts, "total": len(chosen), "all": len(rows),
            "page": page, "pages": pages, "size": size,
            "truncated": SCAN_LIMIT if truncated else None}
