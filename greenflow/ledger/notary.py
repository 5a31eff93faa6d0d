"""`NotaryService` (``services.notary_service`` on a notary node): the double-spend check.

A notary signs a transaction only when none of its inputs was consumed before by another
transaction, and records the inputs as consumed by this one, in LMDB, in the same commit
as the checkpoint of the flow that answered (so a crash either loses both or keeps both;
a client that asks again after a crash gets the same signature, since asking twice for
the same transaction is not a double spend).

This notary is *non-validating*, like Corda's default: it checks the signatures (all but
its own) and that it is the transaction's notary, but not the contracts or the history;
the parties resolve and verify those themselves (`ResolveTransactionsFlow`).

A node opened with ``notary=True`` installs this service and answers
`NotaryClientFlow` whatever apps it was opened with (Corda installs its notary flows
the same way).
"""
from __future__ import annotations

import logging
from typing import Any

from ..errors import FlowError, FlowException
from ..party import Party
from ..services import journaled
from . import key_management, verifier  # noqa: F401  (their service factories)
from .app_db import AppDb
from .errors import TransactionVerificationError
from .transactions import SignedTransaction, TransactionSignature
from .vault import ref_key

__all__ = ["NotaryError", "NotaryService", "install_notary"]

log = logging.getLogger("greenflow.ledger.notary")

LEDGER_FLOWS = "greenflow.ledger.flows"


class NotaryError(FlowException):
    """The notary refused a transaction: an input was consumed already by another
    transaction (a double spend: the message names that transaction and the state), the
    transaction names another notary, or its signatures are bad or incomplete. The
    transaction is not notarised and must not be recorded."""


class NotaryService:
    def __init__(self, node: Any) -> None:
        self._node = node
        self._consumed = AppDb(node.store, "notary_consumed", lambda v: v, bytes)
        self.notarised = 0
        self.refused = 0

    @property
    def party(self) -> Party:
        return self._node.party

    @journaled
    def commit(self, stx: SignedTransaction, requester: Party) -> TransactionSignature:
        """Mark the inputs of ``stx`` consumed by it and return this notary's signature
        (`NotaryError` for a double spend or a transaction this notary must not sign)."""
        me = self._node.party
        where = f"notary {me.name} refused transaction {_id(stx)} from {requester.name}"
        try:
            tx = stx.tx
            if type(tx.notary) is not Party or tx.notary.owning_key != me.owning_key:
                raise self._refuse(f"{where}: it names notary "
                                   f"{getattr(tx.notary, 'name', tx.notary)!r}, not this one")
            self._node.services.verifier.check_signatures(stx, except_keys=[me.owning_key])
        except TransactionVerificationError as exc:
            raise self._refuse(f"{where}: {exc}") from None
        tid = stx.id.value
        conflicts = []
        for ref in tx.inputs:
            spent_by = self._consumed.get(ref_key(ref))
            if spent_by is not None and spent_by != tid:
                conflicts.append(f"input {ref} was already consumed by transaction {spent_by.hex()}")
        if conflicts:
            raise self._refuse(f"{where}: double spend: " + "; ".join(conflicts))
        with self._node.services.writes() as batch:
            for ref in tx.inputs:
                self._consumed.put(batch, ref_key(ref), tid)
        self.notarised += 1
        return self._node.services.key_management.signature(stx.id)

    def consumed_by(self, ref: Any) -> Any:
        """The id (bytes) of the transaction that consumed ``ref``, or None."""
        return self._consumed.get(ref_key(ref))

    def _refuse(self, message: str) -> NotaryError:
        self.refused += 1
        log.info("%s", message)
        return NotaryError(message)


def _id(stx: Any) -> str:
    try:
        return str(stx.id)
    except Exception:  # a malformed transaction may not even have an id
        return "(malformed)"


def install_notary(node: Any) -> NotaryService:
    """Make ``node`` a notary: the service, and the responder to `NotaryClientFlow`."""
    from .flows import notarisation  # noqa: F401  (registers NotaryServiceFlow)
    responders = node.scheduler.responders
    if responders.apps is not None and LEDGER_FLOWS not in responders.apps:
        responders.apps.append(LEDGER_FLOWS)
    existing = node.services.get("notary_service")
    if existing is not None:
        return existing
    if not getattr(node, "is_notary", False):
        raise FlowError(f"{node.party.name} was not opened as a notary (Node(..., notary=True))")
    service = NotaryService(node)
    node.services.register("notary_service", service)
    return service
