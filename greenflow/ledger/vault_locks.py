"""Soft locks of a `Vault`: which running flow holds which unconsumed state, and the
index of states nobody has locked (what `Vault.select` reads first).

A collaborator of the vault rather than a part of it, so that the clustered vault
(`vault_backend_pg.SharedVault`) can swap in its own rules for taking and judging a
lock (rows shared with the party's other workers) without the vault's other concerns
following it."""
from __future__ import annotations

from typing import Any, Callable, Iterator, Optional, Sequence

from greenflow.errors import FlowError
from greenflow.ledger.states import StateAndRef, StateRef
from greenflow.runtime.traps import current_runtime_or_none

__all__ = ["SoftLocks", "calling_flow", "candidates"]


def calling_flow(what: str) -> str:
    """The id of the flow calling ``what``: locks belong to a flow, so outside one it is an error."""
    rt = current_runtime_or_none()
    if rt is None:
        raise FlowError(f"{what} locks states for the calling flow: call it from a flow")
    return rt.flow_id


def candidates(index: dict, state_type: type,
               where: Optional[Callable[[Any], bool]]) -> Iterator[StateAndRef]:
    """Lazily, so that `select` stops at the first states that add up instead of
    filtering the whole vault (which grows with every payment's change)."""
    for cls, by_type in index.items():
        if issubclass(cls, state_type):
            for sar in by_type.values():
                if where is None or where(sar.state):
                    yield sar


class SoftLocks:
    def __init__(self, vault: Any) -> None:
        self.vault = vault
        self.locks: dict[StateRef, str] = {}
        self.by_flow: dict[str, set[StateRef]] = {}

    def load(self, store: Any) -> None:
        """Take the stored locks whose flow is still there; drop the others."""
        from greenflow.ledger.vault import _ref_from_key
        stale: list[bytes] = []
        for key, fid in store.table_items("vault_locks"):
            flow_id = fid.decode()
            if self.flow_is_live(flow_id):
                self.add(_ref_from_key(key), flow_id)
            else:
                stale.append(key)
        if stale:
            with self.vault._node.services.writes() as batch:
                for key in stale:
                    batch.table_delete("vault_locks", key)

    def flow_is_live(self, fid: str) -> bool:
        node = self.vault._node
        return fid in node.scheduler.resident or node.store.has_flow(fid)

    def locked_by_other(self, ref: StateRef, fid: Optional[str]) -> bool:
        owner = self.locks.get(ref)
        if owner is None or owner == fid:
            return False
        if self.flow_is_live(owner):
            return True
        # Its flow is gone (ended before this vault was opened): the lock is stale.
        with self.vault._node.services.writes() as batch:
            self.drop(batch, ref)
        return False

    def lock_refs(self, refs: list[StateRef], fid: str) -> None:
        from greenflow.ledger.vault import ref_key
        with self.vault._node.services.writes() as batch:
            value = fid.encode()
            for ref in refs:
                self.add(ref, fid)
                batch.table_put("vault_locks", ref_key(ref), value)

    def add(self, ref: StateRef, fid: str) -> None:
        self.locks[ref] = fid
        self.by_flow.setdefault(fid, set()).add(ref)
        for by_type in self.vault._free.values():
            if by_type.pop(ref, None) is not None:
                break

    def drop(self, batch: Any, ref: StateRef) -> None:
        from greenflow.ledger.vault import ref_key
        self.forget(ref)
        batch.table_delete("vault_locks", ref_key(ref))

    def forget(self, ref: StateRef) -> None:
        """`drop` in memory only: the state is free again for this vault's flows."""
        fid = self.locks.pop(ref, None)
        if fid is None:
            return
        held = self.by_flow.get(fid)
        if held is not None:
            held.discard(ref)
            if not held:
                del self.by_flow[fid]
        for cls, by_type in self.vault._unconsumed.items():
            sar = by_type.get(ref)
            if sar is not None:
                self.vault._free.setdefault(cls, {})[ref] = sar
                break

    def flow_ended(self, fid: str) -> None:
        """Scheduler hook: the flow ended; its locks go in the commit of its result."""
        with self.vault._lock:
            held = self.by_flow.get(fid)
            if held:
                batch = self.vault._node.scheduler.batch
                for ref in list(held):
                    self.drop(batch, ref)

    def select(self, state_type: type, amount: Any, value_of: Callable[[Any], Any],
               where: Optional[Callable[[Any], bool]], fid: str) -> list[StateAndRef]:
        with self.vault._lock:
            picked = self.pick_free(state_type, amount, value_of, where, fid)
            if picked is None:
                picked = self.pick_scanning(state_type, amount, value_of, where, fid)
            self.lock_refs([s.ref for s in picked], fid)
            return picked

    def free_candidates(self, state_type: type,
                        where: Optional[Callable[[Any], bool]]) -> Iterator[StateAndRef]:
        return candidates(self.vault._free, state_type, where)

    def pick_free(self, state_type: type, amount: Any, value_of: Callable[[Any], Any],
                  where: Optional[Callable[[Any], bool]], fid: str) -> Optional[list[StateAndRef]]:
        """The common case: states nobody has locked add up. None sends `select` to the
        full scan: when they do not (the scan finds locks whose flow is gone, and names
        what other flows hold in its error), or when the caller holds locks itself (the
        scan counts those as the caller's, in the vault's order)."""
        if fid in self.by_flow:
            return None
        picked: list[StateAndRef] = []
        total = None
        for sar in self.free_candidates(state_type, where):
            picked.append(sar)
            value = value_of(sar.state)
            total = value if total is None else total + value
            if total >= amount:
                return picked
        return None

    def pick_scanning(self, state_type: type, amount: Any, value_of: Callable[[Any], Any],
                      where: Optional[Callable[[Any], bool]], fid: str) -> list[StateAndRef]:
        from greenflow.ledger.vault import InsufficientBalance
        picked: list[StateAndRef] = []
        zero = amount - amount  # 0, or an Amount of nothing in amount's token
        total = locked = zero
        for sar in candidates(self.vault._unconsumed, state_type, where):
            value = value_of(sar.state)
            if self.locked_by_other(sar.ref, fid):
                locked = locked + value
                continue
            picked.append(sar)
            total = total + value
            if total >= amount:
                break
        if not total >= amount:
            raise InsufficientBalance(
                f"{self.vault._node.party.name} cannot select {amount} in {state_type.__qualname__}: "
                f"{total} is free" + (f" ({locked} more is locked by other flows)" if locked else ""))
        return picked

    def soft_lock(self, refs: Sequence[StateRef], fid: str) -> None:
        from greenflow.ledger.vault import StatesLocked
        with self.vault._lock:
            taken = [r for r in refs if self.locked_by_other(r, fid)]
            if taken:
                raise StatesLocked(f"{len(taken)} state(s) are locked by other flows: "
                                   + ", ".join(f"{r} (flow {self.locks[r]})" for r in taken[:5]))
            self.lock_refs(list(refs), fid)
