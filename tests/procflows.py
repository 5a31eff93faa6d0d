"""Flows for the node-process tests (tests/test_processes.py). The node processes import
this module as an app (the tests put tests/ on their PYTHONPATH)."""
from __future__ import annotations

from greenflow import (FlowException, FlowLogic, FlowSession, Party, ProgressTracker, Step,
                       initiated_by, initiating_flow, startable)

SENDING = Step("Sending")
WAITING = Step("Waiting for the answer")
ADDING = Step("Adding up")


@initiating_flow
@startable
class Relay(FlowLogic):
    """Sends ``rounds`` numbers to ``peer``, which answers each one plus one after a
    durable ``sleep(delay)``; returns the sum of the answers."""

    progress_tracker = ProgressTracker(SENDING, WAITING, ADDING)

    def __init__(self, peer: Party, rounds: int = 3, delay: float = 0.0) -> None:
        self.peer, self.rounds, self.delay = peer, rounds, delay

    def call(self) -> int:
        session = self.initiate_flow(self.peer)
        self.progress_tracker.current_step = SENDING
        session.send([self.rounds, self.delay])
        total = 0
        for i in range(self.rounds):
            self.progress_tracker.current_step = WAITING
            total += session.send_and_receive(int, i)
            self.progress_tracker.current_step = ADDING
        return total


@initiated_by(Relay)
class RelayResponder(FlowLogic):
    def __init__(self, session: FlowSession) -> None:
        self.session = session

    def call(self) -> int:
        rounds, delay = self.session.receive(list)
        for _ in range(rounds):
            x = self.session.receive(int)
            if delay:
                self.sleep(delay)
            self.session.send(x + 1)
        return rounds


MARKUP = '<script>alert(1)</script><img src=x onerror=alert(2)>"\'&'
MARKUP_STEP = Step(MARKUP)


@startable
class Markup(FlowLogic):
    """Markup wherever a flow's words reach the console: its step, a local, its error (a
    peer's FlowException carries text the operator's browser must never run)."""

    progress_tracker = ProgressTracker(MARKUP_STEP)

    def __init__(self, fail: bool = True) -> None:
        self.fail = fail

    def call(self) -> str:
        self.progress_tracker.current_step = MARKUP_STEP
        text = MARKUP
        if self.fail:
            raise FlowException(text)
        self.sleep(3600)
        return text


@startable
class BigNumber(FlowLogic):
    def call(self) -> int:
        return 10 ** 5000


class Unprintable(ValueError):
    def __str__(self) -> str:
        raise ValueError("no text for you")


@startable
class RaisesOddly(FlowLogic):
    """Raises SystemExit, or an exception whose ``__str__`` raises."""

    def __init__(self, what: str = "exit") -> None:
        self.what = what

    def call(self) -> None:
        raise SystemExit(3) if self.what == "exit" else Unprintable()


@startable
class Fails(FlowLogic):
    """Fails at once, with a message."""

    def __init__(self, why: str = "on purpose") -> None:
        self.why = why

    def call(self) -> None:
        raise ValueError(self.why)


@startable
class Sleeper(FlowLogic):
    def __init__(self, seconds: float = 60.0) -> None:
        self.seconds = seconds

    def call(self) -> str:
        self.sleep(self.seconds)
        return "woke"


class NotForRpc(FlowLogic):
    """Not @startable: RPC must refuse it."""

    def call(self) -> None:
        return None


#: While True, `ServiceDown` finds its service down (the tests run node processes in
#: their own process, so they can bring it back).
SERVICE_DOWN = True


@startable
class ServiceDown(FlowLogic):
    """Parked in the hospital while its service is down (a transient failure); runs to
    its end once it is back and the flow is retried."""

    def call(self) -> str:
        from greenflow.errors import TransientError
        if self.side_effect(lambda: SERVICE_DOWN):
            raise TransientError("the service is down")
        return "served"


LONG_A, LONG_B = Step("a" * 1000), Step("b" * 1000)   # 1 KB per event: buffers fill soon


class Stepper(FlowLogic):
    """Takes ``n`` steps, each with a durable 1 ms sleep after it (a progress event each)."""

    progress_tracker = ProgressTracker(LONG_A, LONG_B)

    def __init__(self, n: int) -> None:
        self.n = n

    def call(self) -> int:
        for i in range(self.n):
            self.progress_tracker.current_step = LONG_A if i % 2 else LONG_B
            self.sleep(0.001)
        return self.n
