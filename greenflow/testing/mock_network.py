"""`MockNetwork`: real nodes (real LMDB stores, real scheduler) on an in-process,
single-threaded, deterministic network with a virtual clock.

Every frame is encoded exactly as the real transport carries it, so a payload that
could not cross the wire fails in tests too. ``run_network()`` returns only when every
node is quiescent and has committed, so ``restart_node`` always cuts power at a
committed point.
"""
from __future__ import annotations

import logging
import os
import re
from collections import deque
from typing import Any, Optional

from greenflow.runtime.clock import VirtualClock
from greenflow.errors import FlowError
from greenflow.statemachine.events import Acked, FrameArrived
from greenflow.flows.context import current_runtime_or_none
from greenflow.flows.flow_logic import FlowLogic
from greenflow.node.node import FlowHandle, Node
from greenflow.node.results import NotCheckpointed
from greenflow.party import Party

log = logging.getLogger("greenflow.testing")


class MockTransport:
    def __init__(self, net: "MockNetwork", name: str) -> None:
        self.net = net
        self.name = name
        self.node: Optional[Node] = None

    def send(self, peer: Party, data: bytes) -> None:
        self.net._in_flight.append((self.node.party, peer.name, data))  # type: ignore[union-attr]

    def ack(self, peer_name: str, msg_ids: tuple) -> None:
        target = self.net._nodes.get(peer_name)
        if target is not None and not target.node.closed:
            target.node.scheduler.post(Acked(self.name, msg_ids))

    def party(self, name: str) -> Optional[Party]:
        mn = self.net._nodes.get(name)
        return mn.party if mn is not None else None


class MockNode(NotCheckpointed):
    """A node on a `MockNetwork`: ``.party``, ``.node`` (the `Node`), ``.start_flow``."""

    def __init__(self, net: "MockNetwork", name: str, node: Node, options: dict) -> None:
        self.net = net
        self.name = name
        self.node = node
        self.options = options

    @property
    def party(self) -> Party:
        return self.node.party

    def start_flow(self, flow: FlowLogic, client_id: Optional[str] = None) -> FlowHandle:
        """Start ``flow`` here. It returns once the start is durable; the flow runs in the
        next `MockNetwork.run_network`, nothing runs before (so a test can act on a flow
        that was started and has not run yet)."""
        return self.node.start_flow(flow, client_id=client_id)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.node, name)

    def __repr__(self) -> str:
        return f"MockNode({self.name!r})"


