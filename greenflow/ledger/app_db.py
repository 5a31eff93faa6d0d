"""`AppDb`: one table of the node's store, as a ledger service reads and writes it.

A service called from a flow writes through the scheduler's group-commit batch
(`ServiceHub.writes`), so its writes become durable with the flow's checkpoint, at the
end of the round. Until then the store does not show them, yet other flows of the same round
must: a second buyer must see the cash the first one just locked, the notary must see
the input it consumed a moment ago. So every write also lands in a cache that reads
consult first. An entry leaves the cache only once a commit has happened since it was
written (it is then in the store), and only when the cache is over its bound.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Any, Callable, Iterator

from greenflow.storage.interface import Batch

__all__ = ["AppDb"]

_ABSENT = object()  # a deletion not yet committed


class AppDb:
    """Keys are bytes; values are whatever ``decode(encode(value))`` gives back."""

    def __init__(self, store: Any, name: str, encode: Callable[[Any], bytes],
                 decode: Callable[[bytes], Any], max_cached: int = 50_000) -> None:
        store.open_table(name)
        self.store = store
        self.name = name
        self.encode = encode
        self.decode = decode
        self.max_cached = max_cached
        # key -> (value or _ABSENT, store.commits when written)
        self._cache: OrderedDict[bytes, tuple[Any, int]] = OrderedDict()

    def get(self, key: bytes, default: Any = None) -> Any:
        hit = self._cache.get(key)
        if hit is not None:
            return default if hit[0] is _ABSENT else hit[0]
        raw = self.store.table_get(self.name, key)
        if raw is None:
            return default
        value = self.decode(raw)
        self._remember(key, value, -1)  # committed already: evictable at once
        return value

    def has(self, key: bytes) -> bool:
        """Whether ``key`` is there, without decoding (nor caching) a stored value: the
        vault asks this of every transaction a peer sends and of its history."""
        hit = self._cache.get(key)
        if hit is not None:
            return hit[0] is not _ABSENT
        return self.store.table_get(self.name, key) is not None

    __contains__ = has

    def put(self, batch: Batch, key: bytes, value: Any) -> None:
        batch.table_put(self.name, key, self.encode(value))
        self._remember(key, value, self.store.commits)

    def delete(self, batch: Batch, key: bytes) -> None:
        batch.table_delete(self.name, key)
        self._remember(key, _ABSENT, self.store.commits)

    def committed_items(self) -> Iterator[tuple[bytes, Any]]:
        """What the store holds (for loading indexes when a node opens: nothing is pending)."""
        for key, raw in self.store.table_items(self.name):
            yield key, self.decode(raw)

    def _remember(self, key: bytes, value: Any, stamp: int) -> None:
        cache = self._cache
        cache[key] = (value, stamp)
        cache.move_to_end(key)
        if len(cache) > self.max_cached:
            committed = self.store.commits
            while len(cache) > self.max_cached:
                oldest_key, (_, oldest_stamp) = next(iter(cache.items()))
                if oldest_stamp >= committed:
                    break  # not durable yet: LMDB would not show it
                del cache[oldest_key]
