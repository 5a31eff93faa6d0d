"""The handshake that proves each side to the other (keys from the network map) and the
sealed record `Channel` it opens. See `greenflow.network.tcp_transport` for the protocol."""
from __future__ import annotations

import asyncio
import hashlib
import os
from typing import Any, Callable

import nacl.bindings
import nacl.exceptions

from greenflow.network.network_map import NetworkMap, NodeInfo, format_address
from greenflow.network.tcp_framing import (MAX_HANDSHAKE_BYTES, PROTOCOL, PROTOCOL_HINTS,
                                           PROTOCOL_REPLY, K_WELCOME, ProtocolError,
                                           ReplyRefused, _pack, _unpack, read_message,
                                           write_message)
from greenflow.log_limits import clip

_S2C, _C2S = 1, 0
#: The hellos a listener accepts (`PROTOCOL_REPLY` adds the reply path to `PROTOCOL`,
#: `PROTOCOL_HINTS` the dialler's partition hints to that).
HELLOS = (PROTOCOL, PROTOCOL_REPLY, PROTOCOL_HINTS)

def _open(key: bytes, ct: bytes, nonce: bytes) -> bytes:
    try:
        return nacl.bindings.crypto_box_open_easy_afternm(ct, nonce, key)
    except (nacl.exceptions.CryptoError, ValueError, TypeError):
        raise ProtocolError("a record failed authentication (wrong key, tampered, "
                            "replayed or out of order)") from None


class Channel:
    """The sealed record stream of one connection, after the handshake. Each direction
    has its own nonces (a direction byte and its own counter), so a record can be neither
    replayed in its direction nor reflected into the other. ``reply`` is True when the
    dialler asked for the reply path (`PROTOCOL_REPLY` or `PROTOCOL_HINTS`): records
    flow both ways; ``hints`` when it also sends partition hints (`PROTOCOL_HINTS`)."""

    def __init__(self, key: bytes, c_nonce: bytes, s_nonce: bytes, send_dir: int,
                 reply: bool = False, hints: bool = False) -> None:
        self.key = key
        self.reply = reply or hints
        self.hints = hints
        self.prefix = hashlib.blake2b(c_nonce + s_nonce, digest_size=16,
                                      person=b"greenflow-nonce").digest()
        self.send_dir, self.recv_dir = send_dir, 1 - send_dir
        self.sent = 0
        self.received = 0

    def _nonce(self, direction: int, counter: int) -> bytes:
        return self.prefix + bytes((direction,)) + counter.to_bytes(7, "big")

    def seal(self, plaintext: bytes) -> bytes:
        nonce = self._nonce(self.send_dir, self.sent)
        self.sent += 1
        return nacl.bindings.crypto_box_easy_afternm(plaintext, nonce, self.key)

    def open(self, ct: bytes) -> bytes:
        pt = _open(self.key, ct, self._nonce(self.recv_dir, self.received))
        self.received += 1
        return pt


def _hello_ok(v: Any) -> bool:
    return (isinstance(v, list) and len(v) == 4 and v[0] in HELLOS
            and isinstance(v[1], str) and isinstance(v[2], str)
            and isinstance(v[3], bytes) and len(v[3]) == 32)


def _sealed_ok(v: Any, extra: int) -> bool:
    return (isinstance(v, list) and len(v) == 2 + extra
            and all(isinstance(x, bytes) for x in v)
            and (extra == 0 or len(v[0]) == 32) and len(v[extra]) == 24)


def _bound(version: bytes) -> list:
    """What the proofs add for a hello after /1: the version is authenticated, so a
    hello changed on the way (either way) fails the handshake instead of leaving the two
    ends to disagree on who may send what."""
    return [] if version == PROTOCOL else [version]


