"""Notarise and record a transaction, then give it to every other participant (Corda's
``FinalityFlow`` and ``ReceiveFinalityFlow``).

The initiator verifies the transaction, has the notary sign it when it consumes
anything, records it in its own vault, and sends it with its history to each session;
each counterparty resolves, verifies (every signature, the notary's included) and
records it. A transaction the notary refuses is recorded nowhere.
"""
from __future__ import annotations

from typing import Iterable, Optional

from ...errors import FlowError, FlowException
from ...flow_logic import FlowLogic
from ...progress import ProgressTracker, Step
from ...session import FlowSession
from ..crypto import SecureHash
from ..transactions import SignedTransaction
from .notarisation import NotaryClientFlow
from .resolve import ReceiveTransactionFlow, SendTransactionFlow

__all__ = ["FinalityFlow", "ReceiveFinalityFlow", "UnexpectedTransaction"]


class UnexpectedTransaction(FlowException):
    """`ReceiveFinalityFlow` was given another transaction than the one it expected."""


class FinalityFlow(FlowLogic):
    """Notarise ``stx`` (signed by every required signer but the notary), record it
    here, and send it to ``sessions``: one for every participant other than this node.
    Returns the notarised transaction."""

    VERIFYING = Step("Verifying the transaction")
    NOTARISING = Step("Notarising")
    RECORDING = Step("Recording the transaction")
    BROADCASTING = Step("Sending the transaction to the participants")
    progress_tracker = ProgressTracker(VERIFYING, NOTARISING, RECORDING, BROADCASTING)

    def __init__(self, stx: SignedTransaction, sessions: Iterable[FlowSession] = ()) -> None:
        self.stx = stx
        self.sessions = list(sessions)

    def call(self) -> SignedTransaction:
        stx = self.stx
        services = self.services
        notary = stx.tx.notary
        self.progress_tracker.current_step = self.VERIFYING
        services.verifier.verify(stx, except_keys=[notary.owning_key] if notary else [])
        self._check_sessions(stx)
        if stx.tx.inputs:
            self.progress_tracker.current_step = self.NOTARISING
            stx = stx.with_signature(self.sub_flow(NotaryClientFlow(stx)))
        self.progress_tracker.current_step = self.RECORDING
        services.vault.record_transactions([stx])
        self.progress_tracker.current_step = self.BROADCASTING
        for session in self.sessions:
            self.sub_flow(SendTransactionFlow(session, stx))
        return stx

    def _check_sessions(self, stx: SignedTransaction) -> None:
        vault = self.services.vault
        me = self.our_identity.owning_key
        parties = {p.owning_key: p for s in stx.tx.outputs for p in s.participants}
        for ref in stx.tx.inputs:
            sar = vault.state(ref)  # verified above, so recorded here
            if sar is not None:
                parties.update((p.owning_key, p) for p in sar.state.participants)
        covered = {s.counterparty.owning_key for s in self.sessions}
        missing = sorted(p.name for k, p in parties.items() if k != me and k not in covered)
        if missing:
            raise FlowError(f"FinalityFlow: no session for participant(s) {', '.join(missing)} of "
                            f"transaction {stx.id}; pass one session per other participant")


class ReceiveFinalityFlow(FlowLogic):
    """The counterparty's side of `FinalityFlow`: receive, verify and record the
    transaction (``expected_tx_id``: refuse any other). Returns it."""

    def __init__(self, session: FlowSession, expected_tx_id: Optional[SecureHash] = None) -> None:
        self.session = session
        self.expected_tx_id = expected_tx_id

    def call(self) -> SignedTransaction:
        stx = self.sub_flow(ReceiveTransactionFlow(self.session, check_sufficient_signatures=True))
        if self.expected_tx_id is not None and stx.id != self.expected_tx_id:
            raise UnexpectedTransaction(
                f"{self.session.counterparty.name} sent transaction {stx.id} for finality; "
                f"{self.expected_tx_id} was expected")
        self.services.vault.record_transactions([stx])
        return stx
