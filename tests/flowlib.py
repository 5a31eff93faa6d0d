"""Flows the test modules share.

Checkpoints pickle a flow by its class's qualified name, so every flow lives here at
module level (not inside a test function) and is importable after a node restart.
Tests steer and observe flows through `STATE` (reset before each test by the ``net``
fixture) and through files under the test's ``tmp_path``, which survive restarts.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any, Optional

from greenflow import (FlowError, FlowException, FlowLogic, FlowSession, FlowTimeout, Party,
                       ProgressTracker, Step, UnexpectedFlowEnd, initiated_by, initiating_flow,
                       serializable)
from greenflow.samples.ping import Ping

STATE: dict[str, Any] = {}
GATE = threading.Event()     # opened by tests to let gated external work finish


def reset() -> None:
    STATE.clear()
    STATE.update(mode="a", refusal_inits=0, unwinding=[], external_calls=[])
    GATE.clear()


reset()


def append_line(path: str, text: str) -> str:
    """A side effect the tests can count: one line per run."""
    with open(path, "a") as f:
        f.write(text + "\n")
    return text


def lines(path: Any) -> list[str]:
    try:
        with open(path) as f:
            return f.read().splitlines()
    except FileNotFoundError:
        return []


# ====================================================================== ping-pong
# Ping and Pong are the sample's (greenflow.samples.ping).
class CustomPing(Ping):
    """Not decorated: initiates as `Ping`, so `Pong` answers it."""

    def call(self) -> int:
        return 1000 + super().call()


@initiating_flow
class Fanout(FlowLogic):
    """Ping-pong with several parties at once, through send_all / receive_all."""

    def __init__(self, peers: list[Party], rounds: int):
        self.peers, self.rounds = peers, rounds

    def call(self) -> list:
        sessions = [self.initiate_flow(p) for p in self.peers]
        self.send_all(self.rounds, sessions)
        replies = []
        for i in range(self.rounds):
            self.send_all(i, sessions)
            replies.append(self.receive_all(tuple, sessions))
        return replies


@initiated_by(Fanout)
class FanoutResponder(FlowLogic):
    def __init__(self, session: FlowSession):
        self.session = session

    def call(self) -> None:
        for _ in range(self.session.receive(int)):
            i = self.session.receive(int)
            self.session.send((self.our_identity.name, i + 1))


# ====================================================================== initiation styles
@initiating_flow
class ReceiveFirst(FlowLogic):
    """Opens the session with a receive: the peer starts on a bare initiation."""

    def __init__(self, peer: Party):
        self.peer = peer

    def call(self) -> str:
        session = self.initiate_flow(self.peer)
        greeting = session.receive(str)
        session.send(len(greeting))
        return greeting


@initiated_by(ReceiveFirst)
class Greeter(FlowLogic):
    def __init__(self, session: FlowSession):
        self.session = session

    def call(self) -> int:
        self.session.send(f"hello from {self.our_identity.name}")
        # The bare initiation is not a message: the first thing received is the int.
        return self.session.receive(int)


@initiating_flow
class Unused(FlowLogic):
    """Opens a session and never uses it: the peer must never hear of it."""

    def __init__(self, peer: Party):
        self.peer = peer

    def call(self) -> str:
        self.initiate_flow(self.peer)
        self.sleep(1)
        return "unused"


@initiated_by(Unused)
class UnusedResponder(FlowLogic):
    def __init__(self, session: FlowSession):
        self.session = session

    def call(self) -> None:
        self.session.receive(object)


@initiating_flow
class SendNone(FlowLogic):
    def __init__(self, peer: Party):
        self.peer = peer

    def call(self) -> str:
        session = self.initiate_flow(self.peer)
        session.send(None)
        return session.receive(str)


@initiated_by(SendNone)
class DescribeWhatCame(FlowLogic):
    def __init__(self, session: FlowSession):
        self.session = session

    def call(self) -> None:
        self.session.send(repr(self.session.receive(object)))


@initiating_flow
class CloseEarly(FlowLogic):
    """Closes its session after one message; with ``then_receive``, receives on it after
    its peer (`ReadPastClose`) has ended."""

    def __init__(self, peer: Party, then_receive: bool = False):
        self.peer, self.then_receive = peer, then_receive

    def call(self) -> str:
        session = self.initiate_flow(self.peer)
        session.send(1)
        session.close()
        self.sleep(5)        # still running: the peer's end comes from close(), not our end
        if self.then_receive:
            try:
                return repr(session.receive(int))
            except UnexpectedFlowEnd as e:
                return str(e)
        return "closed"


@initiated_by(CloseEarly)
class ReadPastClose(FlowLogic):
    def __init__(self, session: FlowSession):
        self.session = session

    def call(self) -> str:
        first = self.session.receive(int)
        try:
            self.session.receive(int)
        except UnexpectedFlowEnd as e:
            return f"{first}; {e}"
        return "no end seen"


# ====================================================================== versions
@initiating_flow(version=2)
class VersionedAsk(FlowLogic):
    def __init__(self, peer: Party, ask_first: bool = False):
        self.peer, self.ask_first = peer, ask_first

    def call(self) -> tuple:
        session = self.initiate_flow(self.peer)
        if self.ask_first:
            info = session.counterparty_flow_info()
            session.send("hi")
        else:
            session.send("hi")
            info = session.counterparty_flow_info()
        told = session.receive(tuple)
        return (tuple(info), told)


@initiated_by(VersionedAsk)
class VersionedAnswer(FlowLogic):
    def __init__(self, session: FlowSession):
        self.session = session

    def call(self) -> tuple:
        info = self.session.counterparty_flow_info()
        self.session.receive(str)
        self.session.send(tuple(info))
        return tuple(info)


# ====================================================================== sub-flows
@initiating_flow
class Outer(FlowLogic):
    def __init__(self, peer: Party):
        self.peer = peer

    def call(self) -> tuple:
        session = self.initiate_flow(self.peer)
        mine = session.send_and_receive(str, "outer")
        inner = self.sub_flow(Inner(self.peer))
        plain = self.sub_flow(PlainHelper(self.peer))
        return (mine, inner, plain)


@initiated_by(Outer)
class OuterResponder(FlowLogic):
    def __init__(self, session: FlowSession):
        self.session = session

    def call(self) -> None:
        self.session.receive(str)
        self.session.send("answered by OuterResponder")


@initiating_flow
class Inner(FlowLogic):
    def __init__(self, peer: Party):
        self.peer = peer

    def call(self) -> str:
        return self.initiate_flow(self.peer).send_and_receive(str, "inner")


@initiated_by(Inner)
class InnerResponder(FlowLogic):
    def __init__(self, session: FlowSession):
        self.session = session

    def call(self) -> None:
        self.session.receive(str)
        self.session.send("answered by InnerResponder")


class PlainHelper(FlowLogic):
    """Not initiating: its sessions open under the enclosing `Outer`."""

    def __init__(self, peer: Party):
        self.peer = peer

    def call(self) -> str:
        return self.initiate_flow(self.peer).send_and_receive(str, "plain")


# ====================================================================== progress
ASKING = Step("Asking")
DELEGATING = Step("Delegating")
CHILD_WAITING = Step("Child waiting")


@initiating_flow
class Tracked(FlowLogic):
    """Asks the peer to wait ``delay`` seconds, then does the same through a sub-flow."""

    progress_tracker = ProgressTracker(ASKING, DELEGATING)

    def __init__(self, peer: Party, delay: float):
        self.peer, self.delay = peer, delay

    def call(self) -> str:
        self.progress_tracker.current_step = ASKING
        self.initiate_flow(self.peer).send_and_receive(int, self.delay)
        self.progress_tracker.current_step = DELEGATING
        self.sub_flow(TrackedChild(self.peer, self.delay))
        return self.progress_tracker.current_step.label


@initiating_flow
class TrackedChild(FlowLogic):
    progress_tracker = ProgressTracker(CHILD_WAITING)

    def __init__(self, peer: Party, delay: float):
        self.peer, self.delay = peer, delay

    def call(self) -> None:
        self.progress_tracker.current_step = CHILD_WAITING
        self.initiate_flow(self.peer).send_and_receive(int, self.delay)


class ShoutingTracker(ProgressTracker):
    """Words its own labels: the runtime must ask it for them, not read its fields."""

    @property
    def label(self) -> Optional[str]:
        base = super().label
        return None if base is None else base.upper()


class Shouting(FlowLogic):
    progress_tracker = ShoutingTracker(ASKING)

    def call(self) -> str:
        self.progress_tracker.current_step = ASKING
        self.sleep(10)
        return "done"


class DelayedEcho(FlowLogic):
    def __init__(self, session: FlowSession):
        self.session = session

    def call(self) -> None:
        delay = self.session.receive((int, float))
        self.sleep(delay)
        self.session.send(1)


@initiated_by(Tracked)
class TrackedResponder(DelayedEcho):
    pass


@initiating_flow
class UntrackedParent(FlowLogic):
    """No tracker of its own: its step clears when its tracked sub-flow ends, and it
    then waits again before it ends."""

    def __init__(self, peer: Party, delay: float):
        self.peer, self.delay = peer, delay

    def call(self) -> int:
        self.sub_flow(TrackedChild(self.peer, self.delay))
        return self.initiate_flow(self.peer).send_and_receive(int, self.delay)


@initiated_by(UntrackedParent)
class UntrackedParentResponder(DelayedEcho):
    pass


@initiated_by(TrackedChild)
class TrackedChildResponder(DelayedEcho):
    pass


# ====================================================================== errors
class RefusalGroup(FlowException, ExceptionGroup):
    """A flow's decision that is also a group of errors (its __new__ needs arguments)."""


