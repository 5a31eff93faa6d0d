"""Flows whose payloads hold strings in sets (for tests/test_hash_seed.py): a process's
hash seed decides the order in which such a set iterates."""
from __future__ import annotations

from greenflow import FlowLogic, FlowSession, Party, initiated_by, initiating_flow

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
