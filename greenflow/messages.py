"""Session frames: what flows on a session between two nodes.

Every frame carries the session id, which end it is for, and a per-direction sequence
number; the receiver accepts frames strictly in sequence order, so a frame re-sent
after a crash is recognised and dropped (exactly-once processing over at-least-once
delivery). A frame's id, ``(session, to_responder, seq)``, is deterministic, so a
replayed sender produces the same ids.

Frames are msgpack lists of builtins (11 fields); a payload inside is already in the safe wire
encoding (`greenflow.wire`). Nothing here is ever unpickled.
"""
from __future__ import annotations

from typing import Annotated, Optional

import msgspec

from greenflow.errors import WireFormatError

INIT, DATA, END, ERROR, REJECT, CONFIRM, INFO_REQ = 1, 2, 3, 4, 5, 6, 7
#: On the wire, added to the kind of a frame that carries a message (a DATA, or an INIT
#: with a payload) and also ends its sender's side of the session, with the end's reason
#: in ``reason``: the sender's last message and its END travel as one frame.
ENDS = 0x10
KIND_NAMES = {INIT: "initiation", DATA: "data", END: "end", ERROR: "error", REJECT: "rejection",
              CONFIRM: "confirmation", INFO_REQ: "flow-info request"}

MAX_FRAME_BYTES = 16 * 1024 * 1024
#: What a frame waiting unread in a flow's inbox is counted besides its payload (its
#: objects in memory, ~250 bytes): what a peer may have waiting unread on all its
#: sessions is bounded in these terms, so a flood of empty messages counts too.
FRAME_COST = 256


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


class Frame(msgspec.Struct, gc=False):
    """One frame. A struct the cyclic garbage collector never tracks: its fields are
    atomic values and tuples of them, so it can take part in no reference cycle, and
    the frames a round holds (awaiting their commit, in inboxes) are not walked by every
    collection while thousands of flows are in flight. Treated as immutable once built,
    except that a session's last message is marked as also ending it
    (`greenflow.runtime.conversation`)."""

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


#: What a frame is on the wire: one list of 11 fields, the kind carrying `ENDS`. Decoded
#: by type, so anything of another shape (a map, an extension type, a list where a
#: string belongs, a 12th field) is refused as soon as the decoder meets it, before it
#: builds more (16 MiB of nested empty lists once took 16 s and 1.2 GB to build, only to
#: be refused for its shape).
# The app names a frame carries (the initiator's, the responder's) are kept in every
# session's checkpoint for as long as its flow lives: a few hundred characters at most (a
# peer's 15 MiB `app` cost 30 MiB of store per session it opened). (The protocol, a class
# name, is kept only when a responder answers it, so it is one this node registered; a
# longer one is refused with the name cut, `routing`.)
MAX_NAME = 512
_Name = Annotated[str, msgspec.Meta(max_length=MAX_NAME)]
_WIRE = tuple[int, Annotated[str, msgspec.Meta(min_length=1, max_length=200)], bool,
              Annotated[int, msgspec.Meta(ge=0, lt=2**62)], Optional[bytes], str, int, _Name,
              Optional[tuple[int, _Name]], str, Optional[tuple[str, str, int]]]
_decode = msgspec.msgpack.Decoder(_WIRE).decode
_encode = msgspec.msgpack.Encoder().encode


def encode_frame(f: Frame) -> bytes:
    return _encode((f.kind | ENDS if f.ends else f.kind, f.sid, f.to_responder, f.seq, f.payload,
                    f.protocol, f.version, f.app, f.info, f.reason, f.error))


#: The most of a peer's text (an end's or rejection's reason, an error's message) a
#: frame keeps: enough for any real message, not a peer's megabytes in a log line.
MAX_TEXT = 2000


def cut_text(text: str, limit: int = MAX_TEXT) -> str:
    """``text``, or as much of its start as fits in ``limit`` characters with a note of
    how many more there were (so text cut once is never cut again on the way)."""
    if len(text) <= limit:
        return text
    note = f"... ({len(text) - limit + 40} more characters)"
    keep = limit - len(note)
    return f"{text[:keep]}... ({len(text) - keep} more characters)"


#: The most of an exception's message a flow's result record keeps ("error").
MAX_ERROR_TEXT = 20_000


def exception_text(exc: BaseException, limit: int = MAX_TEXT) -> str:
    """What ``exc`` says (its ``str``), at most ``limit`` characters, and never an
    exception itself: a flow's exception is user code, so its message may run to
    megabytes (which no frame carries: the peer would never hear the flow's end), and
    its ``__str__`` may raise (which would leave the flow neither failed nor running)."""
    try:
        text = str(exc)
    except Exception as err:  # noqa: BLE001 - user code; said instead of the message
        text = f"<{type(exc).__name__}.__str__ raised {type(err).__name__}>"
    return cut_text(text, limit)


def decode_frame(data: bytes) -> Frame:
    """Parse a frame; anything malformed raises `WireFormatError` (and only that)."""
    if len(data) > MAX_FRAME_BYTES:
        raise WireFormatError(f"frame of {len(data)} bytes exceeds the {MAX_FRAME_BYTES} limit")
    try:
        (kind, sid, to_resp, seq, payload, protocol, version, app, info, reason,
         error) = _decode(data)
    except msgspec.ValidationError as exc:
        raise WireFormatError(f"malformed frame: fields have the wrong shape ({exc})") from None
    except Exception as exc:
        raise WireFormatError(f"undecodable frame: {type(exc).__name__}: {exc}") from None
    if not sid.isascii() and len(sid.encode("utf-8", "replace")) > 200:
        # The session id is part of the store's keys: bounded in bytes, not characters.
        raise WireFormatError("malformed frame: a session id longer than 200 bytes")
    # A peer's words reach this node's flows, exceptions and log: bounded here, once.
    if len(reason) > MAX_TEXT:
        reason = cut_text(reason)
    if error is not None and (len(error[0]) > 200 or len(error[1]) > MAX_TEXT):
        error = (cut_text(error[0], 200), cut_text(error[1]), error[2])
    ends = kind & ENDS == ENDS
    if ends:
        kind &= ~ENDS
        if (kind != DATA and kind != INIT) or payload is None:
            raise WireFormatError("malformed frame: only a message may also end its session")
    if kind not in KIND_NAMES:
        raise WireFormatError(f"malformed frame: unknown kind {kind}")
    return Frame(kind, sid, to_resp, seq, payload, protocol, version, app, info, reason, error,
                 ends)
