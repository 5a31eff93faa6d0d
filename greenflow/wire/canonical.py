"""Canonical bytes for hashing (transaction ids), and the walk that says where a value
that cannot cross the wire sits."""
from __future__ import annotations

import hashlib
from typing import Any

from greenflow.errors import NotSerializable
from greenflow.party import Party
from greenflow.wire.bounds import MAX_WALK_DEPTH, MAX_WIRE_BYTES
from greenflow.wire.format import (_FROZENSET, _INT_MAX, _INT_MIN, _MARK_BYTES, _OBJECT, _SET,
                                   _TUPLE, _array_header, _map_header, _pack, _refusal)
from greenflow.wire import registry
from greenflow.wire.registry import _BY_CLASS, _encode_bigint

_ENCODERS = registry._ENCODERS   # assigned, not imported: see `greenflow.wire.encoder`

_NATIVE_SCALARS = (type(None), bool, float, bytes)

class _Unencodable(Exception):
    """Internal: raised where the canonical walk meets a value it refuses; each container
    it propagates through adds its step, so the path costs nothing unless something fails."""

    def __init__(self, why: str) -> None:
        super().__init__(why)
        self.why, self.steps = why, []

    def at(self, step: str) -> _Unencodable:
        self.steps.append(step)
        return self

    def error(self) -> NotSerializable:
        if not self.steps:
            return NotSerializable(self.why)
        return NotSerializable(f"payload{''.join(reversed(self.steps))}: {self.why}")


def _key_label(k: Any) -> str:
    text = repr(k)
    return text if len(text) <= 40 else text[:37] + "..."


def _canon(obj: Any, depth: int, active: set[int]) -> bytes:
    """The canonical bytes of ``obj``: the wire format, with maps in the order of their
    encoded keys and sets in the order of their encoded members. Built bottom-up as bytes
    (not as a tree for msgpack) because keys may be tuples or frozen dataclasses, which
    become arrays and maps that no Python dict could hold as keys.

    Also the one place that explains refusals (`_Unencodable`, with the path)."""
    t = type(obj)
    if t in _NATIVE_SCALARS:
        return _pack(obj)
    if t is str:
        try:
            return _pack(obj)
        except UnicodeEncodeError as exc:
            raise _Unencodable(f"string is not valid unicode ({exc.reason})") from None
    if t is int:
        return _pack(obj if _INT_MIN <= obj <= _INT_MAX else _encode_bigint(obj))
    if t is bytearray or t is memoryview:
        return _pack(bytes(obj))
    if t in (list, tuple, set, frozenset, dict) or t in _BY_CLASS:
        if depth >= MAX_WALK_DEPTH:
            raise _Unencodable(f"nested more than {MAX_WALK_DEPTH} levels deep")
        if id(obj) in active:
            raise _Unencodable("cyclic reference; the wire carries trees, not graphs")
        active.add(id(obj))
        try:
            return _canon_container(obj, t, depth + 1, active)
        finally:
            active.discard(id(obj))
    encoder = _ENCODERS.get(t)
    if encoder is None:
        raise _Unencodable(_refusal(t))
    try:
        return _pack(encoder(obj))  # a leaf: its tagged array holds scalars only
    except NotSerializable as exc:
        raise _Unencodable(str(exc)) from None


def _canon_container(obj: Any, t: type, depth: int, active: set[int]) -> bytes:
    if t is dict:
        return _canon_map(obj, depth, active, attributes=False)
    if t is list or t is tuple:
        parts = []
        for i, item in enumerate(obj):
            try:
                parts.append(_canon(item, depth, active))
            except _Unencodable as exc:
                raise exc.at(f"[{i}]") from None
        if t is list:
            return _array_header(len(parts)) + b"".join(parts)
        return _array_header(len(parts) + 1) + _MARK_BYTES[_TUPLE] + b"".join(parts)
    if t is set or t is frozenset:
        parts = []
        for item in obj:
            try:
                parts.append(_canon(item, depth, active))
            except _Unencodable as exc:
                raise exc.at(f"{{{_key_label(item)}}}") from None
        parts.sort()
        return _array_header(len(parts) + 1) + _MARK_BYTES[_SET if t is set else _FROZENSET] + b"".join(parts)
    strategy = _BY_CLASS[t]
    order = getattr(strategy, "canon_order", None)
    if order is not None:   # a dataclass: the same bytes as the general path, faster
        parts = [strategy.canon_head]
        for packed, n in order:
            try:
                value = getattr(obj, n)
            except AttributeError as exc:  # e.g. a field declared init=False, never set
                raise _Unencodable(f"{strategy.name} is missing an attribute ({exc})") from None
            try:
                parts.append(packed + _canon(value, depth, active))
            except _Unencodable as exc:
                raise exc.at(f".{n}") from None
        return b"".join(parts)
    try:
        fields = strategy.fields(obj)
    except AttributeError as exc:  # e.g. a dataclass field declared init=False, never set
        raise _Unencodable(f"{strategy.name} is missing an attribute ({exc})") from None
    if fields is None:
        return _pack(strategy.encode(obj))
    return (_array_header(3) + _MARK_BYTES[_OBJECT] + _pack(strategy.name)
            + _canon_map(fields, depth, active, attributes=True))


