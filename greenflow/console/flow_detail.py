"""One flow as the console shows it: status, sessions, journal, progress and stack
(read on the scheduler thread, like every `Node` operation)."""
from __future__ import annotations

from typing import Any, Optional

from greenflow.runtime import snapshots as frames_mod
from greenflow.errors import UnknownFlow
from greenflow.runtime.journal import SUSPENDING, Entry, Kind, describe
from greenflow.statemachine import stacks
from greenflow.status import FlowStatus
from greenflow.console.formatting import JOURNAL_LIMIT, _repr, iso
from greenflow.console.flow_list import _cp_row, _result_row


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
                rec = store.result(fid)
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
            snap = stacks.snapshot(sched, fid) if stored else None
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
                       "sent": s.send_seq, "received": s.received,
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
