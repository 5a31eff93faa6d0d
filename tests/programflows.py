"""Random flow programs for the property tests: one initiator, several responders.

A program is a list of steps ``(op, peer, value)`` the initiator runs in order:
``ask`` (send, wait for value + 1), ``tell`` (send, no answer), ``sleep`` (durable timer)
and ``side`` (a side effect that appends a line to a log file). At the end every
responder reports the sum of what it was told. Module level, so checkpoints can name
the classes after a restart.
"""
from __future__ import annotations

from greenflow import FlowLogic, FlowSession, Party, initiated_by, initiating_flow


def record(path: str, tag: str) -> str:
    with open(path, "a") as fh:
        fh.write(tag + "\n")
    return tag


def expected_result(steps: list, n_peers: int) -> list:
    out: list = []
    told = [0] * n_peers
    for i, (op, peer, value) in enumerate(steps):
        if op == "ask":
            out.append(value + 1)
        elif op == "tell":
            told[peer] += value
        elif op == "side":
            out.append(f"side-{i}")
    return out + told


@initiating_flow
class Program(FlowLogic):
    def __init__(self, peers: list[Party], steps: list, log_path: str) -> None:
        self.peers, self.steps, self.log_path = peers, steps, log_path

    def call(self) -> list:
        sessions = [self.initiate_flow(p) for p in self.peers]
        out: list = []
        for i, (op, peer, value) in enumerate(self.steps):
            if op == "ask":
                out.append(sessions[peer].send_and_receive(int, ("ask", value)))
            elif op == "tell":
                sessions[peer].send(("tell", value))
            elif op == "sleep":
                self.sleep(value)
            elif op == "side":
                out.append(self.side_effect(record, self.log_path, f"side-{i}"))
        for s in sessions:
            out.append(s.send_and_receive(int, ("end", 0)))
        return out


@initiated_by(Program)
class Echo(FlowLogic):
    def __init__(self, session: FlowSession) -> None:
        self.session = session

    def call(self) -> None:
        told = 0
        while True:
            op, value = self.session.receive(tuple)
            if op == "ask":
                self.session.send(value + 1)
            elif op == "tell":
                told += value
            else:
                self.session.send(told)
                return
