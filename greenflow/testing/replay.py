"""Replay a node's unfinished checkpoints against the code installed now, read-only.

Before an upgrade goes live (or in CI, against checkpoints kept as fixtures, as Temporal
users replay recorded histories), this answers for every unfinished flow of a node:
does the new code still replay its journal? Each flow is rebuilt from its checkpoint
and run from the top, every request answered from its journal exactly as a restarted
node would, until it reaches the request it waits on (it *replays*) or asks for
something else (it *diverges*, explained as in a `NonDeterminismError`). Nothing runs
live: the first request past the journal stops the flow, so no message is sent, no side
effect or service runs, and the store, opened read-only, is not written.

``greenflow replay --node DIR [--apps MOD ...]`` is the command line form.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Iterable, Optional

from greenflow import serialization, wire
from greenflow.runtime.checkpoint import Checkpoint
from greenflow.runtime.clock import SystemClock
from greenflow.runtime.divergence import code_change, parked_reason
from greenflow.runtime.flow_runtime import Ended, FlowRuntime
from greenflow.runtime.init_fields import init_fields, init_parameters
from greenflow.node.identity import KEY_FILE, read_node_name
from greenflow.runtime.journal import Entry
from greenflow.party import Party
from greenflow.flows.registry import resolve_module
from greenflow.status import FlowStatus
from greenflow.storage import open_store
from greenflow.storage.interface import Batch, FlowStore
from greenflow.runtime.traps import Unwind, asked, ended_with

REPLAYS, DIVERGES, CANNOT, PARKS = "replays", "diverges", "cannot replay", "will park"

__all__ = ["FlowReplay", "ReplayReport", "replay_node"]


@dataclass
class FlowReplay:
    """What replaying one flow's checkpoint against the installed code showed."""

    flow_id: str
    flow_class: str
    outcome: str            # "replays", "diverges" or "cannot replay"
    detail: str = ""
    status: str = ""        # the flow's status in the store

    @property
    def ok(self) -> bool:
        return self.outcome == REPLAYS

    def __str__(self) -> str:
        text = f"{self.flow_id}  {self.flow_class}  [{self.status}]: {self.outcome}"
        return f"{text}: {self.detail}" if self.detail else text


@dataclass
class ReplayReport:
    node: str
    flows: list[FlowReplay] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when every unfinished flow replays (the upgrade is safe for them)."""
        return all(f.ok for f in self.flows)

    @property
    def diverged(self) -> list[FlowReplay]:
        return [f for f in self.flows if not f.ok]

    def text(self) -> str:
        n = len(self.flows)
        bad = len(self.diverged)
        head = (f"{self.node}: {n} unfinished flow{'s' if n != 1 else ''}, "
                f"{n - bad} replay{'s' if n - bad == 1 else ''}, {bad} do{'es' if bad == 1 else ''} not")
        return "\n".join([head, *(f"  {f}" for f in self.flows)])


class _PastJournal(Unwind):
    """The replayed flow reached the end of its journal: it would go live here."""


class _CheckRuntime(FlowRuntime):
    """A runtime that only replays: whatever would run live ends the run instead."""

    def check_io_allowed(self) -> None:
        super().check_io_allowed()
        if not self.replaying:
            raise _PastJournal("reached the end of its journal")


class _ReadOnlyNode:
    """What a replayed flow may reach of its node: identity, clock, the store (read-only);
    service writes go to a batch that is never committed."""

    def __init__(self, base_dir: str, party: Party, store: FlowStore, identity: Any) -> None:
        self.base_dir = base_dir
        self.party = party
        self.store = store
        self.clock = SystemClock()
        self.identity = identity
        self.scheduler = self
        self.batch = Batch()


class _ReplayScheduler:
    """The parts of a scheduler a replaying flow touches."""

    limits = None            # no node limits apply to a replay
    idle_greenlets = None    # no greenlet pool

    def __init__(self, identity: Party, store: FlowStore, services: Any) -> None:
        self.identity = identity
        self.store = store
        self.services = services
        self.clock = SystemClock()

    def __getattr__(self, name: str) -> Any:
        # A scheduler setting the runtime reads only on its live path (which a replay
        # check never takes): absent here, as if the node ran without it.
        if name.startswith("__"):
            raise AttributeError(name)
        return None

    @staticmethod
    def take_decoded(data: bytes) -> Any:
        return wire.decode(data)

    def progress_changed(self, rt: Any, step: Optional[str]) -> None:
        pass

    @staticmethod
    def progress_wanted() -> bool:
        return False

    @staticmethod
    def reaches(name: str) -> bool:
        return True   # (a replay sends nothing: it stops where the flow would go live)


def _load_identity(node_dir: str, name: str) -> tuple[Party, Any]:
    """The node's party and key pair, read without creating anything."""
    key_path = os.path.join(node_dir, KEY_FILE)
    if not os.path.exists(key_path):
        return Party(name), None
    from greenflow.node.identity import NodeIdentity
    from greenflow.ledger.crypto import load_or_create_keypair
    ident = NodeIdentity(name, load_or_create_keypair(key_path))
    return ident.party, ident


