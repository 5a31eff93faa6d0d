"""What the console shows, read from a node: JSON-ready dicts.

Reads that touch the scheduler's state or the store run on the scheduler thread
(`Node.on_scheduler`), like every other `Node` operation; the rest (filtering, sorting,
paging) runs on the request's thread.
"""
from __future__ import annotations

import os
import time
from datetime import datetime, timezone
from typing import Any, Optional

from greenflow.runtime import snapshots as frames_mod
from greenflow import serialization
from greenflow.errors import UnknownFlow
from greenflow.runtime.journal import SUSPENDING, Entry, Kind, describe
from greenflow.rpc.metrics import peer_stats, store_bytes, store_file_bytes
from greenflow.node.node import shown_status, suspended_on
from greenflow.status import FlowStatus
from greenflow.storage.interface import load_result

PAGE_SIZE = 50
# The flow list reads at most this many stored flows (and as many finished ones),
# newest first; beyond, it says the list is cut.
SCAN_LIMIT = 20_000
MAX_PAGE_SIZE = 500
JOURNAL_LIMIT = 500
REPR_LIMIT = 300

ORDER = [s.value for s in FlowStatus]


def iso(ts: Optional[float]) -> Optional[str]:
    if not ts:
        return None
    return datetime.fromtimestamp(ts, tz=timezone.utc).isoformat(timespec="seconds")


def _repr(value: Any) -> str:
    try:
        text = repr(value)
    except Exception as exc:  # noqa: BLE001 - user __repr__
        text = f"<unrepresentable {type(value).__qualname__}: {exc}>"
    return text if len(text) <= REPR_LIMIT else text[:REPR_LIMIT] + "..."


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
    return {"id": cp.flow_id, "flow_class": cp.flow_class,
            "status": shown_status(cp, resident).value, "progress_step": cp.progress_step,
            "suspended_on": suspended_on(cp), "error": cp.error, "resident": resident,
            "started_at": cp.started_at or None, "finished_at": None}


def _result_row(fid: str, rec: dict) -> dict:
    return {"id": fid, "flow_class": rec.get("flow_class"), "status": FlowStatus(rec["status"]).value,
            "progress_step": None, "suspended_on": None, "error": rec.get("error"),
            "resident": False, "started_at": rec.get("started_at"),
            "finished_at": rec.get("finished_at")}


class FilterError(ValueError):
    """A filter of the flow list that cannot be understood (answered as 400)."""


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
        size = min(MAX_PAGE_SIZE, max(1, int(query.get("size") or PAGE_SIZE)))
    except ValueError:
        raise FilterError("`page` and `size` must be whole numbers") from None

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


# ---------------------------------------------------------------------- one flow
def flow_detail(node: Any, fid: str) -> dict:
    """Everything the console shows about one flow. Raises `UnknownFlow`."""
    def collect() -> dict:
        sched, store = node.scheduler, node.store
        rt = sched.resident.get(fid)
        cp = rt.cp if rt is not None else store.checkpoint(fid)
        if cp is None:
            rec = sched.recent_results.get(fid)
            if rec is None:
                raw = store._get("results", fid.encode()) if hasattr(store, "_get") else None
                rec = load_result(raw) if raw is not None else None
            if rec is None:
                raise UnknownFlow(f"no flow {fid!r} on node {node.party.name}")
            row = _result_row(fid, rec)
            row.update(finished=True, sessions=[], frames=[], journal=[], hospital=None,
                       started=iso(row["started_at"]), finished_at_iso=iso(row["finished_at"]),
                       result=_repr(rec.get("value")) if "value" in rec else None,
                       # Only a completed flow is known to have gone through every step.
                       progress=_progress(row["flow_class"], None,
                                          row["status"] == FlowStatus.COMPLETED.value))
            return row
        resident = rt is not None
        row = _cp_row(cp, resident)
        stored = store.checkpoint(fid) is not None if resident else True
        try:
            snap = store.snapshot(fid) if stored else None
        except Exception as exc:  # noqa: BLE001
            snap = [{"function": "?", "file": "?", "line": 0,
                     "locals": {"error": f"snapshot unreadable: {exc}"}}]
        journal: list[dict] = []
        if stored:
            try:
                entries, times = store.journal_with_times(
                    fid, cp.journal_len - (1 if cp.pending else 0))
                if cp.pending is not None:  # stored in the checkpoint, not in the journal
                    entries.append(Entry(cp.pending[0], cp.pending[1], None, cp.pending[2]))
                    times.append(None)
            except Exception as exc:  # noqa: BLE001
                entries, times = [], []
                journal.append({"index": 0, "kind": "error", "asked": f"journal unreadable: {exc}",
                                "outcome": None, "when": None, "suspends": False})
            journal.extend(_journal_rows(entries, times, cp))
        row.update(
            finished=False, client_id=cp.client_id, suspension_count=cp.suspension_count,
            journal_entries=cp.journal_len, started=iso(cp.started_at),
            sessions=[{"id": s.sid, "counterparty": s.counterparty.name,
                       "role": "initiator" if s.initiator else "responder",
                       "protocol": s.protocol, "state": ("new", "open", "closed")[s.state],
                       "sent": s.send_seq, "received": s.recv_seq,
                       "peer_ended": s.peer_ended,
                       "waiting": bool(cp.pending and cp.pending[0] == Kind.RECEIVE
                                       and cp.pending[1][0] == s.sid)}
                      for s in cp.sessions.values()],
            frames=frames_mod.public(snap),
            journal=journal,
            hospital=({"diagnosis": cp.error, "retries": cp.retries,
                       "retry_at": iso(cp.retry_at),
                       "automatic": cp.retry_at is not None}
                      if cp.status == FlowStatus.HOSPITALIZED else None),
            progress=_progress(cp.flow_class, cp.progress_step, False),
        )
        return row

    return node.on_scheduler(collect)


