"""The safe wire encoding: what may cross between nodes, and that nothing else can."""
from __future__ import annotations

import enum
import math
import socket
import threading
import uuid
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings, strategies as st

from greenflow.errors import NotSerializable, WireFormatError
from greenflow.party import Party
from greenflow.wire import (MAX_WALK_DEPTH, canonical_encode, decode, digest, encode,
                            register_wire_type, serializable)

MOD = __name__  # how pytest imported this file decides the wire names of its classes
ALICE = Party("O=Alice,L=London,C=GB", bytes(range(32)))


@serializable
@dataclass(frozen=True)
class Point:
    x: int
    y: int = 0


@serializable
@dataclass
class Holding:
    owner: Any
    amount: Decimal
    tags: list = field(default_factory=list)


@serializable
@dataclass(frozen=True, slots=True)
class Slotted:
    a: int
    b: str


@serializable
class Plain:
    def __init__(self, name: str, items: list) -> None:
        self.name, self.items = name, items

    def __eq__(self, other: object) -> bool:
        return type(other) is Plain and vars(self) == vars(other)


@serializable
class WithSlots:
    __slots__ = ("a", "__hidden")

    def __init__(self, a: int, hidden: int) -> None:
        self.a, self.__hidden = a, hidden

    def hidden(self) -> int:
        return self.__hidden


@serializable
class Colour(enum.Enum):
    RED = "r"
    GREEN = object()  # values never travel, so they need not be encodable


@serializable
class Perm(enum.Flag):
    READ = 1
    WRITE = 2


INIT_CALLS: list[str] = []


@serializable
class Guarded:
    def __init__(self) -> None:
        INIT_CALLS.append("init")
        raise AssertionError("decode must not run __init__")


@serializable
@dataclass
class Validated:
    n: int

    def __post_init__(self) -> None:
        INIT_CALLS.append("post_init")


class Unregistered:
    pass


@dataclass
class UnregisteredDataclass:
    x: int


class SubPoint(Point):
    pass


def roundtrip(value: Any) -> Any:
    return decode(encode(value))


# ------------------------------------------------------------------ round trips

SCALARS = [
    None, True, False, 0, 1, -1, 127, 128, -33, 2**63 - 1, 2**64 - 1, -(2**63),
    1.5, -0.0, math.inf, "", "text", "ünïcødé ✓", b"", b"\x00\xff",
]
BIG_INTS = [2**64, -(2**63) - 1, 2**200, -(2**200), 10**100]


@pytest.mark.parametrize("value", SCALARS + BIG_INTS, ids=repr)
def test_scalars_round_trip_with_their_type(value: Any) -> None:
    back = roundtrip(value)
    assert back == value and type(back) is type(value)


def test_bool_stays_bool_and_int_stays_int() -> None:
    assert roundtrip([True, 1, False, 0]) == [True, 1, False, 0]
    assert [type(x) for x in roundtrip([True, 1])] == [bool, int]


def test_nan_round_trips() -> None:
    assert math.isnan(roundtrip(math.nan))


def test_bytearray_arrives_as_bytes() -> None:
    assert roundtrip(bytearray(b"abc")) == b"abc" and type(roundtrip(bytearray(b"abc"))) is bytes


@pytest.mark.parametrize("value", [
    [], (), {}, set(), frozenset(),
    [1, [2, [3]]], (1, (2, 3), [4, (5,)]), (1,),
    {"a": 1, 2: "b", None: [], (1, 2): {3}, frozenset({1}): (), True: 0.5},
    {1, "a", (2, 3), frozenset({4})}, frozenset({(1, 2), "x"}),
    {"nested": [{"deep": ({"x"}, frozenset([b"y"]))}]},
], ids=repr)
def test_containers_round_trip_and_keep_their_types(value: Any) -> None:
    back = roundtrip(value)
    assert back == value
    assert _shape(back) == _shape(value)


def _shape(value: Any) -> Any:
    """The value with every container replaced by (type, children), so tuple != list."""
    if isinstance(value, (list, tuple)):
        return (type(value), [_shape(v) for v in value])
    if isinstance(value, dict):
        return (dict, sorted((repr(k), _shape(v)) for k, v in value.items()))
    if isinstance(value, (set, frozenset)):
        return (type(value), sorted(repr(v) for v in value))
    return type(value)