class Refusal(FlowException):
    """A business refusal whose constructor the receiving side could not call."""

    def __init__(self, what: str, times: int):
        STATE["refusal_inits"] += 1
        super().__init__(f"refused {what} {times} times")


class ShortOfFunds(FlowException):
    """A decision that carries data of its own for the caller."""

    def __init__(self, shortfall: int) -> None:
        super().__init__(f"short by {shortfall}")
        self.shortfall = shortfall


class FailsWith(FlowLogic):
    """Fails with a message a client gave it: a FlowException, a plain error, or a
    TransientError (the hospital)."""

    def __init__(self, kind: str, text: str) -> None:
        self.kind, self.text = kind, text

    def call(self) -> None:
        from greenflow.errors import TransientError
        raise {"decision": FlowException, "bug": ValueError,
               "transient": TransientError}[self.kind](self.text)


class Pays(FlowLogic):
    def call(self) -> None:
        raise ShortOfFunds(42)


class Unprintable(FlowException):
    """A refusal whose ``__str__`` raises (user code may be that wrong)."""

    def __str__(self) -> str:
        raise ValueError("no text for you")


class Raises(FlowLogic):
    """Raises what ``what`` names: exceptions a flow's result must never pass on as they are."""

    def __init__(self, what: str) -> None:
        self.what = what

    def call(self) -> None:
        if self.what == "unprintable":
            raise Unprintable("m")
        if self.what == "huge":
            raise ValueError("x" * 3_000_000)
        raise {"exit": SystemExit(3), "interrupt": KeyboardInterrupt(),
               "generator-exit": GeneratorExit()}[self.what]


