"""A connection of a clustered worker's ledger services to the party's PostgreSQL schema,
for the short transactions they take outside the group commit."""
from __future__ import annotations

import threading
from typing import Any, Callable, Optional

import psycopg
from psycopg import sql

from greenflow.storage.postgres_reader import run_reconnecting


class SharedRows:
    """A connection of its own to the party's schema, for the short transactions the
    shared vault and notary take outside the group commit (a lock must be decided by the
    database now, not when the round commits)."""

    def __init__(self, store: Any) -> None:
        self.dsn: str = store.dsn
        self.schema: str = store.schema
        self.path: str = getattr(store, "path", self.schema)
        self._conn: Optional[psycopg.Connection] = None
        self._lock = threading.Lock()

    def _connection(self) -> psycopg.Connection:
        conn = self._conn
        if conn is None or conn.closed or conn.broken:
            if conn is not None:
                conn.close()
            conn = psycopg.connect(self.dsn, autocommit=True, connect_timeout=10)
            conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(self.schema)))
            self._conn = conn
        return conn

    def run(self, what: str, fn: Callable[[psycopg.Connection], Any]) -> Any:
        """``fn(connection)``, again once on a fresh connection if the first was broken."""
        return run_reconnecting(self._lock, self._connection, fn, what, self.path)

    def close(self) -> None:
        with self._lock:
            conn, self._conn = self._conn, None
            if conn is not None:
                conn.close()