def replay_node(node_dir: str, apps: Optional[Iterable[str]] = None) -> ReplayReport:
    """Replay every unfinished checkpoint stored in ``node_dir`` against the code
    installed now, without writing anything. ``apps``: modules to import first (those
    defining the node's flows); by default the ``apps`` of the node's ``node.toml``."""
    node_dir = os.path.abspath(node_dir)
    name = read_node_name(node_dir)
    if apps is None:
        apps = _configured_apps(node_dir)
    for app in apps:
        resolve_module(app)
    party, identity = _load_identity(node_dir, name)
    store = open_store(node_dir, readonly=True)
    try:
        from greenflow.node.services import ServiceHub
        services = ServiceHub(_ReadOnlyNode(node_dir, party, store, identity))  # type: ignore[arg-type]
        sched = _ReplayScheduler(party, store, services)
        report = ReplayReport(name)
        for fid, raw in store.header_blobs():
            report.flows.append(_replay_one(sched, store, fid, raw))
        return report
    finally:
        store.close()


def _configured_apps(node_dir: str) -> list[str]:
    from greenflow.network.node_config import CONFIG_FILE, NodeConfig
    if not os.path.exists(os.path.join(node_dir, CONFIG_FILE)):
        return []
    try:
        return list(NodeConfig.load(node_dir).apps)
    except Exception:  # noqa: BLE001 - apps can still be given explicitly
        return []


