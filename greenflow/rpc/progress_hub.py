"""The node's progress changes, fanned out to streaming clients (RPC and console) with
one bounded queue each."""
from __future__ import annotations

import logging
import queue
import threading
import time
from typing import Callable, Iterator, Optional

from greenflow.rpc.limits import RpcLimits
from greenflow.rpc.log_limits import RateLimitedLog

log = logging.getLogger("greenflow.rpc")

KEEPALIVE_SECONDS = 15.0


class Subscriber:
    """One stream's queue. ``steps=False``: the stream wants flows' ends only, so the
    node need not work out each step of every flow for it (and its queue fills ~40x
    slower on a trade)."""

    __slots__ = ("flow_id", "queue", "dropped", "steps")

    def __init__(self, flow_id: Optional[str], size: int, steps: bool = True) -> None:
        self.flow_id = flow_id
        self.queue: "queue.Queue[Optional[tuple]]" = queue.Queue(maxsize=size)
        self.dropped = False
        self.steps = steps

    def follow(self, stopping: Callable[[], bool]) -> Iterator[Optional[tuple]]:
        """The ``(flow_id, step)`` changes as they come, and None after
        ``KEEPALIVE_SECONDS`` of quiet (so a stream's writer notices a client that left);
        ends when the hub closes or drops this subscriber, or ``stopping()`` says so."""
        last = time.monotonic()
        while not stopping() and not self.dropped:
            try:
                item = self.queue.get(timeout=1.0)
            except queue.Empty:
                if time.monotonic() - last > KEEPALIVE_SECONDS:
                    last = time.monotonic()
                    yield None
                continue
            if item is None:
                return
            last = time.monotonic()
            yield item


class ProgressHub:
    """Fans the node's progress changes out to streaming clients, one bounded queue each.

    The scheduler never waits on a client: a client whose queue is full (it reads slower
    than flows make progress, or not at all) is dropped, its stream closed and a line
    logged, so a stream held open without reading costs at most ``buffer`` events.
    """

    def __init__(self, buffer: int = RpcLimits.stream_buffer, log_interval: float = 10.0) -> None:
        self.buffer = buffer
        self._lock = threading.Lock()
        self._subs: list[Subscriber] = []
        self._steps = False   # whether a subscriber wants steps (not only ends)
        self.dropped = 0
        self._warn = RateLimitedLog(log, log_interval)

    def __call__(self, flow_id: str, step: Optional[str]) -> None:  # scheduler thread
        with self._lock:
            subs = self._subs
        for sub in subs:
            if (sub.flow_id is None or sub.flow_id == flow_id) and (sub.steps or step is None):
                try:
                    sub.queue.put_nowait((flow_id, step))
                except queue.Full:
                    self._drop(sub)

    def _drop(self, sub: Subscriber) -> None:
        with self._lock:
            if sub.dropped:
                return
            sub.dropped = True
            self._subs = [s for s in self._subs if s is not sub]
            self._steps = any(s.steps for s in self._subs)
            self.dropped += 1
        self._warn.warning("dropped", "RPC: dropped a progress stream that fell %d events "
                           "behind (stream_buffer)", self.buffer)

    def subscribe(self, flow_id: Optional[str], steps: bool = True) -> Subscriber:
        sub = Subscriber(flow_id, self.buffer, steps)
        with self._lock:
            self._subs = self._subs + [sub]  # copy on write: the scheduler iterates unlocked
            self._steps = any(s.steps for s in self._subs)
        return sub

    def unsubscribe(self, sub: Subscriber) -> None:
        with self._lock:
            self._subs = [s for s in self._subs if s is not sub]
            self._steps = any(s.steps for s in self._subs)

    @property
    def subscribers(self) -> int:
        return len(self._subs)

    @property
    def active(self) -> bool:
        """Whether a stream that wants steps is open: with none, the node need not work
        out every step of every flow for this hub (see `Running.progress_wanted`)."""
        return self._steps

    def close(self) -> None:
        with self._lock:
            subs, self._subs = self._subs, []
            self._steps = False
        for sub in subs:
            sub.dropped = True  # the stream loop sees it within a second

