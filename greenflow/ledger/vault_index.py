"""The vault's indexes: their keys and entries, and reading them (committed rows plus a
round's own writes not committed yet).

The store keeps indexes so that a query by state type, linear id or external id reads
only the states it names, never the whole vault:

| table             | key                                   | value                        |
|-------------------|---------------------------------------|------------------------------|
| vault_by_type     | type id (2 bytes) + sequence (8 bytes) | state ref, recorded time (µs) |
| vault_by_linear   | linear uuid (16 bytes) + sequence     | state ref, recorded time, type id |
| vault_by_external | external id \\0 sequence               | state ref, recorded time, type id |
| vault_types       | type name (module:Class)              | its type id                  |
| vault_consumed    | state ref (the vault's own)           | consuming transaction id, consumed time (µs) |

The sequence number counts states in the order this vault recorded them: every index
lists a key's states oldest first, and it is the default sort and the cursor. Keys grow
with it, so recording a state appends to the end of each index (cheap in an ordered store,
unlike a write at a random place), and entries are kept small (a type id, no notary: that comes
from the state's transaction when a query asks for it), since every recorded state
writes one; whether a state is consumed is the vault's own record of it.
"""
from __future__ import annotations

import importlib
import struct
import uuid
from datetime import datetime, timezone
from typing import Any, Optional

from greenflow.ledger.states import UniqueIdentifier
from greenflow.ledger.vault_types import VaultQueryError

_SEQ = struct.Struct(">Q")
_REC = struct.Struct(">Q")  # recorded time, µs (0: unknown)
INDEX_DBS = ("vault_by_type", "vault_by_linear", "vault_by_external", "vault_types")


def seq_key(prefix: bytes, seq: int) -> bytes:
    return prefix + _SEQ.pack(seq)


_TID = struct.Struct(">H")


def type_prefix(tid: int) -> bytes:
    return _TID.pack(tid)


def external_prefix(external_id: str) -> bytes:
    return external_id.encode() + b"\0"


def type_name(cls: type) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


def pack_entry(ref_key: bytes, recorded_us: int, tid: Optional[int] = None) -> bytes:
    """An index entry: the state's ref and recorded time (and, in the linear-id indexes,
    its type id)."""
    entry = ref_key + _REC.pack(recorded_us)
    return entry if tid is None else entry + _TID.pack(tid)


def unpack_entry(raw: bytes) -> tuple[bytes, int, Optional[int]]:
    """(state ref key, recorded µs, type id or None)."""
    rec = _REC.unpack_from(raw, 36)[0]
    return bytes(raw[:36]), rec, (_TID.unpack_from(raw, 44)[0] if len(raw) >= 46 else None)


def consumed_value(tx_id: bytes, when_us: int) -> bytes:
    """The vault's record of a state it consumed: the transaction, then when (µs)."""
    return tx_id + _REC.pack(max(1, when_us))


def consumed_us(value: Optional[bytes]) -> Optional[int]:
    """When a state was consumed, from its record (1: before times were recorded); None
    when there is no record: the state is unconsumed."""
    if value is None:
        return None
    return _REC.unpack_from(value, 32)[0] if len(value) >= 40 else 1


def _us(when: Optional[datetime]) -> Optional[int]:
    if when is None:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return int(when.timestamp() * 1_000_000)


def _dt(us: int) -> Optional[datetime]:
    """A stored time; 0 and 1 mean unknown (recorded before times were kept)."""
    return datetime.fromtimestamp(us / 1_000_000, tz=timezone.utc) if us > 1 else None


def _lid_bytes(value: Any) -> bytes:
    if isinstance(value, UniqueIdentifier):
        return value.id.bytes
    if isinstance(value, uuid.UUID):
        return value.bytes
    if isinstance(value, str):
        try:
            return (UniqueIdentifier.from_string(value).id if "_" in value else uuid.UUID(value)).bytes
        except ValueError:
            pass
    raise VaultQueryError(f"a linear id is a UniqueIdentifier, a UUID or its text, not {value!r}")


def load_class(tname: str) -> Optional[type]:
    """The class a stored type name names (our own records: the module is trusted)."""
    module, _, qual = tname.partition(":")
    try:
        obj: Any = importlib.import_module(module)
        for part in qual.split("."):
            obj = getattr(obj, part)
        return obj if isinstance(obj, type) else None
    except Exception:  # an app no longer installed: its states match no class query
        return None


# ---------------------------------------------------------------------------- the engine
class IndexReader:
    """Reads the vault's indexes from the store, plus writes made since the last commit
    (``pending``: key -> (value or None, commit stamp) per table), which a flow's own
    round has not committed yet but must see."""

    def __init__(self, store: Any) -> None:
        self.store = store
        self.pending: dict[str, dict[bytes, tuple[Optional[bytes], int]]] = {n: {} for n in INDEX_DBS}
        self._pruned_at = -1

    def put(self, batch: Any, name: str, key: bytes, value: bytes) -> None:
        """Write into the round's batch; reads see it until it commits."""
        batch.table_put(name, key, value)
        if self.store.commits != self._pruned_at:
            self._prune()
        self.pending[name][key] = (value, self._pruned_at)

    def _prune(self) -> None:
        """Forget the writes of rounds that have committed since (the store holds them
        now): once per commit, not once per read or write."""
        committed = self.store.commits
        if committed != self._pruned_at:
            self._pruned_at = committed
            for pend in self.pending.values():
                if pend:
                    for k in [k for k, (_, stamp) in pend.items() if stamp < committed]:
                        del pend[k]

    def _live_pending(self, name: str) -> dict[bytes, tuple[Optional[bytes], int]]:
        pend = self.pending.get(name)
        if pend is None:
            return {}
        self._prune()
        return pend

    def get(self, name: str, key: bytes) -> Optional[bytes]:
        hit = self._live_pending(name).get(key)
        if hit is not None:
            return hit[0]
        return self.store.table_get(name, key)

    def scan(self, name: str, prefix: bytes, after: Optional[bytes] = None) -> list[tuple[bytes, bytes]]:
        """Rows whose key starts with ``prefix`` (and is past ``after``), in key order."""
        rows: dict[bytes, Optional[bytes]] = dict(self.store.table_items(name, prefix, after=after))
        for k, (v, _) in self._live_pending(name).items():
            if k.startswith(prefix) and (after is None or k > after):
                rows[k] = v
        return sorted((k, v) for k, v in rows.items() if v is not None)

    def type_ids(self) -> dict[str, int]:
        """Type name -> type id of every state type this vault has recorded."""
        return {k.decode(): _TID.unpack(v)[0] for k, v in self.scan("vault_types", b"")}

    def type_names(self) -> list[str]:
        return list(self.type_ids())

    def next_seq(self) -> int:
        """One past the highest sequence number in the type index: the last key of each
        type's range (a handful of seeks, whatever the size of the vault)."""
        top = -1
        for tid in self.type_ids().values():
            prefix = type_prefix(tid)
            for k, _ in self.store.table_items("vault_by_type", prefix, reverse=True):
                top = max(top, _SEQ.unpack(k[len(prefix):len(prefix) + 8])[0])
                break
        return top + 1

