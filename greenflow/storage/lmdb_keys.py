"""The LMDB store's key layout (the table in `greenflow.storage.lmdb_store`): its named
databases and how each key is built and parsed. Private to the LMDB store's modules."""
from __future__ import annotations

import struct
from typing import Any, Optional

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


def _expiry_key(when: float, db: str, key: bytes) -> bytes:
    return _micros(when) + db.encode() + b"\0" + key


def _parse_timer_key(key: bytes) -> tuple[float, str]:
    return _U64.unpack(key[:8])[0] / 1_000_000, key[8:].decode()


def _successor(prefix: bytes) -> Optional[bytes]:
    """The least key greater than every key starting with ``prefix`` (None: no bound)."""
    p = prefix.rstrip(b"\xff")
    if not p:
        return None
    return p[:-1] + bytes((p[-1] + 1,))
