"""Checkpoint serialisation: the C pickler first, dill where pickle refuses.

Only for data the node wrote itself (checkpoints, journal entries, results). Nothing a
peer sent is ever loaded with these functions: see `greenflow.wire` for that.

Each blob starts with a one-byte tag naming its loader, so a blob written by dill is
read back by dill. dill's Pickler is pure Python (about 30x slower than C pickle for a
small object), so it is only the fallback for lambdas, closures and classes defined in
``__main__``.
"""
from __future__ import annotations

import io
import pickle
import threading
from typing import Any, Callable

import dill

#: The types whose values every encoder here writes as they are (pickle, msgpack, the
#: typed records): a value of one of these needs no trial encoding and no fallback.
ATOMS = frozenset({str, int, bytes, float, bool, type(None)})

_PICKLE = b"P"
_DILL = b"D"

#: Loaders of typed formats, by their tag byte (e.g. checkpoint headers, tag b"H"):
#: registered by the module that owns the type, so this bottom layer names none of them.
_TYPED: dict[bytes, Callable[[memoryview], Any]] = {}


def register_format(tag: bytes, loader: Callable[[memoryview], Any]) -> None:
    """Let `loads` read blobs starting with ``tag`` (one byte, not P or D) by ``loader``,
    given the bytes after the tag."""
    if len(tag) != 1 or tag in (_PICKLE, _DILL) or _TYPED.get(tag, loader) is not loader:
        raise ValueError(f"serialization tag {tag!r} is taken or not one byte")
    _TYPED[tag] = loader

#: Modules that moved into packages. A checkpoint, journal entry or result stored by an
#: earlier version names the classes in it (a flow's `FlowSession`, the `Checkpoint`
#: header) by the old module path; loading maps them, so a node upgraded in place reads
#: its store. Only consulted when a plain load fails: new blobs never pay for it.
MOVED_MODULES = {
    "greenflow.flow_logic": "greenflow.flows.flow_logic",
    "greenflow.session": "greenflow.flows.session",
    "greenflow.registry": "greenflow.flows.registry",
    "greenflow.progress": "greenflow.flows.progress",
    "greenflow.traps": "greenflow.runtime.traps",
    "greenflow.flow_runtime": "greenflow.runtime.flow_runtime",
    "greenflow.journal": "greenflow.runtime.journal",
    "greenflow.checkpoint": "greenflow.runtime.checkpoint",
    "greenflow.fingerprint": "greenflow.runtime.fingerprint",
    "greenflow.clock": "greenflow.runtime.clock",
    "greenflow.frames": "greenflow.runtime.snapshots",
    "greenflow.store": "greenflow.storage.store",
    "greenflow.store_guard": "greenflow.storage.store_guard",
    "greenflow.page_trim": "greenflow.storage.page_trim",
    "greenflow.payloads": "greenflow.storage.payloads",
    "greenflow.events": "greenflow.statemachine.events",
    "greenflow.actions": "greenflow.statemachine.actions",
    "greenflow.transitions": "greenflow.statemachine.transitions",
    "greenflow.executor": "greenflow.statemachine.executor",
    "greenflow.scheduler": "greenflow.statemachine.scheduler",
    "greenflow.hospital": "greenflow.statemachine.hospital",
    "greenflow.limits": "greenflow.statemachine.limits",
    "greenflow.node": "greenflow.node.node",
    "greenflow.services": "greenflow.node.services",
    "greenflow.identity": "greenflow.node.identity",
    "greenflow.gc_tuning": "greenflow.node.gc_tuning",
    "greenflow.tcp_transport": "greenflow.network.tcp_transport",
    "greenflow.network_map": "greenflow.network.network_map",
    "greenflow.bootstrap": "greenflow.network.bootstrap",
    "greenflow.node_config": "greenflow.network.node_config",
    "greenflow.rpc_server": "greenflow.rpc.server",
    "greenflow.rpc_client": "greenflow.rpc.client",
    "greenflow.rpc_limits": "greenflow.rpc.limits",
    "greenflow.log_limits": "greenflow.rpc.log_limits",
    "greenflow.flow_start": "greenflow.rpc.flow_start",
    "greenflow.metrics": "greenflow.rpc.metrics",
    "greenflow.node_process": "greenflow.rpc.node_process",
}


