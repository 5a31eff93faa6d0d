"""A small app on the ledger for the tests: a two-party `Deal` (a LinearState) agreed and
then amended, each version a new state with the same linear id."""
from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Optional

from greenflow import FlowLogic, FlowSession, Party, initiated_by, initiating_flow, serializable
from greenflow.ledger import (CommandData, Contract, LinearState, SignedTransaction, TransactionBuilder,
                              UniqueIdentifier, require_linear_ids_kept, require_that)
from greenflow.ledger.flows import (CollectSignaturesFlow, FinalityFlow, ReceiveFinalityFlow,
                                    SignTransactionFlow)
from greenflow.ledger.transactions import LedgerTransaction
from greenflow.ledger.vault_query import QueryCriteria


class DealContract(Contract):
    """Both parties sign every version; an amendment keeps the deal's linear id and its
    parties, and moves its version on by one."""

    def verify(self, tx: LedgerTransaction) -> None:
        require_that(tx.commands_of_type(Propose) or tx.commands_of_type(Amend), "a deal command")
        for old, new in require_linear_ids_kept(tx, Deal):
            require_that(new.parties == old.parties, "an amendment keeps the parties")
            require_that(new.version == old.version + 1, "an amendment moves the version on by one")
        signers = {k for c in tx.commands for k in c.signers}
        for deal in tx.outputs_of_type(Deal):
            require_that(all(p.owning_key in signers for p in deal.parties), "every party signs")


@serializable
@dataclass(frozen=True)
class Deal(LinearState):
    contract = DealContract
    terms: str
    version: int
    parties: tuple
    linear_id: UniqueIdentifier

    @property
    def participants(self) -> list[Party]:
        return list(self.parties)


@serializable
@dataclass(frozen=True)
class Propose(CommandData):
    pass


@serializable
@dataclass(frozen=True)
class Amend(CommandData):
    pass


@initiating_flow
class DealFlow(FlowLogic):
    """Agree a new deal with ``counterparty`` (``linear_id`` None) or amend the deal with
    that id to ``terms``. Returns the transaction."""

    def __init__(self, counterparty: Party, terms: str, notary: Party,
                 external_id: Optional[str] = None, linear_id: Optional[UniqueIdentifier] = None) -> None:
        self.counterparty, self.terms, self.notary = counterparty, terms, notary
        self.external_id, self.linear_id = external_id, linear_id

    def call(self) -> SignedTransaction:
        me = self.our_identity
        builder = TransactionBuilder(self.notary, salt=self.random().randbytes(32))
        parties = (me, self.counterparty)
        if self.linear_id is None:
            deal = Deal(self.terms, 1, parties, UniqueIdentifier(self.external_id, self.uuid()))
            builder.add_command(Propose(), *parties)
        else:
            page = self.services.vault.query_by(QueryCriteria(Deal, linear_ids=[self.linear_id]))
            [old] = page.states
            builder.add_input_state(old)
            deal = Deal(self.terms, old.state.version + 1, old.state.parties, old.state.linear_id)
            builder.add_command(Amend(), *parties)
        builder.add_output_state(deal)
        builder.verify()
        stx = self.services.key_management.sign(SignedTransaction(builder.to_wire_transaction()))
        session = self.initiate_flow(self.counterparty)
        stx = self.sub_flow(CollectSignaturesFlow(stx, [session]))
        return self.sub_flow(FinalityFlow(stx, [session]))


class _SignDeal(SignTransactionFlow):
    def check_transaction(self, stx: SignedTransaction) -> None:
        pass  # the contract checks every rule this test app has


@initiated_by(DealFlow)
class DealResponder(FlowLogic):
    def __init__(self, session: FlowSession) -> None:
        self.session = session

    def call(self) -> SignedTransaction:
        signed = self.sub_flow(_SignDeal(self.session))
        return self.sub_flow(ReceiveFinalityFlow(self.session, expected_tx_id=signed.id))


def fixed_uuid(n: int) -> uuid.UUID:
    return uuid.UUID(int=n)
