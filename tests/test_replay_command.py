"""``greenflow replay`` and ``greenflow.testing.replay_node``: an upgrade is checked
against a node's unfinished checkpoints before it runs.

The node directories are recorded by an older version of a small sample (written to a
temporary module and run in a separate process); the tests then install a newer version
of that module and replay: a compatible change replays (exit 0), an incompatible one is
reported with its explanation (exit 1), and the store's bytes are unchanged.
"""
from __future__ import annotations

import hashlib
import importlib
import os
import subprocess
import sys
import textwrap

import pytest

from greenflow.testing import assert_replays, replay_node

import greenflow

# Child Pythons import the greenflow this run imported (its tree's root on PYTHONPATH).
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(greenflow.__file__)))
MODULE = "quote_sample"

V1 = '''
import uuid
from dataclasses import dataclass

from greenflow import FlowLogic, FlowSession, Party, initiated_by, initiating_flow, serializable


@serializable
@dataclass(frozen=True)
class Quote:
    ref: str
    amount: int


@initiating_flow
class AskQuote(FlowLogic):
    def __init__(self, peer: Party, amount: int) -> None:
        self.peer, self.amount = peer, amount

    def call(self) -> str:
        session = self.initiate_flow(self.peer)
        ref = str(uuid.uuid4())
        price = session.send_and_receive(int, Quote(ref, self.amount))
        session.send(f"accept {price}")
        done = session.receive(str)
        return done
        # (end of AskQuote)


@initiated_by(AskQuote)
class GiveQuote(FlowLogic):
    def __init__(self, session: FlowSession) -> None:
        self.session = session

    def call(self) -> str:
        quote = self.session.receive(Quote)
        self.session.send(quote.amount * 2)
        self.session.receive(str)
        self.sleep(3600)
        self.session.send("done")
        return quote.ref
'''

# Compatible: new code after the point where the old flows wait, a new local, a comment.
V2_COMPATIBLE = V1.replace('''        done = session.receive(str)
        return done''', '''        done = session.receive(str)
        shown = done.upper()   # new in version 2
        return shown''')

# Incompatible: the quote now carries another amount.
V2_INCOMPATIBLE = V1.replace("Quote(ref, self.amount)", "Quote(ref, self.amount + 1)")

RECORD = '''
import sys
from greenflow.testing import MockNetwork
import quote_sample as m
net = MockNetwork(sys.argv[1])
alice, bob = net.create_node("Alice"), net.create_node("Bob")
alice.node.start_flows([m.AskQuote(bob.party, 10), m.AskQuote(bob.party, 20)])
net.run_network()
assert len(alice.node.flows()) == 2 and len(alice.checkpoints_dump()) == 2
net.close()
'''


def _write(app_dir, source: str) -> None:
    path = os.path.join(app_dir, MODULE + ".py")
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(textwrap.dedent(source))
    for cached in (os.path.join(app_dir, "__pycache__"),):
        if os.path.isdir(cached):
            for f in os.listdir(cached):
                os.remove(os.path.join(cached, f))


def _env(app_dir) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(app_dir), ROOT])
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


@pytest.fixture
def recorded(tmp_path):
    """A network directory whose Alice holds two AskQuote flows written by version 1."""
    app_dir = tmp_path / "apps"
    app_dir.mkdir()
    _write(app_dir, V1)
    net_dir = tmp_path / "net"
    subprocess.run([sys.executable, "-c", RECORD, str(net_dir)], check=True, cwd=ROOT,
                   env=_env(app_dir), timeout=120)
    return app_dir, net_dir


def _store_records(node_dir) -> dict:
    """Every record of a non-LMDB node store, read through the storage interface."""
    from greenflow.storage import open_store
    store = open_store(str(node_dir), readonly=True)
    try:
        out: dict = {"flows": list(store.header_blobs()), "results": list(store.result_blobs()),
                     "outbox": list(store.outbox()), "timers": list(store.timers()),
                     "wake": sorted(store.flows_to_wake())}
        for fid, _ in out["flows"]:
            out[fid] = (store.logic_blob(fid), store.inbox(fid))
        return out
    finally:
        store.close()


def _store_bytes(node_dir) -> dict:
    """Every file of the store, byte for byte, but lock.mdb: LMDB's table of live
    readers, which any reader (``checkpoints dump`` too) registers itself in."""
    store = os.path.join(node_dir, "store")
    if not os.path.isdir(store):              # the run's store is a database: its records
        return _store_records(node_dir)
    out = {}
    for f in sorted(os.listdir(store)):
        if f != "lock.mdb":
            with open(os.path.join(store, f), "rb") as fh:
                out[f] = hashlib.sha256(fh.read()).hexdigest()
    assert "data.mdb" in out
    return out


