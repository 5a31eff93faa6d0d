"""Encoding a payload for a peer: msgpack in C for the common case, the registry's
encoders for what msgpack cannot pack itself, the canonical walk to explain a refusal."""
from __future__ import annotations

import threading
from typing import Any

import msgpack

from greenflow.errors import NotSerializable, WireFormatError
from greenflow.wire.bounds import MAX_CONTAINERS, MAX_WIRE_BYTES, _might_exceed_containers
from greenflow.wire.canonical import _canonical
from greenflow.wire.decoder import decode
from greenflow.wire import registry
from greenflow.wire.registry import KEEPS_WIRE

# Bound by assignment, not imported by name: CPython compiles a method call on a name that
# an import statement bound as an attribute load (it assumes a module), which would build a
# bound ``get`` on every call of `_default`, the hot path.
_ENCODERS = registry._ENCODERS

class _Refused(Exception):
    """Internal: `_default` met a value it has no encoder for. Never escapes this module:
    `encode` turns it into a `NotSerializable` that says where the value was."""

def _default(obj: Any) -> Any:
    """msgpack's fallback: called for every value it cannot pack itself (strict types:
    subclasses of builtins come here too, and are refused unless registered)."""
    encoder = _ENCODERS.get(type(obj))
    if encoder is None:
        raise _Refused
    return encoder(obj)


_local = threading.local()


def _new_packer() -> msgpack.Packer:
    # One per thread: a Packer keeps a buffer, and `_default` runs Python code, during
    # which another thread could enter the same Packer. Within a thread it is never
    # re-entered: `_default` runs no user code (no __repr__, no properties), so it can
    # neither call `encode` nor switch greenlets.
    return msgpack.Packer(default=_default, use_bin_type=True, strict_types=True)


def encode(obj: Any) -> bytes:
    """The wire bytes of ``obj``; raises `NotSerializable` naming what cannot travel and
    where it sits (``payload[2].owner: type 'socket.socket' ...``), also for cycles.

    msgpack's own ``ExtType`` and ``Timestamp`` objects are packed as they are, unchecked
    (msgpack never shows them to `_default`); the receiver refuses them."""
    if type(obj) in KEEPS_WIRE:
        kept = obj.__dict__.get("_wire")
        if kept is None:
            kept = obj.__dict__["_wire"] = _encode(obj)
        return kept
    return _encode(obj)


def _encode(obj: Any) -> bytes:
    try:
        packer = _local.packer
    except AttributeError:
        packer = _local.packer = _new_packer()
    try:
        data = packer.pack(obj)
    except Exception as exc:  # the walk below says what and where; never a msgpack error
        raise _explain(obj, exc) from None
    if len(data) > MAX_WIRE_BYTES:
        raise NotSerializable(f"payload is {len(data):,} bytes; the wire takes at most {MAX_WIRE_BYTES:,}")
    if len(data) > MAX_CONTAINERS and _might_exceed_containers(data):
        try:  # rare (large and structured): check it as the receiver will, and say so here
            decode(data)
        except WireFormatError as exc:
            raise NotSerializable(f"a peer would refuse this payload: {exc}") from None
    return data


def _explain(obj: Any, exc: Exception) -> NotSerializable:
    try:
        _canonical(obj)
    except NotSerializable as found:
        return found
    # The walk found nothing wrong, so msgpack refused for a reason of its own.
    return NotSerializable(f"payload cannot cross the wire: {type(exc).__name__}: {exc}")

