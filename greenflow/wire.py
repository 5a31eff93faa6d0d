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
from __future__ import annotations

import dataclasses
import enum
import hashlib
import re
import threading
import uuid
from collections import Counter
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any, Callable, TypeVar

import msgpack

from greenflow.errors import NotSerializable, WireFormatError
from greenflow.party import Party

__all__ = [
    "MAX_WIRE_BYTES",
    "canonical_encode",
    "decode",
    "digest",
    "encode",
    "register_wire_type",
    "serializable",
]

#: Largest encoding accepted either way. A transport frame should never come near it;
#: the bound keeps one bad message from costing a node gigabytes.
MAX_WIRE_BYTES = 64 * 1024 * 1024

#: How deep `canonical_encode` (and the walk that explains a failed `encode`) goes. It walks
#: in Python, one frame per level, so it must stay well inside the interpreter's recursion
#: limit; ledger content is a few levels deep. `encode`/`decode` themselves allow msgpack's
#: 1,024 levels.
MAX_WALK_DEPTH = 100

#: How many members of one set, or keys of one map, from a peer may share one hash value.
#: Python's hashes of numbers, tuples, frozensets, UUIDs, Decimals and frozen dataclasses are
#: not randomised, so a peer can choose any number of distinct values with the same hash;
#: each insert then compares against all the earlier ones and building the container takes
#: time quadratic in its size (40,000 such ints took ~9 s). Honest values essentially never
#: collide, so more than this many is refused, and building any container stays linear.
MAX_SAME_HASH = 8

#: Most lists, tuples, sets and maps one payload may decode into. Each costs one to a few
#: microseconds and ~60-100 bytes however few bytes encode it (an empty list is one byte),
#: so 16 MiB of them took 18 s and 1.3 GB on the scheduler thread; this bounds a payload's
#: decode to about a second and its objects to ~30 MB. Honest payloads are far below it (a
#: ledger transaction decodes into a few hundred); `encode` refuses what a peer would.
MAX_CONTAINERS = 250_000

T = TypeVar("T", bound=type)

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


class _Refused(Exception):
    """Internal: `_default` met a value it has no encoder for. Never escapes this module:
    `encode` turns it into a `NotSerializable` that says where the value was."""


# ---------------------------------------------------------------- registered classes


class _WireClass:
    """How instances of one registered class cross the wire (a strategy per kind of class).

    ``encode`` returns the tagged array msgpack packs in the object's place; ``fields`` the
    name -> value map the canonical walk descends into (None when there is nothing to
    descend into); ``decode`` rebuilds an instance from what a peer sent, without
    ``__init__``, refusing any shape the class does not have.
    """

    __slots__ = ("cls", "name")

    def __init__(self, cls: type, name: str) -> None:
        self.cls, self.name = cls, name

    def encode(self, obj: Any) -> list:
        return [_MARK[_OBJECT], self.name, self.fields(obj)]

    def fields(self, obj: Any) -> dict | None:
        raise NotImplementedError

    def decode(self, payload: Any) -> Any:
        raise NotImplementedError

    def _bad(self, why: str) -> WireFormatError:
        return WireFormatError(f"malformed {self.name}: {why}")

    def _map(self, payload: Any) -> dict:
        if type(payload) is not dict:
            raise self._bad(f"fields must be a map, not {type(payload).__name__}")
        return payload


class _DataclassWire(_WireClass):
    """Fields by name. A field the class lacks is refused; a missing one takes its default
    (a peer with an older version of the class), or is refused when it has none.

    The common case, an instance whose ``__dict__`` holds exactly its fields, travels as
    that ``__dict__`` and comes back as a new one, with no per-field Python work."""

    __slots__ = ("names", "known", "defaults", "plain", "canon_head", "canon_order")

    def __init__(self, cls: type, name: str) -> None:
        super().__init__(cls, name)
        fields = dataclasses.fields(cls)
        self.names = tuple(f.name for f in fields)
        # For canonical encoding (transaction ids): the bytes before the field map, and
        # the fields in the order of their encoded names, i.e. the order `_canon_map`
        # sorts them into; worked out once per class, not once per object.
        self.canon_head = (_array_header(3) + _MARK_BYTES[_OBJECT] + _pack(name)
                           + _map_header(len(self.names)))
        self.canon_order = tuple(sorted((_pack(n), n) for n in self.names))
        self.known = frozenset(self.names)
        self.defaults: dict[str, Callable[[], Any]] = {}
        for f in fields:
            if f.default is not dataclasses.MISSING:
                self.defaults[f.name] = lambda v=f.default: v
            elif f.default_factory is not dataclasses.MISSING:
                self.defaults[f.name] = f.default_factory
        self.plain = cls.__dictoffset__ != 0 and not _slot_names(cls)

    def encode(self, obj: Any) -> list:
        if self.plain:
            d = obj.__dict__
            if d.keys() == self.known:
                return [_MARK[_OBJECT], self.name, d]
        return [_MARK[_OBJECT], self.name, self.fields(obj)]

    def fields(self, obj: Any) -> dict:
        return {n: getattr(obj, n) for n in self.names}

    def decode(self, payload: Any) -> Any:
        fields = payload if type(payload) is dict else self._map(payload)
        obj = self.cls.__new__(self.cls)
        if self.plain and fields.keys() == self.known:
            _set_attribute(obj, "__dict__", fields)
            return obj
        for k, v in fields.items():
            if k not in self.known:
                raise self._bad(f"no field {k!r}")
            object.__setattr__(obj, k, v)
        for n in self.names:
            if n not in fields:
                if n not in self.defaults:
                    raise self._bad(f"field {n!r} is missing")
                object.__setattr__(obj, n, self.defaults[n]())
        return obj


