"""Asking the notary (Corda's ``NotaryFlow.Client`` and the notary's service flow).

The client sends the signed transaction to the notary its content names; the notary
(`greenflow.ledger.notary.NotaryService`) marks the inputs consumed and answers with
its signature, or refuses with `NotaryError` (a double spend names the transaction that
consumed the input first). The client checks that the signature is the notary's and
valid before it is added to the transaction.
"""
from __future__ import annotations

from ...flow_logic import FlowLogic
from ...progress import ProgressTracker, Step
from ...registry import initiated_by, initiating_flow
from ...session import FlowSession
from ..notary import NotaryError
from ..transactions import SignedTransaction, TransactionSignature

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
        signature = session.send_and_receive(TransactionSignature, stx)
        self.progress_tracker.current_step = self.VALIDATING
        verifier = self.services.verifier
        if signature.public_key != notary.owning_key or not verifier.is_valid(signature, stx.id):
            raise NotaryError(f"{notary.name} answered with a signature that is not its valid "
                              f"signature of transaction {stx.id}")
        return signature


@initiated_by(NotaryClientFlow)
class NotaryServiceFlow(FlowLogic):
    """The notary's side: check for double spends, record, sign."""

    def __init__(self, session: FlowSession) -> None:
        self.session = session

    def call(self) -> None:
        stx = self.session.receive(SignedTransaction)
        service = self.services.get("notary_service")
        if service is None:
            raise NotaryError(f"{self.our_identity.name} is not a notary")
        self.session.send(service.commit(stx, self.session.counterparty))
