"""Flows and transports the suites run on.

The ping-pong flows are the sample's own (`greenflow.samples.ping`), so the benchmark
measures what users write. The other flows here exist to leave flows *waiting*:

- `Hold` opens a session and waits in ``receive``; on a node whose transport drops
  everything (`NullTransport`) it waits for ever: the `held` suite's flow.
- `Stepper` plays one ping-pong round with `StepperPong` and then either waits in
  ``receive`` for ever (the peer never speaks first), or, as the trigger, sleeps and
  plays a second round: the `restart` suite wakes exactly one flow pair this way.

`LinkedTransport` connects real threaded `Node` instances in one process, as a network
transport would: frames and acks become events on the receiving node's scheduler queue.
"""
from __future__ import annotations

from typing import Any, Optional

from greenflow import FlowLogic, FlowSession, Node, Party, initiated_by, initiating_flow
from greenflow.statemachine.events import Acked, FrameArrived
from greenflow.samples.ping import Ping, Pong

__all__ = ["Ping", "Pong", "Hold", "HoldResponder", "Stepper", "StepperPong",
           "NullTransport", "LinkedTransport", "linked_pair"]


@initiating_flow
class Hold(FlowLogic):
    """Opens a session to ``peer`` and waits for one int."""

    def __init__(self, peer: Party):
        self.peer = peer

    def call(self) -> int:
        session = self.initiate_flow(self.peer)
        return session.receive(int)


@initiated_by(Hold)
class HoldResponder(FlowLogic):
    def __init__(self, session: FlowSession):
        self.session = session

    def call(self) -> None:
        self.session.send(1)


@initiating_flow
class Stepper(FlowLogic):
    """One round of ping-pong, then wait: for ever (``trigger_after`` None: the peer
    never sends unprompted) or ``trigger_after`` seconds, then a second round."""

    def __init__(self, peer: Party, trigger_after: Optional[float] = None):
        self.peer, self.trigger_after = peer, trigger_after

    def call(self) -> int:
        session = self.initiate_flow(self.peer)
        session.send(2)
        first = session.send_and_receive(int, 0)
        if self.trigger_after is None:
            return first + session.receive(int)
        self.sleep(self.trigger_after)
        return first + session.send_and_receive(int, 1)


@initiated_by(Stepper)
class StepperPong(Pong):
    """`Pong`'s body (answers ``n`` pings, waiting in ``receive`` between them),
    registered to answer `Stepper`."""


def all_waiting(node: Node, expected: int, sample: Any) -> int:
    """The node's unfinished flows, checked to be all ``expected`` of them: flows that
    failed at once (and free their memory) would make a table of held flows a lie.
    Raises with the error of ``sample`` (one of the handles) when some are missing."""
    waiting = node.pending_flows_count
    if waiting < expected:
        why = f"status {sample.status}"
        if sample.status.finished:
            try:
                sample.result()
                why = "it completed"
            except Exception as exc:  # noqa: BLE001 - the flow's own error, reported
                why = f"{type(exc).__name__}: {exc}"
        raise RuntimeError(f"only {waiting:,} of the {expected:,} flows started are waiting; "
                           f"flow {sample.id}: {why}")
    return waiting


class NullTransport:
    """A transport that delivers nothing: flows that send wait for ever."""

    def __init__(self) -> None:
        self.node: Optional[Node] = None
        self.sent = 0

    def send(self, peer: Party, data: bytes) -> None:
        self.sent += 1

    def ack(self, peer_name: str, msg_ids: tuple) -> None:
        pass

    def party(self, name: str) -> Optional[Party]:
        return Party(name)   # every party is "known": its frames are dropped here


class LinkedTransport:
    """In-process transport between threaded nodes: a send or an ack becomes an event
    on the peer's scheduler queue (what a socket reader thread would do)."""

    def __init__(self) -> None:
        self.node: Optional[Node] = None
        self.peers: dict[str, Node] = {}

    def send(self, peer: Party, data: bytes) -> None:
        target = self.peers.get(peer.name)
        if target is not None and not target._closed:
            target.scheduler.post(FrameArrived(self.node.party, data))  # type: ignore[union-attr]

    def ack(self, peer_name: str, msg_ids: tuple) -> None:
        target = self.peers.get(peer_name)
        if target is not None and not target._closed:
            target.scheduler.post(Acked(self.node.party.name, msg_ids))  # type: ignore[union-attr]

    def party(self, name: str) -> Optional[Party]:
        target = self.peers.get(name)
        return target.party if target is not None else None


def linked_pair(base_dir: str, **options: Any) -> tuple[Node, Node]:
    """Two threaded nodes, Alice and Bob, each with its own store under ``base_dir``."""
    import os
    ta, tb = LinkedTransport(), LinkedTransport()
    alice = Node.open(os.path.join(base_dir, "alice"), "Alice", transport=ta, **options)
    bob = Node.open(os.path.join(base_dir, "bob"), "Bob", transport=tb, **options)
    ta.peers[bob.party.name] = bob
    tb.peers[alice.party.name] = alice
    return alice, bob