_set_attribute = object.__setattr__  # bypasses a frozen dataclass's refusal, as pickle does


def _slot_names(cls: type) -> frozenset[str]:
    """Every slot an instance of ``cls`` has, under the names ``getattr`` knows them by."""
    slots: list[str] = []
    for klass in cls.__mro__:
        declared = vars(klass).get("__slots__", ())
        for s in (declared,) if isinstance(declared, str) else declared:
            if s in ("__dict__", "__weakref__"):
                continue
            if s.startswith("__") and not s.endswith("__"):
                s = f"_{klass.__name__.lstrip('_')}{s}"  # private names are mangled
            slots.append(s)
    return frozenset(slots)


class _AttrsWire(_WireClass):
    """A plain class: its ``__dict__`` and/or its ``__slots__``, as ``pickle`` would take
    them, but only attribute names (str) and, for slotted classes, only declared slots."""

    __slots__ = ("slots", "has_dict")

    def __init__(self, cls: type, name: str) -> None:
        super().__init__(cls, name)
        self.slots = _slot_names(cls)
        self.has_dict = cls.__dictoffset__ != 0

    def fields(self, obj: Any) -> dict:
        if not self.slots:
            return obj.__dict__
        out = dict(obj.__dict__) if self.has_dict else {}
        for s in self.slots:
            try:
                out[s] = getattr(obj, s)
            except AttributeError:  # a slot never assigned: leave it unassigned over there
                pass
        return out

    def decode(self, payload: Any) -> Any:
        fields = self._map(payload)
        obj = self.cls.__new__(self.cls)
        if not self.slots and all(type(k) is str for k in fields):
            object.__setattr__(obj, "__dict__", fields)
            return obj
        for k, v in fields.items():
            if k in self.slots:
                object.__setattr__(obj, k, v)
            elif self.has_dict and type(k) is str:
                obj.__dict__[k] = v
            else:
                raise self._bad(f"no attribute {k!r}")
        return obj


class _EnumWire(_WireClass):
    """A member by name, so values (which may be anything) never travel; a `Flag`
    combination has no single name, so flags travel by value."""

    __slots__ = ("by_value",)

    def __init__(self, cls: type, name: str) -> None:
        super().__init__(cls, name)
        self.by_value = issubclass(cls, enum.Flag)

    def encode(self, obj: Any) -> list:
        return [_MARK[_ENUM], self.name, obj._value_ if self.by_value else obj._name_]

    def fields(self, obj: Any) -> None:
        return None

    def decode(self, payload: Any) -> Any:
        try:
            if self.by_value:
                if type(payload) is not int:
                    raise KeyError(payload)
                return self.cls(payload)
            return self.cls.__members__[payload]
        except (KeyError, ValueError, TypeError):
            raise self._bad(f"no member {payload!r}") from None


# Exact type -> function returning the tagged array msgpack packs in its place.
_ENCODERS: dict[type, Callable[[Any], list]] = {}
# Exact type -> its strategy; wire name -> strategy, for objects and enums apart (they have
# different tags). Only names in these two ever decode.
_BY_CLASS: dict[type, _WireClass] = {}
_OBJECTS: dict[str, _WireClass] = {}
_ENUMS: dict[str, _WireClass] = {}
_REGISTRY_LOCK = threading.Lock()

_UNREGISTRABLE = (int, float, complex, str, bytes, bytearray, tuple, list, dict, set, frozenset,
                  BaseException)