def _journal_rows(entries: list, times: list, cp: Any) -> list[dict]:
    """One row per journal entry: what was asked, what came back, when it was committed
    (``at``) and, for a sleep or a receive timeout, until when it waits (``when``)."""
    rows = []
    start = max(0, len(entries) - JOURNAL_LIMIT)
    for i, e in enumerate(entries[start:], start):
        outcome = e.outcome
        if outcome is None:
            shown = None
        elif outcome and outcome[0] == "ok":
            shown = _repr(outcome[1] if len(outcome) > 1 else None)
        else:
            shown = " ".join(_repr(x) if not isinstance(x, str) else x for x in outcome)
        rows.append({"index": i, "kind": e.kind, "asked": describe(e.kind, e.key),
                     "outcome": shown, "pending": outcome is None,
                     "suspends": e.kind in SUSPENDING,
                     "when": iso(e.deadline) if e.deadline else None,
                     "at": iso(times[i]) if i < len(times) and times[i] is not None else None})
    if start:
        rows.insert(0, {"index": None, "kind": "...", "asked": f"{start} earlier entries not shown",
                        "outcome": None, "pending": False, "suspends": False, "when": None})
    return rows


def _progress(flow_class: Optional[str], current: Optional[str], completed: bool) -> list[dict]:
    """The flow class's progress steps as a tree, the current path marked: top-level
    steps from its tracker; a sub-flow's step (``"Parent / Child"``) nests under its
    parent's step."""
    steps: list[str] = []
    cls = _flow_class(flow_class)
    tracker = getattr(cls, "progress_tracker", None) if cls is not None else None
    if tracker is not None:
        steps = [s.label for s in getattr(tracker, "steps", ())]
    path = current.split(" / ") if current else []
    top = path[0] if path else None
    if top is not None and top not in steps:
        steps.append(top)
    out = []
    idx = steps.index(top) if top in steps else -1
    for i, label in enumerate(steps):
        if completed or i < idx:
            st = "done"
        elif i == idx:
            st = "current"
        else:
            st = "todo"
        node = {"label": label, "state": st, "children": []}
        if i == idx and len(path) > 1:
            node["children"] = [{"label": " / ".join(path[1:]), "state": "current", "children": []}]
        out.append(node)
    return out


def _flow_class(path: Optional[str]) -> Optional[type]:
    if not path:
        return None
    import importlib
    import sys

    mod, _, qual = path.rpartition(".")
    while mod:
        m = sys.modules.get(mod)
        if m is None:
            try:
                m = importlib.import_module(mod)
            except Exception:  # noqa: BLE001 - nested class: the module is shorter
                m = None
        if m is not None:
            obj: Any = m
            try:
                for part in qual.split("."):
                    obj = getattr(obj, part)
                return obj if isinstance(obj, type) else None
            except AttributeError:
                return None
        mod, _, head = mod.rpartition(".")
        qual = f"{head}.{qual}"
    return None


