"""Option values the command line refuses as usage errors (exit 2, one ``Error:`` line)
before it acts: non-finite or negative seconds, an unknown flow status, an RPC URL with
a bad port, a directory that cannot be created."""
from __future__ import annotations

import pytest
from click.testing import CliRunner

from greenflow.cli.main import main


def run(*args: str):
    return CliRunner().invoke(main, list(args))


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "-1", "-3", "soon"])
@pytest.mark.parametrize("command", [
    ("flow", "result", "0" * 32, "--node", "http://127.0.0.1:1", "--wait"),
    ("flow", "start", "--node", "http://127.0.0.1:1", "samples.ping.Ping", "--wait", "--timeout"),
    ("node", "stop", "--node", "http://127.0.0.1:1", "--timeout"),
])
def test_seconds_must_be_finite_and_not_negative(command, value):
    result = run(*command, value)
    assert result.exit_code == 2, result.output
    assert "number of seconds" in result.output and "Traceback" not in result.output


def test_an_unknown_flow_status_is_a_usage_error_naming_the_known_ones():
    result = run("flow", "list", "--node", "http://127.0.0.1:1", "--status", "SUSPENDED,BOGUS")
    assert result.exit_code == 2, result.output
    assert "unknown status BOGUS" in result.output and "HOSPITALIZED" in result.output


@pytest.mark.parametrize("url", ["http://127.0.0.1:99999", "http://127.0.0.1:abc"])
def test_an_rpc_url_with_a_bad_port_is_a_usage_error(url):
    result = run("flow", "list", "--node", url, "--user", "u", "--password", "p")
    assert result.exit_code == 2 and "is not a usable RPC URL" in result.output, result.output


@pytest.mark.parametrize("command", [
    ("run", "samples.ping:Ping", "--data-dir", "/proc/greenflow-x", "--arg", "peer=Bob"),
    ("network", "bootstrap", "--dir", "/proc/greenflow-x", "--nodes", "Alice"),
    ("node", "init", "--dir", "/proc/greenflow-x", "--name", "Carol"),
])
def test_a_directory_that_cannot_be_created_is_named(command):
    result = run(*command)
    assert result.exit_code == 2, (result.output, result.exception)
    assert "cannot create or write /proc/greenflow-x" in result.output
