"""The ``greenflow`` command line, through click's CliRunner (and once as a subprocess).

The flows used by ``greenflow run`` here are defined in this module and named by
``__name__``, so they resolve to this very module whatever pytest's import mode.
"""
from __future__ import annotations

import enum
import json
import logging
import os
import subprocess
import sys
from decimal import Decimal
from typing import Optional

import pytest
from click.testing import CliRunner, Result

from greenflow import (FlowException, FlowLogic, FlowSession, Party, initiated_by,
                       initiating_flow, startable)
from greenflow.cli import flow_args
from greenflow.cli.main import main

HERE = __name__


@startable
class Sleepy(FlowLogic):
    def __init__(self, seconds: float = 60.0):
        self.seconds = seconds

    def call(self) -> float:
        t0 = self.now()
        self.sleep(self.seconds)
        return (self.now() - t0).total_seconds()


@startable
class Refuses(FlowLogic):
    def call(self) -> None:
        raise FlowException("no deal")


@initiating_flow
@startable
class WaitsForever(FlowLogic):
    def __init__(self, peer: Party):
        self.peer = peer

    def call(self) -> int:
        session = self.initiate_flow(self.peer)
        waiting_for = "an int that never comes"
        return session.send_and_receive(int, waiting_for)


@initiated_by(WaitsForever)
class Silent(FlowLogic):
    def __init__(self, session: FlowSession):
        self.session = session

    def call(self) -> None:
        self.session.receive(str)
        self.session.receive(int)


class Colour(enum.Enum):
    RED = "r"
    BLUE = "b"


@startable
class Echo(FlowLogic):
    def __init__(self, flag: bool, numbers: list[int], weights: dict[str, float],
                 maybe: Optional[int] = None, price: Decimal = Decimal("0"),
                 colour: Colour = Colour.RED, peers: list[Party] = [], label="x", count=5):
        self.values = (flag, numbers, weights, maybe, price, colour,
                       [p.name for p in peers], label, count)

    def call(self) -> str:
        return repr(self.values)


def run(*args: str) -> Result:
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


# ------------------------------------------------------------------------------ root

def test_help_lists_every_command_with_one_line():
    result = run("--help")
    assert result.exit_code == 0
    for name in ("run", "bench", "checkpoints"):
        assert f"  {name} " in result.output


def test_version():
    result = run("--version")
    assert result.exit_code == 0
    assert result.output.startswith("greenflow 0.")


def test_verbose_logging_is_undone_after_the_command():
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    assert run("-vv", "run", "sample.ping").exit_code == 0
    assert root.handlers == handlers and root.level == level


