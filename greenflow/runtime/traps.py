"""The only place a flow's greenlet switches back to the node's scheduler.

A flow runs in a `FlowGreenlet` whose parent is the greenlet running the scheduler
loop. Flow code never switches by itself: every suspension point funnels through
`switch_to_scheduler`, which hands the scheduler the pending journal entry (a small
request object saying what the flow waits for, left in ``rt.pending``: see `asked`) and
returns what the scheduler resumes it with. Anything that is not a flow greenlet asking is refused loudly, so misuse fails
at once instead of hanging. The only other switches to the scheduler are a flow
greenlet's own: handing over its finished flow's result and waiting, idle, to be given
the next flow (`_serve`); the scheduler alone ever switches into a flow greenlet.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional

import greenlet

from greenflow.errors import FlowError
from greenflow.flows.context import current_runtime, current_runtime_or_none

__all__ = ["Diverged", "FlowGreenlet", "Unwind", "asked", "current_runtime",
           "current_runtime_or_none", "ended_with", "flow_greenlet", "recycle",
           "switch_to_scheduler"]

if TYPE_CHECKING:
    from greenflow.runtime.flow_runtime import FlowRuntime
    from greenflow.runtime.journal import Entry


class Unwind(greenlet.GreenletExit):
    """Thrown into a flow greenlet to unwind it (kill, hibernation, power cut). A
    ``GreenletExit`` so that ``except Exception`` in flow code does not swallow it."""

    def __init__(self, why: str) -> None:
        super().__init__(why)
        self.why = why


class Diverged(greenlet.GreenletExit):
    """Raised inside a flow when replay disagrees with the journal. Not an `Exception`:
    flow code cannot catch it by accident; the runtime parks the flow instead."""


class FlowGreenlet(greenlet.greenlet):
    """A greenlet that knows which flow it runs (``gf_runtime``; None while it is idle).

    Slotted (no per-instance dict: ~100 B less per resident flow). It runs `_serve`, which
    takes one flow after another (see `flow_greenlet` and `recycle`); the runtime reaches
    it as the value of a switch, so no bound-method object stays alive beside each
    waiting flow.
    """

    __slots__ = ("gf_runtime", "gf_result")

    def __init__(self, run: Any, runtime: "FlowRuntime", parent: Optional[greenlet.greenlet] = None):
        super().__init__(run, parent)
        self.gf_runtime = runtime
        self.gf_result: Any = None   # a finished flow's end, until the scheduler takes it


#: Idle flow greenlets a scheduler keeps for reuse. Starting a flow on a fresh greenlet
#: costs CPython the allocation of a new frame stack, and its end the freeing of it: a
#: large share of a short flow's overhead. An idle greenlet holds ~6 KB, so the pool is
#: bounded (~60 MB when full); above the bound a finished flow's greenlet is freed.
POOL_SIZE = 10_000


def _serve() -> Any:
    """The body of every flow greenlet: wait, idle, for a flow; run its main; again.

    Nothing of a finished flow stays on this frame: its runtime is dropped before the
    greenlet goes idle, and its end is handed over in ``gf_result`` (taken by
    `ended_with`), not as the argument of the switch: a switch's arguments stay
    referenced while the greenlet waits in it, and rinsing them off took one more switch
    per flow. A new greenlet is started with no arguments (`flow_greenlet`): the
    arguments of a greenlet's first switch stay referenced for as long as its run
    function runs.
    """
    current = greenlet.getcurrent
    rt = res = None
    while True:
        while rt is None:
            rt = _wait()
        res = rt._main()
        if current().gf_runtime is not rt:
            return res   # dropped by the scheduler while it ran (not recycled): end as before
        rt = None
        current().gf_runtime = None   # idle: see recycle()
        current().gf_result = res
        res = None


def _wait() -> Any:
    # A call of its own, not inline in _serve: a new greenlet first switched out from here
    # holds less saved C stack while its flows wait (benchmarks.held, CPython 3.11,
    # greenlet 3.5: ~50 B per waiting flow under a greenlet started on its flow directly;
    # inline it was ~150 B over; on 3.13 it is ~150 B over either way). It switches with
    # None: "ended, see gf_result" (a suspension switches with no arguments, `()`).
    return greenlet.getcurrent().parent.switch(None)


def flow_greenlet(rt: "FlowRuntime", pool: Optional[list] = None) -> FlowGreenlet:
    """A greenlet to run ``rt``'s flow (start it with ``switch(rt)``): an idle one from
    ``pool`` (the scheduler's, filled by `recycle`) when it has one, else a new one. Its
    parent is the caller, the scheduler, as for a new greenlet."""
    while pool:
        g = pool.pop()
        try:
            g.parent = greenlet.getcurrent()
        except ValueError:   # made on another thread: of no use here
            continue
        g.gf_runtime = rt
        return g
    g = FlowGreenlet(_serve, rt)
    g.switch()   # to its idle point
    return g


def recycle(g: FlowGreenlet, pool: Optional[list] = None) -> bool:
    """Detach ``g`` from its flow (finished, or unwound by kill, hibernation or power
    cut) and put it in ``pool`` for reuse if it is idle, i.e. the flow's main returned
    and the greenlet waits in `_wait` for the next flow. Called by the scheduler, which
    must be the caller of the greenlet's last switch. Returns whether it was pooled.

    A greenlet that is not idle (its flow is still suspended inside, e.g. dropped after a
    failed checkpoint) is only detached, and ends as before when it is freed.
    """
    idle = g.gf_runtime is None and bool(g)
    g.gf_runtime = None
    g.gf_result = None   # an end nobody took (an unwound flow's)
    if not idle or pool is None or len(pool) >= POOL_SIZE:
        return False
    try:
        g.parent = greenlet.getcurrent()   # raises if g belongs to another thread
    except ValueError:
        return False
    g.gr_context = None   # contextvars set by the finished flow do not reach the next one
    pool.append(g)
    return True


def ended_with(g: FlowGreenlet, res: Any) -> Any:
    """What a flow's main returned, given what the switch into its greenlet returned
    (not a suspension, see `asked`): handed over in ``gf_result`` by a pooled greenlet
    (taken here, so the greenlet holds nothing of it), or the switch's value when the
    greenlet ended instead of going idle."""
    if res is None:
        res, g.gf_result = g.gf_result, None
    return res


def asked(rt: "FlowRuntime", res: Any) -> "Optional[Entry]":
    """What a switch into ``rt``'s greenlet came back with: the entry the flow now waits
    on (`switch_to_scheduler`), or None when it came back with its end instead."""
    return rt.pending if res == () else None


def switch_to_scheduler(rt: "FlowRuntime", entry: "Entry") -> tuple:
    """Suspend the current flow until the scheduler resumes it with an outcome.

    The entry is handed over as ``rt.pending`` and the switch carries no value (see
    `asked`): the arguments of a switch stay referenced for as long as the greenlet
    waits in it, and ``(entry,)`` would be one more object per waiting flow for the
    cyclic collector to walk; no arguments is the shared empty tuple."""
    g = greenlet.getcurrent()
    if getattr(g, "gf_runtime", None) is not rt:
        raise FlowError("a flow may only suspend from its own greenlet")
    rt.check_io_allowed()
    rt.pending = entry
    outcome = g.parent.switch()
    if isinstance(outcome, BaseException):  # the scheduler throws via throw(), not here
        raise outcome
    return outcome
