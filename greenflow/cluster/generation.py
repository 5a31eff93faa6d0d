"""A worker's generation: the partitions, with their lease epochs, that one `Node` object
acts for (see `greenflow.cluster.worker`). Pinned at the generation's start, so a
partition whose lease moved since reads as not owned and its commits are refused."""
from __future__ import annotations

import random
from typing import Optional

from greenflow.cluster.leases import LeaseManager, Owned
from greenflow.errors import FlowError
from greenflow.node.node import Node
from greenflow.statemachine.ids import flow_id_in


class Generation:
    """The partitions (and epochs) one `Node` object acts for."""

    def __init__(self, number: int, parts: Owned, lease: LeaseManager) -> None:
        self.number = number
        self.parts = dict(parts)
        self.lease = lease
        self.node: Optional[Node] = None
        self._order = sorted(self.parts)
        self._next = random.randrange(len(self._order)) if self._order else 0

    def owned(self) -> Owned:
        """What the store may commit for: this generation's partitions whose lease this
        worker still holds at the same epoch (a partition lost and taken back in between
        is not: the flows in memory may be stale)."""
        live = self.lease.owned()
        return {p: e for p, e in self.parts.items() if live.get(p) == e}

    def holds(self, part: int) -> bool:
        epoch = self.parts.get(part)
        return epoch is not None and self.lease.epoch_of(part) == epoch

    def new_flow_id(self) -> str:
        if not self._order:   # `FiledStarts.forward` files such starts for the owners
            raise FlowError("this worker owns no partition yet: start the flow through "
                            "another worker, or again in a moment")
        self._next = (self._next + 1) % len(self._order)
        return flow_id_in(self._order[self._next])
