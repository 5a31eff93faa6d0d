"""Decoding what a peer sent: one msgpack call with hooks that rebuild tagged values and
registered classes, bounded in time and memory whatever the input."""
from __future__ import annotations

import uuid
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any, Callable

import msgpack

from greenflow.errors import WireFormatError
from greenflow.wire.bounds import (_KEYED_HASH, MAX_CONTAINERS, MAX_SAME_HASH, MAX_WIRE_BYTES,
                                   _hashing_bounded, _might_exceed_containers)
from greenflow.wire.format import (_BIGINT, _DATE, _DATETIME, _DECIMAL, _ENUM, _EPOCH, _FROZENSET,
                                   _OBJECT, _SET, _TIMEDELTA, _TUPLE, _UUID)
from greenflow.wire.registry import _ENUMS, _OBJECTS, _PLAIN_OBJECTS, KEEPS_WIRE, _WireClass

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


def _hooks(counted: bool, timestamps: bool, small_maps: bool = True) -> tuple[dict, list[int]]:
    """msgpack's hooks for one decode, and the count they keep: markers met minus markers
    that opened a tagged array. A marker anywhere but first in an array (msgpack alone
    would let it through as a stray object) leaves the count above zero. The count lives
    in the hooks' own closure, made per decode: a thread-local count (decodes run on
    several threads) cost a quarter of a transaction's decode.

    Payloads whose maps all have at most MAX_SAME_HASH keys (every registered dataclass
    in the ledger: the common case) leave the maps to msgpack, with no `_pairs` call per
    map: building a map that small is linear whatever its keys hash to. A bigger map stops
    that decode with msgpack's "exceeds max_map_len", and `decode` runs the payload again
    without ``small_maps``: every map is then built by `_pairs`, which checks its keys."""
    opened = [0]

    def ext(code: int, data: bytes) -> _Tag:
        tag = _TAGS.get(code)
        if tag is None or data:
            raise WireFormatError(f"unknown type code {code}")
        opened[0] += 1
        return tag

    def array(items: list) -> Any:
        if items:
            tag = items[0]
            if type(tag) is _Tag:
                opened[0] -= 1
                if tag is _OBJECT_TAG and len(items) == 3:
                    # A registered dataclass sent as exactly its fields (most of what a
                    # transaction is made of): `_DataclassWire.decode`'s own fast path,
                    # one call sooner.
                    plain = _plain_get(items[1])
                    if plain is not None:
                        fields = items[2]
                        if type(fields) is dict and fields.keys() == plain[1]:
                            cls = plain[0]
                            obj = cls.__new__(cls)
                            _set_dict(obj, "__dict__", fields)
                            return obj
                return tag.decode(items)
        return items

    if small_maps and not (counted or timestamps):
        return {"strict_map_key": False, "ext_hook": ext, "list_hook": array,
                "max_map_len": MAX_SAME_HASH}, opened
    pairs: Callable[[list], dict] = _pairs
    if timestamps:
        array, pairs = _array_refusing_timestamps(array), _map_refusing_timestamps
    budget = [MAX_CONTAINERS]

    def bounded(hook: Callable[[Any], Any]) -> Callable[[Any], Any]:
        """``hook``, refusing the payload once it has built `MAX_CONTAINERS` containers."""
        def count(value: Any) -> Any:
            budget[0] -= 1
            if budget[0] < 0:
                raise WireFormatError(f"payload decodes into more than {MAX_CONTAINERS:,} lists, "
                                      "tuples, sets and maps: refused")
            return hook(value)
        return count

    if counted:
        array, pairs = bounded(array), bounded(pairs)
    return {"strict_map_key": False, "ext_hook": ext, "list_hook": array,
            "object_pairs_hook": pairs}, opened


_OBJECT_TAG = _TAGS[_OBJECT]
_plain_get = _PLAIN_OBJECTS.get
_set_dict = object.__setattr__  # bypasses a frozen dataclass's refusal, as the strategy does


def _array_refusing_timestamps(hook: Callable[[list], Any]) -> Callable[[list], Any]:
    def refusing(items: list) -> Any:
        _refuse_timestamps(items)
        return hook(items)
    return refusing


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
def _holds_timestamp_header(data: bytes, _find: Callable = bytes.find) -> bool:
    """One of those headers is in ``data``. Each ends in 0xFF (the type, -1), so this
    looks only before each 0xFF byte, which ``find`` reaches with memchr: a payload of
    keys and signatures holds a few of them in 2 KB. Three substring searches over the
    whole payload took ~5 us for a transaction (2 KB), a seventh of its decode."""
    i = _find(data, b"\xff", 1)
    while i != -1:
        before = data[i - 1]
        if before == 0xD6 or before == 0xD7 or (before == 0x0C and i >= 2 and data[i - 2] == 0xC7):
            return True
        i = _find(data, b"\xff", i + 1)
    return False
_unpackb = msgpack.unpackb

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
        counted = len(data) > MAX_CONTAINERS and _might_exceed_containers(data)
        timestamps = 0xFF in data and _holds_timestamp_header(data)
        hooks, opened = _hooks(counted, timestamps)
        try:
            value = _unpackb(data, **hooks)
        except ValueError as exc:
            if "max_map_len" not in str(exc) or "max_map_len" not in hooks:
                raise
            hooks, opened = _hooks(False, False, small_maps=False)   # a map too big for it
            value = _unpackb(data, **hooks)
        if timestamps:
            _refuse_timestamps((value,))
        if opened[0]:
            raise WireFormatError("a type marker outside the head of its array")
        if type(value) in KEEPS_WIRE:
            value.__dict__["_wire"] = data
        return value
    except WireFormatError:
        raise
    except Exception as exc:  # malformed input may fail anywhere: msgpack, hash(), int(), ...
        text = str(exc) or (type(exc).__doc__ or "").strip().partition("\n")[0]  # msgpack's are bare
        if len(text) > 200:
            text = text[:197] + "..."
        raise WireFormatError(f"malformed payload: {type(exc).__name__}: {text}") from None