@pytest.mark.parametrize("value", [
    datetime(2024, 2, 29, 13, 45, 1, 999_999),
    datetime(1, 1, 1), datetime(9999, 12, 31, 23, 59, 59, 999_999),
    datetime(1969, 7, 20, 20, 17, 40),
    datetime(2024, 6, 1, 12, 0, tzinfo=timezone.utc),
    datetime(2024, 6, 1, 12, 0, tzinfo=timezone(timedelta(hours=5, minutes=30))),
    datetime(2024, 6, 1, 12, 0, tzinfo=timezone(-timedelta(hours=23, minutes=59))),
    date(2024, 2, 29), date(1, 1, 1), date(9999, 12, 31),
    timedelta(0), timedelta(days=-3, seconds=4, microseconds=5), timedelta.max, timedelta.min,
    Decimal("1.10"), Decimal("-0"), Decimal("1E+400"), Decimal("Infinity"),
    uuid.UUID("12345678-1234-5678-1234-567812345678"), uuid.uuid4(),
], ids=repr)
def test_time_decimal_and_uuid_round_trip(value: Any) -> None:
    back = roundtrip(value)
    assert back == value and type(back) is type(value)
    if isinstance(value, datetime):
        assert back.utcoffset() == value.utcoffset()
    if isinstance(value, Decimal):
        assert str(back) == str(value)  # the exponent travels too: 1.10 stays 1.10


def test_utc_arrives_as_the_utc_singleton_and_fold_survives() -> None:
    assert roundtrip(datetime(2024, 1, 1, tzinfo=timezone.utc)).tzinfo is timezone.utc
    assert roundtrip(datetime(2024, 11, 3, 1, 30, fold=1)).fold == 1


def test_party_round_trips() -> None:
    back = roundtrip(ALICE)
    assert back == ALICE and type(back) is Party


def test_registered_classes_round_trip() -> None:
    holding = Holding(ALICE, Decimal("10.50"), [Point(1, 2), Colour.RED])
    assert roundtrip(holding) == holding
    assert roundtrip(Slotted(1, "b")) == Slotted(1, "b")
    assert roundtrip(Plain("p", [Point(3)])) == Plain("p", [Point(3)])
    back = roundtrip(WithSlots(1, 2))
    assert (back.a, back.hidden()) == (1, 2)
    assert roundtrip(Colour.GREEN) is Colour.GREEN
    assert roundtrip(Perm.READ | Perm.WRITE) == Perm.READ | Perm.WRITE
    assert roundtrip({Point(1): ALICE}) == {Point(1): ALICE}


def test_frozen_dataclass_stays_frozen_after_decode() -> None:
    back = roundtrip(Point(1, 2))
    with pytest.raises(AttributeError):
        back.x = 5  # type: ignore[misc]


def test_decode_never_runs_init_or_post_init() -> None:
    obj = Guarded.__new__(Guarded)
    obj.value = 1
    INIT_CALLS.clear()
    assert roundtrip(obj).value == 1
    data = encode(Validated(3))
    INIT_CALLS.clear()
    back = decode(data)
    assert INIT_CALLS == []
    assert back.n == 3 and type(back) is Validated


def test_a_missing_field_takes_its_default_as_from_an_older_peer() -> None:
    data = _object_frame(f"{MOD}.Point", {"x": 4})
    assert decode(data) == Point(4, 0)
    holding = decode(_object_frame(f"{MOD}.Holding", {"owner": None, "amount": 1}))
    assert holding.tags == []


def test_canonical_encoding_also_decodes() -> None:
    value = {"b": {3, 1, 2}, "a": (Point(1), ALICE), frozenset({"z", "y"}): [Colour.RED]}
    assert decode(canonical_encode(value)) == value


@settings(max_examples=200, deadline=None)
@given(st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text() | st.binary()
    | st.datetimes() | st.decimals(allow_nan=False) | st.uuids(),
    lambda inner: st.lists(inner, max_size=4) | st.tuples(inner, inner)
    | st.dictionaries(st.text() | st.integers() | st.tuples(st.integers()), inner, max_size=4)
    | st.frozensets(st.integers() | st.text(), max_size=4),
    max_leaves=20,
))
def test_any_builtin_tree_round_trips(value: Any) -> None:
    assert _shape(roundtrip(value)) == _shape(value)
    assert roundtrip(value) == value
    assert decode(canonical_encode(value)) == value


