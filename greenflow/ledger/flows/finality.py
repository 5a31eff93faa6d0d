"""Notarise and record a transaction, then give it to every other participant (Corda's
``FinalityFlow`` and ``ReceiveFinalityFlow``).

The initiator verifies the transaction, has the notary sign it when it consumes
anything (or reads reference states, or has a time window), records it in its own
vault, and sends it with its history to each session and to each observer; each
counterparty resolves, verifies (every signature, the notary's included) and records it.
A transaction the notary refuses is recorded nowhere.

Observers are parties that are no participant of the transaction but should hold it (a
regulator, an auditor). What they take into their vaults is their own choice, made on
the receiving side (``ReceiveFinalityFlow(session, states_to_record=...)``): the
sender cannot make anyone record anything.
"""
from __future__ import annotations

from typing import Iterable, Optional

from greenflow import wire
from greenflow.errors import FlowError, FlowException, NotSerializable
from greenflow.flows.flow_logic import FlowLogic
from greenflow.flows.progress import ProgressTracker, Step
from greenflow.flows.session import FlowSession
from greenflow.runtime.conversation import MAX_PAYLOAD_BYTES
from greenflow.ledger.crypto import SecureHash
from greenflow.ledger.recording import StatesToRecord
from greenflow.ledger.transactions import SignedTransaction
from greenflow.ledger.flows.notarisation import NotaryClientFlow
from greenflow.ledger.flows.resolve import ReceiveTransactionFlow, SendTransactionFlow

__all__ = ["FinalityFlow", "ReceiveFinalityFlow", "UnexpectedTransaction"]


class UnexpectedTransaction(FlowException):
    """`ReceiveFinalityFlow` was given another transaction than the one it expected."""


class FinalityFlow(FlowLogic):
    """Notarise ``stx`` (signed by every required signer but the notary), record it
    here, and send it to ``sessions`` (one for every participant other than this node)
    and to ``observers`` (sessions with parties that are not participants but should
    get the transaction; their responders choose what to record). Returns the
    notarised transaction."""

    VERIFYING = Step("Verifying the transaction")
    NOTARISING = Step("Notarising")
    RECORDING = Step("Recording the transaction")
    BROADCASTING = Step("Sending the transaction to the participants")
    progress_tracker = ProgressTracker(VERIFYING, NOTARISING, RECORDING, BROADCASTING)

    def __init__(self, stx: SignedTransaction, sessions: Iterable[FlowSession] = (),
                 observers: Iterable[FlowSession] = ()) -> None:
        self.stx = stx
        self.sessions = list(sessions)
        self.observers = list(observers)

    def call(self) -> SignedTransaction:
        stx = self.stx
        services = self.services
        notary = stx.tx.notary
        self.progress_tracker.current_step = self.VERIFYING
        services.verifier.verify(stx, except_keys=[notary.owning_key] if notary else [])
        self._check_sessions(stx)
        if self.sessions or self.observers:
            _check_sendable(stx)
        if stx.tx.needs_notary:
            self.progress_tracker.current_step = self.NOTARISING
            stx = stx.with_signature(self.sub_flow(NotaryClientFlow(stx)))
        self.progress_tracker.current_step = self.RECORDING
        services.vault.record_transactions([stx])
        self.progress_tracker.current_step = self.BROADCASTING
        for session in (*self.sessions, *self.observers):
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


def _check_sendable(stx: SignedTransaction) -> None:
    """Refuse a transaction too big for one message before the notary signs it or any
    vault records it: sent afterwards, it would fail with the inputs spent at the notary
    and the states recorded here only, never reaching the other participants. The
    encoding the id was hashed from says whether it is anywhere near the bound; only
    then is the transaction encoded as it would be sent."""
    near = stx.tx.__dict__.get("_encoded_size")
    if near is not None and near < MAX_PAYLOAD_BYTES // 2:
        return
    size = len(wire.encode(stx))
    if size > MAX_PAYLOAD_BYTES:
        raise NotSerializable(
            f"FinalityFlow: transaction {stx.id} is {size} bytes encoded, and a message is "
            f"limited to {MAX_PAYLOAD_BYTES} bytes: it could not be sent to its other "
            "participants, so it was neither notarised nor recorded")


class ReceiveFinalityFlow(FlowLogic):
    """The counterparty's (or observer's) side of `FinalityFlow`: receive, verify and
    record the transaction (``expected_tx_id``: refuse any other). Returns it.

    ``states_to_record``: `StatesToRecord.ONLY_RELEVANT` (the default) takes into the
    vault the states this node participates in; an observer passes
    `StatesToRecord.ALL_VISIBLE` to hold every state of the transaction, or
    `StatesToRecord.NONE` to keep only the transaction itself."""

    def __init__(self, session: FlowSession, expected_tx_id: Optional[SecureHash] = None,
                 states_to_record: StatesToRecord = StatesToRecord.ONLY_RELEVANT) -> None:
        if not isinstance(states_to_record, StatesToRecord):
            raise TypeError(f"states_to_record is a StatesToRecord, not {states_to_record!r}")
        self.session = session
        self.expected_tx_id = expected_tx_id
        self.states_to_record = states_to_record

    def call(self) -> SignedTransaction:
        stx = self.sub_flow(ReceiveTransactionFlow(self.session, check_sufficient_signatures=True))
        if self.expected_tx_id is not None and stx.id != self.expected_tx_id:
            raise UnexpectedTransaction(
                f"{self.session.counterparty.name} sent transaction {stx.id} for finality; "
                f"{self.expected_tx_id} was expected")
        vault = self.services.vault
        if self.states_to_record is StatesToRecord.ONLY_RELEVANT:
            vault.record_transactions([stx])
        elif self.states_to_record is StatesToRecord.ALL_VISIBLE:
            vault.record_transactions([stx], all_visible=True)
        else:
            vault.record_transactions([stx], relevant=False)
        return stx
