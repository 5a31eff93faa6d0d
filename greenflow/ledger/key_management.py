"""`KeyManagementService` (``services.key_management``): signs transactions with the
node's identity key.

Flows never hold the key itself: a `KeyPair` refuses to be pickled, and flow locals are
snapshotted for diagnostics. Ed25519 signatures are deterministic, so a flow that signs,
crashes and is replayed produces the very same signature: signing needs no journal entry.
"""
from __future__ import annotations

from typing import Any

from greenflow.node.services import register_service_factory
from greenflow.ledger import verifier  # noqa: F401  (services.verifier)
from greenflow.ledger.crypto import SecureHash
from greenflow.ledger.transactions import SignedTransaction, TransactionSignature

__all__ = ["KeyManagementService"]


class KeyManagementService:
    def __init__(self, node: Any) -> None:
        self._keypair = node.identity.keypair
        self._verifier = node.services.verifier

    @property
    def public_key(self) -> bytes:
        return self._keypair.public_key

    def signature(self, tx_id: SecureHash) -> TransactionSignature:
        """This node's signature of transaction ``tx_id`` (which its verifier need not
        check again)."""
        signature = TransactionSignature.create(self._keypair, tx_id)
        self._verifier.remember(signature, tx_id)
        return signature

    def sign(self, stx: SignedTransaction) -> SignedTransaction:
        """``stx`` with this node's signature added."""
        if not isinstance(stx, SignedTransaction):
            raise TypeError(f"key_management.sign takes a SignedTransaction "
                            f"(SignedTransaction(builder.to_wire_transaction())), not "
                            f"{type(stx).__qualname__}")
        return stx.with_signature(self.signature(stx.id))

    def __repr__(self) -> str:
        return f"KeyManagementService({self._keypair!r})"


register_service_factory("key_management", KeyManagementService)
