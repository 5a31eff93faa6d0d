"""The states a vault holds, in memory: every unconsumed state of ours by its exact class,
and the same less those some flow has soft-locked (`free`), which `Vault.select` takes
from first. Rebuilt from the store when the node opens; the `Vault` keeps them in step
with what it records."""
from __future__ import annotations

from typing import Any, Callable, Iterable, Iterator, Optional

from greenflow.ledger.states import StateAndRef, StateRef


class Holdings:
    """Exact state class -> ref -> `StateAndRef`, unconsumed (``unconsumed``) and
    unconsumed but not locked (``free``)."""

    def __init__(self) -> None:
        self.unconsumed: dict[type, dict[StateRef, StateAndRef]] = {}
        self.free: dict[type, dict[StateRef, StateAndRef]] = {}

    def load(self, rows: Iterable[tuple[Any, bytes]], unpack: Callable[[bytes], Any]) -> None:
        """Take the stored unconsumed states (all free until the locks are read)."""
        for _, raw in rows:
            sar = unpack(raw)
            self.unconsumed.setdefault(type(sar.state), {})[sar.ref] = sar
            self.free.setdefault(type(sar.state), {})[sar.ref] = sar

    def candidates(self, state_type: type, where: Optional[Callable[[Any], bool]],
                   free_only: bool = False) -> Iterator[StateAndRef]:
        """Lazily, so that `select` stops at the first states that add up instead of
        filtering the whole vault (which grows with every payment's change)."""
        for cls, by_type in (self.free if free_only else self.unconsumed).items():
            if issubclass(cls, state_type):
                for sar in by_type.values():
                    if where is None or where(sar.state):
                        yield sar

    def get(self, ref: StateRef) -> Optional[StateAndRef]:
        for by_type in self.unconsumed.values():
            sar = by_type.get(ref)
            if sar is not None:
                return sar
        return None

    def holds(self, ref: StateRef) -> bool:
        return any(ref in by_type for by_type in self.unconsumed.values())

    def holds_in(self, cls: type, ref: StateRef) -> bool:
        return ref in self.unconsumed.setdefault(cls, {})

    def add(self, sar: StateAndRef, free: bool) -> None:
        cls = type(sar.state)
        self.unconsumed.setdefault(cls, {})[sar.ref] = sar
        if free:
            self.free.setdefault(cls, {})[sar.ref] = sar

    def consume(self, ref: StateRef) -> Optional[StateAndRef]:
        """Take ``ref`` out (consumed); the state, or None when it is not ours."""
        for cls, by_type in self.unconsumed.items():
            gone = by_type.pop(ref, None)
            if gone is not None:
                self.free.get(cls, {}).pop(ref, None)
                return gone
        return None

    def lock(self, ref: StateRef) -> None:
        """``ref`` was locked: no longer free."""
        for by_type in self.free.values():
            if by_type.pop(ref, None) is not None:
                break

    def unlock(self, ref: StateRef) -> None:
        """``ref``'s lock went: free again if it is still unconsumed."""
        for cls, by_type in self.unconsumed.items():
            sar = by_type.get(ref)
            if sar is not None:
                self.free.setdefault(cls, {})[ref] = sar
                break

    def by_type_name(self) -> dict[str, list[StateAndRef]]:
        return {f"{t.__module__}.{t.__qualname__}": list(d.values())
                for t, d in self.unconsumed.items() if d}

    def all(self) -> Iterator[StateAndRef]:
        for by_type in self.unconsumed.values():
            yield from by_type.values()

    def __len__(self) -> int:
        return sum(len(v) for v in self.unconsumed.values())

    def __bool__(self) -> bool:
        return bool(self.unconsumed)