# ------------------------------------------------------------------ refusals on send


def test_lambda_is_refused_naming_its_type() -> None:
    with pytest.raises(NotSerializable, match=r"type 'function' cannot cross the wire; mark it @serializable"):
        encode(lambda: 1)


def test_socket_is_refused_naming_its_qualified_type() -> None:
    with socket.socket() as s:
        with pytest.raises(NotSerializable, match=r"^type 'socket\.socket' cannot cross the wire"):
            encode(s)


def test_unregistered_class_is_refused() -> None:
    with pytest.raises(NotSerializable, match=rf"type '{MOD}\.Unregistered' cannot cross"):
        encode(Unregistered())
    with pytest.raises(NotSerializable, match=r"UnregisteredDataclass"):
        encode(UnregisteredDataclass(1))


def test_subclass_of_a_registered_class_needs_its_own_registration() -> None:
    with pytest.raises(NotSerializable, match=r"SubPoint"):
        encode(SubPoint(1))


def test_nested_refusal_names_the_path() -> None:
    with socket.socket() as s:
        payload = [1, "two", Holding(owner=s, amount=Decimal(1))]
        with pytest.raises(NotSerializable) as info:
            encode(payload)
    assert str(info.value) == (
        "payload[2].owner: type 'socket.socket' cannot cross the wire; "
        "mark it @serializable or send builtins")


def test_paths_through_maps_tuples_and_keys() -> None:
    with pytest.raises(NotSerializable, match=r"^payload\['k'\]\[1\]: type 'object'"):
        encode({"k": (1, object())})
    with pytest.raises(NotSerializable, match=rf"^payload<key .*>: type '{MOD}\.Unregistered'"):
        encode({Unregistered(): 1})


@pytest.mark.parametrize("make", [
    lambda: (lambda l: (l.append(l), l)[1])([]),
    lambda: (lambda d: (d.__setitem__("me", d), d)[1])({}),
    lambda: (lambda h: (h.tags.append(h), h)[1])(Holding(None, Decimal(0))),
], ids=["list", "dict", "object"])
def test_cycles_are_refused_not_a_recursion_error(make: Any) -> None:
    with pytest.raises(NotSerializable, match="cyclic reference"):
        encode(make())
    with pytest.raises(NotSerializable, match="cyclic reference"):
        canonical_encode(make())


def test_shared_but_acyclic_values_are_fine() -> None:
    shared = [1, 2]
    assert roundtrip([shared, shared, (shared,)]) == [[1, 2], [1, 2], ([1, 2],)]


def test_zone_aware_datetime_outside_fixed_offsets_is_refused() -> None:
    zoneinfo = pytest.importorskip("zoneinfo")
    try:
        london = zoneinfo.ZoneInfo("Europe/London")
    except zoneinfo.ZoneInfoNotFoundError:
        pytest.skip("no tz database")
    with pytest.raises(NotSerializable, match=r"payload\[0\]: a datetime with tzinfo 'zoneinfo.ZoneInfo'"):
        encode([datetime(2024, 1, 1, tzinfo=london)])


def test_builtin_subclasses_are_refused() -> None:
    class MyList(list):
        pass

    class Status(enum.IntEnum):
        OK = 0

    for value in (MyList(), Status.OK):
        with pytest.raises(NotSerializable, match="cannot cross the wire"):
            encode(value)
    with pytest.raises(TypeError, match="subclasses a builtin"):
        register_wire_type(MyList)
    with pytest.raises(TypeError, match="FlowException"):
        register_wire_type(ValueError)


def test_invalid_unicode_is_refused() -> None:
    with pytest.raises(NotSerializable, match=r"payload\[0\]: string is not valid unicode"):
        encode(["\ud800"])


def test_canonical_walk_has_a_depth_limit() -> None:
    value: Any = 0
    for _ in range(MAX_WALK_DEPTH + 5):
        value = [value]
    with pytest.raises(NotSerializable, match="levels deep"):
        canonical_encode(value)


def test_deep_nesting_msgpack_refuses_is_not_a_recursion_error() -> None:
    value: Any = 0
    for _ in range(5000):
        value = (value,)
    with pytest.raises(NotSerializable):
        encode(value)


# ------------------------------------------------------------------ malformed input


