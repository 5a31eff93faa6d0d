"""What the runtime's parts share: how a flow's run ends (`Ended`), what it needs of
the scheduler that runs it (`FlowHost`), its inbox items and collection helpers.

Imported by `flow_runtime` and the modules `FlowRuntime` is assembled from (its
sessions in `conversation`, its recorded values in `recorded`); all of it is
re-exported by `flow_runtime`.
"""
from __future__ import annotations

import decimal
import math
import numbers
from collections import deque
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Optional, Protocol

import msgspec

from greenflow.messages import FRAME_COST, Frame
from greenflow.party import Party

if TYPE_CHECKING:
    from greenflow.runtime.flow_runtime import FlowRuntime


class Ended:
    """How a flow's run comes back to the scheduler (the first item of what its main
    returns) and how the scheduler ends it: named once, for the runtime, the scheduler's
    ending and the replay check."""

    __slots__ = ()
    DONE = "done"          # (DONE, result)
    FAILED = "failed"      # (FAILED, exception)
    UNWOUND = "unwound"    # (UNWOUND, why): kill, hibernation, power cut
    DIVERGED = "diverged"  # (DIVERGED,): replay disagreed with the journal; parked
    KILLED = "killed"      # (KILLED,)
    #: (INTERRUPTED, exc): Ctrl-C (KeyboardInterrupt) reached the process while this flow
    #: ran on the main thread (a node run inline, as MockNetwork and `greenflow run` do):
    #: the process's, not the flow's, so the node stops as at a power cut and it
    #: propagates. (On a node's own thread, where no signal lands, a KeyboardInterrupt is
    #: the flow's own raise, and fails it.)
    INTERRUPTED = "interrupted"


class FlowHost(Protocol):
    """What a flow's runtime needs from the scheduler that runs it (the scheduler
    implements it). Declared here so that the runtime, below the state machine and
    storage, never imports them."""

    identity: Party
    services: Any
    clock: Any
    store: Any
    limits: Any
    idle_greenlets: list
    progress_listeners: list

    def progress_wanted(self) -> bool: ...

    def progress_changed(self, rt: "FlowRuntime", step: Optional[str]) -> None: ...

    def take_decoded(self, data: bytes) -> Any: ...

    def reaches(self, name: str) -> bool: ...

    def stored_payload(self, fid: str, sid: str, seq: int) -> bytes: ...


class InboxItem(msgspec.Struct, gc=False):
    """An accepted frame waiting to be consumed; ``persisted`` once it is in the store.
    Like the `Frame` it holds, never tracked by the cyclic garbage collector (it can be
    part of no cycle): a responder's first frame waits in its inbox for the round."""

    frame: Frame
    persisted: bool


class InboxQueue(deque):
    """The frames waiting for one session, with the bytes of their payloads kept count
    of (`payload_bytes`): what a session may hold unread is checked at every frame that
    arrives, and summing the queue each time made a burst of n messages cost n**2.

    ``peer_unread``, when given, is the count of everything the session's peer has waiting
    unread on this node (a one-item list the node keeps per peer): each frame adds its
    payload and `FRAME_COST` while it waits, and a queue dropped with frames in it (its
    flow ended or left memory) takes back what they added."""

    __slots__ = ("payload_bytes", "peer_unread")

    def __init__(self, peer_unread: Optional[list] = None) -> None:
        super().__init__()
        self.payload_bytes = 0
        self.peer_unread = peer_unread

    def append(self, item: InboxItem) -> None:
        super().append(item)
        p = item.frame.payload
        n = 0 if p is None else len(p)
        self.payload_bytes += n
        if self.peer_unread is not None:
            self.peer_unread[0] += n + FRAME_COST

    def popleft(self) -> InboxItem:
        item = super().popleft()
        p = item.frame.payload
        n = 0 if p is None else len(p)
        self.payload_bytes -= n
        if self.peer_unread is not None:
            self.peer_unread[0] -= n + FRAME_COST
        return item

    def __del__(self) -> None:
        if self.peer_unread is not None and len(self):
            self.peer_unread[0] -= self.payload_bytes + FRAME_COST * len(self)


class Outgoing(msgspec.Struct, gc=False):
    """A frame a flow produced, waiting for the flow's next commit, and the peer it goes
    to. Untracked, like the frame: a round at 10,000 flows holds one per flow, and
    neither a `Party` nor a `Frame` can lead back to it (no cycle can pass through it)."""

    peer: Party
    frame: Frame


class Resume(msgspec.Struct, gc=False):
    """A flow due to run in this round, and what its greenlet is resumed with. Untracked:
    the scheduler's run queue holds one per runnable flow and drains every round (and
    is cleared when the node stops), so a cycle through it lasts no longer than the
    round."""

    rt: "FlowRuntime"
    value: Any


NO_INBOX: MappingProxyType = MappingProxyType({})   # read-only: replaced by a dict on first use


def appended(seq: list | tuple, item: Any) -> list:
    """``seq`` with ``item`` added: the list itself, or a new one in place of the shared
    empty tuple the runtime's per-flow collections start as."""
    if seq:
        seq.append(item)  # type: ignore[union-attr]
        return seq  # type: ignore[return-value]
    return [item]


#: The longest a flow may sleep or wait with a timeout: a century. Deadlines are stored
#: as microseconds; a NaN or infinite one once stopped the node's scheduler.
MAX_DURATION = 100 * 365.25 * 86400


def duration(seconds: Any, what: str) -> float:
    """``seconds`` as a float, checked: a number, not NaN, between 0 and `MAX_DURATION`;
    else ValueError (TypeError for what is no number) naming ``what``."""
    t = type(seconds)
    if t is not float and t is not int and (
            t is bool or isinstance(seconds, (str, bytes, bytearray))
            or not isinstance(seconds, (numbers.Real, decimal.Decimal))):
        # "5" and True converted to 5 s and 1 s before; a Decimal or Fraction is a number
        raise TypeError(f"{what} takes a number of seconds, got {t.__qualname__}")
    try:
        s = float(seconds)
    except OverflowError:   # an int too large for a float: past a century too
        s = math.inf
    except (TypeError, ValueError):
        raise TypeError(f"{what} takes a number of seconds, got {t.__qualname__}") from None
    if not (0 <= s <= MAX_DURATION):   # (False for NaN too)
        shown = repr(seconds) if s != math.inf or t is not int else f"an int of {seconds.bit_length()} bits"
        raise ValueError(f"{what} takes a duration from 0 to {MAX_DURATION:.0f} seconds "
                         f"(a century), got {shown}")
    return s
