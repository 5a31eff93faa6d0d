"""Checkpoint serialisation: the C pickler first, dill where pickle refuses.

Only for data the node wrote itself (checkpoints, journal entries, results). Nothing a
peer sent is ever loaded with these functions: see `greenflow.wire` for that.

Each blob starts with a one-byte tag naming its loader, so a blob written by dill is
read back by dill. dill's Pickler is pure Python (about 30x slower than C pickle for a
small object), so it is only the fallback for lambdas, closures and classes defined in
``__main__``.
"""
from __future__ import annotations

import pickle
from typing import Any

import dill

_PICKLE = b"P"
_DILL = b"D"


def dumps(obj: Any) -> bytes:
    """Serialise ``obj``, preferring the fast C pickler."""
    try:
        return _PICKLE + pickle.dumps(obj, protocol=5)
    except Exception:  # pickle raises PicklingError, TypeError, AttributeError...
        pass
    return _DILL + dill.dumps(obj, protocol=5, recurse=True)


def loads(blob: bytes) -> Any:
    """Read back a blob written by `dumps`."""
    tag, body = blob[:1], memoryview(blob)[1:]
    if tag == _PICKLE:
        return pickle.loads(body)
    if tag == _DILL:
        return dill.loads(bytes(body))
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
