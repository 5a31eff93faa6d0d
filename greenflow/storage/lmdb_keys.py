"""The LMDB store's key layout (the table in `greenflow.storage.lmdb_store`): its named
databases and how each key is built and parsed. Private to the LMDB store's modules."""
from __future__ import annotations

import struct
from typing import Any, Optional

import msgspec

DBS = ("flows", "logic", "journal", "frames", "inbox", "outbox", "sessions", "timers", "expiry",
        "wake", "results", "clients", "meta", "payloads")
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")


def _fid_key(fid: str) -> bytes:
    return fid.encode()


def _inbox_key(fid: str, sid: str, seq: int) -> bytes:
    return b"%s\0%s\0%s" % (fid.encode(), sid.encode(), _U32.pack(seq))


def _session_key(peer: str, sid: str, peer_role: int) -> bytes:
    """Routing key for frames arriving from ``peer`` on ``sid`` for our end, where
    ``peer_role`` is 1 when the peer is the responder (we initiated)."""
    return b"%s\0%s\0%d" % (peer.encode(), sid.encode(), peer_role)


def _micros(t: float) -> bytes:
    return _U64.pack(max(0, round(t * 1_000_000)))


def _timer_key(deadline: Any, fid: str) -> bytes:
    if type(deadline) is bytes:   # a header written before timers were kept by deadline
        return deadline
    return _micros(deadline) + fid.encode()


#: An expiry record takes entries while they total under EXPIRY_BYTES (so it fits on
#: its page: LMDB keeps a key and value of up to ~2,000 bytes in a 4 KB page), at most
#: EXPIRY_GROUP of them (what one record may add to a sweep's ``limit``).
EXPIRY_BYTES = 1500
EXPIRY_GROUP = 64
_encode_entries = msgspec.msgpack.Encoder().encode
_decode_entries = msgspec.msgpack.Decoder(list[bytes]).decode


def expiry_entries(key: bytes, value: bytes) -> list[bytes]:
    """What one expiry record stands for, each as ``db NUL key``: the entry in its key
    (after the 8-byte time) and those in its value (a msgpack array of them; b"": none,
    as every record was before records were grouped)."""
    first = bytes(key[8:])
    return [first, *_decode_entries(value)] if value else [first]


def _parse_timer_key(key: bytes) -> tuple[float, str]:
    return _U64.unpack(key[:8])[0] / 1_000_000, key[8:].decode()


def _successor(prefix: bytes) -> Optional[bytes]:
    """The least key greater than every key starting with ``prefix`` (None: no bound)."""
    p = prefix.rstrip(b"\xff")
    if not p:
        return None
    return p[:-1] + bytes((p[-1] + 1,))