def _replay_one(sched: _ReplayScheduler, store: FlowStore, fid: str, raw: bytes) -> FlowReplay:
    try:
        cp: Checkpoint = serialization.loads(raw)
    except Exception as exc:  # noqa: BLE001
        return FlowReplay(fid, "?", CANNOT, f"the checkpoint cannot be read: "
                                            f"{type(exc).__name__}: {exc}", "UNREADABLE")
    status = cp.status.value
    if cp.status.finished:
        return FlowReplay(fid, cp.flow_class, REPLAYS, "finished", status)
    note = f" (hospitalized before: {cp.error})" if cp.status == FlowStatus.HOSPITALIZED else ""
    try:
        logic = serialization.loads(store.logic_blob(fid))  # type: ignore[arg-type]
        journal = store.journal(fid, cp.journal_len - (1 if cp.pending else 0))
        if cp.pending is not None:
            journal.append(Entry(cp.pending[0], cp.pending[1], None, cp.pending[2]))
    except Exception as exc:  # noqa: BLE001 - e.g. a flow class no longer importable
        # The hint only where a module or class was not found, not for (say) a class
        # that has gained __slots__ since the flow stored its object.
        missing = isinstance(exc, ImportError) or (
            isinstance(exc, AttributeError) and "Can't get attribute" in str(exc))
        return FlowReplay(fid, cp.flow_class, CANNOT,
                          f"cannot restore it: {type(exc).__name__}: {exc}"
                          + (" (is its app module given with --apps, and does it still define "
                             "that class?)" if missing else ""), status)
    rt = _CheckRuntime(sched, cp, logic, journal)  # type: ignore[arg-type]
    g = rt.start_greenlet()
    try:
        res = g.switch(rt)
        res = asked(rt, res) or ended_with(g, res)
    except BaseException as exc:  # noqa: BLE001 - a bug in the flow's replay path
        return FlowReplay(fid, cp.flow_class, CANNOT, f"{type(exc).__name__}: {exc}", status)
    finally:
        _unwind(rt)
    changed = code_change(cp.flow_class, cp.fingerprint, logic)
    if isinstance(res, Entry) or (res[0] == Ended.UNWOUND and rt.diverged is None) \
            or (res[0] == Ended.DONE and rt.diverged is None):
        if isinstance(res, Entry):
            what = res.describe()
        elif res[0] == Ended.UNWOUND and cp.pending is not None and rt.cursor >= len(journal):
            what = journal[-1].describe()   # its pending request, reached
        else:
            what = "the end of its journal" if res[0] == Ended.UNWOUND else "its end"
        missing = fields_missing(logic)
        if missing:
            where, cls, name = missing[0]
            owner = "this flow object" if where == "flow object" else f"the object in its {where}"
            return FlowReplay(fid, cp.flow_class, PARKS, (
                f"replays up to '{what}', but {cls.__qualname__}.__init__ "
                f"{'takes' if name in init_parameters(cls) else 'sets'} {name!r}, which "
                f"{owner} lacks (its __init__ ran under the code it started with) and the "
                f"code reads: it parks there; give {name} a class-level default"
                + "".join(f"; likewise {c.__qualname__}.{n} ({w})" for w, c, n in missing[1:4])
                + f"{changed}"), status)
        return FlowReplay(fid, cp.flow_class, REPLAYS,
                          f"up to '{what}'{changed}{note}", status)
    if res[0] == Ended.DIVERGED or rt.diverged is not None:
        return FlowReplay(fid, cp.flow_class, DIVERGES,
                          parked_reason(rt.diverged or "", changed), status)
    exc = res[1] if len(res) > 1 else None
    return FlowReplay(fid, cp.flow_class, CANNOT,
                      f"replay failed: {type(exc).__name__}: {exc}{changed}", status)


def fields_missing(logic: Any) -> list[tuple[str, type, str]]:
    """``(where, class, name)`` for each field the ``__init__`` of the flow object's
    class, or of an object one of its fields holds, sets (`init_fields`) but the
    restored object lacks (no attribute, no class-level default), and that a method of
    that class reads by name: fields added since the flow started, which a node parks
    the flow on when its code reads them."""
    out = []
    held = [(f"field {k!r}", v) for k, v in getattr(logic, "__dict__", {}).items()
            if not isinstance(v, type) and type(v).__module__ != "builtins"]
    for where, obj in [("flow object", logic), *held]:
        cls, have = type(obj), getattr(obj, "__dict__", None)
        if have is None:
            continue
        missing = [n for n in sorted(init_fields(cls)) if n not in have and not hasattr(cls, n)]
        if not missing:
            continue
        read: set[str] = set()
        for klass in cls.__mro__:
            for attr, fn in vars(klass).items():
                code = getattr(fn, "__code__", None)
                if attr != "__init__" and code is not None:
                    read |= _names_read(code)
        out += [(where, cls, n) for n in missing if n in read]
    return out


def _names_read(code: Any) -> set[str]:
    names = set(code.co_names)
    for const in code.co_consts:
        if hasattr(const, "co_names"):   # a nested function, lambda or comprehension
            names |= _names_read(const)
    return names


def _unwind(rt: FlowRuntime) -> None:
    g = rt.greenlet
    rt.io_refused = "replay check"
    if g is not None and not g.dead and g:
        try:
            g.throw(Unwind("replay check"))
        except BaseException:  # noqa: BLE001 - whatever the flow does while unwinding
            pass
    if g is not None:
        g.gf_runtime = None
    rt.greenlet = None



