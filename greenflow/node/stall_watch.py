"""Flows that keep a node's scheduler to themselves.

A node runs all its flows on one thread, each until it suspends. A flow that computes
for long, or calls blocking I/O itself instead of through ``run_external`` (an HTTP
client, a database driver, ``time.sleep``), stops every other flow of the node until
it returns, and nothing else said so: flows just stopped moving. One watcher thread per
process looks at the scheduler threads of the threaded nodes it has been given, once
every `INTERVAL`: a flow still running in the same turn after `STALL_WARNING` seconds is
logged at WARNING with where it is (its stack from its ``call()``, no values), again
every `REPEAT` seconds while it lasts, and at INFO when it lets the node go on.

It costs the scheduler a counter it steps as a flow's turn begins and again as it ends
(`Running._step`: odd while a flow runs). The watcher reads the counter; only for a flow
that has run past `STALL_WARNING` in one turn does it read the thread's current frame
(``sys._current_frames``, with the cyclic collector held off: on CPython 3.11 a
collection that starts inside that call can deadlock the whole process, CPython issue
106883), never the flow's locals.
"""
from __future__ import annotations

import gc
import logging
import sys
import threading
import time
import traceback
import weakref
from typing import Any, Optional

from greenflow.runtime.flow_runtime import FlowRuntime

log = logging.getLogger("greenflow.scheduler")

#: Seconds a flow may run without suspending before it is reported.
STALL_WARNING = 5.0
#: Seconds between reports while the same flow still runs.
REPEAT = 60.0
#: Seconds between looks.
INTERVAL = 1.0
#: Frames of the flow's stack shown (the innermost).
STACK_FRAMES = 20

_MAIN = FlowRuntime._main.__code__


class _Watched:
    """What the watcher knows of one scheduler (held by the scheduler's weak key: a node
    that is dropped without being closed is not kept alive by its watch)."""

    __slots__ = ("thread", "name", "seen", "since", "told", "flow")

    def __init__(self, thread: threading.Thread, name: str) -> None:
        self.thread, self.name = thread, name
        self.seen: Optional[int] = None    # the scheduler's turn count when the flow was seen
        self.since = 0.0                   # when it was first seen in that turn
        self.told = 0.0                    # when it was last reported (0: not yet)
        self.flow: Optional[tuple[str, str]] = None


_lock = threading.Lock()
_watched: "weakref.WeakKeyDictionary[Any, _Watched]" = weakref.WeakKeyDictionary()
_thread: Optional[threading.Thread] = None


def watch(sched: Any, thread: threading.Thread, name: str) -> None:
    """Watch the flows ``sched`` runs on ``thread`` (node ``name``) until `unwatch`."""
    global _thread
    with _lock:
        _watched[sched] = _Watched(thread, name)
        if _thread is None or not _thread.is_alive():
            _thread = threading.Thread(target=_run, name="greenflow-stall-watch", daemon=True)
            _thread.start()


def unwatch(sched: Any) -> None:
    with _lock:
        _watched.pop(sched, None)


def _run() -> None:
    while True:
        time.sleep(INTERVAL)
        with _lock:
            watched = list(_watched.items())
        now = time.monotonic()
        for sched, w in watched:
            try:
                _look(w, sched.steps, now)
            except Exception:  # noqa: BLE001 - a diagnostic never takes anything down
                log.debug("stall watch of %s failed", w.name, exc_info=True)
        del watched
        sched = None   # (no reference kept while sleeping)


def _look(w: _Watched, turn: int, now: float) -> None:
    if turn != w.seen or not turn & 1:   # a new turn, or no flow running
        if w.told and w.flow is not None:
            log.info("%s: flow %s (%s) let the node go on after %.0f s without suspending",
                     w.name, w.flow[0], w.flow[1], now - w.since)
        w.seen, w.since, w.told, w.flow = turn, now, 0.0, None
        return
    ran = now - w.since
    if ran < STALL_WARNING or (w.told and now - w.told < REPEAT):
        return
    rt, stack = _running_flow(_frame_of(w.thread))
    w.told = now
    if rt is None:   # (between two flows after all: looked at again in REPEAT seconds)
        return
    w.flow = (rt.flow_id, rt.cp.flow_class)
    where = "".join(traceback.format_list(stack[-STACK_FRAMES:]))
    log.warning("%s: flow %s (%s) has run for %.0f s without suspending: every other flow of "
                "this node waits until it does. Blocking I/O and long computations belong in "
                "run_external. It is at:\n%s", w.name, rt.flow_id, rt.cp.flow_class, ran,
                where.rstrip())


def _frame_of(thread: threading.Thread) -> Any:
    """``thread``'s current frame. ``sys._current_frames`` holds the interpreter's lock of
    its thread list while it allocates; on CPython before 3.12 a cyclic collection
    started by those allocations may free an object whose finalizer takes that lock
    again, with the GIL held, and every thread of the process stops for good. So the
    collector is off for the call (and the call made only for a flow already stalled)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        return sys._current_frames().get(thread.ident)
    finally:
        if enabled:
            gc.enable()


def _running_flow(frame: Any) -> tuple[Optional[FlowRuntime], list]:
    """The flow whose code ``frame`` (a scheduler thread's current frame) belongs to, and
    its stack from its ``call()`` inwards; (None, []) when it is no flow's."""
    inner: list = []
    f = frame
    while f is not None:
        if f.f_code is _MAIN:
            rt = f.f_locals.get("self")
            if isinstance(rt, FlowRuntime):
                inner.reverse()
                return rt, traceback.StackSummary.extract(
                    ((fr, fr.f_lineno) for fr in inner), lookup_lines=True,
                    capture_locals=False)
            return None, []
        inner.append(f)
        f = f.f_back
    return None, []
