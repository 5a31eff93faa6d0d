"""The soft locks of a clustered party's vault (`greenflow.ledger.vault_backend_pg`):
rows shared with the party's other workers, decided by the database. A select picks
from what the vault's last read saw, then takes its lock rows and reads what changed
since in one statement (`SharedVault._take_and_read`); a state another worker consumed
or locked meanwhile is refused by the database and picked again."""
from __future__ import annotations

import itertools
import random
from typing import Any, Callable, Iterator, Optional, Sequence

from greenflow.ledger.states import StateAndRef, StateRef
from greenflow.ledger.vault import StatesLocked
from greenflow.ledger.vault_locks import SoftLocks

#: The holder noted for a state whose lock went to a flow of another worker.
_LOST = "(another worker)"


def _lock_fid(value: bytes) -> str:
    return bytes(value).split(b"\0", 1)[0].decode("utf-8", "replace")


class _SharedLocks(SoftLocks):
    """Soft locks as rows shared with the party's other workers: taken in the database
    (`SharedVault._take`) before they count, judged stale by `SharedVault._refresh`."""

    def load(self, store: Any) -> None:
        """Locks are rows other workers take too: `_refresh` reads them."""
        self.vault._refresh()

    def locked_by_other(self, ref: StateRef, fid: Optional[str]) -> bool:
        owner = self.locks.get(ref)
        return owner is not None and owner != fid   # stale ones: swept by `_refresh`

    def free_candidates(self, state_type: type,
                        where: Optional[Callable[[Any], bool]]) -> Iterator[StateAndRef]:
        """The free states from a random point of each type's index: flows on two workers
        selecting at once would otherwise both reach for the first free state and one of
        them lose the lock and pick again (a worker's own flows see each other's locks
        in memory and never collide)."""
        for cls, by_type in self.vault._free.items():
            if issubclass(cls, state_type) and by_type:
                sars = list(by_type.values())
                start = random.randrange(len(sars))
                for sar in itertools.chain(sars[start:], sars[:start]):
                    if where is None or where(sar.state):
                        yield sar

    def select(self, state_type: type, amount: Any, value_of: Callable[[Any], Any],
               where: Optional[Callable[[Any], bool]], fid: str) -> list[StateAndRef]:
        """Picks from what the last read saw, then takes the locks and reads what changed
        since in one statement (`SharedVault._take` with ``refresh``): a state another
        worker consumed or locked meanwhile is refused by the database, taken in from the
        same answer, and picked again. Only a first (or full) read, or the stale-lock
        sweep, is a round trip before the pick."""
        vault = self.vault
        with vault._lock:
            if not vault._can_fold():
                vault._refresh()
            for _attempt in range(20):
                picked = self.pick_free(state_type, amount, value_of, where, fid)
                if picked is None:
                    if vault._can_fold():   # not enough here: look at the database first
                        vault._refresh()
                        picked = self.pick_free(state_type, amount, value_of, where, fid)
                    if picked is None:
                        picked = self.pick_scanning(state_type, amount, value_of, where, fid)
                want = [s.ref for s in picked if self.locks.get(s.ref) != fid]
                folded = vault._can_fold()
                if folded:
                    got, changes = vault._take_and_read(want, fid)
                else:
                    got = vault._take(want, fid)
                for ref in want:
                    # Lost to a flow on another worker, or consumed there: not ours.
                    self.add(ref, fid if ref in got else _LOST)
                if folded:
                    vault._take_in_changes(changes)
                if all(ref in got for ref in want):
                    return picked
                if not folded:
                    vault._refresh()
            raise StatesLocked(f"{self.vault._node.party.name}: could not lock the states selected "
                               f"for flow {fid}: other workers' flows kept taking them")

    def soft_lock(self, refs: Sequence[StateRef], fid: str) -> None:
        with self.vault._lock:
            self.vault._refresh()
            want = [r for r in refs if self.locks.get(r) != fid]
            taken = [r for r in want if self.locked_by_other(r, fid)]
            if not taken:
                got = self.vault._take(want, fid)
                taken = [r for r in want if r not in got]
                for ref in got:
                    self.add(ref, fid)
            if taken:
                self.vault._refresh()
                raise StatesLocked(f"{len(taken)} state(s) are locked by other flows: " + ", ".join(
                    f"{r} (flow {self.locks.get(r, '(consumed)')})" for r in taken[:5]))

    def flow_is_live(self, fid: str) -> bool:
        return True   # whether a lock is stale is decided by `_refresh`'s sweep