def raise_named(what: str) -> None:
    raise {"exit": SystemExit(4), "interrupt": KeyboardInterrupt()}[what]


class ExternalRaises(FlowLogic):
    """``run_external`` of a function that raises SystemExit or KeyboardInterrupt."""

    def __init__(self, what: str) -> None:
        self.what = what

    def call(self) -> None:
        self.run_external(raise_named, self.what)


def make_local_refusal() -> FlowException:
    class LocalRefusal(FlowException):  # not importable by name: arrives as FlowException
        pass
    return LocalRefusal("refused by a class nobody can import")


class NotWireSafe:
    """A plain class: not @serializable, so it cannot cross the wire."""


@initiating_flow
class Ask(FlowLogic):
    """Sends a command to `AskResponder` and returns what comes back."""

    def __init__(self, peer: Party, command: Any, expect: Any = object):
        self.peer, self.command, self.expect = peer, command, expect

    def call(self) -> Any:
        return self.open().receive(self.expect)

    def open(self) -> FlowSession:
        """The session to the peer, with the command sent."""
        session = self.initiate_flow(self.peer)
        session.send(self.command)
        return session


@initiated_by(Ask)
class AskResponder(FlowLogic):
    def __init__(self, session: FlowSession):
        self.session = session

    def call(self) -> Any:
        s = self.session
        command = s.receive(str)
        if command == "echo":
            s.send(42)
        elif command == "refuse":
            raise Refusal("the offer", 3)
        elif command == "refuse-unimportable":
            raise make_local_refusal()
        elif command == "refuse-unprintable":
            raise Unprintable("m")
        elif command == "refuse-as-group":
            raise RefusalGroup("refused, with reasons", [ValueError("no stock")])
        elif command == "refuse-huge":   # more than any frame carries
            raise Refusal("z" * 20_000_000, 1)
        elif command == "crash":
            raise ValueError("internal detail: the ledger password is wrong")
        elif command == "end":
            return "ended without answering"
        elif command == "close":
            s.close()
            self.sleep(5)
            return "closed"
        elif command == "wrong-type":
            s.send("a string")
            return expect_end(s)
        elif command == "slow":
            self.sleep(30)
            s.send(1)
        elif command.startswith("hold"):
            return expect_end(s)
        return None


