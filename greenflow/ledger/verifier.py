"""`TransactionVerifier` (``services.verifier``): is this transaction valid, here?

A transaction is valid when its content is well formed, every signature on it verifies
over its id, every required signer has signed (the notary aside until notarisation),
every contract of its states accepts it, and each input (and reference state) is
consumed (read) through the notary of the transaction that created it. That last rule is the ledger's, not a contract's:
a state created under notary A and spent through notary B would escape A's
double-spend check, so it is refused (greenflow has no notary-change transaction yet).

Inputs resolve against the transactions recorded in the vault plus, while a chain of
dependencies is checked, the earlier links of that chain.

Verification is journaled: a replayed flow gets the recorded verdict instead of paying
for the Ed25519 checks and contracts again. A signature this node has verified once is
remembered (a bounded cache), and so is one it made: the seller checks the buyer's
signature when it signs and would otherwise check it, and its own, again at finality.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Any, Iterable, Mapping, Optional

from greenflow.node.services import journaled, register_service_factory
from greenflow.ledger.crypto import SecureHash
from greenflow.ledger.errors import TransactionVerificationError
from greenflow.ledger.states import StateAndRef, StateRef
from greenflow.ledger.transactions import LedgerTransaction, SignedTransaction

__all__ = ["TransactionResolutionError", "TransactionVerifier"]

SIGNATURE_CACHE = 100_000
VERIFIED_CACHE = 100_000


class TransactionResolutionError(TransactionVerificationError):
    """A transaction's history cannot be checked back to issuance: a transaction it
    depends on is unknown here and its sender could not provide it (a forged or
    incomplete history), or the history is larger than the node accepts."""


class TransactionVerifier:
    def __init__(self, node: Any) -> None:
        self._node = node
        self._good: OrderedDict[tuple[bytes, bytes, bytes], None] = OrderedDict()
        # ids of the transactions whose contracts (and inputs' origins) passed here
        self._verified: OrderedDict[bytes, None] = OrderedDict()

    # ------------------------------------------------------------------ flows' entry points
    @journaled
    def verify(self, stx: SignedTransaction, *, except_keys: Iterable[bytes] = (),
               check_sufficient: bool = True) -> None:
        """Check ``stx`` against what this node has recorded. ``except_keys`` may be
        missing from the signatures (the notary's before notarisation); without
        ``check_sufficient`` only the signatures present are checked, not who is missing
        (a transaction still collecting signatures). Raises a
        `TransactionVerificationError` subclass naming what is wrong."""
        self.verify_now(stx, except_keys=except_keys, check_sufficient=check_sufficient)

    @journaled
    def verify_chain(self, stxs: Iterable[SignedTransaction]) -> None:
        """Check fully signed transactions in dependency order (each one's inputs
        recorded here already or earlier in ``stxs``)."""
        earlier: dict[SecureHash, SignedTransaction] = {}
        for stx in stxs:
            self.verify_now(stx, extra=earlier)
            earlier[stx.id] = stx

    # ------------------------------------------------------------------ the checks
    def verify_now(self, stx: SignedTransaction, *, except_keys: Iterable[bytes] = (),
                   check_sufficient: bool = True,
                   extra: Optional[Mapping[SecureHash, SignedTransaction]] = None) -> LedgerTransaction:
        """`verify` without the journal (also for code outside flows); returns the
        transaction with its inputs resolved."""
        self.check_signatures(stx, except_keys=except_keys, check_sufficient=check_sufficient)
        lookup = self._lookup(extra)
        tx = stx.tx

        def resolve(ref: StateRef) -> Optional[StateAndRef]:
            origin = lookup(ref.tx_id)
            if origin is None or not 0 <= ref.index < len(origin.tx.outputs):
                return None
            return StateAndRef(origin.tx.outputs[ref.index], ref)

        tid = stx.id.value
        if tid in self._verified:
            # The same content (and so the same input states) passed every check below.
            return tx.to_ledger_transaction(resolve)
        for ref in tx.inputs:
            self._check_origin(stx, ref, lookup, "input")
        for ref in tx.references:
            self._check_origin(stx, ref, lookup, "reference state")
        ltx = tx.verify(resolve)
        self._verified[tid] = None
        if len(self._verified) > VERIFIED_CACHE:
            self._verified.popitem(last=False)
        return ltx

    @staticmethod
    def _check_origin(stx: SignedTransaction, ref: StateRef, lookup: Any, what: str) -> None:
        tx = stx.tx
        origin = lookup(ref.tx_id)
        if origin is None:
            raise TransactionResolutionError(
                f"transaction {stx.id}: {what} {ref} cannot be resolved; the transaction "
                "that created it is unknown here")
        if origin.tx.notary != tx.notary:
            verb = "consumes" if what == "input" else "references"
            raise TransactionVerificationError(
                f"transaction {stx.id} {verb} {ref}, created under notary "
                f"{_name(origin.tx.notary)}, through notary {_name(tx.notary)}: a state is "
                f"{verb[:-1]}d only through the notary it was created under (only that notary "
                "knows whether it is still unconsumed)")

    def check_signatures(self, stx: SignedTransaction, *, except_keys: Iterable[bytes] = (),
                         check_sufficient: bool = True) -> None:
        """Every signature verifies over the id; with ``check_sufficient``, every
        required signer but ``except_keys`` has signed (`SignatureError` otherwise)."""
        if type(stx) is not SignedTransaction:
            raise TransactionVerificationError(
                f"expected a SignedTransaction, got {type(stx).__qualname__}")
        stx.check_shape()
        tid = stx.id.value
        good = self._good
        fresh = [s for s in stx.sigs if (s.public_key, tid, s.signature) not in good]
        exempt = frozenset(except_keys) if check_sufficient else stx.tx.required_signers
        if any(not s.is_valid_for(stx.id) for s in fresh) or stx.missing_signers(exempt):
            # Raises, naming the bad or missing signer: by the parties this node knows too
            # (a required signer need not be a participant of any output).
            stx.verify_signatures(exempt, names=self._party_names())
        for s in fresh:
            self.remember(s, stx.id)

    def is_valid(self, signature: Any, tx_id: SecureHash) -> bool:
        """Whether ``signature`` (a peer's `TransactionSignature`, unchecked) is valid for
        ``tx_id``; remembered when it is."""
        key = (signature.public_key, tx_id.value, signature.signature)
        if key in self._good:
            return True
        if (type(signature.public_key) is not bytes or type(signature.signature) is not bytes
                or not signature.is_valid_for(tx_id)):
            return False
        self.remember(signature, tx_id)
        return True

    def remember(self, signature: Any, tx_id: SecureHash) -> None:
        """Record a signature known to be valid (one this node just made or checked)."""
        self._good[(signature.public_key, tx_id.value, signature.signature)] = None
        if len(self._good) > SIGNATURE_CACHE:
            self._good.popitem(last=False)

    def _party_names(self) -> dict[bytes, str]:
        try:
            parties = self._node.services.identity_service.all_parties()
        except Exception:  # noqa: BLE001 - only to name keys in an error being raised
            return {}
        return {p.owning_key: p.name for p in parties}

    def _lookup(self, extra: Optional[Mapping[SecureHash, SignedTransaction]]) -> Any:
        vault = self._node.services.vault

        def lookup(tx_id: SecureHash) -> Optional[SignedTransaction]:
            if extra is not None:
                found = extra.get(tx_id)
                if found is not None:
                    return found
            return vault.transaction(tx_id)

        return lookup


def _name(party: Any) -> str:
    return "none" if party is None else getattr(party, "name", repr(party))


register_service_factory("verifier", TransactionVerifier)