def register_wire_type(cls: T) -> T:
    """Let instances of ``cls`` cross the wire, under the name ``module.qualname``.

    Used by the framework for its own types; users write ``@serializable``. Registering
    another class under a name already taken replaces it (a reloaded module), so the name
    a peer sends always means the class this process has now.
    """
    if not isinstance(cls, type):
        raise TypeError(f"@serializable applies to classes, not {cls!r}")
    if issubclass(cls, enum.Enum):
        strategy: _WireClass = _EnumWire(cls, _qualified(cls))
    elif issubclass(cls, _UNREGISTRABLE):
        raise TypeError(
            f"{_qualified(cls)} subclasses a builtin type, whose contents msgpack cannot "
            "rebuild without running code; use a dataclass that holds the value instead"
            + (" (errors cross the wire as FlowException)" if issubclass(cls, BaseException) else "")
        )
    elif dataclasses.is_dataclass(cls):
        strategy = _DataclassWire(cls, _qualified(cls))
    else:
        strategy = _AttrsWire(cls, _qualified(cls))
    with _REGISTRY_LOCK:
        _BY_CLASS[cls] = strategy
        (_ENUMS if isinstance(strategy, _EnumWire) else _OBJECTS)[strategy.name] = strategy
        _ENCODERS[cls] = strategy.encode
    return cls


def serializable(cls: T) -> T:
    """Mark a class whose instances flows may send to peers.

    Works on dataclasses (frozen too), plain classes (their ``__dict__`` or ``__slots__``)
    and enums (by member name). The receiver must have the same class imported and marked;
    it rebuilds instances field by field without calling ``__init__`` or
    ``__post_init__``, so validate what you receive in the flow. Field values must
    themselves be able to cross the wire.
    """
    return register_wire_type(cls)


# ---------------------------------------------------------------- encoding


