"""Flows whose payloads hold strings in sets (for tests/test_python_semantics.py): a process's
hash seed decides the order in which such a set iterates."""
from __future__ import annotations

from greenflow import FlowLogic, FlowSession, Party, initiated_by, initiating_flow, startable

WORDS = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta"]


@initiating_flow
class SendSets(FlowLogic):
    """Sends a set of strings, a frozenset of tuples, and a dict built by iterating a set
    of strings (its keys come in the order the set iterates), then waits for the answer."""

    def __init__(self, peer: Party) -> None:
        self.peer = peer

    def call(self) -> int:
        s = self.initiate_flow(self.peer)
        s.send(set(WORDS))
        s.send(frozenset((w, len(w)) for w in WORDS))
        s.send({w: len(w) for w in set(WORDS)})
        return s.receive(int)


@initiated_by(SendSets)
class CountSets(FlowLogic):
    def __init__(self, session: FlowSession) -> None:
        self.session = session

    def call(self) -> None:
        words = self.session.receive(set)
        pairs = self.session.receive(frozenset)
        lengths = self.session.receive(dict)
        self.sleep(10)   # the initiator waits, checkpointed, across the power cut
        self.session.send(len(words) + len(pairs) + sum(lengths.values()))


@startable
@initiating_flow
class SendEach(FlowLogic):
    """Sends the words one by one in the order a set of them iterates (the process's
    hash seed decides it), then waits for the peer's count."""

    def __init__(self, peer: Party) -> None:
        self.peer = peer

    def call(self) -> int:
        s = self.initiate_flow(self.peer)
        for w in set(WORDS):
            s.send(w)
        return s.receive(int)


@initiated_by(SendEach)
class CountEach(FlowLogic):
    def __init__(self, session: FlowSession) -> None:
        self.session = session

    def call(self) -> None:
        got = [self.session.receive(str) for _ in WORDS]
        self.sleep(4)   # the initiator waits, checkpointed, while its node is killed
        self.session.send(len(set(got)))
