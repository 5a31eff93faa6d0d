"""Calls into a node's scheduler from other threads (RPC requests, the console, result
waits): the call runs as an event on the scheduler's thread, where the scheduler's state
is consistent, and the caller waits for its answer (`Node.on_scheduler`)."""
from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, Any, Callable, Optional

from greenflow.errors import NodeClosed
from greenflow.statemachine.events import Call

if TYPE_CHECKING:
    from greenflow.node.node import Node

#: How often a caller looks whether the scheduler stopped while it waits.
POLL = 0.2


def run_on_scheduler(node: "Node", fn: Callable[[], Any], timeout: Optional[float]) -> Any:
    if node._closed:
        raise NodeClosed(f"node {node.party.name} is closed")
    sched = node.scheduler
    if not node.threaded or threading.current_thread() is node._thread:
        out = fn()
        if not node.threaded and (sched.batch or sched.touched or sched.post_callbacks):
            sched.commit()
        return out
    box: dict[str, Any] = {}
    done = threading.Event()

    def finish(r: Any, e: Optional[BaseException]) -> None:
        box["r"], box["e"] = r, e
        done.set()

    sched.post(Call(fn, finish))
    deadline = None if timeout is None else time.monotonic() + timeout
    while not done.wait(POLL):
        # A scheduler that stopped (the node closed, a clustered worker's generation
        # replaced) never runs the call: say so now, not after the whole timeout (a
        # request then hung for a minute and the client took it for a dead node).
        if sched.dead and not done.is_set():
            raise NodeClosed(f"node {node.party.name} stopped before it answered (it was "
                             "closed, or its store failed: see its log)")
        if deadline is not None and time.monotonic() >= deadline:
            raise TimeoutError(f"node {node.party.name} did not answer within {timeout}s")
    if box["e"] is not None:
        raise box["e"]
    return box["r"]