class _Unpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        return super().find_class(MOVED_MODULES.get(module, module), name)


class _DillUnpickler(dill.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        return super().find_class(MOVED_MODULES.get(module, module), name)


def _refused(what: str, why: str) -> Callable[[Any, Any], None]:
    def save(pickler: Any, obj: Any) -> None:
        name = getattr(obj, "name", None)
        raise pickle.PicklingError(
            f"cannot pickle {what} ({type(obj).__qualname__}"
            + (f" {name!r}" if isinstance(name, str) else "") + f"): loaded back it would be "
            f"{why}; keep it out of the flow's fields, arguments and results, and open or "
            "make it where it is used")
    return save


_FILE = ("an open file", "reopened by name and mode (mode 'w' empties the file at every load)")
_LOCK = ("a lock", "a new lock that nobody else holds")
#: What the C pickler refuses and dill would write as something else (see `_FILE`, `_LOCK`).
_REFUSED = {t: _refused(*what) for t, what in (
    (io.TextIOWrapper, _FILE), (io.BufferedWriter, _FILE), (io.BufferedReader, _FILE),
    (io.BufferedRandom, _FILE), (io.FileIO, _FILE), (type(threading.Lock()), _LOCK),
    (type(threading.RLock()), _LOCK))}


class _Dispatch(dict):
    """dill's table of how to save each type (read live: dill registers some lazily),
    with `_REFUSED` in front."""

    def get(self, key: Any, default: Any = None) -> Any:
        save = _REFUSED.get(key)
        return save if save is not None else dill.Pickler.dispatch.get(key, default)

    def __getitem__(self, key: Any) -> Any:
        save = _REFUSED.get(key)
        return save if save is not None else dill.Pickler.dispatch[key]

    def __contains__(self, key: object) -> bool:
        return key in _REFUSED or key in dill.Pickler.dispatch


class _DillPickler(dill.Pickler):
    dispatch = _Dispatch()


def dumps(obj: Any) -> bytes:
    """Serialise ``obj``, preferring the fast C pickler."""
    try:
        return _PICKLE + pickle.dumps(obj, protocol=5)
    except Exception:  # pickle raises PicklingError, TypeError, AttributeError...
        pass
    out = io.BytesIO()
    _DillPickler(out, protocol=5, recurse=True).dump(obj)
    return _DILL + out.getvalue()


def unpickle(body: Any) -> Any:
    """A C pickle (without tag), reading classes stored under module paths that moved."""
    try:
        return pickle.loads(body)
    except ModuleNotFoundError:   # stored before a module moved (see MOVED_MODULES)
        return _Unpickler(io.BytesIO(body)).load()


def loads(blob: bytes) -> Any:
    """Read back a blob written by `dumps`."""
    tag, body = blob[:1], memoryview(blob)[1:]
    if tag == _PICKLE:
        return unpickle(body)
    if tag == _DILL:
        try:
            return dill.loads(bytes(body))
        except ModuleNotFoundError:
            return _DillUnpickler(io.BytesIO(bytes(body))).load()
    typed = _TYPED.get(tag)
    if typed is not None:
        return typed(body)
    raise ValueError(f"unknown checkpoint blob tag {tag!r}")


def try_pickle(obj: Any, limit: int = 4096) -> bytes | None:
    """C pickle only (no dill: too slow for a per-suspension snapshot), or None when it
    refuses or the blob exceeds ``limit`` bytes."""
    try:
        blob = _PICKLE + pickle.dumps(obj, protocol=5)
    except Exception:
        return None
    return blob if len(blob) <= limit else None


def try_dumps(obj: Any, limit: int = 4096) -> bytes | None:
    """Like `dumps` but returns None when the value cannot be serialised or is larger
    than ``limit`` bytes: used for diagnostic snapshots, which must never fail a flow."""
    try:
        blob = dumps(obj)
    except Exception:
        return None
    return blob if len(blob) <= limit else None
