"""Gathering the signatures a transaction needs (Corda's ``CollectSignaturesFlow`` and
``SignTransactionFlow``).

The initiator, having signed, sends the transaction to each counterparty with its
history (`SendTransactionFlow`); each one resolves and verifies it, runs its own
`SignTransactionFlow.check_transaction` (is this the deal I agreed to?), and sends back
its signature, which the initiator checks. A counterparty refuses by raising a
`FlowException` from ``check_transaction``: the initiator gets it at its ``receive``.

The history of the initiator's own inputs is history the counterparties cannot hold:
``push_history`` sends those transactions with the transaction, unasked, which saves
each counterparty's first request and its wait (the counterparty's flow must say so:
``history_pushed``, see `greenflow.ledger.flows.resolve`).
"""
from __future__ import annotations

from typing import Iterable, Optional

from greenflow.errors import FlowError, FlowException
from greenflow.flows.flow_logic import FlowLogic
from greenflow.flows.progress import ProgressTracker, Step
from greenflow.flows.session import FlowSession
from greenflow.ledger.errors import SignatureError
from greenflow.ledger.crypto import SecureHash
from greenflow.ledger.transactions import SignedTransaction, TransactionSignature
from greenflow.ledger.flows.resolve import ReceiveTransactionFlow, SendTransactionFlow

__all__ = ["CollectSignaturesFlow", "SignTransactionFlow", "TransactionRefused"]


class TransactionRefused(FlowException):
    """A counterparty would not sign: the transaction is not what it agreed to (raised
    from `SignTransactionFlow.check_transaction`; the message says why)."""


class CollectSignaturesFlow(FlowLogic):
    """Collect the signature of each session's counterparty on ``stx`` (which this node
    has signed) and return it signed by all of them. Every required signer but the
    notary must then have signed. ``push_history``: transactions of ``stx``'s history
    to send each counterparty unasked (those that created this node's own inputs); their
    `SignTransactionFlow` must have ``history_pushed`` set."""

    COLLECTING = Step("Collecting signatures from counterparties")
    VERIFYING = Step("Verifying collected signatures")
    progress_tracker = ProgressTracker(COLLECTING, VERIFYING)

    def __init__(self, stx: SignedTransaction, sessions: Iterable[FlowSession],
                 push_history: Optional[Iterable[SecureHash]] = None) -> None:
        self.stx = stx
        self.sessions = list(sessions)
        self.push_history = None if push_history is None else tuple(push_history)

    def call(self) -> SignedTransaction:
        stx = self.stx
        keys, verifier = self.services.key_management, self.services.verifier
        if keys.public_key not in stx.signed_keys:
            raise FlowError("CollectSignaturesFlow: sign the transaction before collecting the "
                            "others' signatures (the initiator signs first)")
        verifier.check_signatures(stx, check_sufficient=False)
        self.progress_tracker.current_step = self.COLLECTING
        required = stx.tx.required_signers
        for session in self.sessions:
            peer = session.counterparty
            if peer.owning_key == keys.public_key:   # (its signature is here already)
                raise FlowError(f"CollectSignaturesFlow: a session to this node itself "
                                f"({peer.name}): pass sessions with the other signers only")
            if peer.owning_key not in required:
                raise FlowError(f"CollectSignaturesFlow: {peer.name} is not a required signer of "
                                f"transaction {stx.id}")
            self.sub_flow(SendTransactionFlow(session, stx, push=self.push_history))
            signature = session.receive(TransactionSignature)
            if signature.public_key != peer.owning_key or not verifier.is_valid(signature, stx.id):
                raise SignatureError(f"{peer.name} sent a signature that is not its valid signature "
                                     f"of transaction {stx.id}")
            stx = stx.with_signature(signature)
        self.progress_tracker.current_step = self.VERIFYING
        notary = stx.tx.notary
        verifier.check_signatures(stx, except_keys=[notary.owning_key] if notary else [])
        return stx


class SignTransactionFlow(FlowLogic):
    """The counterparty's side of `CollectSignaturesFlow`: subclass it, implement
    `check_transaction`, and run it as a sub-flow of your responder. Returns the
    transaction with this node's signature added. Set ``history_pushed`` (on the class
    or the instance) when the initiator's `CollectSignaturesFlow` has ``push_history``."""

    #: The initiator sends part of the history unasked (see `CollectSignaturesFlow`).
    history_pushed: bool = False

    RECEIVING = Step("Receiving the proposed transaction")
    VERIFYING = Step("Verifying the proposed transaction")
    SIGNING = Step("Signing the proposed transaction")
    progress_tracker = ProgressTracker(RECEIVING, VERIFYING, SIGNING)

    def __init__(self, session: FlowSession) -> None:
        self.session = session

    def check_transaction(self, stx: SignedTransaction) -> None:
        """Raise a `FlowException` (e.g. `TransactionRefused`) unless ``stx`` is the deal
        this node agreed to. The transaction, its history and the signatures it has are
        verified already; this is about what it means for you."""
        raise NotImplementedError(f"{type(self).__qualname__} must implement check_transaction")

    def call(self) -> SignedTransaction:
        session = self.session
        peer = session.counterparty
        self.progress_tracker.current_step = self.RECEIVING
        stx = self.sub_flow(ReceiveTransactionFlow(session, check_sufficient_signatures=False,
                                                   pushed=self.history_pushed))
        self.progress_tracker.current_step = self.VERIFYING
        keys = self.services.key_management
        if keys.public_key not in stx.tx.required_signers:
            raise TransactionRefused(f"{self.our_identity.name} was asked to sign transaction "
                                     f"{stx.id}, which needs no signature of it")
        if peer.owning_key not in stx.signed_keys:
            raise TransactionRefused(f"{peer.name} asked {self.our_identity.name} to sign "
                                     f"transaction {stx.id} without signing it itself")
        self.check_transaction(stx)
        self.progress_tracker.current_step = self.SIGNING
        signature = keys.signature(stx.id)
        session.send(signature)
        return stx.with_signature(signature)