def expect_end(s: FlowSession) -> str:
    """Wait on ``s`` and say how it ended."""
    try:
        got = s.receive(object)
    except UnexpectedFlowEnd as e:
        return f"UnexpectedFlowEnd: {e}"
    except FlowException as e:
        return f"{type(e).__name__}: {e}"
    return f"received {got!r}"


class Patient(Ask):
    """Receives with a timeout, then waits for the same message without one."""

    def __init__(self, peer: Party, timeout: float):
        super().__init__(peer, "slow", int)
        self.timeout = timeout

    def call(self) -> tuple:
        session = self.open()
        try:
            return ("in time", session.receive(int, timeout=self.timeout))
        except FlowTimeout as e:
            return (str(e), session.receive(int))


class SendUnsafe(Ask):
    def __init__(self, peer: Party, catch: bool):
        super().__init__(peer, NotWireSafe())
        self.catch = catch

    def call(self) -> str:
        session = self.initiate_flow(self.peer)
        if not self.catch:
            session.send(NotWireSafe())
        try:
            session.send(NotWireSafe())
        except FlowError as e:
            return f"{type(e).__name__}: {e}"
        return "sent"


@initiating_flow
class Fork(FlowLogic):
    """Opens sessions to ``refuser`` and ``bystander``; the refuser raises."""

    def __init__(self, refuser: Party, bystander: Party):
        self.refuser, self.bystander = refuser, bystander

    def call(self) -> Any:
        to_bystander = self.initiate_flow(self.bystander)
        to_bystander.send("hold")
        return self.initiate_flow(self.refuser).send_and_receive(object, "refuse")


@initiated_by(Fork)
class ForkResponder(AskResponder):
    pass


@initiating_flow
class ChainStart(FlowLogic):
    """A -> B -> C: B runs `Fork` towards C (who refuses) and D (a bystander)."""

    def __init__(self, middle: Party, refuser: Party, bystander: Party):
        self.middle, self.refuser, self.bystander = middle, refuser, bystander

    def call(self) -> Any:
        return self.initiate_flow(self.middle).send_and_receive(
            object, [self.refuser, self.bystander])


@initiated_by(ChainStart)
class ChainMiddle(FlowLogic):
    def __init__(self, session: FlowSession):
        self.session = session

    def call(self) -> Any:
        refuser, bystander = self.session.receive(list)
        return self.sub_flow(Fork(refuser, bystander))   # does not catch the refusal


@initiating_flow
class RefuseEveryone(FlowLogic):
    def __init__(self, peers: list[Party]):
        self.peers = peers

    def call(self) -> None:
        sessions = [self.initiate_flow(p) for p in self.peers]
        self.send_all("hold", sessions)
        raise Refusal("everyone", len(sessions))


@initiated_by(RefuseEveryone)
class RefuseEveryoneResponder(AskResponder):
    pass


class Fickle(FlowLogic):
    """Branches on module state that tests flip between run and replay."""

    def __init__(self, log_path: str):
        self.log_path = log_path

    def call(self) -> str:
        if STATE["mode"] == "a":
            self.sleep(10)
        elif STATE["mode"] == "b":
            self.side_effect(append_line, self.log_path, "fickle")
        return "woke"           # mode "c": returns before its pending sleep


class SwallowingFickle(Fickle):
    def call(self) -> str:
        try:
            return super().call()
        except BaseException as e:  # noqa: BLE001 - the point of the test
            return f"swallowed {type(e).__name__}"


class Holding(Ask):
    """Asks the responder to hold the session open until this flow ends."""

    def __init__(self, peer: Party):
        super().__init__(peer, "hold")


class Leaky(Holding):
    """Sends module state that changes under it (unrecorded outside data)."""

    def call(self) -> Any:
        session = self.initiate_flow(self.peer)
        session.send(f"hold:{STATE['mode']}")
        self.sleep(10)
        return session.receive(int)


class Doomed(Holding):
    """Waits forever; its finally block tries I/O while it is unwound."""

    def call(self) -> Any:
        session = self.open()
        try:
            return session.receive(int)
        finally:
            try:
                session.send("bye from finally")
                STATE["unwinding"].append("sent")
            except FlowError as e:
                STATE["unwinding"].append(f"refused: {e}")


