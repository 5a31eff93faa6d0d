"""Ping-pong: the smallest two-party flow (API.md section 1).

``greenflow run sample.ping`` starts two nodes on an in-process network and prints the
result.
"""
from __future__ import annotations

from greenflow import FlowLogic, FlowSession, Party, initiated_by, initiating_flow, startable


@initiating_flow
@startable
class Ping(FlowLogic):
    """Sends ``n`` numbers to ``peer``; each comes back incremented; returns the sum."""

    def __init__(self, peer: Party, n: int = 3):
        self.peer, self.n = peer, n

    def call(self) -> int:
        session = self.initiate_flow(self.peer)
        session.send(self.n)
        total = 0
        for i in range(self.n):
            total += session.send_and_receive(int, i)
        return total


@initiated_by(Ping)
class Pong(FlowLogic):
    def __init__(self, session: FlowSession):
        self.session = session

    def call(self) -> None:
        n = self.session.receive(int)
        for _ in range(n):
            self.session.send(self.session.receive(int) + 1)