async def client_handshake(name: str, key: bytes, reader: asyncio.StreamReader,
                           writer: asyncio.StreamWriter, info: NodeInfo,
                           reply: bool = False, hints: bool = False) -> Channel:
    """Node ``name`` dialled ``info``: prove itself with ``key``, check the peer's proof.
    With ``reply`` it asks for the reply path (`PROTOCOL_REPLY`), with ``hints`` also to
    send partition hints (`PROTOCOL_HINTS`); a listener that closes the connection
    instead of answering raises `ReplyRefused`."""
    version = PROTOCOL_HINTS if hints else PROTOCOL_REPLY if reply else PROTOCOL
    c_nonce = os.urandom(32)
    write_message(writer, _pack([version, name, info.name, c_nonce]))
    try:
        first = await read_message(reader, MAX_HANDSHAKE_BYTES)
    except asyncio.IncompleteReadError as exc:
        if version != PROTOCOL and not exc.partial:
            raise ReplyRefused(f"{info.name} closed the connection on a "
                               f"{version.decode()} hello", version) from None
        raise
    ch = _unpack(first)
    if not _sealed_ok(ch, 1):
        raise ProtocolError("malformed challenge")
    s_nonce, n, ct = ch
    try:
        pt = _open(key, ct, n)
    except ProtocolError:
        raise ProtocolError(f"the node at {format_address(info.p2p_address)} failed to "
                            f"prove it is {info.name}") from None
    if pt != _pack([b"S", c_nonce, s_nonce, info.name, name] + _bound(version)):
        raise ProtocolError(f"{info.name}'s challenge does not match this handshake")
    n2 = os.urandom(24)
    write_message(writer, _pack([n2, nacl.bindings.crypto_box_easy_afternm(
        _pack([b"C", c_nonce, s_nonce, name, info.name] + _bound(version)), n2, key)]))
    chan = Channel(key, c_nonce, s_nonce, _C2S, version != PROTOCOL, hints)
    welcome = _unpack(chan.open(await read_message(reader, MAX_HANDSHAKE_BYTES)))
    if welcome != [[K_WELCOME]]:
        raise ProtocolError(f"{info.name} sent no welcome")
    return chan


async def server_handshake(name: str, netmap: NetworkMap, key_for: Callable[[NodeInfo], bytes],
                           reader: asyncio.StreamReader,
                           writer: asyncio.StreamWriter) -> tuple[Channel, NodeInfo]:
    """A peer dialled node ``name``: check who it claims to be against ``netmap``."""
    hello = _unpack(await read_message(reader, MAX_HANDSHAKE_BYTES))
    if not _hello_ok(hello):
        raise ProtocolError("not a greenflow hello")
    version, c_name, s_name, c_nonce = hello
    if s_name != name:
        raise ProtocolError(f"the peer dialled {clip(s_name)}, but this node is {name!r}")
    info = netmap.get(c_name)
    if info is None or c_name == name:
        raise ProtocolError(f"the peer claims to be {clip(c_name)}, which is not on the "
                            "network map")
    key = key_for(info)
    s_nonce, n = os.urandom(32), os.urandom(24)
    write_message(writer, _pack([s_nonce, n, nacl.bindings.crypto_box_easy_afternm(
        _pack([b"S", c_nonce, s_nonce, name, c_name] + _bound(version)), n, key)]))
    pr = _unpack(await read_message(reader, MAX_HANDSHAKE_BYTES))
    if not _sealed_ok(pr, 0):
        raise ProtocolError(f"malformed proof from a peer claiming to be {c_name!r}")
    try:
        pt = _open(key, pr[1], pr[0])
    except ProtocolError:
        pt = None
    if pt != _pack([b"C", c_nonce, s_nonce, c_name, name] + _bound(version)):
        raise ProtocolError(f"the peer claims to be {c_name!r} but cannot prove it (not "
                            "sealed with the key the network map lists for that name)")
    chan = Channel(key, c_nonce, s_nonce, _S2C, version != PROTOCOL, version == PROTOCOL_HINTS)
    write_message(writer, chan.seal(_pack([[K_WELCOME]])))
    await writer.drain()
    return chan, info
