"""Flows for the clustered-node tests (importable by worker processes)."""
from __future__ import annotations

from greenflow import FlowLogic, FlowSession, Party, initiated_by, initiating_flow, startable


@initiating_flow
@startable
class SlowPing(FlowLogic):
    """Waits ``pause`` seconds (a durable timer), then pings ``peer`` ``n`` times."""

    def __init__(self, peer: Party, n: int = 2, pause: float = 0.5):
        self.peer, self.n, self.pause = peer, n, pause

    def call(self) -> int:
        self.sleep(self.pause)
        session = self.initiate_flow(self.peer)
        session.send(self.n)
        total = 0
        for i in range(self.n):
            total += session.send_and_receive(int, i)
            self.sleep(self.pause / 4)
        return total


@initiated_by(SlowPing)
class SlowPong(FlowLogic):
    def __init__(self, session: FlowSession):
        self.session = session

    def call(self) -> None:
        n = self.session.receive(int)
        for _ in range(n):
            self.session.send(self.session.receive(int) + 1)