class Stubborn(Holding):
    """Catches everything, including its own unwinding, and tries to carry on."""

    def call(self) -> Any:
        session = self.open()
        try:
            return session.receive(int)
        except BaseException as e:  # noqa: BLE001 - the point of the test
            STATE["unwinding"].append(type(e).__name__)
        session.send("carrying on")
        return "survived"


# ====================================================================== restarts
@initiating_flow
class Rounds(FlowLogic):
    """Three message rounds; each side records one side effect per round."""

    def __init__(self, peer: Party, log_path: str, rounds: int = 3):
        self.peer, self.log_path, self.rounds = peer, log_path, rounds

    def call(self) -> int:
        session = self.initiate_flow(self.peer)
        total = 0
        for i in range(self.rounds):
            self.side_effect(append_line, self.log_path, f"initiator {i}")
            total += session.send_and_receive(int, (i, self.log_path))
        session.send((-1, self.log_path))
        return total


@initiated_by(Rounds)
class RoundsResponder(FlowLogic):
    def __init__(self, session: FlowSession):
        self.session = session

    def call(self) -> int:
        got = []
        while True:
            i, log_path = self.session.receive(tuple)
            if i < 0:
                return sum(got)
            got.append(i)
            self.side_effect(append_line, log_path, f"responder {i}")
            self.session.send(i * 10 + 1)


class Sleeper(FlowLogic):
    def __init__(self, seconds: float):
        self.seconds = seconds

    def call(self) -> tuple:
        before = self.now()
        self.sleep(self.seconds)
        return (before, self.now())


def add_one(x: int) -> int:
    return x + 1


def make_adder(n: int):
    def add(x: int) -> int:
        return x + n
    return add


class HoldsClosures(FlowLogic):
    """Keeps a lambda and a closure in attributes and in locals across a suspension."""

    def __init__(self, offset: int):
        self.twice = lambda x: 2 * x
        self.add_offset = make_adder(offset)

    def call(self) -> int:
        base = 3
        plus_base = lambda x: x + base      # noqa: E731 - a closure over a local
        adder = make_adder(100)
        self.sleep(10)
        self.later = lambda x: x - 1        # noqa: E731 - set after start: replay rebuilds it
        self.sleep(10)
        return self.later(adder(plus_base(self.add_offset(self.twice(1)))))


def count_and_double(path: str, x: int) -> int:
    append_line(path, f"external {x}")
    return 2 * x


class External(FlowLogic):
    def __init__(self, log_path: str, x: int):
        self.log_path, self.x = log_path, x

    def call(self) -> tuple:
        doubled = self.run_external(count_and_double, self.log_path, self.x)
        self.sleep(10)
        again = self.run_external(count_and_double, self.log_path, doubled)
        return (doubled, again)


# ====================================================================== diagnostics
def wait_for_answer(session: FlowSession, note: str) -> int:
    """A helper several calls deep: its locals must show in a dump."""
    counter = 7
    password = "hunter2"
    signing_key = b"\x01" * 32
    client_secret = "s3cr3t"
    return session.receive(int) + counter + len(note) + len(password + client_secret) \
        + len(signing_key)


class Inspected(Holding):
    progress_tracker = ProgressTracker(ASKING)

    def call(self) -> int:
        self.progress_tracker.current_step = ASKING
        return self.ask(self.open())

    def ask(self, session: FlowSession) -> int:
        note = "waiting for Bob"
        return wait_for_answer(session, note)


class Napper(Ask):
    """Sleeps while the answer arrives: the answer waits in its inbox."""

    def __init__(self, peer: Party):
        super().__init__(peer, "echo", int)

    def call(self) -> Any:
        session = self.open()
        self.sleep(10)
        return session.receive(int)


class Recorded(FlowLogic):
    """Reads time, randomness and a uuid, logs them once, and returns them after a wait."""

    def __init__(self, log_path: str):
        self.log_path = log_path

    def call(self) -> str:
        values = repr((self.now().isoformat(), self.random().getrandbits(64), str(self.uuid())))
        self.side_effect(append_line, self.log_path, values)
        self.sleep(10)
        return values


# ====================================================================== payloads and context
@serializable
@dataclass(frozen=True)
class Offer:
    """A payload class marked @serializable."""

    item: str
    price: int
    buyer: Party


