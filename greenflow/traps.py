"""The only place a flow's greenlet switches back to the node's scheduler.

A flow runs in a `FlowGreenlet` whose parent is the greenlet running the scheduler
loop. Flow code never switches by itself: every suspension point funnels through
`switch_to_scheduler`, which hands the scheduler the pending journal entry (a small
request object saying what the flow waits for) and returns what the scheduler resumes
it with. Anything that is not a flow greenlet asking is refused loudly, so misuse fails
at once instead of hanging.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional

import greenlet

from .errors import FlowError

if TYPE_CHECKING:
    from .flow_runtime import FlowRuntime
    from .journal import Entry


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
    """A greenlet that knows which flow it runs.

    Slotted (no per-instance dict: ~100 B less per resident flow), and started with an
    unbound function plus the runtime as its first switch argument, so no bound-method
    object stays alive beside each waiting flow.
    """

    __slots__ = ("gf_runtime",)

    def __init__(self, run: Any, runtime: "FlowRuntime", parent: Optional[greenlet.greenlet] = None):
        super().__init__(run, parent)
        self.gf_runtime = runtime


def current_runtime_or_none() -> Optional["FlowRuntime"]:
    return getattr(greenlet.getcurrent(), "gf_runtime", None)


def current_runtime(what: str = "this") -> "FlowRuntime":
    """The runtime of the flow running on this greenlet; a clear error elsewhere."""
    rt = getattr(greenlet.getcurrent(), "gf_runtime", None)
    if rt is None:
        raise FlowError(
            f"{what} can only be used inside a running flow (from call() or what it "
            "calls); outside a flow start it with node.start_flow(...)")
    return rt


def switch_to_scheduler(rt: "FlowRuntime", entry: "Entry") -> tuple:
    """Suspend the current flow until the scheduler resumes it with an outcome."""
    g = greenlet.getcurrent()
    if getattr(g, "gf_runtime", None) is not rt:
        raise FlowError("a flow may only suspend from its own greenlet")
    rt.check_io_allowed()
    outcome = g.parent.switch(entry)
    if isinstance(outcome, BaseException):  # the scheduler throws via throw(), not here
        raise outcome
    return outcome
