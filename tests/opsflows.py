"""Flows for the operations tests (hospital, upgrades, draining, hibernation).

Module level, so checkpoints can name them; `KNOBS` lets a test change behaviour
between a run and a restart, the way a deployment changes code under running flows.
"""
from __future__ import annotations

from typing import Any

from greenflow import FlowLogic, FlowSession, Party, initiated_by, initiating_flow
from greenflow.errors import TransientError

KNOBS: dict[str, Any] = {}


def reset() -> None:
    KNOBS.clear()
    KNOBS.update(transient_failures=0, new_code=False, fee=0, diverge=False, retired=False)


reset()


@initiating_flow
class Exchange(FlowLogic):
    """Three rounds with one peer; knobs inject failures and code changes."""

    def __init__(self, peer: Party) -> None:
        self.peer = peer

    def call(self) -> int:
        s = self.initiate_flow(self.peer)
        total = s.send_and_receive(int, 1)
        if KNOBS["transient_failures"] > 0:
            KNOBS["transient_failures"] -= 1
            raise TransientError("store briefly unavailable")
        # "retired": the change made for good, its `versioned` call removed with the old branch
        if KNOBS["retired"] or KNOBS["new_code"] and self.versioned("fee-v2"):
            total += s.send_and_receive(int, 100)
        if KNOBS["diverge"]:
            self.sleep(1)          # the old code never slept here
        total += s.send_and_receive(int, 2)
        return total + s.send_and_receive(int, 3)


@initiated_by(Exchange)
class ExchangeResponder(FlowLogic):
    def __init__(self, session: FlowSession) -> None:
        self.session = session

    def call(self) -> None:
        from greenflow import UnexpectedFlowEnd
        while True:
            try:
                n = self.session.receive(int)
            except UnexpectedFlowEnd:
                return
            self.session.send(n * 10)


@initiating_flow
class Chatter(FlowLogic):
    """Sends twice before listening: both frames leave in one commit."""

    def __init__(self, peer: Party) -> None:
        self.peer = peer

    def call(self) -> int:
        s = self.initiate_flow(self.peer)
        s.send(1)
        s.send(2)
        return s.receive(int)


@initiating_flow
class Tagged(FlowLogic):
    """A field added to `__init__` by an upgrade: started with ``KNOBS["old_init"]`` the
    object is made as the old code made it, without the field."""

    def __init__(self, peer: Party, tag: str = "t") -> None:
        self.peer = peer
        if not KNOBS.get("old_init"):
            self.tag = tag

    def call(self) -> str:
        total = self.initiate_flow(self.peer).send_and_receive(int, 1)
        return f"{total}/{self.tag}"


@initiated_by(Tagged)
class TaggedResponder(ExchangeResponder):
    pass


class Money:
    """A plain object a flow holds in a field; an upgrade adds ``currency``."""

    def __init__(self, amount: int) -> None:
        self.amount = amount
        if not KNOBS.get("old_init"):
            self.currency = "EUR"

    def show(self) -> str:
        return f"{self.amount} {self.currency}"


@initiating_flow
class Counted(FlowLogic):
    """Fields an upgrade adds that are no parameter: ``attempts`` on the flow object,
    ``currency`` on the `Money` it holds (which of them is read: ``KNOBS["read"]``)."""

    def __init__(self, peer: Party) -> None:
        self.peer = peer
        self.price = Money(7)
        if not KNOBS.get("old_init"):
            self.attempts = 0

    def call(self) -> str:
        total = self.initiate_flow(self.peer).send_and_receive(int, 1)
        if KNOBS.get("read") == "money":
            return f"{total}/{self.price.show()}"
        self.attempts += 1
        return f"{total}/{self.attempts}"


@initiated_by(Counted)
class CountedResponder(ExchangeResponder):
    pass


class Fee(FlowLogic):
    """Asks `versioned` for one change twice, before and after a sleep."""

    def __init__(self, n: int) -> None:
        self.n = n

    def call(self) -> int:
        new = KNOBS.get("new_code")
        fee = self.n * 2 if new and self.versioned("fee-v3") else self.n
        self.sleep(25)
        return fee * 100 if new and self.versioned("fee-v3") else fee * 10
