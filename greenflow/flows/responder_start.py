"""The start record of a responder flow as a small typed record instead of a pickle.

A responder begins as ``cls(FlowSession(sid, sender))``: its state right after
``__init__`` is, for nearly every responder, the session (under one or more attribute
names) and perhaps a few plain constants. Pickling that object was a sizeable share of
starting a responder; this record holds the same information (the class by module and
qualified name, the session, the instance's attributes) and loads back into the same
object the C pickle would give: the instance is made without calling ``__init__`` and
its attributes set, exactly as unpickling does.

Blobs start with the tag byte ``R`` (`greenflow.serialization.register_format`), so
`greenflow.serialization.loads` reads them next to pickled start records written
before. Objects the record cannot hold exactly (custom pickling, slots, attributes that
are neither the session nor a plain constant) are pickled as before.
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

START_TAG = b"R"   # version 1: msgpack array, see `encode_responder_start`

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


def encode_responder_start(logic: Any, session: FlowSession) -> Optional[bytes]:
    """The start record of ``logic`` (just built from ``session``), or None when it
    cannot hold it exactly (the caller pickles it then)."""
    cls = type(logic)
    if not _plain(cls):
        return None
    attrs: list[tuple] = []   # (name,): the session; (name, value): a constant
    for name, value in logic.__dict__.items():
        if value is session:
            attrs.append((name,))
        elif type(value) in _CONSTANTS and type(name) is str:
            attrs.append((name, value))
        else:
            return None
    party = session.counterparty
    if type(party) is not Party or type(session) is not FlowSession:
        return None
    try:
        return START_TAG + _encode((cls.__module__, cls.__qualname__, session.sid, party.name,
                                    party.owning_key, attrs))
    except (TypeError, OverflowError, msgspec.EncodeError):  # e.g. an int past 64 bits
        return None


def _load(body: memoryview) -> Any:
    module, qualname, sid, name, key, attrs = _decode(body)
    module = serialization.MOVED_MODULES.get(module, module)
    mod = sys.modules.get(module) or importlib.import_module(module)
    cls: Any = mod
    for part in qualname.split("."):
        cls = getattr(cls, part)
    if not (isinstance(cls, type) and issubclass(cls, FlowLogic)):
        raise ValueError(f"start record names {module}.{qualname}, which is not a flow class")
    logic = cls.__new__(cls)
    session = FlowSession(sid, Party(name, key))
    state = logic.__dict__
    for attr in attrs:
        state[attr[0]] = session if len(attr) == 1 else attr[1]
    return logic


serialization.register_format(START_TAG, _load)
