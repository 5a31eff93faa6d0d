"""`NotaryService` (``services.notary_service`` on a notary node): uniqueness and time.

A notary signs a transaction only when
- none of its inputs was consumed before by another transaction (a double spend),
- none of its reference states was consumed at all (a stale reference: the transaction
  relied on a fact that is no longer current),
- its own clock is inside the transaction's time window, if it has one,

and then records the inputs as consumed by this transaction, in LMDB, in the same commit
as the checkpoint of the flow that answered (so a crash either loses both or keeps
both). Reference states are checked, never consumed.

Everything the notary keeps is durable and survives its restart: the consumed-state map
(``notary_consumed``: state ref -> consuming transaction id), the transactions it signed
(``notary_committed``: id -> requesting party), and its counters (``notary_meta``). A
client that asks again for a transaction already signed (after a crash, or after its
window closed) gets the same signature: asking twice is not a double spend.

Two kinds, chosen per notary when the node is created (``Node(notary=True,
validating_notary=...)``, ``validating_notary = true`` in ``node.toml``, ``greenflow
network bootstrap --validating-notary``, ``MockNetwork.create_notary(validating=True)``):

- *non-validating* (the default, like Corda's): checks the signatures (all but its own)
  and that it is the transaction's notary, not the contracts or the history; the
  parties resolve and verify those themselves. It learns nothing of the transaction's
  history.
- *validating*: before it signs, it fetches the transaction's whole history from the
  client (`ResolveTransactionsFlow`), verifies it back to issuance and verifies the
  transaction itself, contracts included, so it never signs an invalid transaction. It
  must have the apps whose contracts it verifies installed, and it sees every
  transaction in the chain.

Time is judged by the notary's clock as its flow reads it (``self.now()``): recorded in
its journal, so a replay judges the same way, and driven by the virtual clock on
MockNetwork. A time window is never judged by the client's clock.

A node opened with ``notary=True`` installs this service and answers
`NotaryClientFlow` whatever apps it was opened with (Corda installs its notary flows
the same way).
"""
from __future__ import annotations

import logging
import struct
from datetime import datetime, timezone
from typing import Any, Optional

from greenflow.errors import FlowError, FlowException
from greenflow.party import Party
from greenflow.node.services import journaled
from greenflow.ledger import key_management, verifier  # noqa: F401  (their service factories)
from greenflow.ledger.app_db import AppDb
from greenflow.ledger.errors import TransactionVerificationError
from greenflow.ledger.transactions import SignedTransaction, TransactionSignature
from greenflow.ledger.vault import ref_key

__all__ = ["NotaryConflictError", "NotaryError", "NotaryService", "NotaryTimeWindowError",
           "NotaryValidationError", "install_notary"]

log = logging.getLogger("greenflow.ledger.notary")

LEDGER_FLOWS = "greenflow.ledger.flows"

_COUNTER = struct.Struct(">Q")
_NOTARISED, _REFUSED = b"notarised", b"refused"


class NotaryError(FlowException):
    """The notary refused a transaction: an input was consumed already by another
    transaction (a double spend: the message names that transaction and the state), a
    reference state is stale, the notary's time is outside the transaction's window, the
    transaction names another notary, its signatures are bad or incomplete, or (a
    validating notary) it or its history does not verify. The transaction is not
    notarised and must not be recorded. The subclasses narrow it down."""


class NotaryConflictError(NotaryError):
    """An input was consumed by another transaction (a double spend), or a reference
    state was consumed (stale): the message names each state and who consumed it."""


class NotaryTimeWindowError(NotaryError):
    """The notary's clock is outside the transaction's time window: the message gives
    the window and the notary's time."""


class NotaryValidationError(NotaryError):
    """A validating notary could not verify the transaction or its history."""


