"""Events: what happened, handed to a node's scheduler through its one queue.

Other threads (transport, RPC, external workers, the user's thread) never touch flows:
they enqueue one of these and the scheduler thread applies it. Treated as immutable;
slotted rather than frozen (see `greenflow.statemachine.actions` for why).

The two a message brings (`FrameArrived`, `Acked`) are structs the cyclic garbage
collector never tracks: they hold a party or a name, bytes and ids, so no reference
cycle can pass through them, and the thousands of them a busy round queues are not
walked by every collection.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import msgspec

from greenflow.party import Party


@dataclass(slots=True)
class StartFlows:
    """New flows to record durably and run: ``(checkpoint, logic blob, logic)`` each."""
    items: tuple
    done: Optional[Callable[[], None]] = None


class FrameArrived(msgspec.Struct, gc=False):
    sender: Party
    data: bytes


class Acked(msgspec.Struct, gc=False):
    """The peer committed these frames of ours: drop them from the outbox."""
    peer: str
    msg_ids: tuple


@dataclass(slots=True)
class ExternalDone:
    flow_id: str
    outcome: tuple


@dataclass(slots=True)
class KillFlow:
    flow_id: str
    done: Optional[Callable[[bool], None]] = None


@dataclass(slots=True)
class Call:
    """Run ``fn`` on the scheduler thread (queries that must see a consistent state)."""
    fn: Callable[[], Any]
    done: Callable[[Any, Optional[BaseException]], None] = field(default=lambda r, e: None)
