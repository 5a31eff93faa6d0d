"""The start record of a flow as a small typed record instead of a pickle.

A new flow's state is, for most flows, a few parties and plain constants (an initiator:
``Ping(peer, n)``) or its session and perhaps a few constants (a responder built as
``cls(FlowSession(sid, sender))``). Pickling that object was a sizeable share of
starting a flow; this record holds the same information (the class by module and
qualified name, the instance's attributes) and loads back into the object the C pickle
would give: the instance is made without calling ``__init__`` and its attributes set,
exactly as unpickling does.

Blobs start with the tag byte ``R`` (`greenflow.serialization.register_format`), so
`greenflow.serialization.loads` reads them next to the pickled start records written
before. Objects the record cannot hold exactly (custom pickling, slots, attributes that
are neither the session, a `Party` nor a plain constant) are pickled as before.
"""
from __future__ import annotations

import copyreg
import importlib
import sys
from typing import Any, Optional

import msgspec

from greenflow import serialization
from greenflow.flows.flow_logic import FlowLogic
from greenflow.flows.session import FlowSession
from greenflow.party import Party

START_TAG = b"R"   # version 1: msgpack array, see `encode_start`

_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder().decode
_CONSTANTS = frozenset((type(None), bool, int, float, str, bytes))
_plain_classes: dict[type, bool] = {}


def _plain(cls: type) -> bool:
    """Whether instances of ``cls`` pickle as (class, __dict__) and nothing else."""
    ok = _plain_classes.get(cls)
    if ok is None:
        ok = (cls.__reduce_ex__ is object.__reduce_ex__ and cls.__reduce__ is object.__reduce__
              and getattr(cls, "__getstate__", None) is getattr(object, "__getstate__", None)
              and not hasattr(cls, "__setstate__") and not hasattr(cls, "__getnewargs_ex__")
              and not hasattr(cls, "__getnewargs__") and not copyreg._slotnames(cls)
              and "<locals>" not in cls.__qualname__ and issubclass(cls, FlowLogic))
        _plain_classes[cls] = ok
    return ok


def encode_start(logic: Any, session: Optional[FlowSession] = None) -> Optional[bytes]:
    """The start record of ``logic`` (a responder: just built from ``session``), or None
    when it cannot hold it exactly (the caller pickles it then)."""
    cls = type(logic)
    if not _plain(cls) or _named(cls.__module__, cls.__qualname__) is not cls:
        return None   # e.g. a class its module no longer names: pickle refuses it too
    # (name,): the session; (name, value): a constant; (name, party name, party key).
    attrs: list[tuple] = []
    for attr, value in logic.__dict__.items():
        t = type(value)
        if t in _CONSTANTS:
            attrs.append((attr, value))
        elif value is session and value is not None:
            attrs.append((attr,))
        elif t is Party:
            attrs.append((attr, value.name, value.owning_key))
        else:
            return None
    if session is None:
        sid = name = key = None
    else:
        party = session.counterparty
        if type(party) is not Party or type(session) is not FlowSession:
            return None
        sid, name, key = session.sid, party.name, party.owning_key
    try:
        return START_TAG + _encode((cls.__module__, cls.__qualname__, sid, name, key, attrs))
    except Exception:  # noqa: BLE001 - e.g. an int past 64 bits, a lone surrogate
        return None


def _named(module: str, qualname: str) -> Any:
    """What ``module.qualname`` names now in a loaded module (None if nothing)."""
    found: Any = sys.modules.get(module)
    for part in qualname.split("."):
        found = getattr(found, part, None)
    return found


def _load(body: memoryview) -> Any:
    module, qualname, sid, name, key, attrs = _decode(body)
    module = serialization.MOVED_MODULES.get(module, module)
    if module not in sys.modules:
        importlib.import_module(module)
    cls = _named(module, qualname)
    if cls is None:   # as pickle says of a class that is gone (a rename, a move)
        raise AttributeError(f"Can't get attribute {qualname!r} on module {module}: the "
                             "flow's class is not defined there (renamed, moved or deleted?)")
    if not (isinstance(cls, type) and issubclass(cls, FlowLogic)):
        raise ValueError(f"start record names {module}.{qualname}, which is not a flow class")
    logic = cls.__new__(cls)
    session = FlowSession(sid, Party(name, key)) if sid is not None else None
    state = logic.__dict__
    for attr in attrs:
        n = len(attr)
        state[attr[0]] = session if n == 1 else attr[1] if n == 2 else Party(attr[1], attr[2])
    return logic


serialization.register_format(START_TAG, _load)
