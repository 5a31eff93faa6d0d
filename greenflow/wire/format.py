"""The wire format's building blocks: the ext markers that open a tagged array, and the
byte-level helpers (headers, a hook-free packer) that the registry and the canonical
encoding share."""
from __future__ import annotations

from datetime import datetime, timedelta

import msgpack

# Ext codes of the markers that open a tagged array. 0..127 is msgpack's application range;
# -1 is msgpack's own timestamp, which this encoding does not use (see `decode`).
_TUPLE, _SET, _FROZENSET, _BIGINT, _DATETIME, _DATE, _TIMEDELTA, _DECIMAL, _UUID, _OBJECT, _ENUM = (
    range(1, 12)
)
_MARK = {code: msgpack.ExtType(code, b"") for code in range(1, 12)}

_EPOCH = datetime(1970, 1, 1)
_MICROSECOND = timedelta(microseconds=1)
_INT_MIN, _INT_MAX = -(2**63), 2**64 - 1  # what msgpack packs natively


def _qualified(t: type) -> str:
    module = getattr(t, "__module__", None)
    if module in (None, "builtins"):
        return t.__qualname__
    return f"{module}.{t.__qualname__}"


def _refusal(t: type) -> str:
    return f"type '{_qualified(t)}' cannot cross the wire; mark it @serializable or send builtins"


_MARK_BYTES = {code: msgpack.packb(mark) for code, mark in _MARK.items()}

# Packs only builtins and markers: with no ``default`` it never runs Python code, so it
# holds the GIL for a whole call and one instance can serve every thread.
_pack = msgpack.Packer(use_bin_type=True).pack


def _array_header(n: int) -> bytes:
    if n < 16:
        return bytes([0x90 | n])
    return (b"\xdc" + n.to_bytes(2, "big")) if n < 2**16 else (b"\xdd" + n.to_bytes(4, "big"))


def _map_header(n: int) -> bytes:
    if n < 16:
        return bytes([0x80 | n])
    return (b"\xde" + n.to_bytes(2, "big")) if n < 2**16 else (b"\xdf" + n.to_bytes(4, "big"))

