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
