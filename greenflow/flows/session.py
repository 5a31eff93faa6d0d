"""`FlowSession`: one flow's end of a conversation with a flow on another node.

A session object holds only its id and the counterparty, so it pickles with the flow
and never drags the node along; every operation reaches the node through the current
flow's runtime. Sessions are lazy, as in Corda: nothing is sent until the first
``send`` or ``receive``.
"""
from __future__ import annotations

from typing import Any, NamedTuple, Optional, Type, TypeVar, Union

from greenflow.party import Party
from greenflow.flows.context import current_runtime

T = TypeVar("T")


class PeerFlowInfo(NamedTuple):
    """What the peer runs: its flow version and app name."""

    flow_version: int
    app_name: str


class FlowSession:
    """A session to ``counterparty``, created by `FlowLogic.initiate_flow` or handed to
    a responder's ``__init__``."""

    __slots__ = ("sid", "counterparty")

    def __init__(self, sid: str, counterparty: Party) -> None:
        self.sid = sid
        self.counterparty = counterparty

    def __getstate__(self) -> tuple:
        return (self.sid, self.counterparty)

    def __setstate__(self, state: tuple) -> None:
        self.sid, self.counterparty = state

    def __repr__(self) -> str:
        return f"FlowSession(to={self.counterparty.name!r}, id={self.sid!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, FlowSession) and other.sid == self.sid

    def __hash__(self) -> int:
        return hash(self.sid)

    def send(self, payload: Any) -> None:
        """Queue ``payload`` for the peer. It leaves the node only after this flow's next
        checkpoint commits; a payload that cannot cross the wire raises `NotSerializable`
        here."""
        current_runtime("FlowSession.send").send(self, payload)

    def receive(self, expected_type: Union[Type[T], tuple], *, timeout: Optional[float] = None) -> T:
        """Suspend until the peer's next message and return its payload, checked against
        ``expected_type`` (a type or tuple of types; ``object`` accepts anything).
        Raises `FlowTimeout` after ``timeout`` seconds; the session stays usable."""
        return current_runtime("FlowSession.receive").receive(self, expected_type, timeout)

    def send_and_receive(self, expected_type: Union[Type[T], tuple], payload: Any, *,
                         timeout: Optional[float] = None) -> T:
        """`send` then `receive`, with one suspension."""
        rt = current_runtime("FlowSession.send_and_receive")
        rt.send(self, payload)
        return rt.receive(self, expected_type, timeout)

    def close(self) -> None:
        """End the session; a peer waiting on it gets `UnexpectedFlowEnd`."""
        current_runtime("FlowSession.close").close(self)

    def counterparty_flow_info(self) -> PeerFlowInfo:
        """The peer's flow version and app (for a responder: the initiator's)."""
        return current_runtime("FlowSession.counterparty_flow_info").flow_info(self)
