"""`greenflow flow start --wait` against a node process run in this process: the wait
ends at its timeout (the node's keep-alives never let the stream go idle), and a user
who may start flows but not read them still gets the result of the flow it started."""
from __future__ import annotations

import time

import pytest
from click.testing import CliRunner

from greenflow.cli.main import main
from test_rpc_requests import Net


@pytest.fixture(scope="module")
def net(tmp_path_factory):
    n = Net(str(tmp_path_factory.mktemp("wait")))
    yield n
    n.close()


def _url(net: Net) -> str:
    host, port = net.addr
    return f"http://{host}:{port}"


def test_a_wait_ends_at_its_timeout_and_says_the_flow_goes_on(net) -> None:
    t0 = time.monotonic()
    r = CliRunner().invoke(main, ["flow", "start", "--node", _url(net), "--user", "admin",
                                  "--password", "pw", "procflows.Sleeper", "seconds=600",
                                  "--wait", "--timeout", "2"])
    took = time.monotonic() - t0
    assert r.exit_code == 1, r.output
    assert "has not finished within 2 s" in r.output and "flow result --wait" in r.output
    assert took < 15   # before: on until the flow ended (the keep-alives kept it reading)


def test_a_user_who_may_only_start_gets_the_result_of_the_flow_it_started(net) -> None:
    r = CliRunner().invoke(main, ["flow", "start", "--node", _url(net), "--user", "starter",
                                  "--password", "spw", "samples.ping.Ping", "peer=Bob", "n=3",
                                  "--wait"])
    assert r.exit_code == 0, r.output
    assert r.stdout.strip().splitlines()[-1] == "6"
    assert "needs the 'read' permission" in r.output   # why no progress is shown