# ---------------------------------------------------------------------- the node
def node_overview(proc: Any, node: Any) -> dict:
    def collect() -> dict:
        sched, store = node.scheduler, node.store
        stored = store.flow_count()
        in_store_resident = sum(1 for rt in sched.resident.values() if rt.start_blob is None)
        return {"resident": len(sched.resident),
                "hibernated": max(0, stored - in_store_resident),
                "unfinished": stored + len(sched.resident) - in_store_resident,
                "store_bytes": store_bytes(node), "store_file_bytes": store_file_bytes(node),
                "draining": sched.draining, "commits": sched.stats.get("commits", 0),
                "flows_started": sched.stats.get("flows_started", 0)}

    out = node.on_scheduler(collect)
    peers = peer_stats(proc)
    netmap = getattr(proc, "netmap", None)
    me = node.party.name
    rows = []
    if netmap is not None:
        for info in netmap:
            if info.name == me:
                continue
            p = peers.get(info.name, {})
            doc = info.to_json()
            rows.append({"name": info.name, "address": doc.get("p2p_address") or doc.get("address"),
                         "notary": bool(doc.get("notary")),
                         "link_up": bool(p.get("link_up")), "inbound_up": bool(p.get("inbound_up")),
                         "frames_out": p.get("frames_out", 0), "frames_in": p.get("frames_in", 0),
                         "unacked": p.get("unacked", 0), "seen": bool(p)})
    cfg = getattr(proc, "config", None)
    out.update({"name": me, "public_key": node.party.owning_key.hex(), "peers": rows,
                "apps": getattr(cfg, "apps", None), "notary": getattr(cfg, "notary", None),
                "started": iso(getattr(proc, "started_at", None)), "pid": os.getpid(),
                "base_dir": getattr(proc, "base_dir", None)})
    return out


# ---------------------------------------------------------------------- the vault
def vault_overview(node: Any, query: dict) -> dict:
    """Unconsumed states by type (from the vault's index) and the recorded
    transactions, each paged. A node whose apps never opened a vault shows none."""
    try:
        page = max(1, int(query.get("page") or 1))
        tx_page = max(1, int(query.get("tx_page") or 1))
    except ValueError:
        raise FilterError("`page` and `tx_page` must be whole numbers") from None
    wanted = (query.get("type") or "").strip()
    size = PAGE_SIZE

    def collect() -> dict:
        services = node.services
        vault = services.get("vault")   # opened here if the ledger is installed
        if vault is None:
            return {"open": False, "types": [], "states": [], "transactions": [], "tx_total": 0}
        by_type, locks = vault.unconsumed_by_type()
        types = [{"type": t, "count": len(v)} for t, v in sorted(by_type.items())]
        chosen = wanted if wanted in by_type else (types[0]["type"] if types else None)
        states = by_type.get(chosen, []) if chosen else []
        pages = max(1, (len(states) + size - 1) // size)
        p = min(page, pages)
        shown = [{"ref": f"{sar.ref.tx_id.value.hex()}:{sar.ref.index}"
                  if hasattr(sar.ref.tx_id, "value") else _repr(sar.ref),
                  "state": _repr(sar.state), "locked_by": locks.get(sar.ref)}
                 for sar in states[(p - 1) * size: p * size]]
        txs = []
        total = node.store.table_count("vault_txs")
        tx_pages = max(1, (total + size - 1) // size)
        tp = min(tx_page, tx_pages)
        skip = (tp - 1) * size
        for i, (k, raw) in enumerate(node.store.table_items("vault_txs")):
            if i < skip:
                continue
            if len(txs) >= size:
                break
            try:
                stx = vault.stored_transaction(k)
                tx = stx.tx
                txs.append({"id": k.hex(), "inputs": len(tx.inputs), "outputs": len(tx.outputs),
                            "output_types": sorted({type(o).__name__ for o in tx.outputs}),
                            "commands": [type(getattr(c, "value", c)).__name__
                                         for c in getattr(tx, "commands", ())],
                            "notary": getattr(getattr(tx, "notary", None), "name", None),
                            "signatures": len(getattr(stx, "sigs", ()) or ())})
            except Exception as exc:  # noqa: BLE001
                txs.append({"id": k.hex(), "error": f"{type(exc).__name__}: {exc}"})
        return {"open": True, "types": types, "type": chosen, "states": shown, "page": p,
                "pages": pages, "transactions": txs, "tx_total": total, "tx_page": tp,
                "tx_pages": tx_pages}

    return node.on_scheduler(collect)
