"""Soft locks: they keep two concurrent flows from selecting the same state. `select`
locks what it picks for the calling flow, and the lock goes when the flow ends
(completed, failed or killed), in the same commit as the flow's result. A lock whose flow
is gone (it ended before this vault was opened) is stale and dropped when met.

The vault's `Holdings` keep the unconsumed states nobody has locked apart, so that
`select` with a thousand trades in flight takes the first free states it meets instead
of stepping over every locked one."""
from __future__ import annotations

from typing import Any, Callable, Iterable, Optional

from greenflow.errors import FlowError
from greenflow.runtime.traps import current_runtime_or_none
from greenflow.ledger.states import StateAndRef, StateRef
from greenflow.ledger.vault_holdings import Holdings


def calling_flow(what: str) -> str:
    """The id of the flow calling ``what``, which locks states for it."""
    rt = current_runtime_or_none()
    if rt is None:
        raise FlowError(f"{what} locks states for the calling flow: call it from a flow")
    return rt.flow_id


class SoftLocks:
    """State ref -> the flow that locked it (``held``), and flow -> its refs, kept in the
    ``vault_locks`` table; locking and unlocking keeps `Holdings.free` in step."""

    def __init__(self, node: Any, holdings: Holdings, ref_key: Callable[[StateRef], bytes]) -> None:
        self.node = node
        self.holdings = holdings
        self.ref_key = ref_key
        self.held: dict[StateRef, str] = {}
        self.by_flow: dict[str, set[StateRef]] = {}

    def load(self, rows: Iterable[tuple[bytes, bytes]],
             ref_from_key: Callable[[bytes], StateRef]) -> list[bytes]:
        """Take the stored locks of live flows; the keys of the stale ones, to delete."""
        stale: list[bytes] = []
        for key, fid in rows:
            flow_id = fid.decode()
            if self.flow_is_live(flow_id):
                self.add(ref_from_key(key), flow_id)
            else:
                stale.append(key)
        return stale

    def flow_is_live(self, fid: str) -> bool:
        node = self.node
        return fid in node.scheduler.resident or node.store.has_flow(fid)

    def locked_by_other(self, ref: StateRef, fid: Optional[str]) -> bool:
        owner = self.held.get(ref)
        if owner is None or owner == fid:
            return False
        if self.flow_is_live(owner):
            return True
        # Its flow is gone (ended before this vault was opened): the lock is stale.
        with self.node.services.writes() as batch:
            self.drop(batch, ref)
        return False

    def lock(self, refs: list[StateRef], fid: str) -> None:
        with self.node.services.writes() as batch:
            value = fid.encode()
            for ref in refs:
                self.add(ref, fid)
                batch.table_put("vault_locks", self.ref_key(ref), value)

    def add(self, ref: StateRef, fid: str) -> None:
        self.held[ref] = fid
        self.by_flow.setdefault(fid, set()).add(ref)
        self.holdings.lock(ref)

    def drop(self, batch: Any, ref: StateRef) -> None:
        fid = self.held.pop(ref, None)
        if fid is not None:
            held = self.by_flow.get(fid)
            if held is not None:
                held.discard(ref)
                if not held:
                    del self.by_flow[fid]
            self.holdings.unlock(ref)
        batch.table_delete("vault_locks", self.ref_key(ref))

    def flow_ended(self, fid: str, batch: Any) -> None:
        """The flow ended: its locks go, in ``batch`` (the commit of its result)."""
        held = self.by_flow.get(fid)
        if held:
            for ref in list(held):
                self.drop(batch, ref)

    def pick(self, state_type: type, amount: Any, value_of: Callable[[Any], Any],
             where: Optional[Callable[[Any], bool]],
             fid: str) -> tuple[list[StateAndRef], Any, Any]:
        """States adding up to ``amount``, free ones first; with what they add up to and
        how much other flows hold locked. Short of ``amount`` when there is not enough
        (the vault says so); the caller locks what it keeps."""
        free = self._pick_free(state_type, amount, value_of, where, fid)
        if free is not None:
            return free[0], free[1], None
        return self._pick_scanning(state_type, amount, value_of, where, fid)

    def _pick_free(self, state_type: type, amount: Any, value_of: Callable[[Any], Any],
                   where: Optional[Callable[[Any], bool]],
                   fid: str) -> Optional[tuple[list[StateAndRef], Any]]:
        """The common case: states nobody has locked add up. None sends `pick` to the
        full scan: when they do not (the scan finds locks whose flow is gone, and names
        what other flows hold in its error), or when the caller holds locks itself (the
        scan counts those as the caller's, in the vault's order)."""
        if fid in self.by_flow:
            return None
        picked: list[StateAndRef] = []
        total = None
        for sar in self.holdings.candidates(state_type, where, free_only=True):
            picked.append(sar)
            value = value_of(sar.state)
            total = value if total is None else total + value
            if total >= amount:
                return picked, total
        return None

    def _pick_scanning(self, state_type: type, amount: Any, value_of: Callable[[Any], Any],
                       where: Optional[Callable[[Any], bool]],
                       fid: str) -> tuple[list[StateAndRef], Any, Any]:
        picked: list[StateAndRef] = []
        zero = amount - amount  # 0, or an Amount of nothing in amount's token
        total = locked = zero
        for sar in self.holdings.candidates(state_type, where):
            value = value_of(sar.state)
            if self.locked_by_other(sar.ref, fid):
                locked = locked + value
                continue
            picked.append(sar)
            total = total + value
            if total >= amount:
                break
        return picked, total, locked