def _canon_map(obj: dict, depth: int, active: set[int], *, attributes: bool) -> bytes:
    entries = []
    for k, v in obj.items():
        if attributes and type(k) is not str:
            raise _Unencodable(f"attribute name {_key_label(k)} is not a string")
        try:
            key = _canon(k, depth, active)
        except _Unencodable as exc:
            raise exc.at(f"<key {_key_label(k)}>") from None
        try:
            value = _canon(v, depth, active)
        except _Unencodable as exc:
            raise exc.at(f".{k}" if attributes else f"[{_key_label(k)}]") from None
        entries.append(key + value)  # encodings are prefix-free: this sorts by key first
    entries.sort()
    return _map_header(len(entries)) + b"".join(entries)


class _Retry(Exception):
    """Internal: the fast walk gives up (too deep, or something it does not explain)."""


def _fast(obj: Any, depth: int) -> bytes:
    """`_canon` for what transactions are made of (scalars, tuples, lists and registered
    dataclasses), the same bytes without the bookkeeping that only serves refusals: no
    set of open containers, no path. Anything else is walked by `_canon` from here; a
    refusal, or depth past the bound (a cycle among objects ends there), makes
    `_canonical` walk the whole value again with `_canon`, which says what and where."""
    t = type(obj)
    if t is str or t is bytes or t is bool or t is type(None) or t is float:
        return _pack(obj)
    if t is int:
        return _pack(obj if _INT_MIN <= obj <= _INT_MAX else _encode_bigint(obj))
    if depth >= MAX_WALK_DEPTH:
        raise _Retry
    if t is tuple:
        depth += 1
        return (_array_header(len(obj) + 1) + _TUPLE_MARK
                + b"".join([_fast(item, depth) for item in obj]))
    if t is list:
        depth += 1
        return _array_header(len(obj)) + b"".join([_fast(item, depth) for item in obj])
    if t is Party:
        return _party(obj)
    strategy = _BY_CLASS.get(t)
    order = getattr(strategy, "canon_order", None) if strategy is not None else None
    if order is None:
        return _canon(obj, depth, set())
    depth += 1
    parts = [strategy.canon_head]
    for packed, n in order:
        parts.append(packed)
        parts.append(_fast(getattr(obj, n), depth))
    return b"".join(parts)


_TUPLE_MARK = _MARK_BYTES[_TUPLE]

# The same few parties appear in every transaction a node hashes (issuers, owners, the
# notary: a trade's transaction holds six), so their bytes are kept, by value.
_PARTIES: dict[tuple, bytes] = {}


def _party(p: Party) -> bytes:
    name, key = p.name, p.owning_key
    if type(name) is not str or type(key) is not bytes:
        return _canon(p, 0, set())
    k = (name, key)
    data = _PARTIES.get(k)
    if data is None:
        if len(_PARTIES) >= 4096:
            _PARTIES.clear()
        data = _PARTIES[k] = _canon(p, 0, set())
    return data


def _canonical(obj: Any) -> bytes:
    try:
        return _fast(obj, 0)
    except Exception:  # noqa: BLE001 - walked again below, which names the fault
        pass
    try:
        return _canon(obj, 0, set())
    except _Unencodable as exc:
        raise exc.error() from None


def canonical_encode(obj: Any) -> bytes:
    """Deterministic bytes for hashing (transaction ids): equal values give equal bytes
    whatever order their dicts and sets were built in. The result also `decode`s."""
    data = _canonical(obj)
    if len(data) > MAX_WIRE_BYTES:
        raise NotSerializable(f"payload is {len(data):,} bytes; the wire takes at most {MAX_WIRE_BYTES:,}")
    return data


def digest(data: bytes) -> bytes:
    """A 16-byte BLAKE2b digest: cheap enough for the hot path, wide enough that two
    different payloads never collide by accident (not a signature)."""
    return hashlib.blake2b(data, digest_size=16).digest()

