"""The notary of a clustered party: which transaction consumed an input is decided by
PostgreSQL (a unique key claimed in one short transaction), whichever worker is asked,
never by a worker's memory."""
from __future__ import annotations

from typing import Any

import psycopg

from greenflow.ledger.notary import NotaryService
from greenflow.ledger.shared_rows import SharedRows
from greenflow.ledger.vault import ref_key

_CLAIM = """INSERT INTO app_rows (tbl, key, value)
SELECT 'notary_consumed', k, %(tid)s FROM unnest(%(keys)s::bytea[]) AS k ORDER BY k
ON CONFLICT (tbl, key) DO NOTHING"""
_CLAIMED = "SELECT key, value FROM app_rows WHERE tbl = 'notary_consumed' AND key = ANY(%s)"


class SharedNotaryService(NotaryService):
    """`NotaryService` for a worker of a clustered notary: uniqueness decided by the
    database (see the module doc)."""

    def __init__(self, node: Any, validating: bool = False) -> None:
        super().__init__(node, validating=validating)
        self._rows = SharedRows(node.store)

    def _claim(self, inputs: Any, tid: bytes) -> list[str]:
        refs = {ref_key(r): r for r in inputs}
        if not refs:
            return []
        keys = sorted(refs)

        def claim(conn: psycopg.Connection) -> list[str]:
            with conn.transaction():
                conn.execute(_CLAIM, {"tid": tid, "keys": keys})
                rows = conn.execute(_CLAIMED, (keys,)).fetchall()
                conflicts = [f"input {refs[bytes(k)]} was already consumed by transaction "
                             f"{bytes(v).hex()}" for k, v in rows if bytes(v) != tid]
                if conflicts:
                    raise _Conflicts(conflicts)   # rolls back: nothing of this claim stays
                return []

        try:
            return self._rows.run("claiming a transaction's inputs", claim)
        except _Conflicts as exc:
            return exc.conflicts


class _Conflicts(Exception):
    def __init__(self, conflicts: list[str]) -> None:
        super().__init__("; ".join(conflicts))
        self.conflicts = conflicts
