"""The flow hospital's policy: which failures are retried, and how long to wait.

The mechanics (putting a flow back to its last checkpoint, parking it, retrying it)
live in `greenflow.statemachine.loading` (`Loading._park`, `Loading.retry`); this module
decides.
A failure that is the flow's own decision (a `FlowException`) is never retried; one that
may go away (storage, connection, `TransientError`) is retried with exponential backoff
up to the node's ``max_retries``; anything else fails the flow.
"""
from __future__ import annotations

import lmdb

from greenflow.errors import FlowException, StoreError, TransientError

MAX_BACKOFF = 300.0


def is_transient(exc: BaseException) -> bool:
    """Failures the hospital retries: not the flow's own decision, and may go away."""
    if isinstance(exc, FlowException):
        return False
    return isinstance(exc, (TransientError, StoreError, lmdb.Error, ConnectionError))



def backoff(retries_so_far: int, base: float) -> float:
    """Seconds before the next retry: base, 2 x base, 4 x base ... capped at 5 minutes."""
    return min(MAX_BACKOFF, base * 2 ** retries_so_far)
