"""How the flow API finds the flow it is called from, without importing the runtime.

The runtime runs each flow on a greenlet that carries the flow's runtime object as
``gf_runtime`` (see `greenflow.runtime.traps`); these functions read it back. Reading
the current greenlet is not a switch, so `traps` stays the only module that switches
greenlets, and the flow API sits below the runtime: `FlowLogic` and `FlowSession` call
the object they get here through the operations it offers (``send``, ``receive``,
``sleep``, ...), which the runtime implements.
"""
from __future__ import annotations

from typing import Any, Optional

import greenlet

from greenflow.errors import FlowError


def current_runtime_or_none() -> Optional[Any]:
    """The runtime of the flow running on this greenlet, or None outside a flow."""
    return getattr(greenlet.getcurrent(), "gf_runtime", None)


def current_runtime(what: str = "this") -> Any:
    """The runtime of the flow running on this greenlet; a clear error elsewhere."""
    rt = getattr(greenlet.getcurrent(), "gf_runtime", None)
    if rt is None:
        import threading
        if threading.current_thread() is not threading.main_thread():
            raise FlowError(
                f"{what} was called on thread {threading.current_thread().name!r}, which "
                "no flow runs on: a flow's API works only on the flow's own greenlet, not "
                "in threads it starts (hand blocking work to self.run_external(fn, ...) "
                "and use its result); outside a flow, start one with node.start_flow(...)")
        raise FlowError(
            f"{what} can only be used inside a running flow (from call() or what it "
            "calls); outside a flow start it with node.start_flow(...)")
    return rt
