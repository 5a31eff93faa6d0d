"""Flows the ledger tests use: dishonest and direct variants of the trade's flows.

Checkpoints name flows by qualified name, so these live at module level (tests/ is on
``sys.path``, see conftest) and survive a node restart in the same process.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from greenflow import FlowLogic, FlowSession, Party, initiated_by, initiating_flow, serializable
from greenflow.ledger import CommandData, Contract, ContractState, SignedTransaction
from greenflow.ledger.flows import (CollectSignaturesFlow, FinalityFlow, NotaryClientFlow,
                                    ReceiveFinalityFlow, SendTransactionFlow, SignTransactionFlow)
from greenflow.ledger.transactions import TransactionSignature
from greenflow.samples.trade import CheckPaymentFlow, SellerFlow


class GreedySellerFlow(SellerFlow):
    """Offers at ``price`` but signs only if paid twice that (initiates as SellerFlow, so
    the honest BuyerFlow answers, selects and locks its cash, then is refused)."""

    def payment_check(self, session: FlowSession) -> SignTransactionFlow:
        return CheckPaymentFlow(session, self.asset, self.price * 2, self.currency)


@initiating_flow
class ProposeFlow(FlowLogic):
    """Send ``stx`` to ``peer`` for signing, skipping every check of our own."""

    def __init__(self, peer: Party, stx: SignedTransaction) -> None:
        self.peer, self.stx = peer, stx

    def call(self) -> TransactionSignature:
        session = self.initiate_flow(self.peer)
        self.sub_flow(SendTransactionFlow(session, self.stx))
        return session.receive(TransactionSignature)


@initiated_by(ProposeFlow)
class SignAnythingFlow(SignTransactionFlow):
    def check_transaction(self, stx: SignedTransaction) -> None:
        pass


@initiating_flow
class CollectFlow(FlowLogic):
    """CollectSignaturesFlow from ``peers`` on ``stx`` (signed by us)."""

    def __init__(self, stx: SignedTransaction, peers: list) -> None:
        self.stx, self.peers = stx, peers

    def call(self) -> SignedTransaction:
        return self.sub_flow(CollectSignaturesFlow(self.stx, [self.initiate_flow(p) for p in self.peers]))


@initiated_by(CollectFlow)
class CollectResponder(SignAnythingFlow):
    pass


@initiating_flow
class FinaliseFlow(FlowLogic):
    def __init__(self, stx: SignedTransaction, peers: list) -> None:
        self.stx, self.peers = stx, peers

    def call(self) -> SignedTransaction:
        return self.sub_flow(FinalityFlow(self.stx, [self.initiate_flow(p) for p in self.peers]))


@initiated_by(FinaliseFlow)
class ReceiveFinalFlow(FlowLogic):
    def __init__(self, session: FlowSession) -> None:
        self.session = session

    def call(self) -> SignedTransaction:
        return self.sub_flow(ReceiveFinalityFlow(self.session))


class RawNotaryClientFlow(NotaryClientFlow):
    """Asks the notary (initiating as NotaryClientFlow) without the client's own check
    that every other signature is there."""

    def call(self) -> TransactionSignature:
        session = self.initiate_flow(self.stx.tx.notary)
        return session.send_and_receive(TransactionSignature, self.stx)


@initiating_flow
class SendFlow(FlowLogic):
    def __init__(self, peer: Party, payload: Any) -> None:
        self.peer, self.payload = peer, payload

    def call(self) -> None:
        self.initiate_flow(self.peer).send(self.payload)


@initiated_by(SendFlow)
class ReceiveAnythingFlow(FlowLogic):
    def __init__(self, session: FlowSession) -> None:
        self.session = session

    def call(self) -> Any:
        return self.session.receive(object)


class NotOnTheWire:
    """A payload class nobody marked @serializable."""


@dataclass(frozen=True)
class UnserialisableState(ContractState):
    """A frozen dataclass state that was never marked @serializable."""

    contract = "greenflow.samples.trade.CommercialPaperContract"
    owner: Party

    @property
    def participants(self) -> list[Party]:
        return [self.owner]


class HoldCashFlow(FlowLogic):
    """Select (and so soft-lock) ``amount`` of cash, hold it for ``hold`` seconds, and
    return the refs it picked: a stand-in for a trade that has chosen its coins."""

    def __init__(self, amount: int, hold: float = 60.0) -> None:
        self.amount, self.hold = amount, hold

    def call(self) -> list:
        from greenflow.ledger.finance import select_cash
        from greenflow.samples.trade import money
        picked = select_cash(self.services, money(self.amount))
        if self.hold:
            self.sleep(self.hold)
        return [s.ref for s in picked]


@initiating_flow
class ShortChangeFlow(FlowLogic):
    """Sends a transaction, answers the first request for its history with what was
    asked, and says that was all (``complete``) though the history goes deeper."""

    def __init__(self, peer: Party, stx: SignedTransaction) -> None:
        self.peer, self.stx = peer, stx

    def call(self) -> None:
        from greenflow.ledger.flows import FetchedTransactions, FetchTransactions
        session = self.initiate_flow(self.peer)
        session.send(self.stx)
        request = session.receive(FetchTransactions)
        txs = tuple(self.services.vault.transaction(t) for t in request.ids)
        session.send(FetchedTransactions(txs, (), True))


@initiated_by(ShortChangeFlow)
class ShortChangedFlow(FlowLogic):
    def __init__(self, session: FlowSession) -> None:
        self.session = session

    def call(self) -> SignedTransaction:
        from greenflow.ledger.flows import ReceiveTransactionFlow
        return self.sub_flow(ReceiveTransactionFlow(self.session))


@initiating_flow
class PushHistoryFlow(FlowLogic):
    """Sends ``stx`` and pushes its direct history unasked (``DataVendingFlow(...,
    push=ids)``); with ``extra``, pushes that instead and says it was all."""

    def __init__(self, peer: Party, stx: SignedTransaction,
                 extra: SignedTransaction | None = None) -> None:
        self.peer, self.stx, self.extra = peer, stx, extra

    def call(self) -> None:
        from greenflow.ledger.flows import DataVendingFlow, FetchedTransactions
        from greenflow.ledger.flows.resolve import dependencies
        session = self.initiate_flow(self.peer)
        session.send(self.stx)
        if self.extra is not None:
            session.send(FetchedTransactions((self.extra,), (), True))
            return
        self.sub_flow(DataVendingFlow(session, dependencies(self.stx),
                                      push=dependencies(self.stx)))


@initiated_by(PushHistoryFlow)
class ReceivePushedFlow(FlowLogic):
    """Resolves the history of what it receives, expecting it pushed; returns the ids
    it took, oldest first."""

    def __init__(self, session: FlowSession) -> None:
        self.session = session

    def call(self) -> list:
        from greenflow.ledger.flows import ResolveTransactionsFlow
        from greenflow.ledger.flows.resolve import dependencies
        stx = self.session.receive(SignedTransaction)
        stx.check_shape()
        fetched = self.sub_flow(ResolveTransactionsFlow(self.session, dependencies(stx),
                                                        pushed=True))
        return [t.id for t in fetched]


class VaultMisuse(FlowLogic):
    """Calls a vault or key management method with an argument of the wrong kind and
    returns what it raised."""

    def __init__(self, how: str) -> None:
        self.how = how

    def call(self) -> str:
        from greenflow.samples.trade import Cash
        services = self.services
        calls = {
            "query": lambda: services.vault.query("Cash"),
            "query where": lambda: services.vault.query(Cash, where=5),
            "select type": lambda: services.vault.select("Cash", 5),
            "select zero": lambda: services.vault.select(Cash, 0, amount_of="quantity"),
            "soft_lock one": lambda: services.vault.soft_lock("a ref"),
            "release": lambda: services.vault.release([b"ref"]),
            "sign": lambda: services.key_management.sign(b"a transaction"),
        }
        try:
            calls[self.how]()
        except (TypeError, ValueError) as exc:
            return f"{type(exc).__name__}: {exc}"
        return "taken"


class AnythingGoes(Contract):
    """Accepts every transaction: the tests below are about what the framework checks."""

    def verify(self, tx: Any) -> None:
        pass


@serializable
@dataclass(frozen=True)
class Note(ContractState):
    """A state two parties hold, with free text of any size."""

    contract = AnythingGoes
    holders: tuple
    text: str = ""

    @property
    def participants(self) -> list:
        return list(self.holders)


@serializable
@dataclass(frozen=True)
class Jot(CommandData):
    pass


@serializable
@dataclass(frozen=True)
class BrokenNote(ContractState):
    """A state whose participants cannot be worked out."""

    contract = AnythingGoes
    owner: Party

    @property
    def participants(self) -> list:
        raise KeyError("no such holder")


class Unreadable(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no message")


class Exploding(Contract):
    """Fails with an exception whose message itself fails."""

    def verify(self, tx: Any) -> None:
        raise Unreadable()


@serializable
@dataclass(frozen=True)
class ExplodingNote(ContractState):
    contract = Exploding
    owner: Party

    @property
    def participants(self) -> list:
        return [self.owner]


class SaysNo(Contract):
    """Returns False instead of raising."""

    def verify(self, tx: Any) -> bool:
        return False


@serializable
@dataclass(frozen=True)
class RefusedNote(ContractState):
    contract = SaysNo
    owner: Party

    @property
    def participants(self) -> list:
        return [self.owner]
