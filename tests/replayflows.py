"""Flows that use ordinary Python sources of non-determinism, and flows whose code the
tests change under a running flow (by flipping ``VARIANT``) to make each kind of
divergence. Module level, so checkpoints name them and they survive node restarts.
"""
from __future__ import annotations

import datetime
import os
import random
import secrets
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import nacl.bindings

from greenflow import FlowLogic, FlowSession, Party, initiated_by, initiating_flow, serializable
from greenflow.ledger import (CommandData, Contract, ContractState, SignedTransaction,
                              TransactionBuilder, require_that)
from greenflow.ledger.flows import FinalityFlow, ReceiveFinalityFlow

VARIANT: dict[str, Any] = {"v": 0}


def reset() -> None:
    VARIANT["v"] = 0


def append_line(path: str, text: str) -> None:
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(text + "\n")


def draw() -> list:
    """One value from each source a flow may use as ordinary Python."""
    return [str(uuid.uuid4()), os.urandom(8).hex(), random.random(), secrets.token_hex(8),
            time.time(), time.time_ns(), str(uuid.uuid1()), random.randint(0, 10 ** 9),
            secrets.randbelow(10 ** 9), random.SystemRandom().random(),
            datetime.datetime.now(datetime.timezone.utc).isoformat(),
            datetime.datetime.utcnow().isoformat(), datetime.date.today().isoformat(),
            random.choice("abcdefghij"), random.Random().random(), time.time(),
            time.strftime("%Y-%m-%d %H:%M:%S"), time.ctime(), time.asctime(),
            str(tuple(time.gmtime()[:6])), str(tuple(time.localtime()[:6]))]


@initiating_flow
class Draws(FlowLogic):
    """Draws values between messages, shows them to the peer, and logs what it first
    saw (a side effect, so only the first run writes it)."""

    def __init__(self, peer: Party, log: str, rounds: int = 3) -> None:
        self.peer, self.log, self.rounds = peer, log, rounds

    def call(self) -> list:
        session = self.initiate_flow(self.peer)
        seen = []
        for i in range(self.rounds):
            values = draw()
            self.side_effect(append_line, self.log, repr(values))
            mine, theirs = session.send_and_receive(list, values)
            assert mine == values, "the peer saw other values"
            seen.append([values, theirs])
        return seen


@initiated_by(Draws)
class DrawsBack(FlowLogic):
    """Draws its own values between messages and shows them to the initiator."""

    def __init__(self, session: FlowSession) -> None:
        self.session = session

    def call(self) -> list:
        seen = []
        got = self.session.receive(list)
        for i in range(3):
            values = draw()
            seen.append(values)
            if i < 2:
                got = self.session.send_and_receive(list, [got, values])
            else:
                self.session.send([got, values])
        return seen


@initiating_flow
class LongDraws(FlowLogic):
    """`Draws` for ``rounds`` round trips with a responder that goes on as long: a flow
    that runs far past its first few commits."""

    def __init__(self, peer: Party, log: str, rounds: int) -> None:
        self.peer, self.log, self.rounds = peer, log, rounds

    def call(self) -> list:
        session = self.initiate_flow(self.peer)
        session.send(self.rounds)
        seen = []
        for _ in range(self.rounds):
            values = [time.time(), random.random(), str(uuid.uuid4())]
            self.side_effect(append_line, self.log, repr(values))
            seen.append([values, session.send_and_receive(list, values)])
        return seen


@initiated_by(LongDraws)
class LongDrawsBack(FlowLogic):
    def __init__(self, session: FlowSession) -> None:
        self.session = session

    def call(self) -> list:
        seen = []
        for _ in range(self.session.receive(int)):
            got = self.session.receive(list)
            values = [time.time(), random.random(), got]
            seen.append(values)
            self.session.send(values)
        return seen


class ManyDraws(FlowLogic):
    """A thousand ids and clock readings between two suspensions."""

    def call(self) -> int:
        for _ in range(1000):
            uuid.uuid4()
            time.time()
        self.sleep(1)
        return 1


class ClockInFinally(FlowLogic):
    """Reads the clock in a ``finally`` that runs when the flow is unwound (hibernated)."""

    def __init__(self, log: str) -> None:
        self.log = log

    def call(self) -> float:
        t0 = time.time()
        try:
            self.sleep(1)
        finally:
            if time.time() > 1_700_000_100:
                append_line(self.log, repr(time.time()))   # unwinding: the real clock
        return t0


# ---------------------------------------------------------------------- ledger
class TicketContract(Contract):
    def verify(self, tx: Any) -> None:
        outs = tx.outputs_of_type(Ticket)
        require_that(all(len(t.linear_id) == 36 for t in outs), "a ticket has a linear id")