def _object_frame(name: Any, fields: Any) -> bytes:
    return msgpack.packb([msgpack.ExtType(10, b""), name, fields], use_bin_type=True)


MARKER = msgpack.ExtType(1, b"")  # the tuple marker


@pytest.mark.parametrize("data", [
    b"", b"\xc1", b"\x92\x01", b"\xa5abc", b"\x01\x02",
    b"\xdd\xff\xff\xff\xff", b"\xdb\xff\xff\xff\xff", b"\x91" * 100_000 + b"\xc0",
    b"\xa2\xff\xfe",                                               # invalid utf-8
    msgpack.packb(msgpack.ExtType(99, b"")),                       # unknown ext code
    msgpack.packb([msgpack.ExtType(1, b"x")]),                     # marker with a body
    msgpack.packb(MARKER),                                         # stray marker at the top
    msgpack.packb([1, MARKER]),                                    # marker not at the head
    msgpack.packb({"k": MARKER}),                                  # marker as a map value
    msgpack.packb({1: [MARKER, 1]}, strict_types=False)[:-1],       # truncated
    msgpack.packb(msgpack.Timestamp(0, 0)),                        # msgpack's own timestamp
    msgpack.packb([msgpack.Timestamp(10, 5)]),
    msgpack.packb({"t": msgpack.Timestamp(2**40, 0)}),
    msgpack.packb({(1, 2): 3}, strict_types=False),                # a list as a map key
    msgpack.packb([msgpack.ExtType(2, b""), [1]]),                 # unhashable set member
    msgpack.packb([msgpack.ExtType(4, b""), "not bytes"]),         # big int of a str
    msgpack.packb([msgpack.ExtType(5, b""), 2**62, None, 0]),      # datetime out of range
    msgpack.packb([msgpack.ExtType(5, b""), 0, None, 2]),          # fold 2
    msgpack.packb([msgpack.ExtType(5, b""), 0, 10**12, 0]),        # offset of 11 days
    msgpack.packb([msgpack.ExtType(6, b""), 0]),                   # date ordinal 0
    msgpack.packb([msgpack.ExtType(7, b""), 10**10, 0, 0]),        # timedelta too big
    msgpack.packb([msgpack.ExtType(8, b""), "one"]),               # Decimal garbage
    msgpack.packb([msgpack.ExtType(9, b""), b"short"]),            # UUID of 5 bytes
    msgpack.packb([msgpack.ExtType(10, b""), "x"]),                # object of 1 part
    _object_frame("os.system", {}),                                # never imported
    _object_frame(f"{MOD}.Unregistered", {}),
    _object_frame(f"{MOD}.Point", {"x": 1, "z": 2}),            # unknown field
    _object_frame(f"{MOD}.Point", {"y": 1}),                    # required field missing
    _object_frame(f"{MOD}.Point", [1, 2]),                      # fields not a map
    _object_frame(f"{MOD}.Plain", {1: 2}),                      # attribute not a str
    _object_frame(f"{MOD}.WithSlots", {"b": 1}),                # no such slot
    _object_frame(f"{MOD}.Colour", {}),                         # an enum under the object tag
    _object_frame(["unhashable"], {}),
    msgpack.packb([msgpack.ExtType(11, b""), f"{MOD}.Colour", "BLUE"]),
    msgpack.packb([msgpack.ExtType(11, b""), f"{MOD}.Point", "x"]),
    msgpack.packb([msgpack.ExtType(11, b""), f"{MOD}.Perm", 64]),
], ids=lambda d: d[:24].hex())
def test_malformed_input_raises_wire_format_error_only(data: bytes) -> None:
    with pytest.raises(WireFormatError):
        decode(data)


@pytest.mark.parametrize("data", ["a string", 12, None, [1]], ids=repr)
def test_non_bytes_input_is_a_wire_format_error(data: Any) -> None:
    with pytest.raises(WireFormatError, match="expected bytes"):
        decode(data)


def test_bytearray_and_memoryview_input_decode() -> None:
    data = encode((1, "x"))
    assert decode(bytearray(data)) == decode(memoryview(data)) == (1, "x")