def _replay_cli(app_dir, node_dir) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "greenflow.cli.main", "replay", "--node",
                           str(node_dir), "--apps", MODULE], cwd=ROOT, env=_env(app_dir),
                          capture_output=True, text=True, timeout=120)


def test_greenflow_replay_passes_a_compatible_change_and_reports_an_incompatible_one(recorded):
    app_dir, net_dir = recorded
    alice, bob = net_dir / "Alice", net_dir / "Bob"
    before = {n: _store_bytes(n) for n in (alice, bob)}

    _write(app_dir, V1)
    same = _replay_cli(app_dir, alice)
    assert same.returncode == 0, same.stdout + same.stderr
    assert "Alice: 2 unfinished flows, 2 replay, 0 do not" in same.stdout
    assert same.stdout.count("quote_sample.AskQuote  [SUSPENDED]: replays: up to 'receive str from Bob'\n") == 2
    assert "changed" not in same.stdout   # code fingerprints are the same in every process

    _write(app_dir, V2_COMPATIBLE)
    ok = _replay_cli(app_dir, alice)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert ok.stdout.count(": replays: up to 'receive str from Bob' (the code of "
                           "quote_sample.AskQuote changed since this checkpoint was written)") == 2
    ok_bob = _replay_cli(app_dir, bob)
    assert ok_bob.returncode == 0 and ok_bob.stdout.count("GiveQuote  [SUSPENDED]: replays: up to 'sleep 3600.0s'") == 2, ok_bob.stdout

    _write(app_dir, V2_INCOMPATIBLE)
    bad = _replay_cli(app_dir, alice)
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert "Alice: 2 unfinished flows, 0 replay, 2 do not" in bad.stdout
    assert bad.stdout.count("quote_sample.AskQuote  [SUSPENDED]: diverges: NonDeterminismError: ") == 2
    line = V2_INCOMPATIBLE.splitlines().index(
        "        price = session.send_and_receive(int, Quote(ref, self.amount + 1))") + 1
    assert f"at {app_dir / (MODULE + '.py')}:{line} in AskQuote.call" in bad.stdout
    assert "the payload differs at payload.amount: recorded 10, now 11" in bad.stdout
    assert "the payload differs at payload.amount: recorded 20, now 21" in bad.stdout
    assert "2 of 2 unfinished flows do not replay on the installed code" in bad.stderr

    after = {n: _store_bytes(n) for n in (alice, bob)}
    assert after == before                      # nothing was written


def test_replay_refuses_a_directory_that_is_not_a_node(tmp_path):
    r = subprocess.run([sys.executable, "-m", "greenflow.cli.main", "replay", "--node",
                        str(tmp_path)], cwd=ROOT, env=_env(tmp_path), capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 2 and "is not a node directory" in r.stderr


def test_replay_node_as_a_library_call_for_ci_fixtures(recorded, monkeypatch):
    app_dir, net_dir = recorded
    monkeypatch.syspath_prepend(str(app_dir))
    sys.modules.pop(MODULE, None)
    try:
        _write(app_dir, V2_COMPATIBLE)
        importlib.invalidate_caches()
        report = assert_replays(str(net_dir / "Alice"), [MODULE])
        assert report.ok and len(report.flows) == 2
        _write(app_dir, V2_INCOMPATIBLE)
        importlib.reload(sys.modules[MODULE])
        report = replay_node(str(net_dir / "Alice"), [MODULE])
        assert not report.ok and [f.outcome for f in report.flows] == ["diverges", "diverges"]
        assert "payload.amount" in report.flows[0].detail
        with pytest.raises(AssertionError, match="diverges: NonDeterminismError"):
            assert_replays(str(net_dir / "Alice"), [MODULE])
    finally:
        sys.modules.pop(MODULE, None)


def test_replay_says_a_flow_whose_class_is_gone_cannot_be_restored(recorded):
    """A renamed flow class: its stored flows cannot be restored; the report names the
    class and asks whether the module still defines it."""
    app_dir, net_dir = recorded
    _write(app_dir, V1.replace("AskQuote", "AskForQuote"))
    r = _replay_cli(app_dir, net_dir / "Alice")
    assert r.returncode == 1, r.stdout + r.stderr
    assert r.stdout.count("quote_sample.AskQuote  [SUSPENDED]: cannot replay: cannot restore "
                          "it: AttributeError: Can't get attribute 'AskQuote'") == 2, r.stdout
    assert "(is its app module given with --apps, and does it still define that class?)" \
        in r.stdout
