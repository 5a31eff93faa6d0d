"""Actions: what a transition decided should happen. The executor performs them; the
transitions themselves never do I/O.

The executor keeps Corda's order: state changes in memory now, then at the end of the
round one commit of every checkpoint, outbox and inbox change, and only after that
commit the I/O (frames to peers, acknowledgements, external work).

An action is a plain tuple, ``(opcode, argument)``: a round decides several per message
and each lived for that round only, so they are the cheapest objects Python has (a
slotted dataclass cost ~8x a tuple to build). The constructors below, named as the
actions are, build them for tests and readers; transitions build the tuples inline.
Actions without an argument are shared constants.
"""
from __future__ import annotations

from typing import Any

from greenflow.messages import Frame

#: Opcodes, the first item of every action.
RESUME = 0       # (RESUME, outcome): wake the flow with this outcome for its pending request
WAIT = 1         # (WAIT,): the flow stays suspended; its checkpoint goes into the next commit
ARM_TIMER = 2    # (ARM_TIMER, deadline)
RUN_EXTERNAL = 3  # (RUN_EXTERNAL,): run the pending external call on a worker, after the commit
ACCEPT = 4       # (ACCEPT, frame): take a peer's frame into its session (buffered until consumed)
CONSUME = 5      # (CONSUME, sid): take the first buffered frame of the session out of the inbox
SEND_INFO = 6    # (SEND_INFO, sid): tell the peer our flow version and app (it asked first)
ACK = 7          # (ACK, msg_id): acknowledge the frame to its sender once our commit holds it
DROP = 8         # (DROP, reason): ignore the frame, with the reason for the log
PEER_ENDED = 9   # (PEER_ENDED, sid): the flow has seen the end its peer sent with its last message
CUT = 10         # (CUT, frame, peer_wide): the peer sent more than the session's inbox holds
                 # (peer_wide: more than it may have waiting on all its sessions): end the session

NAMES = ("Resume", "Wait", "ArmTimer", "RunExternal", "Accept", "Consume", "SendInfo", "Ack",
         "Drop", "PeerEnded", "Cut")

WAIT_ACTION = (WAIT,)
RUN_EXTERNAL_ACTION = (RUN_EXTERNAL,)
JUST_WAIT = [WAIT_ACTION]   # shared: what most suspensions decide (never mutated)


def Resume(outcome: tuple) -> tuple:
    return (RESUME, outcome)


def Wait() -> tuple:
    return WAIT_ACTION


def ArmTimer(deadline: float) -> tuple:
    return (ARM_TIMER, deadline)


def RunExternal() -> tuple:
    return RUN_EXTERNAL_ACTION


def Accept(frame: Frame) -> tuple:
    return (ACCEPT, frame)


def Consume(sid: str) -> tuple:
    return (CONSUME, sid)


def SendInfo(sid: str) -> tuple:
    return (SEND_INFO, sid)


def Ack(msg_id: tuple) -> tuple:
    return (ACK, msg_id)


def Drop(reason: str) -> tuple:
    return (DROP, reason)


def PeerEnded(sid: str) -> tuple:
    return (PEER_ENDED, sid)


def Cut(frame: Frame, peer_wide: bool = False) -> tuple:
    return (CUT, frame, peer_wide)


def describe(action: tuple) -> str:
    """``Resume(('ok',))``: an action as its constructor call, for logs and test output."""
    args: Any = ", ".join(repr(a) for a in action[1:])
    return f"{NAMES[action[0]]}({args})"