class MockNetwork:
    """Real nodes in one process, run deterministically on a virtual clock (the rules are
    in docs/guide-testing.md). Node options given here apply to every node created."""

    def __init__(self, base_dir: Any, **default_options: Any) -> None:
        self.base_dir = str(base_dir)
        os.makedirs(self.base_dir, exist_ok=True)
        self.clock = VirtualClock()
        self.default_options = default_options
        self._nodes: dict[str, MockNode] = {}
        self._in_flight: deque[tuple[Party, str, bytes]] = deque()
        self._notary: Optional[MockNode] = None
        self.delivered = 0

    # ------------------------------------------------------------------ nodes
    def create_node(self, name: str, **node_options: Any) -> MockNode:
        if name in self._nodes:
            raise FlowError(f"MockNetwork already has a node named {name!r}")
        options = {**self.default_options, **node_options}
        mn = MockNode(self, name, self._open(name, options), options)
        self._nodes[name] = mn
        return mn

    def _open(self, name: str, options: dict) -> Node:
        safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", name)
        opts = dict(options)
        opts.setdefault("sync", False)
        return Node(os.path.join(self.base_dir, safe), name, transport=MockTransport(self, name),
                    clock=self.clock, threaded=False, **opts)

    def restart_node(self, mock_node: MockNode) -> MockNode:
        """Power cut: the node's in-memory state is dropped (no graceful shutdown) and it
        is reopened from its store. Frames in flight survive; the reopened node re-sends
        its unacknowledged outbox, and so do its peers for the frames they sent it (as
        after a TCP reconnect); receivers drop the duplicates."""
        name = mock_node.name
        current = self._nodes.get(name)
        if current is None or getattr(mock_node, "net", None) is not self:
            raise FlowError(f"restart_node({mock_node!r}): that node is not on this network")
        current.node.crash()
        mn = MockNode(self, name, self._open(name, current.options), current.options)
        self._nodes[name] = mn
        # Its peers see the connection come back and re-send what it never acknowledged
        # (frames it took in but lost in the power cut); it drops what it already has.
        for other in self._nodes.values():
            if other is not mn and not other.node.closed and not other.node.scheduler.dead:
                other.node.scheduler.resend_outbox(name)
        if self._notary is current:
            self._notary = mn
        return mn

    @property
    def nodes(self) -> list[MockNode]:
        return list(self._nodes.values())

    def node(self, name: str) -> MockNode:
        return self._nodes[name]

    def create_notary(self, name: str = "Notary", *, validating: bool = False,
                      **node_options: Any) -> MockNode:
        """A notary node (``validating``: one that resolves and verifies each transaction
        and its history before it signs). The first notary created is ``net.notary``."""
        mn = self.create_node(name, notary=True, validating_notary=validating, **node_options)
        if self._notary is None:
            self._notary = mn
        return mn

    @property
    def notary(self) -> MockNode:
        """A notary node, created on first use (non-validating; see `create_notary`)."""
        if self._notary is None:
            self._notary = self.create_node("Notary", notary=True) if _notary_supported() \
                else self.create_node("Notary")
        return self._notary

    # ------------------------------------------------------------------ running
    def run_network(self, max_messages: Optional[int] = None) -> int:
        """Deliver frames until nothing moves (or ``max_messages`` frames were delivered,
        then let every node settle and commit). Returns the frames delivered."""
        rt = current_runtime_or_none()
        if rt is not None:   # it would run a round inside the round running that flow
            raise FlowError(f"run_network was called inside flow {rt.flow_id} "
                            f"({rt.cp.flow_class}); call it from the test, outside flows")
        delivered = 0
        while True:
            progressed = False
            for mn in list(self._nodes.values()):
                if not mn.node.closed and mn.node.scheduler.pump():
                    progressed = True
            budget = None if max_messages is None else max_messages - delivered
            if self._in_flight and (budget is None or budget > 0):
                n = len(self._in_flight) if budget is None else min(budget, len(self._in_flight))
                for _ in range(n):
                    sender, to, data = self._in_flight.popleft()
                    target = self._nodes.get(to)
                    delivered += 1
                    if target is None:
                        log.warning("MockNetwork: dropped a frame from %s to unknown node %s",
                                    sender.name, to)
                        continue
                    target.node.scheduler.post(FrameArrived(sender, data))
                progressed = True
            if not progressed:
                break
        self.delivered += delivered
        for mn in self._nodes.values():
            err = mn.node.scheduler.commit_error
            if err is not None:
                raise err
        return delivered

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    def next_timer(self) -> Optional[float]:
        """Seconds of virtual time until the earliest pending timer (sleep, receive
        timeout, hospital retry) of any node, or None when there is none."""
        deadlines = [d for mn in self._nodes.values() if not mn.node.closed
                     for d in [mn.node.scheduler.next_deadline()] if d is not None]
        return max(0.0, min(deadlines) - self.clock.now()) if deadlines else None

    def advance_clock(self, seconds: float) -> None:
        """Move virtual time; timers that fell due fire in the next ``run_network()``."""
        self.clock.advance(seconds)

    def close(self) -> None:
        for mn in self._nodes.values():
            mn.node.close()

    def __enter__(self) -> "MockNetwork":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _notary_supported() -> bool:
    import inspect
    return "notary" in inspect.signature(Node.__init__).parameters