@serializable
@dataclass(frozen=True)
class Ticket(ContractState):
    """A linear state whose id is made the way Corda's UniqueIdentifier() is."""

    contract = TicketContract
    issuer: Party
    holder: Party
    linear_id: str = field(default_factory=lambda: str(uuid.uuid4()))

    @property
    def participants(self) -> list[Party]:
        return [self.issuer, self.holder]


@serializable
@dataclass(frozen=True)
class IssueTicket(CommandData):
    pass


@initiating_flow
class IssueTicketFlow(FlowLogic):
    """Proposes a ticket (its id and the transaction id) to the holder, then issues it.
    Ordinary code: a state id from ``uuid4`` and a builder with no salt."""

    def __init__(self, holder: Party, notary: Party) -> None:
        self.holder, self.notary = holder, notary

    def call(self) -> SignedTransaction:
        ticket = Ticket(self.our_identity, self.holder)
        builder = TransactionBuilder(self.notary)        # no salt: the flow's own randomness
        builder.add_output_state(ticket)
        builder.add_command(IssueTicket(), self.our_identity)
        wtx = builder.to_wire_transaction()
        session = self.initiate_flow(self.holder)
        session.send_and_receive(str, [ticket.linear_id, wtx.id.value])
        stx = self.services.key_management.sign(SignedTransaction(wtx))
        return self.sub_flow(FinalityFlow(stx, [session]))


@initiated_by(IssueTicketFlow)
class ReceiveTicketFlow(FlowLogic):
    def __init__(self, session: FlowSession) -> None:
        self.session = session

    def call(self) -> SignedTransaction:
        linear_id, tx_id = self.session.receive(list)
        self.session.send("go ahead")
        stx = self.sub_flow(ReceiveFinalityFlow(self.session))
        assert stx.id.value == tx_id and stx.tx.outputs[0].linear_id == linear_id, \
            "the issued ticket is not the one proposed"
        return stx


# ---------------------------------------------------------------------- divergences
@serializable
@dataclass(frozen=True)
class Order:
    item: str
    amount: int
    api_key: str = "k-1"


@serializable
@dataclass(frozen=True)
class MovedOrder:
    """`Order` as another module would define it after a move (same fields)."""
    item: str
    amount: int
    api_key: str = "k-1"


@initiating_flow
class Changing(FlowLogic):
    """Its behaviour depends on ``VARIANT['v']``, the stand-in for a new version of the
    code installed under a running flow:

    0: send Order, receive int, send str, receive int (the original)
    1: the order's amount changed              2: the order goes to another peer
    3: expects a str instead of the first int  4: an extra send before the first receive
    5: the first receive is gone               6: returns after the first send
    7: the order's api_key changed (a deny-listed name)
    8: the amount is a clock reading greenflow does not replay (clock_gettime)
    9: the item is an id from a generator greenflow does not replay (libsodium's,
       called directly)
    10: the order is sent as another class with the same fields (a payload class moved)
    11: the first receive takes an int or a str (widened: what was received still fits)
    12: both receives take an int or a str (the flow is started under it)
    """

    def __init__(self, peer: Party, other: Party) -> None:
        self.peer, self.other = peer, other

    def call(self) -> Any:
        v = VARIANT["v"]
        peer = self.other if v == 2 else self.peer
        session = self.initiate_flow(peer)
        amount = 11 if v == 1 else 10
        if v == 8:
            amount = int(time.clock_gettime(time.CLOCK_REALTIME) * 1000)
        item = nacl.bindings.randombytes(16).hex() if v == 9 else "apples"
        key = "k-2" if v == 7 else "k-1"
        session.send(Order(item, amount, key) if v != 10 else MovedOrder(item, amount, key))
        if v == 6:
            return "early"
        if v == 4:
            session.send("extra")
        if v != 5:
            first = session.receive(str if v == 3 else (int, str) if v in (11, 12) else int)
        else:
            first = 0
        session.send("second")
        result = first, session.receive((int, str) if v == 12 else int)
        session.send("bye")
        return result


@initiated_by(Changing)
class ChangingPeer(FlowLogic):
    def __init__(self, session: FlowSession) -> None:
        self.session = session

    def call(self) -> int:
        order = self.session.receive(object)
        self.session.send(1)
        self.session.receive(object)
        self.sleep(100)               # holds the second answer back: the initiator waits
        self.session.send(2)
        self.session.receive(str)     # waits for the initiator's goodbye
        return order.amount if isinstance(order, Order) else 0


class TimeSleeper(FlowLogic):
    """Calls time.sleep (the module's, and one imported by name) around a durable sleep."""

    def call(self) -> str:
        import time as clock
        from time import sleep
        clock.sleep(0.01)
        self.sleep(5)
        sleep(0.01)
        return "slept"
