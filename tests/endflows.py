"""Flows for the tests of how sessions end (the end carried by a last message) and of
where a waiting flow is recorded to stand.

Module level, so checkpoints can name them after a node restart (see flowlib)."""
from __future__ import annotations

from greenflow import FlowLogic, FlowSession, Party, UnexpectedFlowEnd, initiated_by, initiating_flow


@initiating_flow
class AskThenLinger(FlowLogic):
    """Asks once, sends to the peer after it has answered and ended, sleeps, then
    receives again: the peer's end must show at that second receive, not before."""

    def __init__(self, peer: Party, pause: float = 5.0):
        self.peer, self.pause = peer, pause

    def call(self) -> tuple:
        s = self.initiate_flow(self.peer)
        answer = s.send_and_receive(str, "question")
        s.send("too late")      # the peer has ended, but this flow has not seen it yet
        self.sleep(self.pause)
        try:
            s.receive(str)
        except UnexpectedFlowEnd as exc:
            ended = str(exc)
        else:
            ended = ""
        try:
            s.send("after the end")
        except UnexpectedFlowEnd:
            return (answer, ended, "send refused")
        return (answer, ended, "send accepted")


@initiated_by(AskThenLinger)
class AnswerOnce(FlowLogic):
    def __init__(self, session: FlowSession):
        self.session = session

    def call(self) -> None:
        self.session.send(self.session.receive(str).upper())


@initiating_flow
class TellOnce(FlowLogic):
    """Sends one message and ends: the initiation carries the message and the end."""

    def __init__(self, peer: Party):
        self.peer = peer

    def call(self) -> str:
        self.initiate_flow(self.peer).send("only message")
        return "told"


@initiated_by(TellOnce)
class HearOnce(FlowLogic):
    def __init__(self, session: FlowSession):
        self.session = session

    def call(self) -> tuple:
        first = self.session.receive(str)
        try:
            self.session.receive(str)
        except UnexpectedFlowEnd as exc:
            return (first, str(exc))
        return (first, "")


class NapTwice(FlowLogic):
    """Waits at one line three times, then at another."""

    def call(self) -> str:
        for _ in range(3):
            self.sleep(1)
        self.sleep(1)   # elsewhere
        return "rested"


@initiating_flow
class SessionAfterSession(FlowLogic):
    """Opens one session after another to the same peer, each answered once (the answer
    carries the peer's end); at the end uses the first three again."""

    def __init__(self, peer: Party, n: int):
        self.peer, self.n = peer, n

    def call(self) -> tuple:
        sessions, total = [], 0
        for i in range(self.n):
            s = self.initiate_flow(self.peer)
            total += s.send_and_receive(int, i)
            sessions.append(s)
        sessions[1].send(1)   # the end not seen yet: goes out, the ended peer drops it
        try:
            sessions[0].receive(int)
            after = ""
        except UnexpectedFlowEnd as exc:
            after = str(exc)
        try:
            sessions[0].send(1)
            sent = ""
        except UnexpectedFlowEnd as exc:
            sent = str(exc)
        sessions[2].close()
        try:
            info = str(sessions[3].counterparty_flow_info())
        except UnexpectedFlowEnd as exc:
            info = str(exc)
        return total, after, sent, info


@initiated_by(SessionAfterSession)
class AnswerOnce(FlowLogic):
    def __init__(self, session: FlowSession):
        self.session = session

    def call(self) -> None:
        self.session.send(self.session.receive(int) + 1)
