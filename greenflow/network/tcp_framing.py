"""The TCP transport's framing: length-prefixed messages, the limits on them, the record
kinds, and decoding a message from a peer (bounded, no extension types). See
`greenflow.network.tcp_transport` for the protocol as a whole."""
from __future__ import annotations

import asyncio
import socket
import struct
from typing import Any

import msgpack

from greenflow.errors import WireFormatError
from greenflow.messages import MAX_FRAME_BYTES, decode_frame
from greenflow.storage.partitions import PARTITIONS

PROTOCOL = b"greenflow-p2p/1"
#: The same protocol, and the dialler also reads records on its connection: the listener
#: may answer on it (the reply path, see `greenflow.network.tcp_transport`). Only a
#: dialler that wants replies says it; a listener of either version accepts /1.
PROTOCOL_REPLY = b"greenflow-p2p/2"
#: /2, and the dialler also tells the listener which partitions of its party it serves
#: (`K_PARTS` records): the listener opens its own sessions on the connection of the
#: partition's worker. A listener that knows only /1 and /2 refuses the hello.
PROTOCOL_HINTS = b"greenflow-p2p/3"
HEADER = struct.Struct(">I")
MAX_HANDSHAKE_BYTES = 1024
BATCH_BYTES = 256 * 1024
MAX_RECORD_BYTES = MAX_FRAME_BYTES + 64 * 1024
MAX_ACKS_PER_RECORD = 8192
MAX_OWED_ACKS = 100_000
MAX_HELD_BYTES = 64 * 1024 * 1024   # per peer: unacknowledged frames kept in memory
HANDSHAKE_TIMEOUT = 10.0
CONNECT_TIMEOUT = 5.0
BACKOFF_MIN, BACKOFF_MAX = 0.05, 10.0
RETRANSMIT_AFTER = 3.0
RETRANSMIT_MAX = 60.0

K_WELCOME, K_FRAME, K_ACK, K_PARTS = 0, 1, 2, 3
#: Most partitions one `K_PARTS` record may name: all a clustered party has.
MAX_HINTED_PARTITIONS = PARTITIONS

class ProtocolError(Exception):
    """The other end broke the protocol (or is not who it claims): drop the connection."""


class ReplyRefused(ProtocolError):
    """The listener closed the connection on a `PROTOCOL_REPLY` or `PROTOCOL_HINTS`
    hello before answering it: most likely an older version (it refuses the hello).
    ``version`` is the hello refused."""

    def __init__(self, message: str, version: bytes = PROTOCOL_REPLY) -> None:
        super().__init__(message)
        self.version = version


def _pack(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


#: Most lists, maps and extension values one message may decode into. A record holds a
#: batch of frames (a list each, at most BATCH_BYTES of them) and a chunk of at most
#: MAX_ACKS_PER_RECORD acknowledgements (a list each): ~20,000 at most. Without a bound,
#: 16 MiB of empty lists decoded into 16 million (16 s and 1.2 GB) on the transport thread.
MAX_RECORD_CONTAINERS = 65_536
# Every byte that cannot open an array, map or extension value: deleting them leaves an
# upper bound on the containers of a message, in one C call.
_NOT_CONTAINER_HEADERS = bytes(b for b in range(256) if not (
    0x80 <= b <= 0x9F or 0xDC <= b <= 0xDF or 0xC7 <= b <= 0xC9 or 0xD4 <= b <= 0xD8))


def _refuse_ext(code: int, data: bytes) -> Any:
    raise ProtocolError(f"an extension value (type {code})")


def _unpack(data: bytes) -> Any:
    try:
        if len(data) > MAX_RECORD_CONTAINERS and \
                len(data.translate(None, _NOT_CONTAINER_HEADERS)) > MAX_RECORD_CONTAINERS:
            built = 0

            def count(value: Any) -> Any:
                nonlocal built
                built += 1
                if built > MAX_RECORD_CONTAINERS:
                    raise ProtocolError(f"more than {MAX_RECORD_CONTAINERS:,} lists in one message")
                return value

            return msgpack.unpackb(data, raw=False, use_list=True, strict_map_key=True,
                                   ext_hook=_refuse_ext, list_hook=count, object_hook=count)
        return msgpack.unpackb(data, raw=False, use_list=True, strict_map_key=True,
                               ext_hook=_refuse_ext)
    except Exception as exc:
        raise ProtocolError(f"undecodable message ({type(exc).__name__}: {exc})"[:200]) from None


async def read_message(reader: asyncio.StreamReader, limit: int) -> bytes:
    n = HEADER.unpack(await reader.readexactly(HEADER.size))[0]
    if n == 0 or n > limit:
        raise ProtocolError(f"message of {n} bytes (limit {limit})")
    return await reader.readexactly(n)


def write_message(writer: asyncio.StreamWriter, data: bytes) -> None:
    writer.write(HEADER.pack(len(data)) + data)


def _frame_msg_id(data: bytes) -> Any:
    try:
        return decode_frame(data).msg_id
    except WireFormatError:
        return None


def _msg_id_ok(m: Any) -> bool:
    return (isinstance(m, list) and len(m) == 3 and isinstance(m[0], str) and 0 < len(m[0]) <= 200
            and isinstance(m[1], bool) and isinstance(m[2], int) and 0 <= m[2] < 2**62)



def _why(exc: BaseException) -> str:
    if isinstance(exc, asyncio.IncompleteReadError):
        return "connection closed during the handshake"
    if isinstance(exc, asyncio.TimeoutError):
        return "timed out"
    if isinstance(exc, asyncio.CancelledError):
        return "this node is shutting down"
    return str(exc) or type(exc).__name__


def _keepalive(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is None:
        return
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        if hasattr(socket, "TCP_KEEPIDLE"):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 30)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, 10)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 3)
    except OSError:
        pass