def test_wire_format_error_says_what_was_wrong() -> None:
    with pytest.raises(WireFormatError, match=r"unknown class 'os\.system'"):
        decode(_object_frame("os.system", {}))
    with pytest.raises(WireFormatError, match=rf"malformed {MOD}\.Point: no field 'z'"):
        decode(_object_frame(f"{MOD}.Point", {"x": 1, "z": 2}))
    with pytest.raises(WireFormatError, match="unknown type code 99"):
        decode(msgpack.packb(msgpack.ExtType(99, b"")))


def test_a_failed_decode_leaves_the_next_one_unaffected() -> None:
    with pytest.raises(WireFormatError):
        decode(msgpack.packb([MARKER, [MARKER, 1, 2], msgpack.ExtType(99, b"")]))
    assert decode(encode([(1,), {2}])) == [(1,), {2}]


def test_timestamp_header_inside_a_string_is_not_refused() -> None:
    value = ["\xd6\xff", b"\xd7\xff\xc7\x0c\xff", (1, -1)]
    assert roundtrip(value) == value


@settings(max_examples=2000, deadline=None)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_decode_or_raise_wire_format_error(data: bytes) -> None:
    try:
        decode(data)
    except WireFormatError:
        pass


VALID = [encode(v) for v in (
    [Point(1, 2), ALICE, Colour.RED], {(1, 2): {3}, "d": datetime(2024, 1, 1, tzinfo=timezone.utc)},
    Holding(ALICE, Decimal("1.5"), [uuid.UUID(int=7), timedelta(1), date(2024, 1, 1), 2**80]),
)]


@settings(max_examples=2000, deadline=None)
@given(st.sampled_from(VALID), st.data())
def test_corrupted_valid_frames_decode_or_raise_wire_format_error(frame: bytes, data: st.DataObject) -> None:
    corrupted = bytearray(frame)
    for _ in range(data.draw(st.integers(1, 4))):
        corrupted[data.draw(st.integers(0, len(corrupted) - 1))] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(corrupted)))
    try:
        decode(bytes(corrupted[:cut]))
    except WireFormatError:
        pass


# ------------------------------------------------------------------ canonical encoding


def test_canonical_encoding_ignores_dict_and_set_order() -> None:
    a = {"x": 1, "y": {"p": [1, 2], "q": None}, 3: "three"}
    b = {3: "three", "y": {"q": None, "p": [1, 2]}, "x": 1}
    assert list(a) != list(b)
    assert canonical_encode(a) == canonical_encode(b)
    s1, s2 = set(), set()
    for i in range(100):
        s1.add(f"member-{i}")
    for i in reversed(range(100)):
        s2.add(f"member-{i}")
    assert canonical_encode(s1) == canonical_encode(s2)
    assert canonical_encode(frozenset(s1)) == canonical_encode(frozenset(s2))
    assert canonical_encode(frozenset(s1)) != canonical_encode(s1)


def test_canonical_encoding_ignores_attribute_order() -> None:
    p1 = Plain("n", [])
    p2 = Plain.__new__(Plain)
    p2.items, p2.name = [], "n"
    assert canonical_encode(p1) == canonical_encode(p2)


def test_canonical_encoding_handles_keys_that_become_arrays_and_maps() -> None:
    a = {(1, 2): "t", ALICE: "party", Point(1): "point", frozenset({1, 2}): "fs"}
    b = dict(reversed(list(a.items())))
    assert canonical_encode(a) == canonical_encode(b)
    assert decode(canonical_encode(a)) == a


def test_canonical_encoding_distinguishes_different_values() -> None:
    assert canonical_encode({"a": 1}) != canonical_encode({"a": 2})
    assert canonical_encode((1, 2)) != canonical_encode([1, 2])
    assert canonical_encode(Point(1, 2)) != canonical_encode(Point(2, 1))


def test_canonical_encoding_is_the_same_bytes_on_its_fast_path() -> None:
    """Transactions take a walk without the refusal bookkeeping; it must give the very
    bytes of the general walk (ids must never change), also for values it hands back."""
    from greenflow.wire.canonical import _canon
    values = [
        (1, -1, 2**64 - 1, 2**70, -2**70, True, None, 1.5, "text", b"bytes"),
        [Point(1, 2), (Point(3, 4), [ALICE])],
        (Holding(ALICE, Decimal("1.25")), {"b": {2, 1}, "a": frozenset({(1,)})}),
        (Plain("n", [1]), WithSlots(1, 2), Slotted(1, "b"), Colour.RED, datetime(2024, 1, 2, tzinfo=timezone.utc)),
    ]
    for value in values:
        assert canonical_encode(value) == _canon(value, 0, set()), value


