"""Ping-pong: the smallest two-party flow (the example of docs/guide-flows.md).

`greenflow run sample.ping` starts nodes Alice and Bob on an in-process network. Alice
sends Bob n numbers, each comes back incremented, and the sum is printed (6 for n=3).
"""
from __future__ import annotations

import click

from greenflow import FlowLogic, FlowSession, Party, initiated_by, initiating_flow, startable


@initiating_flow
@startable
class Ping(FlowLogic):
    """Sends ``n`` numbers to ``peer``; each comes back incremented; returns the sum."""

    def __init__(self, peer: Party, n: int = 3):
        # Checked here, not only by the command line: a start over RPC with n=10**4000
        # ran a flow that never ended.
        if not (type(n) is int and 0 <= n <= MAX_N):
            shown = f"a number of {n.bit_length():,} bits" if type(n) is int and n > 0 \
                else repr(n)[:40]
            raise ValueError(f"n is a whole number from 0 to {MAX_N:,}, not {shown}")
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


MAX_N = 100_000

SAMPLE_OPTIONS = [
    # Bounded: one flow's journal holds every exchange until it ends (a demo of a billion
    # round trips would only fill memory).
    click.Option(["-n"], type=click.IntRange(min=0, max=MAX_N), default=3, show_default=True,
                 help=f"How many numbers Alice sends Bob (at most {MAX_N:,})."),
]


def run_sample(data_dir: str, n: int = 3) -> int:
    """Alice pings Bob on an in-process network under ``data_dir``; prints the sum."""
    from greenflow.testing import MockNetwork

    with MockNetwork(data_dir) as net:
        alice, bob = net.create_node("Alice"), net.create_node("Bob")
        left = alice.node.pending_flows_count + bob.node.pending_flows_count
        if left:   # an earlier run in this directory was interrupted: its flows go on first
            click.echo(f"resuming {left:,} unfinished flow(s) of an earlier run in {data_dir} "
                       "first", err=True)
        handle = alice.start_flow(Ping(bob.party, n))
        net.run_network()
        click.echo(handle.result())
    return 0