def _encode_bigint(i: int) -> list:
    return [_MARK[_BIGINT], i.to_bytes((i.bit_length() + 8) // 8, "big", signed=True)]


def _encode_datetime(d: datetime) -> list:
    tz = d.tzinfo
    if tz is None:
        offset = None
    elif type(tz) is timezone:
        offset = tz.utcoffset(None) // _MICROSECOND
    else:
        raise NotSerializable(
            f"a datetime with tzinfo '{_qualified(type(tz))}' cannot cross the wire: zone rules "
            "do not travel; send it with a fixed offset, e.g. .astimezone(timezone.utc)"
        )
    return [_MARK[_DATETIME], (d.replace(tzinfo=None) - _EPOCH) // _MICROSECOND, offset, d.fold]


_ENCODERS.update({
    tuple: lambda t: [_MARK[_TUPLE], *t],
    set: lambda s: [_MARK[_SET], *_hashing_bounded(list(s), "set")],
    frozenset: lambda s: [_MARK[_FROZENSET], *_hashing_bounded(list(s), "frozenset")],
    int: _encode_bigint,  # msgpack hands over only the ints it cannot pack itself
    datetime: _encode_datetime,
    date: lambda d: [_MARK[_DATE], d.toordinal()],
    timedelta: lambda d: [_MARK[_TIMEDELTA], d.days, d.seconds, d.microseconds],
    Decimal: lambda d: [_MARK[_DECIMAL], str(d)],
    uuid.UUID: lambda u: [_MARK[_UUID], u.bytes],
})


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


# ---------------------------------------------------------------- canonical encoding

_NATIVE_SCALARS = (type(None), bool, float, bytes)
_MARK_BYTES = {code: msgpack.packb(mark) for code, mark in _MARK.items()}


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


def _canonical(obj: Any) -> bytes:
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


# ---------------------------------------------------------------- decoding


def _arity(items: list, n: int, what: str) -> None:
    if len(items) != n:
        raise WireFormatError(f"malformed {what}: {len(items) - 1} parts, expected {n - 1}")


def _typed(value: Any, t: type, what: str) -> Any:
    if type(value) is not t:
        raise WireFormatError(f"malformed {what}: {t.__name__} expected, got {type(value).__name__}")
    return value


def _decode_bigint(items: list) -> int:
    _arity(items, 2, "big int")
    return int.from_bytes(_typed(items[1], bytes, "big int"), "big", signed=True)


def _decode_datetime(items: list) -> datetime:
    _arity(items, 4, "datetime")
    micros, offset, fold = items[1], items[2], items[3]
    value = _EPOCH + timedelta(microseconds=_typed(micros, int, "datetime"))
    if offset is not None:
        value = value.replace(tzinfo=timezone(timedelta(microseconds=_typed(offset, int, "datetime"))))
    if fold not in (0, 1) or type(fold) is not int:
        raise WireFormatError(f"malformed datetime: fold {fold!r}")
    return value.replace(fold=fold) if fold else value


def _decode_timedelta(items: list) -> timedelta:
    _arity(items, 4, "timedelta")
    return timedelta(*(_typed(x, int, "timedelta") for x in items[1:]))


def _registered(registry: dict[str, _WireClass], what: str) -> Callable[[list], Any]:
    """The decoder of ``[<tag>, name, payload]``: only names in ``registry`` resolve."""
    def decode(items: list) -> Any:
        if len(items) == 3:
            strategy = registry.get(items[1])
            if strategy is not None:
                return strategy.decode(items[2])
        _arity(items, 3, what)
        raise WireFormatError(f"unknown {what} {items[1]!r}: nothing here is registered @serializable under that name")
    return decode


class _Tag:
    """What a marker decodes to: it opens a tagged array and must be its first element."""

    __slots__ = ("decode",)

    def __init__(self, decode: Callable[[list], Any]) -> None:
        self.decode = decode


def _one(what: str, t: type, build: Callable[[Any], Any]) -> Callable[[list], Any]:
    def decode(items: list) -> Any:
        _arity(items, 2, what)
        return build(_typed(items[1], t, what))
    return decode


# Types whose hash is keyed per process (SipHash), so a peer cannot choose collisions.
_KEYED_HASH = frozenset({str, bytes})
_INT = {int}


def _hashing_bounded(keys: list, what: str) -> list:
    """``keys``, once it is known that building a set or dict of them is linear: at most
    `MAX_SAME_HASH` share a hash. Counting hash values costs no collisions of its own:
    distinct ints below 2**61 - 1 hash to themselves, so only a handful of the 64-bit hash
    values can land on the same hash again."""
    if len(keys) <= MAX_SAME_HASH:
        return keys
    types = set(map(type, keys))
    if types <= _KEYED_HASH or (types == _INT and _INT_MIN <= min(keys) and max(keys) <= _INT_MAX):
        return keys   # msgpack's own ints: at most ~12 share a hash (it is the int mod 2**61 - 1)
    hashes = list(map(hash, keys))
    if len(set(hashes)) != len(hashes):
        worst = max(Counter(hashes).values())
        if worst > MAX_SAME_HASH:
            raise WireFormatError(
                f"{what} of {len(keys):,} where {worst:,} share one hash value: refused (at "
                f"most {MAX_SAME_HASH} may; more make building it take quadratic time)")
    return keys


def _pairs(pairs: list) -> dict:
    """msgpack's ``object_pairs_hook``: every map from a peer is built here, not inside
    msgpack, so its keys are checked (`_hashing_bounded`) before any of them is inserted."""
    if len(pairs) > MAX_SAME_HASH and not {type(k) for k, _ in pairs} <= _KEYED_HASH:
        _hashing_bounded([k for k, _ in pairs], "map with keys")
    return dict(pairs)


_TAGS = {
    _TUPLE: _Tag(lambda items: tuple(items[1:])),
    _SET: _Tag(lambda items: set(_hashing_bounded(items[1:], "set"))),
    _FROZENSET: _Tag(lambda items: frozenset(_hashing_bounded(items[1:], "frozenset"))),
    _BIGINT: _Tag(_decode_bigint),
    _DATETIME: _Tag(_decode_datetime),
    _DATE: _Tag(_one("date", int, date.fromordinal)),
    _TIMEDELTA: _Tag(_decode_timedelta),
    _DECIMAL: _Tag(_one("Decimal", str, Decimal)),
    _UUID: _Tag(_one("UUID", bytes, lambda b: uuid.UUID(bytes=b))),
    _OBJECT: _Tag(_registered(_OBJECTS, "class")),
    _ENUM: _Tag(_registered(_ENUMS, "enum")),
}


# How many markers this thread's decodes have met minus how many opened a tagged array.
# A marker anywhere but first in an array (msgpack alone would let it through as a stray
# object) leaves the count higher after a decode than before it. A thread-local count
# costs less than a state object per call, and a decode never switches threads midway.
_decoding = threading.local()


def _count_markers() -> int:
    try:
        return _decoding.open
    except AttributeError:
        _decoding.open = 0
        return 0


def _ext(code: int, data: bytes) -> _Tag:
    tag = _TAGS.get(code)
    if tag is None or data:
        raise WireFormatError(f"unknown type code {code}")
    _decoding.open += 1
    return tag


def _array(items: list) -> Any:
    if items and type(items[0]) is _Tag:
        _decoding.open -= 1
        return items[0].decode(items)
    return items


def _array_refusing_timestamps(items: list) -> Any:
    _refuse_timestamps(items)
    return _array(items)


def _map_refusing_timestamps(pairs: list) -> dict:
    for kv in pairs:
        _refuse_timestamps(kv)
    return _pairs(pairs)


def _refuse_timestamps(values: Any) -> None:
    for v in values:
        if type(v) is msgpack.Timestamp:
            raise WireFormatError("unknown type code -1 (msgpack timestamp)")


# Which first bytes open a scalar (nothing can follow it in a valid payload): the
# fast path decodes these with no hooks at all.
_SCALAR_FIRST = bytes(
    0 if (0x80 <= b <= 0x9F or b in (0xC1, 0xC7, 0xC8, 0xC9, 0xDC, 0xDD, 0xDE, 0xDF) or 0xD4 <= b <= 0xD8)
    else 1
    for b in range(256)
)
# msgpack decodes its own timestamp type (ext -1) without calling ``ext_hook``. Its only
# encodings start with these headers (fixext 4, fixext 8, ext 8 of length 12); input that
# holds one of them, even inside a string, is decoded the slow way that checks every value.
_TIMESTAMP_HEADER = re.compile(rb"\xd6\xff|\xd7\xff|\xc7\x0c\xff")
_unpackb = msgpack.unpackb
# Every byte that is not an array or map header: deleting them from a payload leaves an
# upper bound of its containers (headers inside strings count too), in one C call.
_NOT_CONTAINER_HEADERS = bytes(b for b in range(256) if not (0x80 <= b <= 0x9F or 0xDC <= b <= 0xDF))


def _might_exceed_containers(data: bytes) -> bool:
    return len(data.translate(None, _NOT_CONTAINER_HEADERS)) > MAX_CONTAINERS


def _counted(hook: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """``hook``, refusing the payload once it has built `MAX_CONTAINERS` containers. Only
    payloads that might hold that many are decoded through these (see `decode`)."""
    def counted(value: Any) -> Any:
        left = _decoding.budget - 1
        if left < 0:
            raise WireFormatError(f"payload decodes into more than {MAX_CONTAINERS:,} lists, tuples, "
                                  "sets and maps: refused")
        _decoding.budget = left
        return hook(value)
    return counted


def _hooks(counted: bool, timestamps: bool) -> dict:
    array, pairs = ((_array_refusing_timestamps, _map_refusing_timestamps) if timestamps
                    else (_array, _pairs))
    if counted:
        array, pairs = _counted(array), _counted(pairs)
    return {"strict_map_key": False, "ext_hook": _ext, "list_hook": array, "object_pairs_hook": pairs}


_HOOKS = {(c, t): _hooks(c, t) for c in (False, True) for t in (False, True)}


def decode(data: bytes) -> Any:
    """The value ``encode`` turned into ``data``. Any malformed input, whatever is wrong
    with it, raises `WireFormatError` and nothing else: these bytes came from outside."""
    try:
        if type(data) is not bytes:
            if not isinstance(data, (bytearray, memoryview)):
                raise WireFormatError(f"expected bytes, got {type(data).__name__}")
            data = bytes(data)
        if len(data) > MAX_WIRE_BYTES:
            raise WireFormatError(f"payload is {len(data):,} bytes; the wire takes at most {MAX_WIRE_BYTES:,}")
        if data and _SCALAR_FIRST[data[0]]:
            return _unpackb(data)
        before = _count_markers()
        counted = len(data) > MAX_CONTAINERS and _might_exceed_containers(data)
        if counted:
            _decoding.budget = MAX_CONTAINERS
        timestamps = 0xFF in data and _TIMESTAMP_HEADER.search(data) is not None
        value = _unpackb(data, **_HOOKS[counted, timestamps])
        if timestamps:
            _refuse_timestamps((value,))
        if _decoding.open != before:
            raise WireFormatError("a type marker outside the head of its array")
        return value
    except WireFormatError:
        raise
    except Exception as exc:  # malformed input may fail anywhere: msgpack, hash(), int(), ...
        text = str(exc) or (type(exc).__doc__ or "").strip().partition("\n")[0]  # msgpack's are bare
        if len(text) > 200:
            text = text[:197] + "..."
        raise WireFormatError(f"malformed payload: {type(exc).__name__}: {text}") from None


register_wire_type(Party)
