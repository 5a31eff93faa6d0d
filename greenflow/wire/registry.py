"""Which types cross the wire and how: the builtin tagged types (tuple, set, big int,
datetime, ...) and the classes registered by name with ``@serializable``, each with a
strategy that encodes, walks and rebuilds its instances."""
from __future__ import annotations

import dataclasses
import enum
import threading
import uuid
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any, Callable, TypeVar

from greenflow.errors import NotSerializable, WireFormatError
from greenflow.wire.bounds import _hashing_bounded
from greenflow.wire.format import (_BIGINT, _DATE, _DATETIME, _DECIMAL, _ENUM, _EPOCH,
                                   _FROZENSET, _MARK, _MARK_BYTES, _MICROSECOND, _OBJECT, _SET,
                                   _TIMEDELTA, _TUPLE, _UUID, _array_header, _map_header, _pack,
                                   _qualified)

T = TypeVar("T", bound=type)

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

#: name -> (class, its field names) of the registered dataclasses whose instances keep
#: their fields in their ``__dict__`` (`_DataclassWire.plain`): what the decoder rebuilds
#: in one step when a payload carries exactly those fields.
_PLAIN_OBJECTS: dict[str, tuple[type, frozenset]] = {}


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


#: Frozen classes whose instances keep their wire bytes (``__dict__["_wire"]``): the
#: encoding made once is reused, and a payload decoded into one keeps the bytes it came
#: from. A transaction is encoded for each peer it goes to and again as its node stores
#: it (~20 us for a trade's); the decoded bytes decode to the very same object, which is
#: all its stored form needs (no id is hashed from them: ids come from the canonical walk).
KEEPS_WIRE: set[type] = set()


def keep_wire_bytes(cls: T) -> T:
    """Mark ``cls`` (registered, frozen, with a ``__dict__``) as keeping its wire bytes."""
    KEEPS_WIRE.add(cls)
    return cls


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
        if isinstance(strategy, _DataclassWire) and strategy.plain:
            _PLAIN_OBJECTS[strategy.name] = (cls, strategy.known)
        else:
            _PLAIN_OBJECTS.pop(strategy.name, None)
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


# Members whose hashes are the same in every process: a set of them iterates in an order
# its insertions alone decide, which a replay repeats.
_HASHED_ALIKE = frozenset((int, float, bool))


def _members(s: Any, what: str) -> list:
    """A set's members in the order they travel: sorted by their canonical bytes unless
    they all hash alike in every process. Strings, bytes and what holds them hash with
    a seed each process draws (``PYTHONHASHSEED``), so a set of them iterated in another
    order after a restart: the replay of a send encoded other bytes than the first run
    and the flow was parked as diverged."""
    members = _hashing_bounded(list(s), what)
    if len(members) > 1 and not _HASHED_ALIKE.issuperset(map(type, members)):
        from greenflow.wire.canonical import _canonical   # (it imports this module)
        members.sort(key=_canonical)
    return members


_ENCODERS.update({
    tuple: lambda t: [_MARK[_TUPLE], *t],
    set: lambda s: [_MARK[_SET], *_members(s, "set")],
    frozenset: lambda s: [_MARK[_FROZENSET], *_members(s, "frozenset")],
    int: _encode_bigint,  # msgpack hands over only the ints it cannot pack itself
    datetime: _encode_datetime,
    date: lambda d: [_MARK[_DATE], d.toordinal()],
    timedelta: lambda d: [_MARK[_TIMEDELTA], d.days, d.seconds, d.microseconds],
    Decimal: lambda d: [_MARK[_DECIMAL], str(d)],
    uuid.UUID: lambda u: [_MARK[_UUID], u.bytes],
})