def test_digest_is_sixteen_deterministic_bytes() -> None:
    assert digest(b"abc") == digest(b"abc") and len(digest(b"abc")) == 16
    assert digest(b"abc") != digest(b"abd")


def test_encoding_from_many_threads_at_once() -> None:
    values = [[Point(i, i), {"k": (i, {i})}, ALICE] for i in range(200)]
    errors: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(20):
                for v in values:
                    assert decode(encode(v)) == v
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


# ---------------------------------------------------------------- hostile shapes: bounded work

# Distinct ints whose hashes are all equal: Python hashes an int as itself mod 2**61 - 1.
_HASH_MODULUS = 2**61 - 1
MAX_SAME_HASH_FOR_TESTS = 8   # greenflow.wire.MAX_SAME_HASH


def _colliding_ints(n: int) -> list[int]:
    return [7 + i * _HASH_MODULUS for i in range(1, n + 1)]


def _as_set_payload(members: list) -> bytes:
    """The bytes a peer would send for ``set(members)``, without building that set here
    (building it is the quadratic work under test): a tuple's encoding with the set tag."""
    data = encode(tuple(members))
    tuple_mark, set_mark = msgpack.packb(msgpack.ExtType(1, b"")), msgpack.packb(msgpack.ExtType(2, b""))
    assert data.count(tuple_mark) == 1
    return data.replace(tuple_mark, set_mark)


def _as_map_payload(keys: list) -> bytes:
    """The bytes of ``{k: 0 for k in keys}``, without building that dict here."""
    return msgpack.Packer().pack_map_header(len(keys)) + b"".join(encode(k) + b"\x00" for k in keys)


def _timed_decode(data: bytes) -> tuple[float, Any]:
    import time
    t0 = time.perf_counter()
    try:
        out: Any = decode(data)
    except WireFormatError as exc:
        out = exc
    return time.perf_counter() - t0, out


@pytest.mark.parametrize("shape", ["set", "map"])
def test_a_container_of_colliding_hashes_is_refused_in_bounded_time(shape: str) -> None:
    # 40,000 such ints took ~9 s to decode (each insert compared with every earlier one).
    keys = _colliding_ints(40_000)
    data = _as_set_payload(keys) if shape == "set" else _as_map_payload(keys)
    seconds, out = _timed_decode(data)
    assert isinstance(out, WireFormatError), out
    assert "share one hash value" in str(out) and "40,000" in str(out)
    assert seconds < 1.0, seconds          # measured ~0.03 s; generous for a loaded machine


def test_colliding_floats_and_tuples_are_caught_too() -> None:
    # Floats n * 2**e with e = r (mod 61) all hash alike: 33 of them share hash(1.0).
    floats = [math.ldexp(1.0, 61 * k) for k in range(-17, 17)]
    assert len({hash(f) for f in floats}) == 1
    with pytest.raises(WireFormatError, match="share one hash value"):
        decode(_as_set_payload(floats))
    with pytest.raises(WireFormatError, match="share one hash value"):
        decode(_as_map_payload([(k,) for k in _colliding_ints(50)]))   # tuple keys


def test_few_collisions_per_hash_decode_linearly() -> None:
    # Groups of MAX_SAME_HASH colliding ints are admitted: each insert compares with at
    # most that many, so the whole set is linear in its size.
    from greenflow.wire import MAX_SAME_HASH
    group = MAX_SAME_HASH
    keys = [base + i * _HASH_MODULUS for base in range(5_000) for i in range(1, group + 1)]
    seconds, out = _timed_decode(_as_set_payload(keys))
    assert out == set(keys)
    assert seconds < 2.0, seconds


def test_ordinary_sets_and_dicts_still_round_trip() -> None:
    values = [
        set(range(-50_000, 50_000)), frozenset(str(i) for i in range(10_000)),
        {(i, str(i)): [i] for i in range(5_000)}, {frozenset({i, -i}) for i in range(5_000)},
        {i * 0.5: i for i in range(10_000)}, {2**70 + i for i in range(1_000)},
        {uuid.UUID(int=i) for i in range(1_000)}, {Decimal(i) / 7 for i in range(1_000)},
        {Point(i, -i) for i in range(1_000)}, {-1, -2, 0, 2**64 - 1, -(2**63)},
    ]
    for value in values:
        assert roundtrip(value) == value


