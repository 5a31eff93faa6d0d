"""What one payload may cost: its size, depth, containers and hash collisions. The bounds
hold both ways, so `encode` refuses what a peer would refuse to decode."""
from __future__ import annotations

from collections import Counter

from greenflow.errors import WireFormatError
from greenflow.wire.format import _INT_MAX, _INT_MIN

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


# Every byte that is not an array or map header: deleting them from a payload leaves an
# upper bound of its containers (headers inside strings count too), in one C call.
_NOT_CONTAINER_HEADERS = bytes(b for b in range(256) if not (0x80 <= b <= 0x9F or 0xDC <= b <= 0xDF))


def _might_exceed_containers(data: bytes) -> bool:
    return len(data.translate(None, _NOT_CONTAINER_HEADERS)) > MAX_CONTAINERS

