"""Tracking a vault query: the `Feed` of updates after the first page."""
from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional

from greenflow.ledger.vault_types import Page, QueryCriteria, VaultUpdate

log = logging.getLogger("greenflow.ledger.vault")


class Feed:
    """The updates of a tracked query, in the order they were recorded. An update is
    handed out only once its transaction is durable in the store. Read with `poll`
    (what is there now), `next` (wait up to ``timeout``), or by iterating (waits).

    The vault never waits on a reader: a feed more than `max_buffered` updates behind
    (read too slowly, or not at all) is dropped, as a progress stream is: its buffered
    updates are let go, it is closed with ``dropped`` set and ``next`` says None. A
    client that still wants the changes opens a new one (its snapshot is current). A feed
    whose node closes (or crashes) ends too, ``dropped`` saying so, once its durable
    updates are read: it waited for ever before."""

    #: Updates a feed holds for its reader at most.
    max_buffered = 10_000

    def __init__(self, criteria: QueryCriteria, store: Any, on_close: Callable[["Feed"], None],
                 node: Any = None) -> None:
        self.criteria = criteria
        self._store = store
        self._node = node
        self._on_close = on_close
        self._items: deque[tuple[int, VaultUpdate]] = deque()
        self._cond = threading.Condition()
        self.closed = False
        #: Why the vault ended this feed (None: it did not): fell behind, see the class doc.
        self.dropped: Optional[str] = None

    def _push(self, update: VaultUpdate, stamp: int) -> None:
        with self._cond:
            if self.closed:
                return
            if len(self._items) < self.max_buffered:
                self._items.append((stamp, update))
                self._cond.notify_all()
                return
        self.drop(f"more than {self.max_buffered:,} updates behind (Feed.max_buffered)")

    def drop(self, reason: str) -> None:
        """End the feed from the vault's side, letting its buffered updates go."""
        with self._cond:
            if self.closed:
                return
            self.dropped = reason
            self._items.clear()
        log.warning("vault: dropped a feed: %s", reason)
        self.close()

    def _ready(self) -> bool:
        return bool(self._items) and self._items[0][0] < self._store.commits

    def _node_closed(self) -> bool:
        """Whether the feed's node is gone; ends the feed (``dropped`` says so) if it is.
        Not called with the feed's lock held: closing takes the vault's."""
        if self._node is None or not self._node.closed:
            return False
        with self._cond:
            if self.dropped is None and not self.closed:
                self.dropped = "the node closed"
        self.close()
        return True

    def poll(self) -> list[VaultUpdate]:
        """Every durable update not handed out yet: a list, empty when there is none (and
        ``closed`` then says whether more can come)."""
        out = []
        with self._cond:
            while self._ready():
                out.append(self._items.popleft()[1])
        if not out:
            self._node_closed()
        return out

    def next(self, timeout: Optional[float] = None) -> Optional[VaultUpdate]:
        """The next update, waiting up to ``timeout`` seconds (None: until one comes);
        None when the time is up or the feed is closed."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while not self._ready():
                if self.closed:
                    return None
                if self._node is not None and self._node.closed:
                    break   # ended below, outside the feed's lock (closing takes the vault's)
                left = 0.05 if deadline is None else min(0.05, deadline - time.monotonic())
                if left <= 0:
                    return None
                self._cond.wait(left)  # a commit does not notify: look again shortly
            else:
                return self._items.popleft()[1]
        self._node_closed()
        return None

    def __iter__(self) -> Iterator[VaultUpdate]:
        while True:
            item = self.next()
            if item is None:
                return
            yield item

    def close(self) -> None:
        with self._cond:
            self.closed = True
            self._cond.notify_all()
        self._on_close(self)


@dataclass
class DataFeed:
    """What `Vault.track_by` returns: the page as it is now and the feed of what changes."""

    snapshot: Page
    updates: Feed

