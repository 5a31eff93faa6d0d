"""The safe wire encoding: what a payload becomes when it crosses between nodes.

Nothing a peer sends is ever unpickled: unpickling runs code. This
encoding is msgpack, which only ever builds builtins, plus a short list of tagged values
(tuple, set, frozenset, big int, datetime, date, timedelta, Decimal, UUID) and instances
of classes registered by name with ``@serializable``. Decoding resolves only names that
were registered in this process, never imports a module a peer names, and never runs a
class's ``__init__``.

A tagged value is a msgpack array whose first element is a zero-length ext marker
(``[<tag>, ...]``), not an ext whose payload is another msgpack document. That keeps
encoding and decoding inside one C call of msgpack each: nesting costs no Python recursion
and no nested ``unpackb`` (whose context takes ~40 KB of C stack per level), and msgpack's
own limits bound the depth (1,024 levels) and sizes (no length may exceed the input).

The common case stays in C: ``encode`` hands the object to msgpack and only values msgpack
cannot pack itself come back to Python (`_default`). When that fails, a slower Python walk
(`_canon`, the same one that builds canonical encodings) finds what failed and where, so
the error names the path (``payload[2].owner``).
"""
from greenflow.party import Party
from greenflow.wire.bounds import (MAX_CONTAINERS, MAX_SAME_HASH, MAX_WALK_DEPTH,  # noqa: F401
                                   MAX_WIRE_BYTES)
from greenflow.wire.canonical import canonical_encode, digest
from greenflow.wire.decoder import decode
from greenflow.wire.encoder import encode
from greenflow.wire.registry import register_wire_type, serializable

__all__ = [
    "MAX_WIRE_BYTES",
    "canonical_encode",
    "decode",
    "digest",
    "encode",
    "register_wire_type",
    "serializable",
]

register_wire_type(Party)
