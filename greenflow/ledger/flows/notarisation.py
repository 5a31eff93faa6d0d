"""Asking the notary (Corda's ``NotaryFlow.Client`` and the notary's service flows).

The client sends the signed transaction to the notary its content names; the notary
(`greenflow.ledger.notary.NotaryService`) checks for double spends, stale reference
states and its time window, marks the inputs consumed and answers with its signature,
or refuses with `NotaryError` (a double spend names the transaction that consumed the
input first). The client checks that the signature is the notary's and valid before it
is added to the transaction.

A validating notary first fetches the transaction's history from the client, on the
same session, with the resolution protocol of `ResolveTransactionsFlow`. The client
need not know which kind of notary it asks: the notary's first answer says (a
signature or a refusal from a non-validating notary; a request for history or an
``EndOfFetch`` from a validating one), so asking a non-validating notary costs no
extra message::

    client                                   validating notary
    send(stx)                    ------->    receive
    DataVendingFlow              <------>    ResolveTransactionsFlow (history)
                                             verify the transaction and its history
    receive(signature)           <-------    check uniqueness and time, sign
"""
from __future__ import annotations

from datetime import datetime
from typing import Any, Optional

from greenflow.flows.flow_logic import FlowLogic
from greenflow.flows.progress import ProgressTracker, Step
from greenflow.flows.registry import initiated_by, initiating_flow
from greenflow.flows.session import FlowSession
from greenflow.ledger.errors import TransactionVerificationError
from greenflow.ledger.notary import NotaryError, NotaryValidationError
from greenflow.ledger.transactions import SignedTransaction, TransactionSignature
from greenflow.ledger.flows.messages import EndOfFetch, FetchTransactions
from greenflow.ledger.flows.resolve import DataVendingFlow, ResolveTransactionsFlow, dependencies

__all__ = ["NotaryClientFlow", "NotaryError", "NotaryServiceFlow"]


@initiating_flow
class NotaryClientFlow(FlowLogic):
    """Get the notary's signature on ``stx`` (all other required signatures present)."""

    REQUESTING = Step("Sending the transaction to the notary")
    VALIDATING = Step("Checking the notary's signature")
    progress_tracker = ProgressTracker(REQUESTING, VALIDATING)

    def __init__(self, stx: SignedTransaction) -> None:
        self.stx = stx

    def call(self) -> TransactionSignature:
        stx = self.stx
        notary = stx.tx.notary
        if notary is None:
            raise NotaryError(f"transaction {stx.id} names no notary")
        self.services.verifier.check_signatures(stx, except_keys=[notary.owning_key])
        self.progress_tracker.current_step = self.REQUESTING
        session = self.initiate_flow(notary)
        reply = session.send_and_receive((TransactionSignature, FetchTransactions, EndOfFetch), stx)
        if not isinstance(reply, TransactionSignature):
            # A validating notary: it resolves the history before it answers.
            self.sub_flow(DataVendingFlow(session, dependencies(stx), first_request=reply))
            reply = session.receive(TransactionSignature)
        self.progress_tracker.current_step = self.VALIDATING
        verifier = self.services.verifier
        if reply.public_key != notary.owning_key or not verifier.is_valid(reply, stx.id):
            raise NotaryError(f"{notary.name} answered with a signature that is not its valid "
                              f"signature of transaction {stx.id}")
        return reply


@initiated_by(NotaryClientFlow)
class NotaryServiceFlow(FlowLogic):
    """The notary's side: (a validating notary: resolve and verify,) check for double
    spends, stale references and the time window, record, sign."""

    def __init__(self, session: FlowSession) -> None:
        self.session = session

    def call(self) -> None:
        session = self.session
        stx = session.receive(SignedTransaction)
        service = self.services.get("notary_service")
        if service is None:
            raise NotaryError(f"{self.our_identity.name} is not a notary")
        requester = session.counterparty
        if service.validating:
            self._resolve_and_verify(service, stx)
        # The notary's own clock, read once and journaled: a replay judges alike.
        now: Optional[datetime] = self.now() if _time_window(stx) is not None else None
        session.send(service.commit(stx, requester, now))

    def _resolve_and_verify(self, service: Any, stx: SignedTransaction) -> None:
        requester = self.session.counterparty
        me = self.our_identity.owning_key
        try:
            stx.check_shape()
            # Cheap to fail, and worth failing before fetching any history for it.
            self.services.verifier.check_signatures(stx, except_keys=[me])
        except TransactionVerificationError as exc:
            service.refuse(stx, requester, str(exc))
        try:
            self.sub_flow(ResolveTransactionsFlow(self.session, dependencies(stx)))
        except TransactionVerificationError as exc:
            service.refuse(stx, requester, f"its history does not verify: {exc}", NotaryValidationError)
        service.validate(stx, requester)


def _time_window(stx: Any) -> Any:
    return getattr(getattr(stx, "wtx", None), "time_window", None)
