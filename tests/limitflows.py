"""Flows for the tests of what a peer can make a node hold and what a dump shows
(module level, so checkpoints can name them after a restart)."""
from __future__ import annotations

from greenflow import (FlowLogic, FlowSession, FlowTimeout, Party, UnexpectedFlowEnd, initiated_by,
                       initiating_flow, startable)
from greenflow.runtime.snapshots import register_sensitive


class CardNumber(str):
    """An app's own sensitive type: redacted wherever a dump meets one."""


# What an app does beside its flows: its own sensitive names and types.
register_sensitive(names=["iban"], types=[CardNumber])


class HoldsSecrets(FlowLogic):
    """Sleeps holding secrets under innocent and sensitive names, alone and in containers."""

    def call(self) -> int:
        creds = {"user": "alice", "password": "hunter2", "nested": {"api_key": "k-123"}}
        rows = [{"id": 1, "token": "tk-1"}, {"Authorization": "Bearer b-456"}]
        pw = "pw-secret"
        conn_str = "postgresql://app:pgpass@db/prod"
        auth_header = "Bearer tok-789"
        iban = "GB33BUKB20201555555555"
        card = CardNumber("4111111111111111")
        wallet = {"owner": "alice", "card": CardNumber("5500005555555559")}
        plain = {"user": "alice", "amount": 10}
        self.sleep(60)
        return len(creds) + len(rows) + len(pw + conn_str + auth_header + iban + card) \
            + len(wallet) + len(plain)


SECRETS = ("hunter2", "k-123", "tk-1", "b-456", "pw-secret", "pgpass", "tok-789",
           "GB33BUKB", "4111111111111111", "5500005555555559")


# ---------------------------------------------------------------- sessions a peer opens
@initiating_flow
@startable
class Pester(FlowLogic):
    """Opens a session and sends one number; the responder then waits for a second one."""

    def __init__(self, peer: Party, wait_for_answer: bool = False):
        self.peer, self.wait_for_answer = peer, wait_for_answer

    def call(self) -> str:
        s = self.initiate_flow(self.peer)
        s.send(1)
        if self.wait_for_answer:
            return s.receive(str)
        return "sent"


@initiated_by(Pester)
class PesterResponder(FlowLogic):
    def __init__(self, session: FlowSession):
        self.session = session

    def call(self) -> str:
        self.session.receive(int)
        self.session.receive(int)      # never comes: the peer went quiet
        return "done"


# ---------------------------------------------------------------- large payloads
@initiating_flow
class SendBulk(FlowLogic):
    """Sends ``n`` payloads of ``size`` bytes, then waits for the total."""

    def __init__(self, peer: Party, n: int, size: int):
        self.peer, self.n, self.size = peer, n, size

    def call(self) -> int:
        s = self.initiate_flow(self.peer)
        s.send(self.n)
        for i in range(self.n):
            s.send(bytes([i % 251]) * self.size)
        return s.receive(int)


@initiated_by(SendBulk)
class ReceiveBulkLater(FlowLogic):
    """Sleeps while the payloads arrive (so they wait in its inbox), then takes them all,
    answers, and sleeps on (unfinished: its journal is kept)."""

    def __init__(self, session: FlowSession):
        self.session = session

    def call(self) -> int:
        n = self.session.receive(int)
        self.sleep(10)
        total = 0
        for i in range(n):
            data = self.session.receive(bytes)
            assert data[:1] == bytes([i % 251]), "payloads out of order"
            total += len(data)
        self.session.send(total)
        self.sleep(3600)
        return total


@initiating_flow
class AskInTime(FlowLogic):
    """Asks ``n`` times, each answer awaited with a timeout of an hour; the peer leaves
    the last one unanswered, so it times out."""

    def __init__(self, peer: Party, n: int) -> None:
        self.peer, self.n = peer, n

    def call(self) -> tuple:
        s = self.initiate_flow(self.peer)
        s.send(self.n)
        total = 0
        for i in range(self.n):
            s.send(i)
            try:
                total += s.receive(int, timeout=3600)
            except FlowTimeout:
                return total, "timed out"
        return total, "answered"


@initiated_by(AskInTime)
class AnswerAllButLast(FlowLogic):
    def __init__(self, session: FlowSession) -> None:
        self.session = session

    def call(self) -> None:
        n = self.session.receive(int)
        for i in range(n):
            x = self.session.receive(int)
            if i < n - 1:
                self.session.send(x + 1)
        try:
            self.session.receive(int)   # until the initiator gives up and ends
        except UnexpectedFlowEnd:
            pass


@initiating_flow
class Flood(FlowLogic):
    """Sends ``n`` payloads of ``size`` bytes without waiting, then waits for one answer."""

    def __init__(self, peer: Party, n: int, size: int) -> None:
        self.peer, self.n, self.size = peer, n, size

    def call(self) -> str:
        s = self.initiate_flow(self.peer)
        for i in range(self.n):
            s.send(bytes(self.size))
        try:
            s.receive(int)
        except UnexpectedFlowEnd as exc:
            return str(exc)
        return "answered"


@initiated_by(Flood)
class ReadLate(FlowLogic):
    """Reads one message, sleeps an hour, then reads until the session ends."""

    def __init__(self, session: FlowSession) -> None:
        self.session = session

    def call(self) -> tuple:
        self.session.receive(bytes)
        self.sleep(3600)
        read = 1
        while True:
            try:
                self.session.receive(bytes)
            except UnexpectedFlowEnd as exc:
                return read, str(exc)
            read += 1


@initiating_flow
@startable
class FloodAndWait(FlowLogic):
    """Says how many payloads of ``size`` bytes follow, sends them without waiting, then
    waits for the count read."""

    def __init__(self, peer: Party, n: int, size: int) -> None:
        self.peer, self.n, self.size = peer, n, size

    def call(self) -> str:
        s = self.initiate_flow(self.peer)
        s.send(self.n)
        for _ in range(self.n):
            s.send(bytes(self.size))
        try:
            return f"answered {s.receive(int)}"
        except UnexpectedFlowEnd as exc:
            return str(exc)


@initiated_by(FloodAndWait)
class CountLate(FlowLogic):
    """Sleeps an hour before it reads what was sent; answers with the count read, or
    returns it with the end it saw instead."""

    def __init__(self, session: FlowSession) -> None:
        self.session = session

    def call(self) -> tuple:
        n = self.session.receive(int)
        self.sleep(3600)
        for read in range(n):
            try:
                self.session.receive(bytes)
            except UnexpectedFlowEnd as exc:
                return read, str(exc)
        self.session.send(n)
        return n, "all"


class SubFlowsAllTheWayDown(FlowLogic):
    """Calls itself as a sub-flow until Python's recursion limit stops it."""

    def __init__(self, depth: int = 0) -> None:
        self.depth = depth

    def call(self) -> int:
        return self.sub_flow(SubFlowsAllTheWayDown(self.depth + 1))


@initiating_flow
class Burst(FlowLogic):
    """Sends ``n`` small messages in one go; the peer answers with their sum."""

    def __init__(self, peer: Party, n: int) -> None:
        self.peer, self.n = peer, n

    def call(self) -> int:
        s = self.initiate_flow(self.peer)
        s.send(self.n)
        for i in range(self.n):
            s.send(i)
        return s.receive(int)


@initiated_by(Burst)
class SumBurst(FlowLogic):
    def __init__(self, session: FlowSession) -> None:
        self.session = session

    def call(self) -> None:
        n = self.session.receive(int)
        self.session.send(sum(self.session.receive(int) for _ in range(n)))