@initiating_flow
class Echo(FlowLogic):
    """Sends ``payload`` and returns what the peer sends back unchanged."""

    def __init__(self, peer: Party, payload: Any):
        self.peer, self.payload = peer, payload

    def call(self) -> Any:
        return self.initiate_flow(self.peer).send_and_receive(object, self.payload)


@initiated_by(Echo)
class EchoResponder(FlowLogic):
    def __init__(self, session: FlowSession):
        self.session = session

    def call(self) -> None:
        self.session.send(self.session.receive(object))


def who_runs_me(flow: FlowLogic) -> tuple:
    """Context members reached from a helper, not from call() itself."""
    flow.logger.info("asking who runs me")
    return (flow.our_identity.name, flow.run_id, flow.services is not None)


class Context(FlowLogic):
    def call(self) -> tuple:
        before = who_runs_me(self)
        self.sleep(1)
        return before + who_runs_me(self)


class CatchingParent(FlowLogic):
    """Catches a refusal raised in a sub-flow and carries on with the same peer."""

    def __init__(self, peer: Party):
        self.peer = peer

    def call(self) -> tuple:
        try:
            self.sub_flow(Ask(self.peer, "refuse", int))
            refused = "nothing"
        except Refusal as e:
            refused = str(e)
        return (refused, self.sub_flow(Ask(self.peer, "echo", int)))


class BadRepr:
    def __repr__(self) -> str:
        raise RuntimeError("no repr for you")


class Awkward(FlowLogic):
    """Holds locals that are large, unprintable or key material while it sleeps."""

    def call(self) -> str:
        import nacl.signing
        big = list(range(100_000))
        odd = BadRepr()
        thing = nacl.signing.SigningKey.generate()       # an innocent name: redacted by type
        self.sleep(1)
        return f"{len(big)} {type(odd).__name__} {len(bytes(thing.verify_key))}"


# ====================================================================== threaded nodes
def gated_double(x: int) -> int:
    """External work that blocks until the test opens GATE; counts its calls."""
    STATE["external_calls"].append(x)
    GATE.wait(30)
    return 2 * x


@initiating_flow
class ExternalWhileTalking(FlowLogic):
    """Runs gated external work while its peer's message arrives."""

    def __init__(self, peer: Party):
        self.peer = peer

    def call(self) -> tuple:
        session = self.initiate_flow(self.peer)
        session.send("go")
        doubled = self.run_external(gated_double, 21)
        return (doubled, session.receive(str))


@initiated_by(ExternalWhileTalking)
class TalkWhileExternal(FlowLogic):
    def __init__(self, session: FlowSession):
        self.session = session

    def call(self) -> None:
        self.session.receive(str)
        self.session.send("ping")


def append_and_fail(path: str) -> None:
    append_line(path, "tried")
    raise ValueError("the side effect failed")


class CatchesSideEffectFailure(FlowLogic):
    """A side effect's exception is recorded and replayed like its value."""

    def __init__(self, log_path: str):
        self.log_path = log_path

    def call(self) -> str:
        try:
            self.side_effect(append_and_fail, self.log_path)
            caught = "nothing"
        except ValueError as e:
            caught = str(e)
        self.sleep(10)
        return caught


class ExecSuspended(Ask):
    """Waits inside code run by exec() with a namespace of its own. That frame's f_locals
    is the namespace itself, not a snapshot: frame capture must leave it alone."""

    def __init__(self, peer: Party):
        super().__init__(peer, "echo", int)

    def call(self) -> Any:
        ns = {"session": self.open(), "kept": "still here"}
        exec("answer = session.receive(int)", ns)
        return ns["answer"], ns["kept"], sorted(k for k in ns if not k.startswith("__"))


# ====================================================================== greenlet reuse
TRACE = None   # a ContextVar, made on first use (see Traced)


class Marker:
    """A local a flow holds while it waits: weakly referenced by the tests, which check
    that nothing keeps it once the flow is gone."""


class Traced(Ask):
    """Records the greenlet it runs on, weak references to itself and to a local, what a
    context variable and the exception state hold when it starts, then asks Bob. With
    ``swallow`` it catches even its own unwinding and tries to carry on."""

    def __init__(self, peer: Party, command: Any = "echo", swallow: bool = False):
        super().__init__(peer, command)
        self.swallow = swallow

    def call(self) -> Any:
        import contextvars
        import sys
        import weakref

        import greenlet

        global TRACE
        if TRACE is None:
            TRACE = contextvars.ContextVar("trace")
        marker = Marker()
        STATE.setdefault("traced", []).append({
            "greenlet": greenlet.getcurrent(), "flow": weakref.ref(self),
            "local": weakref.ref(marker), "context": TRACE.get(None),
            "exc_info": sys.exc_info()})
        TRACE.set(self)
        if self.command == "fail":
            raise ValueError("failed as asked")
        session = self.open()
        try:
            return session.receive(int)
        except BaseException:
            try:
                session.send(f"bye from {marker!r}")   # refused while it is unwound
            except FlowError:
                STATE["unwinding"].append("refused")
            if self.swallow:
                return "survived"
            raise