def test_module_entry_point_runs_as_a_subprocess(tmp_path):
    # From another directory, with the greenflow this test imported (installed or source).
    import greenflow
    where = os.path.dirname(os.path.dirname(os.path.abspath(greenflow.__file__)))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (where, os.environ.get("PYTHONPATH")) if p)}
    result = subprocess.run([sys.executable, "-m", "greenflow.cli.main", "--help"],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "Usage: greenflow" in result.stdout
    assert "checkpoints" in result.stdout


# ------------------------------------------------------------------------------ samples

def test_run_sample_ping_prints_the_sum():
    result = run("run", "sample.ping")
    assert result.exit_code == 0
    assert result.output.strip() == "6"


def test_sample_options_are_parsed_with_the_samples_own_declarations():
    assert run("run", "sample.ping", "-n", "5").output.strip() == "15"
    result = run("run", "sample.ping", "--bogus")
    assert result.exit_code == 2
    assert "No such option" in result.output and "--bogus" in result.output
    result = run("run", "sample.ping", "-n", "1000000000")   # would fill memory, not finish
    assert result.exit_code == 2 and "0<=x<=100000" in result.output, result.output


def test_sample_help_shows_its_options():
    result = run("run", "sample.ping", "--help")
    assert result.exit_code == 0
    assert "greenflow run sample.ping" in result.output and "-n" in result.output


def test_unknown_sample_names_the_available_ones():
    result = run("run", "sample.nope")
    assert result.exit_code == 2
    assert "no sample named 'nope'" in result.output
    assert "ping" in result.output
    result = run("run", "samples.ping.Ping")   # a flow class, written as `flow start` takes it
    assert result.exit_code == 2 and "'greenflow run samples.ping:Ping'" in result.output


def test_sample_keeps_its_data_dir_when_asked(tmp_path):
    assert run("run", "sample.ping", "--data-dir", str(tmp_path / "d")).exit_code == 0
    assert sorted(os.listdir(tmp_path / "d")) == ["Alice", "Bob"]


def _fake_sample(monkeypatch, name: str, run_sample) -> None:
    import types
    module = types.ModuleType(f"greenflow.samples.{name}", f"The {name} test sample.")
    module.run_sample = run_sample
    monkeypatch.setitem(sys.modules, module.__name__, module)


def test_sample_that_parses_its_own_argv_gets_them_raw(monkeypatch):
    seen = []

    def run_sample(data_dir, argv):
        seen.append((os.path.isdir(data_dir), argv))
        raise SystemExit(3 if "--fail" in argv else 0)

    _fake_sample(monkeypatch, "rawargs", run_sample)
    assert run("run", "sample.rawargs", "--x", "1", "--help").exit_code == 0
    assert run("run", "sample.rawargs", "--fail").exit_code == 3
    assert seen == [(True, ["--x", "1", "--help"]), (True, ["--fail"])]


def test_sample_failures_become_exit_codes(monkeypatch):
    def run_sample(data_dir, **options):
        raise FlowException("the buyer walked away")

    _fake_sample(monkeypatch, "refusing", run_sample)
    result = run("run", "sample.refusing")
    assert result.exit_code == 1
    assert "sample.refusing failed: FlowException: the buyer walked away" in result.output
    _fake_sample(monkeypatch, "returning", lambda data_dir: 4)
    assert run("run", "sample.returning").exit_code == 4
    result = run("run", "sample.returning", "--unexpected")
    assert result.exit_code == 2 and "No such option" in result.output


# ------------------------------------------------------------------------------ flows

def test_run_flow_class_with_a_party_and_an_int():
    result = run("run", "greenflow.samples.ping:Ping", "--arg", "peer=Bob", "--arg", "n=4")
    assert result.exit_code == 0, result.output
    assert result.output.strip() == "10"


def test_flow_modules_in_the_current_directory_are_importable(tmp_path, monkeypatch):
    (tmp_path / "my_cli_flows.py").write_text(
        "from greenflow import FlowLogic, startable\n"
        "@startable\n"
        "class Hello(FlowLogic):\n"
        "    def __init__(self, who: str):\n"
        "        self.who = who\n"
        "    def call(self):\n"
        "        return 'hello ' + self.who\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    result = run("run", "my_cli_flows:Hello", "--arg", "who=world", "--data-dir", "data")
    assert result.exit_code == 0, result.output
    assert result.output.strip() == "hello world"


def test_a_flow_run_from_the_command_line_finds_the_notary(tmp_path, monkeypatch):
    """A ledger flow run with `greenflow run` found no notary (`notaries()` empty, and
    `--arg notary=Notary` made an ordinary node of that name: "Notary is not a notary")."""
    (tmp_path / "my_notary_flows.py").write_text(
        "from greenflow import FlowLogic, Party, startable\n"
        "@startable\n"
        "class Notaries(FlowLogic):\n"
        "    def __init__(self, notary: Party):\n"
        "        self.notary = notary\n"
        "    def call(self):\n"
        "        known = self.services.identity_service.notaries()\n"
        "        return ','.join(p.name for p in known) + ' ' + str(self.notary in known)\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    result = run("run", "my_notary_flows:Notaries", "--arg", "notary=Notary")
    assert result.exit_code == 0, result.output
    assert result.output.strip() == "Notary True"


def test_ledger_values_are_given_as_text_on_the_command_line(tmp_path, monkeypatch):
    """A type with a `parse_arg` reads itself from an argument's text: `Amount`, and
    `UniqueIdentifier`, which a flow that evolves a linear state takes (it could not be
    given at all, and its own parser's error named neither the text nor the parameter)."""
    (tmp_path / "my_ledger_args.py").write_text(
        "from greenflow import FlowLogic, startable\n"
        "from greenflow.ledger import Amount, UniqueIdentifier\n"
        "@startable\n"
        "class Evolve(FlowLogic):\n"
        "    def __init__(self, linear_id: UniqueIdentifier, amount: Amount):\n"
        "        self.linear_id, self.amount = linear_id, amount\n"
        "    def call(self):\n"
        "        return f'{self.linear_id.external_id} {self.linear_id.id.hex[:4]} {self.amount}'\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    lid = "DEAL-1_6f1c0a52-3c1e-4d2b-9a57-0d3f6c1a2b3c"
    result = run("run", "my_ledger_args:Evolve", "--arg", f"linear_id={lid}",
                 "--arg", "amount=1500.00 GBP")
    assert result.exit_code == 0, result.output
    assert result.output.strip() == "DEAL-1 6f1c 1,500.00 GBP", result.output
    result = run("run", "my_ledger_args:Evolve", "--arg", "linear_id=nonsense",
                 "--arg", "amount=1 GBP")
    assert result.exit_code == 2, result.output
    assert "linear_id" in result.output and "'nonsense' is not a linear id" in result.output


class Unprintable(ValueError):
    def __str__(self) -> str:
        raise ValueError("no text for you")


@startable
class Odd(FlowLogic):
    """Fails with an exception whose ``__str__`` raises, or returns an int too long for
    ``repr`` by default."""

    def __init__(self, fail: bool):
        self.fail = fail

    def call(self) -> int:
        if self.fail:
            raise Unprintable()
        return 10 ** 5000


def test_what_a_flow_raises_or_returns_is_shown_however_odd():
    """Both printed a traceback of the command itself."""
    result = run("run", f"{HERE}:Odd", "--arg", "fail=yes")
    assert result.exit_code == 1, result.output
    assert "Odd failed: Unprintable: <Unprintable.__str__ raised ValueError>" in result.output
    result = run("run", f"{HERE}:Odd", "--arg", "fail=no")
    assert result.exit_code == 0, result.output
    assert result.output.strip() == "1" + "0" * 5000


def test_sleeping_flow_finishes_on_virtual_time():
    result = run("run", f"{HERE}:Sleepy", "--arg", "seconds=3600")
    assert result.exit_code == 0, result.output
    assert result.output.strip() == "3600.0"


def test_arguments_are_converted_by_type_hint():
    result = run("run", f"{HERE}:Echo", "--arg", "flag=yes", "--arg", "numbers=[1, 2]",
                 "--arg", 'weights={"a": 1}', "--arg", "maybe=null", "--arg", "price=1.10",
                 "--arg", "colour=blue", "--arg", "peers=Bob,Carol", "--arg", "count=7")
    assert result.exit_code == 0, result.output
    assert result.output.strip() == repr(
        (True, [1, 2], {"a": 1.0}, None, Decimal("1.10"), Colour.BLUE, ["Bob", "Carol"], "x", 7))


@pytest.mark.parametrize("args, message", [
    (["--arg", "peer=Bob", "--arg", "n=abc"], "bad argument n='abc' for Ping: expected int"),
    (["--arg", "n=4"], "missing argument: Ping needs peer=<Party>"),
    (["--arg", "peer=Bob", "--arg", "colour=red"], "unknown argument 'colour'"),
    (["--arg", "peer"], "argument 'peer' is not of the form NAME=VALUE"),
    (["--arg", "peer=Bob", "--arg", "peer=Carol"], "argument 'peer' is given twice"),
])
def test_bad_arg_says_which(args, message):
    result = run("run", "greenflow.samples.ping:Ping", *args)
    assert result.exit_code == 2
    assert message in result.output


@pytest.mark.parametrize("arg, says", [
    ("numbers=[1, 2, \"x\"]", "item 2 'x': a whole number"),
    ("numbers=1,oops", "item 1 'oops': a whole number"),
    ('weights={"a": 1, "b": "heavy"}', "the value of 'b': a number"),
])
def test_a_bad_member_of_a_list_or_dict_argument_is_named(arg, says):
    """The refusal named only the element type ('expected list[int] (a whole number)'),
    as if the value were no list at all."""
    result = run("run", f"{HERE}:Echo", "--arg", arg)
    assert result.exit_code == 2, result.output
    assert says in result.output


def test_a_json_argument_nested_past_the_parser_is_a_bad_argument_not_a_traceback():
    deep = "[" * 20_000 + "]" * 20_000   # RecursionError in json.loads
    for arg in ("numbers=" + deep, 'weights={"a": ' + deep + "}"):
        result = run("run", f"{HERE}:Echo", "--arg", arg)
        assert result.exit_code == 2, result.output
        assert "JSON nested too deeply" in result.output and "Traceback" not in result.output


@pytest.mark.parametrize("args, says", [
    (["sample.chaos", "--duration", "inf"], "'inf' is not a finite number"),
    (["sample.chaos", "--kill-every", "nan"], "'nan' is not a finite number"),
    (["sample.chaos", "--database", "postgresql://x/y"], "it needs --cluster N"),
    (["sample.chaos", "--cluster", "1", "--database", "not-a-url"], "is a postgresql://... URL"),
    (["sample.ping", "--data-dir", ""], "--data-dir is empty"),
])
def test_sample_options_no_run_could_use_are_refused_before_it_starts(args, says):
    """``--duration inf`` planned kills for ever (memory growing); ``--kill-every nan``
    killed nothing and reported "All invariants hold"; ``--data-dir ''`` named no option."""
    result = run("run", *args)
    assert result.exit_code == 2 and says in result.output, result.output


def test_a_refused_trade_under_crash_says_why_at_once(tmp_path):
    """It said only that there was nothing to crash (and with --processes waited 2 min)."""
    result = run("run", "sample.trade", "--crash", "--price", "1300", "--data-dir", str(tmp_path))
    assert result.exit_code == 1
    assert "nothing to crash: Buyer: FAILED: UnacceptablePrice: Buyer will not pay 1,300 GBP" \
        in result.output


def test_a_sample_run_again_on_an_interrupted_runs_directory_says_it_resumes_its_flows(tmp_path):
    """It finished the earlier run's flows first without a word (17 s for `-n 3`)."""
    from greenflow.samples.ping import Ping
    from greenflow.testing import MockNetwork
    net = MockNetwork(str(tmp_path))
    alice, bob = net.create_node("Alice"), net.create_node("Bob")
    alice.start_flow(Ping(bob.party, 2))          # started, never run: as if interrupted
    net.close()
    result = run("run", "sample.ping", "-n", "3", "--data-dir", str(tmp_path))
    assert result.exit_code == 0, result.output
    assert f"resuming 1 unfinished flow(s) of an earlier run in {tmp_path} first" in result.output
    assert result.output.strip().endswith("6")


@pytest.mark.lmdb_only   # (damages the LMDB data file of the run's node)
@pytest.mark.parametrize("args", [["sample.ping"],
                                  ["greenflow.samples.ping:Ping", "--arg", "peer=Bob"]])
def test_a_damaged_store_of_a_run_is_reported_with_what_a_run_can_do(tmp_path, args):
    """The advice was a node's (`--new-store`), an option `greenflow run` does not have."""
    assert run("run", "sample.ping", "--data-dir", str(tmp_path)).exit_code == 0
    with open(tmp_path / "Alice" / "store" / "data.mdb", "r+b") as fh:
        fh.write(b"\xff" * 8192)   # both meta pages overwritten
    result = run("run", *args, "--data-dir", str(tmp_path))
    assert result.exit_code == 1, result.output
    assert "is not an LMDB store file" in result.output and "--new-store" not in result.output
    assert f"restore {tmp_path} from a backup, or run in another --data-dir" in result.output


def test_non_startable_flow_is_refused_with_the_not_startable_message():
    result = run("run", "greenflow.samples.ping:Pong", "--arg", "session=x")
    assert result.exit_code == 2
    assert "greenflow.samples.ping.Pong is not @startable" in result.output


@pytest.mark.parametrize("target, message", [
    ("greenflow.samples.ping:Nope", "has no 'Nope'; startable flows there: Ping"),
    ("greenflow.samples.ping.Ping", "did you mean greenflow.samples.ping:Ping?"),
    ("no_such_module_here:Flow", "cannot be imported"),
    ("sample.nope:Flow", "no sample named 'nope'"),
])
def test_unknown_target_is_explained(target, message):
    result = run("run", target)
    assert result.exit_code == 2
    assert message in result.output


def test_failing_flow_prints_its_error_and_exits_1():
    result = run("run", f"{HERE}:Refuses")
    assert result.exit_code == 1
    assert "Refuses failed: FlowException: no deal" in result.output


def test_flow_help_lists_its_arguments():
    result = run("run", "greenflow.samples.ping:Ping", "--help")
    assert result.exit_code == 0
    assert "peer" in result.output and "Party (required)" in result.output
    assert "int (default 3)" in result.output


# ------------------------------------------------------------------------------ checkpoints

def test_stuck_flow_is_reported_and_its_checkpoint_can_be_dumped(tmp_path):
    data = tmp_path / "data"
    result = run("run", f"{HERE}:WaitsForever", "--arg", "peer=Bob", "--data-dir", str(data))
    assert result.exit_code == 1
    assert "did not finish" in result.output and "waiting on receive int from Bob" in result.output

    text = run("checkpoints", "dump", "--node", str(data / "Alice"))
    assert text.exit_code == 0, text.output
    assert "Alice: 1 unfinished flow" in text.output
    assert "WaitsForever.call" in text.output
    assert "waiting_for = 'an int that never comes'" in text.output

    as_json = run("checkpoints", "dump", "--node", str(data / "Bob"), "--json")
    assert as_json.exit_code == 0
    (entry,) = json.loads(as_json.output)
    assert entry["flow_class"] == f"{HERE}.Silent"
    assert entry["sessions"][0]["counterparty"] == "Alice"
    assert entry["frames"][-1]["function"] == "Silent.call"


def test_a_dump_of_many_flows_is_written_as_it_is_read_and_says_the_same(tmp_path):
    """`checkpoints dump` held every entry (and `--json` the whole document) in memory
    before printing: 5 GB at a million flows. It writes each entry as it reads it; what
    it writes is what the whole list gave."""
    from greenflow.cli.checkpoints import format_dump
    from greenflow.node import read_checkpoints
    from greenflow.testing import MockNetwork
    with MockNetwork(tmp_path / "net") as net:
        alice, bob = net.create_node("Alice"), net.create_node("Bob")
        for _ in range(4):
            alice.start_flow(WaitsForever(bob.party))
        net.run_network()
    d = str(tmp_path / "net" / "Alice")
    whole = read_checkpoints(d)
    assert len(whole) == 4
    as_json = run("checkpoints", "dump", "--node", d, "--json")
    assert as_json.exit_code == 0, as_json.output
    assert json.loads(as_json.output) == json.loads(json.dumps(whole, default=str))
    assert as_json.output == json.dumps(whole, indent=2, default=str) + "\n"
    text = run("checkpoints", "dump", "--node", d)
    assert text.exit_code == 0 and text.output == format_dump("Alice", whole) + "\n", text.output


def test_dump_of_a_directory_that_is_no_node(tmp_path):
    result = run("checkpoints", "dump", "--node", str(tmp_path))
    assert result.exit_code == 2
    assert "is not a node directory" in result.output
    assert os.listdir(tmp_path) == []  # nothing created there


def test_dump_reads_a_node_directory_without_writing_to_it(tmp_path):
    assert run("run", "sample.ping", "--data-dir", str(tmp_path)).exit_code == 0
    data = tmp_path / "Alice" / "store" / "data.mdb"
    lmdb = data.exists()                      # else the run's store is a database
    before = (data.stat().st_mtime_ns, data.stat().st_size) if lmdb else None
    result = run("checkpoints", "dump", "--node", str(tmp_path / "Alice"), "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == []   # ping finished: nothing unfinished
    if lmdb:
        assert (data.stat().st_mtime_ns, data.stat().st_size) == before


# ------------------------------------------------------------------------------ bench

def test_bench_without_the_suite_module_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "greenflow.benchmarks.__main__", None)
    result = run("bench")
    assert result.exit_code == 1
    assert "the benchmark suite is not available" in result.output


def test_bench_with_an_unknown_suite_fails_clearly():
    pytest.importorskip("greenflow.benchmarks.__main__")
    result = run("bench", "no-such-suite")
    assert result.exit_code != 0
    assert "no-such-suite" in result.output


# ------------------------------------------------------------------------------ flow_args

@pytest.mark.parametrize("text, hint, expected", [
    ("42", int, 42), ("2.5", float, 2.5), ("off", bool, False), ("hi", str, "hi"),
    ("null", Optional[int], None), ("7", Optional[int], 7), ("[1,2]", tuple[int, ...], (1, 2)),
    ('["a", 2]', tuple[str, int], ("a", 2)), ("", list[str], []),
])
def test_convert(text, hint, expected):
    assert flow_args.convert(text, hint) == expected


@pytest.mark.parametrize("text, hint", [
    ("1.5", int), ("maybe", bool), ("[1]", dict), ('["a"]', list[int]), ("x", Colour),
    ('[1, 2, 3]', tuple[int, int]),
])
def test_convert_refuses(text, hint):
    with pytest.raises((ValueError, TypeError)):
        flow_args.convert(text, hint)


def test_parties_are_resolved_by_the_caller():
    bound = flow_args.bind_arguments(Echo, {"flag": "1", "numbers": "1", "weights": "{}",
                                            "peers": '["Bob", "Carol", "Bob"]'})
    assert bound.party_names == ["Bob", "Carol"]
    kwargs = bound.resolve(lambda name: Party(name, b"k"))
    assert kwargs["peers"] == [Party("Bob", b"k"), Party("Carol", b"k"), Party("Bob", b"k")]


def test_an_unreachable_clustered_party_is_pointed_at_its_workers_not_at_node_start(tmp_path):
    """The hint said `greenflow node start --dir DIR`, which on a cluster's directory
    fails (its workers hold the ports) while the other workers serve on."""
    from greenflow.cli.rpc_target import _not_running_hint
    assert "greenflow node start --dir" in _not_running_hint(str(tmp_path))
    (tmp_path / "cluster").mkdir()
    (tmp_path / "cluster" / "database").write_text("postgresql://x/y\n")
    hint = _not_running_hint(str(tmp_path))
    assert f"greenflow cluster status --dir {tmp_path}" in hint and "node start" not in hint


def test_a_node_whose_rpc_port_is_any_free_port_is_not_looked_for_at_port_0(tmp_path):
    """`--node DIR` connected to port 0 and said 'is it running?' of a running node."""
    d = str(tmp_path / "Carol")
    assert run("node", "init", "--dir", d, "--name", "Carol", "--p2p-address", "127.0.0.1:0",
               "--rpc-address", "127.0.0.1:0").exit_code == 0
    result = run("flow", "list", "--node", d)
    assert result.exit_code == 2, result.output
    assert "rpc_address port 0 (any free port)" in result.output
    assert "reach it with --node http://HOST:PORT" in result.output
    assert "is it running" not in result.output


def test_one_port_for_both_listeners_is_refused_naming_both_settings(tmp_path):
    """The second bind failed at start with 'Address already in use' (exit 1), which
    reads like another process's fault."""
    d = str(tmp_path / "Hal")
    result = run("node", "init", "--dir", d, "--name", "Hal", "--p2p-address", "127.0.0.1:23004",
                 "--rpc-address", "0.0.0.0:23004")
    assert result.exit_code == 2 and not os.path.exists(d), result.output
    assert "p2p_address and rpc_address are the same port" in result.output
    assert run("node", "init", "--dir", d, "--name", "Hal", "--p2p-address", "127.0.0.1:23004",
               "--rpc-address", "127.0.0.1:23005").exit_code == 0
    toml = os.path.join(d, "node.toml")
    with open(toml, encoding="utf-8") as fh:
        text = fh.read().replace("127.0.0.1:23005", "127.0.0.1:23004")
    with open(toml, "w", encoding="utf-8") as fh:
        fh.write(text)
    from greenflow.network.node_config import ConfigError, NodeConfig
    with pytest.raises(ConfigError, match="p2p_address and rpc_address are the same port"):
        NodeConfig.load(d)