def test_a_payload_of_millions_of_tiny_containers_is_refused_quickly() -> None:
    # 15 MiB of empty lists decoded into 15M lists: 18 s and 1.3 GB before.
    from greenflow.wire import MAX_CONTAINERS
    n = 15 * 1024 * 1024
    for header in (b"\x90", b"\x80"):        # empty arrays, empty maps
        data = b"\xdd" + n.to_bytes(4, "big") + header * n
        seconds, out = _timed_decode(data)
        assert isinstance(out, WireFormatError) and f"{MAX_CONTAINERS:,}" in str(out), out
        assert seconds < 3.0, seconds
    # ... and a sender learns it at send(), not from a peer that silently drops it.
    with pytest.raises(NotSerializable, match="a peer would refuse"):
        encode([()] * (MAX_CONTAINERS + 1))
    assert len(decode(encode([[1]] * (MAX_CONTAINERS - 1)))) == MAX_CONTAINERS - 1


def test_large_flat_payloads_stay_fast() -> None:
    blob = bytes(range(256)) * 40_000       # ~10 MB of bytes that look like headers
    seconds, out = _timed_decode(encode([blob, "x" * 1_000_000]))
    assert out == [blob, "x" * 1_000_000]
    assert seconds < 1.0, seconds


def test_a_sender_learns_at_send_that_a_peer_would_refuse_its_set() -> None:
    members = _colliding_ints(MAX_SAME_HASH_FOR_TESTS + 1)
    with pytest.raises(NotSerializable, match="share one hash value"):
        encode(set(members))
    assert roundtrip(set(members[:-1])) == set(members[:-1])


def test_a_big_map_after_small_ones_is_checked_and_decoded_whole() -> None:
    # Maps of up to MAX_SAME_HASH keys are built by msgpack itself; the first bigger one
    # sends the whole payload through the checking decode, tagged values before it too.
    from greenflow.wire import MAX_SAME_HASH
    small = {k: i for i, k in enumerate(_colliding_ints(MAX_SAME_HASH))}
    value = [(1, 2), Point(1, 2), small, {frozenset({3})}, ((1, {i: str(i) for i in range(100)}),), (3,)]
    assert roundtrip(value) == value
    assert roundtrip([small] * 3) == [small] * 3
    three = encode([(1, 2), Point(1, 2), small])       # a list of three, re-headed as
    header = msgpack.packb([0, 0, 0, 0])[:1]           # a list of four: a flood the fourth
    data = header + three[1:] + _as_map_payload(_colliding_ints(MAX_SAME_HASH + 1))
    assert decode(header + three[1:] + _as_map_payload(list(range(20))))[3] == dict.fromkeys(range(20), 0)
    with pytest.raises(WireFormatError, match="share one hash value"):
        decode(data)
    assert decode(encode((5, 6))) == (5, 6)   # no marker count left over from either


def test_a_peers_text_in_a_frame_is_cut_where_the_frame_is_read() -> None:
    """An end's or rejection's reason and an error's class and message come from the peer
    and reach flows' exceptions and the log: a peer's megabytes are cut at decoding, with
    the count of what was cut; ordinary words pass as they are."""
    from greenflow.messages import END, ERROR, MAX_TEXT, REJECT, Frame, decode_frame, encode_frame
    sid = "a" * 32 + ".1"
    for kind in (END, REJECT):
        f = decode_frame(encode_frame(Frame(kind, sid, False, 3, None, "", 0, "", None,
                                            "x" * 5_000_000)))
        kept = MAX_TEXT - len("... (4998029 more characters)")
        assert f.reason == "x" * kept + "... (4998029 more characters)"
        assert len(f.reason) == MAX_TEXT
    f = decode_frame(encode_frame(Frame(ERROR, sid, False, 3, None, "", 0, "", None, "",
                                        ("E" * 1000, "m" * 10_000, 7))))
    assert f.error[0].startswith("E" * 150) and len(f.error[0]) == 200
    assert f.error[1].endswith("... (8026 more characters)") and len(f.error[1]) == MAX_TEXT
    assert f.error[2] == 7
    f = decode_frame(encode_frame(Frame(END, sid, False, 3, None, "", 0, "", None, "failed")))
    assert f.reason == "failed"