class NotaryService:
    def __init__(self, node: Any, validating: bool = False) -> None:
        self._node = node
        #: Whether this notary resolves and verifies whole transactions before it signs.
        self.validating = validating
        store = node.store
        self._consumed = AppDb(store, "notary_consumed", lambda v: v, bytes)
        self._committed = AppDb(store, "notary_committed", lambda v: v, bytes)
        store.open_table("notary_meta")
        self._counts = {k: self._load_count(k) for k in (_NOTARISED, _REFUSED)}

    @property
    def party(self) -> Party:
        return self._node.party

    @property
    def kind(self) -> str:
        return "validating" if self.validating else "non-validating"

    @property
    def notarised(self) -> int:
        """Transactions this notary has signed, over its whole life (restarts included)."""
        return self._counts[_NOTARISED]

    @property
    def refused(self) -> int:
        """Requests this notary has refused, over its whole life."""
        return self._counts[_REFUSED]

    # ------------------------------------------------------------------ the flow's calls
    @journaled
    def commit(self, stx: SignedTransaction, requester: Party,
               now: Optional[datetime] = None) -> TransactionSignature:
        """Check ``stx`` for double spends, stale references and its time window (against
        ``now``, the notary flow's ``self.now()``; the node's clock when called outside a
        flow), mark its inputs consumed by it and return this notary's signature
        (`NotaryError` otherwise)."""
        where = self._where(stx, requester)
        self._check_request(stx, where)
        tx = stx.tx
        tid = stx.id.value
        if self._committed.get(tid) is not None:
            return self._sign(stx)  # signed before: the same answer, whatever the time now
        window = tx.time_window
        if window is not None:
            at = now if now is not None else datetime.fromtimestamp(self._node.clock.now(), timezone.utc)
            if not window.contains(at):
                early = window.from_time is not None and at < window.from_time
                raise self._refuse(NotaryTimeWindowError(
                    f"{where}: outside its time window {window.describe()}: the notary's time "
                    f"{at.isoformat()} is {'before' if early else 'at or after'} the "
                    f"{'start' if early else 'end'} of the window"))
        conflicts = []
        for ref in tx.inputs:
            spent_by = self._consumed.get(ref_key(ref))
            if spent_by is not None and spent_by != tid:
                conflicts.append(f"input {ref} was already consumed by transaction {spent_by.hex()}")
        for ref in tx.references:
            spent_by = self._consumed.get(ref_key(ref))
            if spent_by is not None:
                conflicts.append(f"reference state {ref} is stale: it was consumed by "
                                 f"transaction {spent_by.hex()}")
        if not conflicts:
            conflicts = self._claim(tx.inputs, tid)
        if conflicts:
            what = "double spend" if any(c.startswith("input") for c in conflicts) else "stale reference"
            raise self._refuse(NotaryConflictError(f"{where}: {what}: " + "; ".join(conflicts)))
        with self._node.services.writes() as batch:
            for ref in tx.inputs:
                self._consumed.put(batch, ref_key(ref), tid)
            self._committed.put(batch, tid, requester.name.encode("utf-8"))
            self._count(batch, _NOTARISED)
        return self._sign(stx)

    @journaled
    def validate(self, stx: SignedTransaction, requester: Party) -> None:
        """A validating notary's check, once the history of ``stx`` is recorded here:
        the transaction verifies (signatures but this notary's, inputs and references
        resolved, contracts)."""
        where = self._where(stx, requester)
        self._check_request(stx, where)
        try:
            self._node.services.verifier.verify_now(stx, except_keys=[self._node.party.owning_key])
        except TransactionVerificationError as exc:
            raise self._refuse(NotaryValidationError(f"{where}: it does not verify: {exc}")) from None

    @journaled
    def refuse(self, stx: Any, requester: Party, why: str,
               error: type[NotaryError] = NotaryError) -> None:
        """Count and raise a refusal decided by the notary's flow (a history that would
        not resolve or verify)."""
        raise self._refuse(error(f"{self._where(stx, requester)}: {why}"))

    def consumed_by(self, ref: Any) -> Any:
        """The id (bytes) of the transaction that consumed ``ref``, or None."""
        return self._consumed.get(ref_key(ref))

    def committed(self, tx_id: Any) -> Optional[str]:
        """The name of the party that had transaction ``tx_id`` notarised here, or None
        when this notary never signed it."""
        raw = self._committed.get(tx_id.value)
        return None if raw is None else bytes(raw).decode("utf-8")

    # ------------------------------------------------------------------ internals
    def _where(self, stx: Any, requester: Party) -> str:
        return f"notary {self._node.party.name} refused transaction {_id(stx)} from {requester.name}"

    def _check_request(self, stx: SignedTransaction, where: str) -> None:
        me = self._node.party
        try:
            if type(stx) is not SignedTransaction:
                raise TransactionVerificationError(
                    f"expected a SignedTransaction, got {type(stx).__qualname__}")
            stx.check_shape()
            tx = stx.tx
            if type(tx.notary) is not Party or tx.notary.owning_key != me.owning_key:
                raise self._refuse(NotaryError(f"{where}: it names notary "
                                               f"{getattr(tx.notary, 'name', tx.notary)!r}, not this one"))
            self._node.services.verifier.check_signatures(stx, except_keys=[me.owning_key])
        except TransactionVerificationError as exc:
            raise self._refuse(NotaryError(f"{where}: {exc}")) from None

    def _claim(self, inputs: Any, tid: bytes) -> list[str]:
        """Where uniqueness is decided beyond this process (a clustered notary: see
        `vault_backend_pg.SharedNotaryService`), claim ``inputs`` for ``tid`` there and
        name the conflicts; alone, the checks above decided it."""
        return []

    def _sign(self, stx: SignedTransaction) -> TransactionSignature:
        return self._node.services.key_management.signature(stx.id)

    def _refuse(self, error: NotaryError) -> NotaryError:
        with self._node.services.writes() as batch:
            self._count(batch, _REFUSED)
        log.info("%s", error)
        return error

    def _count(self, batch: Any, key: bytes) -> None:
        self._counts[key] += 1
        batch.table_put("notary_meta", key, _COUNTER.pack(self._counts[key]))

    def _load_count(self, key: bytes) -> int:
        raw = self._node.store.table_get("notary_meta", key)
        return 0 if raw is None else _COUNTER.unpack(bytes(raw))[0]


def _id(stx: Any) -> str:
    try:
        return str(stx.id)
    except Exception:  # a malformed transaction may not even have an id
        return "(malformed)"


def install_notary(node: Any, validating: bool = False) -> NotaryService:
    """Make ``node`` a notary (``validating``: of the validating kind): the service, and
    the responder to `NotaryClientFlow`."""
    from greenflow.ledger.flows import notarisation  # noqa: F401  (registers NotaryServiceFlow)
    responders = node.scheduler.responders
    if responders.apps is not None and LEDGER_FLOWS not in responders.apps:
        responders.apps.append(LEDGER_FLOWS)
    existing = node.services.get("notary_service")
    if existing is not None:
        return existing
    if not getattr(node, "is_notary", False):
        raise FlowError(f"{node.party.name} was not opened as a notary (Node(..., notary=True))")
    cls: type[NotaryService] = NotaryService
    if getattr(node.store, "owned", None) is not None:   # a clustered worker
        from greenflow.ledger.notary_backend_pg import SharedNotaryService
        cls = SharedNotaryService
    service = cls(node, validating=validating)
    node.services.register("notary_service", service)
    log.info("%s is a %s notary", node.party.name, service.kind)
    return service