class StartsFromInside(FlowLogic):
    """Calls its node's start_flow from inside call() (the node is in STATE["node"])."""

    def call(self) -> str:
        try:
            STATE["node"].start_flow(Ping(self.our_identity, 1))
        except FlowError as exc:
            return str(exc)
        return "started"


@initiating_flow
class NotPlain(FlowLogic):
    """Runs a sub-flow whose ``call()`` is a generator ("sub-flow"), or is answered by a
    responder whose ``call()`` is an ``async def`` ("responder")."""

    def __init__(self, how: str, peer: Optional[Party] = None) -> None:
        self.how, self.peer = how, peer

    def call(self) -> Any:
        if self.how == "sub-flow":
            return self.sub_flow(GeneratorCall())
        return self.initiate_flow(self.peer).send_and_receive(int, 1)


class GeneratorCall(FlowLogic):
    def call(self) -> Any:
        yield self.send_and_receive  # never runs: a flow does not yield


class AsyncCall(FlowLogic):
    async def call(self) -> Any:
        return 1


class MakesGenerator(FlowLogic):
    """Returns a generator object it made (its ``call`` has no yield and runs)."""

    def call(self) -> Any:
        return (x * 2 for x in range(3))


class UsesMadeGenerator(FlowLogic):
    def call(self) -> Any:
        return list(self.sub_flow(MakesGenerator()))


@initiated_by(NotPlain)
class NotPlainResponder(FlowLogic):
    def __init__(self, session: FlowSession) -> None:
        self.session = session

    async def call(self) -> None:
        self.session.send(self.session.receive(int) + 1)


class RunsNetwork(FlowLogic):
    """Calls its MockNetwork's run_network from inside call() (the network is in
    STATE["net"])."""

    def call(self) -> Any:
        return STATE["net"].run_network()


def a_generator() -> Any:
    return (i for i in range(3))


class UnrecordableResult(FlowLogic):
    """``side_effect`` or ``run_external`` ("external") of a function whose result cannot
    be journaled; catches the error and goes on."""

    def __init__(self, how: str) -> None:
        self.how = how

    def call(self) -> str:
        call = self.run_external if self.how == "external" else self.side_effect
        try:
            call(a_generator)
        except FlowError as exc:
            caught = str(exc)
        self.sleep(1)
        return caught


class AppRows(FlowLogic):
    """Writes rows of the app table "rows" (opened in STATE["open"] stores) through
    services.writes(): "suspend" writes one, sleeps inside the block, writes another;
    the others write one row the store cannot take."""

    def __init__(self, how: str) -> None:
        self.how = how

    def call(self) -> str:
        with self.services.writes() as rows:
            if self.how == "suspend":
                rows.table_put("rows", b"before", b"1")
                self.sleep(1)
                rows.table_put("rows", b"after", b"2")
            elif self.how == "unopened":
                rows.table_put("never_opened", b"k", b"v")
            elif self.how == "str key":
                rows.table_put("rows", "k", b"v")
            elif self.how == "empty key":
                rows.table_delete("rows", b"")
        return "written"


LONG_STEP = Step("y" * 900)


class DeepTracked(FlowLogic):
    """Sub-flows ``depth`` deep, each on a step of 900 characters; the innermost sleeps."""

    progress_tracker = ProgressTracker(LONG_STEP)

    def __init__(self, depth: int) -> None:
        self.depth = depth

    def call(self) -> str:
        self.progress_tracker.current_step = LONG_STEP
        if self.depth:
            return self.sub_flow(DeepTracked(self.depth - 1))
        self.sleep(1)
        return "bottom"


@initiating_flow
class AskBroken(FlowLogic):
    """Answered by a responder that cannot be made: its ``__init__`` takes no session
    ("no session") or raises ("raises", STATE["broken"] says which)."""

    def __init__(self, peer: Party) -> None:
        self.peer = peer

    def call(self) -> Any:
        return self.initiate_flow(self.peer).send_and_receive(int, 1)


