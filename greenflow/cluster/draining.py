"""A clustered party drains as one.

A node drains for an upgrade (`Node.set_draining`): no new flows, no new inbound
sessions, running flows finish. One node keeps the setting in a ``draining`` file in its
directory; the workers of a clustered party may each have a directory of their own, on
different machines, so the party's setting is a row of its store's ``meta`` table. A
worker asked to drain (RPC, CLI, console) writes it; every worker reads it about once a
second and at each new generation, and drains or stops draining to match.
"""
from __future__ import annotations

import logging
import threading
from typing import Any, Optional

log = logging.getLogger("greenflow.cluster")

DRAINING_KEY = "greenflow.draining"


class PartyDraining:
    """The party's draining flag in the database (one connection, reopened on error)."""

    def __init__(self, dsn: str, schema: str) -> None:
        self.dsn, self.schema = dsn, schema
        self._conn: Any = None
        self._lock = threading.Lock()
        self._warned = False

    def _connect(self) -> Any:
        import psycopg
        from psycopg import sql
        if self._conn is None or self._conn.closed or self._conn.broken:
            self._conn = psycopg.connect(self.dsn, autocommit=True, connect_timeout=5)
            self._conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(self.schema)))
        return self._conn

    def set(self, on: bool) -> None:
        """Record the party's setting (raises if the database cannot take it: the caller
        is told, rather than one worker draining alone)."""
        with self._lock:
            conn = self._connect()
            if on:
                conn.execute("INSERT INTO meta (name, value) VALUES (%s, %s) ON CONFLICT (name) "
                             "DO UPDATE SET value = EXCLUDED.value", (DRAINING_KEY, b"1"))
            else:
                conn.execute("DELETE FROM meta WHERE name = %s", (DRAINING_KEY,))

    def get(self) -> Optional[bool]:
        """The party's setting; None when the database cannot be read now (a worker then
        keeps what it has)."""
        with self._lock:
            try:
                row = self._connect().execute("SELECT 1 FROM meta WHERE name = %s",
                                              (DRAINING_KEY,)).fetchone()
            except Exception as exc:  # noqa: BLE001 - the database is away: try again later
                if self._conn is not None:
                    try:
                        self._conn.close()
                    except Exception:  # noqa: BLE001
                        pass
                    self._conn = None
                if not self._warned:
                    log.warning("cannot read the party's draining setting: %s", exc)
                    self._warned = True
                return None
            self._warned = False
            return row is not None

    def apply(self, node: Any, worker: str) -> None:
        """Make ``node`` drain, or not, as the party does."""
        on = self.get()
        if on is None or node is None or node.closed or node.draining == on:
            return
        log.warning("worker %s: the party %s draining", worker,
                    "is" if on else "is no longer")
        node.on_scheduler(lambda: node.scheduler.set_draining(on))

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
