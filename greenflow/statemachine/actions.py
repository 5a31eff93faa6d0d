"""Actions: what a transition decided should happen. The executor performs them; the
transitions themselves never do I/O.

The executor keeps Corda's order: state changes in memory now, then at the end of the
round one commit of every checkpoint, outbox and inbox change, and only after that
commit the I/O (frames to peers, acknowledgements, external work).

Actions are treated as immutable but not declared frozen: a frozen dataclass sets each
field through ``object.__setattr__``, 4x the cost of a plain slotted one, and a round
creates several actions per message.
"""
from __future__ import annotations

from dataclasses import dataclass

from greenflow.messages import Frame


@dataclass(slots=True)
class Resume:
    """Wake the flow with this outcome for its pending request."""
    outcome: tuple


@dataclass(slots=True)
class Wait:
    """The flow stays suspended; its checkpoint goes into the next commit."""


@dataclass(slots=True)
class ArmTimer:
    deadline: float


@dataclass(slots=True)
class RunExternal:
    """Run the flow's pending external call on a worker, after the commit."""


@dataclass(slots=True)
class Accept:
    """Take a peer's frame into the flow's session (in order; buffered until consumed)."""
    frame: Frame


@dataclass(slots=True)
class Consume:
    """Take the first buffered frame of the session out of the inbox."""
    sid: str


@dataclass(slots=True)
class PeerEnded:
    """The flow has seen the end its peer sent with its last message."""
    sid: str


@dataclass(slots=True)
class SendInfo:
    """Tell the peer our flow version and app (it asked before we sent anything)."""
    sid: str


@dataclass(slots=True)
class Ack:
    """Acknowledge the frame to its sender once our commit has made it durable."""
    msg_id: tuple


@dataclass(slots=True)
class Drop:
    """Ignore the frame, with the reason for the log."""
    reason: str