@initiated_by(AskBroken)
class BrokenResponder(FlowLogic):
    def __init__(self, *session: FlowSession) -> None:
        if STATE.get("broken") == "raises":
            raise RuntimeError("the secret reason")
        if session:
            raise TypeError("BrokenResponder.__init__() takes no session")

    def call(self) -> None:
        return None


class Returns(FlowLogic):
    """Returns ``size`` bytes."""

    def __init__(self, size: int) -> None:
        self.size = size

    def call(self) -> bytes:
        return b"r" * self.size


class KeepsInField(FlowLogic):
    """Holds ``thing`` in a field across a suspension (what a flow must not do with an
    open file or a lock)."""

    def __init__(self, thing: Any) -> None:
        self.thing = thing

    def call(self) -> str:
        self.sleep(1)
        return "done"


class ReturnsWhatItMakes(FlowLogic):
    """Returns, or gets from a side effect, what ``make(path)`` makes."""

    def __init__(self, make: str, path: str, how: str) -> None:
        self.make, self.path, self.how = make, path, how

    def call(self) -> Any:
        if self.how == "side_effect":
            try:
                self.side_effect(_make, self.make, self.path)
            except FlowError as exc:
                return str(exc)
            return "taken"
        return _make(self.make, self.path)


def _make(what: str, path: str) -> Any:
    return open(path, "a", encoding="utf-8") if what == "file" else threading.RLock()


def slow_append(path: str, secs: float, text: str) -> str:
    """External work that takes ``secs`` and leaves a line per run (the calls made)."""
    time.sleep(secs)
    return append_line(path, text)


class TwoSlowCalls(FlowLogic):
    """Two external calls in a row, each leaving a line per run."""

    def __init__(self, path: str, secs: float):
        self.path, self.secs = path, secs

    def call(self) -> tuple:
        first = self.run_external(slow_append, self.path, self.secs, "first")
        return first, self.run_external(slow_append, self.path, 0.0, "second")


def spin(secs: float) -> None:
    """Computes for ``secs`` without suspending (what a blocking call does too)."""
    end = time.monotonic() + secs
    while time.monotonic() < end:
        pass


class Spins(FlowLogic):
    def __init__(self, secs: float):
        self.secs = secs

    def call(self) -> str:
        spin(self.secs)
        return "spun"


class NapsOften(FlowLogic):
    """Runs as long as `Spins`, but suspends every few hundredths of a second."""

    def __init__(self, n: int, secs: float):
        self.n, self.secs = n, secs

    def call(self) -> int:
        for _ in range(self.n):
            spin(self.secs / 2)
            self.sleep(self.secs / 2)
        return self.n


#: While True, `CtrlC` is "interrupted" (it raises KeyboardInterrupt, as a Ctrl-C that
#: lands while it runs does) after its first exchange.
CTRL_C = {"on": True}


@initiating_flow
class CtrlC(FlowLogic):
    def __init__(self, peer: Party) -> None:
        self.peer = peer

    def call(self) -> int:
        session = self.initiate_flow(self.peer)
        total = session.send_and_receive(int, 1)
        if CTRL_C["on"]:
            raise KeyboardInterrupt
        return total + session.send_and_receive(int, 2)


@initiated_by(CtrlC)
class CtrlCResponder(FlowLogic):
    def __init__(self, session: FlowSession) -> None:
        self.session = session

    def call(self) -> None:
        for _ in range(2):
            self.session.send(self.session.receive(int) * 10)


# ====================================================================== versions of a payload class
@serializable
@dataclass(frozen=True)
class Order:
    sku: str
    qty: int


@initiating_flow
class PlaceOrder(FlowLogic):
    """Sends an `Order`: first thing (``warm_up`` false, on the session's opening frame)
    or after one exchange of ints."""

    def __init__(self, peer: Party, warm_up: bool):
        self.peer, self.warm_up = peer, warm_up

    def call(self) -> Order:
        session = self.initiate_flow(self.peer)
        if self.warm_up:
            session.send_and_receive(int, 1)
        return session.send_and_receive(Order, Order("apple", 2))


@initiated_by(PlaceOrder)
class TakeOrder(FlowLogic):
    def __init__(self, session: FlowSession):
        self.session = session

    def call(self) -> None:
        first = self.session.receive((int, Order))
        if isinstance(first, int):
            self.session.send(first)
            first = self.session.receive(Order)
        self.session.send(Order(first.sku, first.qty * 2))
