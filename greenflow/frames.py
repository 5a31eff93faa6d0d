"""Diagnostic snapshots of a suspended flow's stack: where it waits, with its locals.

Taken at each commit for every suspended flow and stored beside its checkpoint, so a
dump shows where every flow stands, also for flows restored from disk and not yet
replayed. Values are kept as a bounded ``repr`` plus, where small enough, a pickled
copy. User ``__repr__`` runs here: its cost and size are bounded, and anything whose
name is on the deny-list, or that is key material, is redacted.
"""
from __future__ import annotations

import os
import reprlib
from types import FrameType
from typing import Any, Optional

from . import serialization

DENY_LIST = ("password", "passwd", "secret", "private", "key", "token", "seed", "credential")
MAX_FRAMES = 32
MAX_LOCALS = 40
MAX_REPR = 200

_HERE = os.path.dirname(os.path.abspath(__file__))
# Runtime modules whose frames are plumbing, not the flow's own code.
_INTERNAL = {os.path.join(_HERE, f) for f in (
    "traps.py", "flow_runtime.py", "session.py", "flow_logic.py", "progress.py")}

_repr = reprlib.Repr()
_repr.maxstring = 120
_repr.maxother = 120
_repr.maxlist = _repr.maxtuple = _repr.maxdict = _repr.maxset = 8
_repr.maxlevel = 3


def _redacted_type(value: Any) -> bool:
    mod = type(value).__module__ or ""
    name = type(value).__name__
    return (mod.startswith("nacl.") and name in ("SigningKey", "PrivateKey")) or name == "KeyPair"


def short_repr(name: str, value: Any) -> str:
    lname = name.lower()
    if any(word in lname for word in DENY_LIST) or _redacted_type(value):
        return "<redacted>"
    try:
        text = _repr.repr(value)
    except Exception as exc:  # a user __repr__ that fails must not fail the flow
        text = f"<{type(value).__qualname__}: repr failed: {type(exc).__name__}>"
    return text if len(text) <= MAX_REPR else text[:MAX_REPR - 3] + "..."


def capture(top: Optional[FrameType], keep_values: bool = True) -> list[dict]:
    """Frames from the flow's ``call()`` down to its suspension point (outermost first)."""
    frames: list[dict] = []
    f = top
    while f is not None and len(frames) < MAX_FRAMES * 4:
        code = f.f_code
        fn = code.co_filename
        if os.path.abspath(fn) not in _INTERNAL and "greenlet" not in fn:
            local_items = list(f.f_locals.items())[:MAX_LOCALS]
            locs: dict[str, str] = {}
            values: dict[str, bytes] = {}
            for k, v in local_items:
                locs[k] = short_repr(k, v)
                # ``self`` is the flow object, already stored as the checkpoint's start object.
                if keep_values and k != "self" and locs[k] != "<redacted>":
                    blob = serialization.try_dumps(v, limit=2048)
                    if blob is not None:
                        values[k] = blob
            frames.append({"function": code.co_qualname if hasattr(code, "co_qualname") else code.co_name,
                           "file": fn, "line": f.f_lineno, "locals": locs,
                           "_values": values})
        if code.co_name == "_main" and os.path.abspath(fn) == os.path.join(_HERE, "flow_runtime.py"):
            break
        f = f.f_back
    frames.reverse()
    return frames[-MAX_FRAMES:]


def public(frames: Optional[list[dict]]) -> list[dict]:
    """The JSON-ready part of a snapshot (no pickled values)."""
    return [{k: v for k, v in fr.items() if not k.startswith("_")} for fr in frames or []]
