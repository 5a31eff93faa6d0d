"""Session frames: what flows on a session between two nodes.

Every frame carries the session id, which end it is for, and a per-direction sequence
number; the receiver accepts frames strictly in sequence order, so a frame re-sent
after a crash is recognised and dropped (exactly-once processing over at-least-once
delivery). A frame's id, ``(session, to_responder, seq)``, is deterministic, so a
replayed sender produces the same ids.

Frames are msgpack lists of builtins; a payload inside is already in the safe wire
encoding (`greenflow.wire`). Nothing here is ever unpickled.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import msgpack

from greenflow.errors import WireFormatError

INIT, DATA, END, ERROR, REJECT, CONFIRM, INFO_REQ = 1, 2, 3, 4, 5, 6, 7
#: On the wire, added to the kind of a frame that carries a message (a DATA, or an INIT
#: with a payload) and also ends its sender's side of the session, with the end's reason
#: in ``reason``: the sender's last message and its END travel as one frame.
ENDS = 0x10
KIND_NAMES = {INIT: "initiation", DATA: "data", END: "end", ERROR: "error", REJECT: "rejection",
              CONFIRM: "confirmation", INFO_REQ: "flow-info request"}

MAX_FRAME_BYTES = 16 * 1024 * 1024


class EndReason:
    """Why a side of a session ended: the words an END frame (or a last message that
    also ends its session) carries in ``reason``, named once. Plain strings, as they go
    on the wire, so nodes of any version read each other's ends."""

    __slots__ = ()
    ENDED = "ended"                   # the flow returned
    FAILED = "failed"                 # the flow failed (its error is not the peer's to see)
    KILLED = "was killed"             # an operator killed the flow
    CLOSED = "closed the session"     # FlowSession.close()


#: An INIT's ``reason`` when its sender asks for the responder's flow info (a CONFIRM).
ASKS_INFO = "info"

#: Prefix of a rejection's reason when the node refused the session (rather than having
#: no responder for it): the initiator raises `SessionRefused`, not `UnknownFlow`.
REFUSED = "refused: "


@dataclass(slots=True)
class Frame:
    # Treated as immutable once built; not declared frozen, which would make each of
    # the ten or so frames a ping-pong pair builds and parses ~6x slower to construct.
    kind: int
    sid: str
    to_responder: bool
    seq: int
    payload: Optional[bytes] = None           # INIT (may be None: receive-first), DATA
    protocol: str = ""                        # INIT: initiating class
    version: int = 0                          # INIT: initiator's flow version
    app: str = ""                             # INIT: initiator's app
    info: Optional[tuple[int, str]] = None    # responder's first frame: its (version, app)
    reason: str = ""                          # END, REJECT; INIT: "info" asks for a CONFIRM
    error: Optional[tuple[str, str, int]] = None  # ERROR: (class name, message, error_id)
    ends: bool = False                        # DATA, INIT with payload: also the END (reason)

    @property
    def msg_id(self) -> tuple[str, bool, int]:
        return (self.sid, self.to_responder, self.seq)

    def describe(self) -> str:
        kind = KIND_NAMES.get(self.kind, self.kind)
        return f"{kind}{' + end' if self.ends else ''} #{self.seq} on session {self.sid}"


def carries_message(f: Frame) -> bool:
    """Whether the frame is something a ``receive`` consumes (and so is kept in the inbox).
    A bare initiation, a confirmation and a flow-info request only update the session."""
    if f.kind == INIT:
        return f.payload is not None
    return f.kind not in (CONFIRM, INFO_REQ)


def encode_frame(f: Frame) -> bytes:
    return msgpack.packb([f.kind | ENDS if f.ends else f.kind, f.sid, f.to_responder, f.seq, f.payload, f.protocol,
                          f.version, f.app, list(f.info) if f.info else None, f.reason,
                          list(f.error) if f.error else None], use_bin_type=True)


def _refuse(*_: Any) -> Any:
    raise WireFormatError("a map or extension type")


def decode_frame(data: bytes) -> Frame:
    """Parse a frame; anything malformed raises `WireFormatError` (and only that)."""
    if len(data) > MAX_FRAME_BYTES:
        raise WireFormatError(f"frame of {len(data)} bytes exceeds the {MAX_FRAME_BYTES} limit")
    # A frame is one list of 11 fields, two of which may be short lists: anything else is
    # refused as soon as msgpack meets it, before it builds more (16 MiB of nested empty
    # lists took 16 s and 1.2 GB to build, only to be refused for its shape).
    lists = 0

    def count(items: list) -> list:
        nonlocal lists
        lists += 1
        if lists > 3:
            raise WireFormatError("more than 3 lists")
        return items

    try:
        v: Any = msgpack.unpackb(data, raw=False, use_list=True, strict_map_key=True,
                                 max_array_len=11, list_hook=count, object_hook=_refuse,
                                 ext_hook=_refuse)
    except Exception as exc:
        raise WireFormatError(f"undecodable frame: {type(exc).__name__}: {exc}") from None
    try:
        (kind, sid, to_resp, seq, payload, protocol, version, app, info, reason,
         error) = v
        ends = isinstance(kind, int) and kind & ENDS == ENDS
        if ends:
            kind &= ~ENDS
        ok = (kind in KIND_NAMES and isinstance(sid, str) and 0 < len(sid) <= 200
              and isinstance(to_resp, bool) and isinstance(seq, int) and 0 <= seq < 2**62
              and (payload is None or isinstance(payload, bytes))
              and isinstance(protocol, str) and isinstance(version, int)
              and isinstance(app, str) and isinstance(reason, str)
              and (info is None or (isinstance(info, list) and len(info) == 2
                                    and isinstance(info[0], int) and isinstance(info[1], str)))
              and (error is None or (isinstance(error, list) and len(error) == 3
                                     and isinstance(error[0], str) and isinstance(error[1], str)
                                     and isinstance(error[2], int)))
              and (not ends or (kind in (DATA, INIT) and payload is not None)))
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise WireFormatError("malformed frame: fields have the wrong shape")
    return Frame(kind, sid, to_resp, seq, payload, protocol, version, app,
                 tuple(info) if info else None, reason, tuple(error) if error else None, ends)
