"""Actions: what a transition decided should happen. The executor performs them; the
transitions themselves never do I/O.

The executor keeps Corda's order: state changes in memory now, then at the end of the
round one commit of every checkpoint, outbox and inbox change, and only after that
commit the I/O (frames to peers, acknowledgements, external work).
"""
from __future__ import annotations

from dataclasses import dataclass

from .messages import Frame


@dataclass(frozen=True)
class Resume:
    """Wake the flow with this outcome for its pending request."""
    outcome: tuple


@dataclass(frozen=True)
class Wait:
    """The flow stays suspended; its checkpoint goes into the next commit."""


@dataclass(frozen=True)
class ArmTimer:
    deadline: float


@dataclass(frozen=True)
class RunExternal:
    """Run the flow's pending external call on a worker, after the commit."""


@dataclass(frozen=True)
class Accept:
    """Take a peer's frame into the flow's session (in order; buffered until consumed)."""
    frame: Frame


@dataclass(frozen=True)
class Consume:
    """Take the first buffered frame of the session out of the inbox."""
    sid: str


@dataclass(frozen=True)
class SendInfo:
    """Tell the peer our flow version and app (it asked before we sent anything)."""
    sid: str


@dataclass(frozen=True)
class Ack:
    """Acknowledge the frame to its sender once our commit has made it durable."""
    msg_id: tuple


@dataclass(frozen=True)
class Drop:
    """Ignore the frame, with the reason for the log."""
    reason: str
