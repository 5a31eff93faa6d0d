"""Moving transactions between nodes with their history (Corda's ``SendTransactionFlow``,
``ReceiveTransactionFlow``, ``ResolveTransactionsFlow`` and their state-and-ref forms).

A node never takes a transaction on trust: it checks the whole chain of transactions
that created its inputs and reference states, back to their issuance. The sending side
runs `DataVendingFlow` after what it sent: it answers the receiver's requests for
dependencies, and only for transactions reachable from what it sent, until the receiver
says `EndOfFetch`. The receiving side runs `ResolveTransactionsFlow`: it asks for what it
lacks in batches of up to `MAX_BATCH` ids (one round trip per level of the history that
is missing here), then verifies the fetched transactions in dependency order and records
them.

The protocol, on one session::

    sender                                   receiver
    send(stx or states)          ------->    receive
    DataVendingFlow:                          ResolveTransactionsFlow:
      receive FetchTransactions  <-------      send FetchTransactions(missing ids)
      send FetchedTransactions   ------->      receive, check, queue their inputs
      ...                                      ...
      receive EndOfFetch         <-------      send EndOfFetch
                                               verify the chain, record it

When what was sent has no dependencies, both sides skip the exchange. A request also
names (``known``) the ids of that history the receiver holds already; once everything
the sender would serve has been sent or is known to the receiver, its answer says
``complete`` and both sides stop there, without the `EndOfFetch` (the usual case: one
level of missing history, one round trip).

Where the sender knows the receiver lacks some of that history (a seller showing a
buyer the paper it offers, a buyer showing the seller the history of its own coins),
both sides may agree to skip the first request: the sender names the transactions in
``push`` (``DataVendingFlow(..., push=ids)``, or `SendTransactionFlow` and
`CollectSignaturesFlow` with the same argument), which sends them unasked as a
`FetchedTransactions`, and the receiver runs ``ResolveTransactionsFlow(...,
pushed=True)`` (or `ReceiveTransactionFlow`, ``SignTransactionFlow.history_pushed``),
which takes that message as the answer to the request it did not send. The pushed
transactions are checked like fetched ones (only ones it resolves, each verified back to
issuance); the rest is asked for as usual. A push that covers everything (``complete``:
an issuance has no history of its own) saves the whole exchange; otherwise the receiver
still ends it with a request or `EndOfFetch`, but sends that without waiting for anything.
"""
from __future__ import annotations

from typing import Any, Iterable, Optional, Sequence

from greenflow.errors import FlowError, FlowException
from greenflow.flows.flow_logic import FlowLogic
from greenflow.flows.progress import ProgressTracker, Step
from greenflow.flows.session import FlowSession
from greenflow.ledger.crypto import SecureHash
from greenflow.ledger.errors import TransactionVerificationError
from greenflow.ledger.states import ContractState, StateAndRef, StateRef
from greenflow.ledger.transactions import SignedTransaction
from greenflow.ledger.verifier import TransactionResolutionError
from greenflow.ledger.flows.messages import (EndOfFetch, FetchedTransactions, FetchTransactions, checked_ids,
                       checked_transactions)

__all__ = [
    "DataVendingFlow", "FetchRefused", "MAX_BATCH", "MAX_TRANSACTIONS", "ReceiveStateAndRefFlow",
    "ReceiveTransactionFlow", "ResolveTransactionsFlow", "SendStateAndRefFlow",
    "SendTransactionFlow", "TransactionResolutionError", "check_states_match",
]

#: Transaction ids asked for in one request.
MAX_BATCH = 100
#: Transactions one resolution may fetch before it gives up (a history this long is
#: more likely an attack on the receiver's memory than a real one).
MAX_TRANSACTIONS = 10_000


class FetchRefused(FlowException):
    """A peer asked for a transaction that is not part of what was sent to it (nor of its
    history): nodes only show the history of what they chose to share."""


class DataVendingFlow(FlowLogic):
    """Serve the peer's requests for ``tx_ids`` and their history until it is done.
    ``first_request``: a request already received (by a caller that had to look at the
    peer's answer to learn it wants history, as `NotaryClientFlow` does). ``push``: the
    transactions (of ``tx_ids``) to send first, unasked, in one message even when none
    of them is here (the first `MAX_BATCH` of them: the peer asks for the rest); the peer
    must resolve with ``ResolveTransactionsFlow(..., pushed=True)``."""

    def __init__(self, session: FlowSession, tx_ids: Iterable[SecureHash],
                 first_request: Optional[Any] = None,
                 push: Optional[Iterable[SecureHash]] = None) -> None:
        self.session = session
        self.tx_ids = tuple(dict.fromkeys(tx_ids))
        self.first_request = first_request
        self.push = None if push is None else tuple(dict.fromkeys(push))
        if self.push is not None and not set(self.push) <= set(self.tx_ids):
            raise FlowError("DataVendingFlow: push names transactions that are not among "
                            "tx_ids (it may only send what the peer may ask for)")

    def call(self) -> None:
        if not self.tx_ids and self.first_request is None:
            return
        session, peer = self.session, self.session.counterparty
        allowed = set(self.tx_ids)
        covered: set[SecureHash] = set()  # of those: sent, or held by the peer (it says)
        request = self.first_request
        if self.push is not None and request is None:
            if self._answer(self.push[:MAX_BATCH], allowed, covered):
                return
        while True:
            if request is None:
                request = session.receive((FetchTransactions, EndOfFetch))
            if isinstance(request, EndOfFetch):
                return
            ids = checked_ids(request.ids, peer, "FetchTransactions")
            known = checked_ids(request.known, peer, "FetchTransactions")
            if len(ids) > MAX_BATCH or len(known) > MAX_BATCH:
                raise FetchRefused(f"{peer.name} asked for {len(ids)} transactions (holding "
                                   f"{len(known)}) at once; the limit is {MAX_BATCH} of each")
            for tx_id in ids:
                if tx_id not in allowed:
                    raise FetchRefused(f"{peer.name} asked for transaction {tx_id}, which is not "
                                       "part of what was sent to it nor of its history")
            # A peer that claims to hold what it does not only stops its own supply; ids
            # outside what it may ask for are not kept (they could only fill memory).
            covered.update(t for t in known if t in allowed)
            if self._answer(ids, allowed, covered):
                return
            request = None

    def _answer(self, ids: Sequence[SecureHash], allowed: set[SecureHash],
                covered: set[SecureHash]) -> bool:
        """Send the transactions ``ids`` that are here; True when that completes the
        peer's supply (see `FetchedTransactions.complete`)."""
        vault = self.services.vault
        missing = vault.missing_transactions(ids)  # journaled: stays what it was live
        absent = set(missing)
        found = []
        for tx_id in ids:
            if tx_id in absent:
                continue
            stx = vault.transaction(tx_id)  # recorded: never changes
            found.append(stx)
            covered.add(tx_id)
            allowed.update(dependencies(stx))
        complete = not missing and allowed <= covered
        self.session.send(FetchedTransactions(tuple(found), tuple(missing), complete))
        return complete


class SendTransactionFlow(FlowLogic):
    """Send ``stx`` and then serve its history to the peer; ``push``: the transactions of
    that history to send unasked (the peer's `ReceiveTransactionFlow` must be told
    ``pushed=True``; see `DataVendingFlow`)."""

    def __init__(self, session: FlowSession, stx: SignedTransaction,
                 push: Optional[Iterable[SecureHash]] = None) -> None:
        self.session = session
        self.stx = stx
        self.push = None if push is None else tuple(push)

    def call(self) -> None:
        self.session.send(self.stx)
        self.sub_flow(DataVendingFlow(self.session, dependencies(self.stx), push=self.push))


class SendStateAndRefFlow(FlowLogic):
    """Send states with their refs and then serve the transactions that created them."""

    def __init__(self, session: FlowSession, states: Sequence[StateAndRef]) -> None:
        self.session = session
        self.states = tuple(states)

    def call(self) -> None:
        self.session.send(self.states)
        self.sub_flow(DataVendingFlow(self.session, (s.ref.tx_id for s in self.states)))


class ResolveTransactionsFlow(FlowLogic):
    """Fetch from the peer every transaction in the history of ``tx_ids`` that is not
    recorded here, verify them all in dependency order and record them (as history:
    they change no vault balance). Returns the transactions it fetched, oldest first.
    ``pushed``: the peer sends some of ``tx_ids`` first, unasked (its
    ``DataVendingFlow(..., push=ids)``), and only the rest is asked for."""

    RESOLVING = Step("Fetching missing history")
    VERIFYING = Step("Verifying the history back to issuance")
    progress_tracker = ProgressTracker(RESOLVING, VERIFYING)

    def __init__(self, session: FlowSession, tx_ids: Iterable[SecureHash],
                 pushed: bool = False) -> None:
        self.session = session
        self.tx_ids = tuple(dict.fromkeys(tx_ids))
        self.pushed = pushed

    def call(self) -> list[SignedTransaction]:
        if not self.tx_ids:
            return []
        session, vault = self.session, self.services.vault
        peer = session.counterparty
        fetched: dict[SecureHash, SignedTransaction] = {}
        needed_by: dict[SecureHash, Optional[SecureHash]] = {t: None for t in self.tx_ids}
        queue = list(self.tx_ids)
        held: list[SecureHash] = []  # found here since the last request: the peer is told
        peer_done = False
        if self.pushed:
            self.progress_tracker.current_step = self.RESOLVING
            reply = session.receive(FetchedTransactions)
            peer_done = reply.complete is True
            pushed = self._check_reply(reply, self.tx_ids, needed_by, partial=True)
            got = {stx.id for stx in pushed}
            queue = [t for t in queue if t not in got]
            new = set(vault.missing_transactions(list(got)))
            for stx in pushed:
                if stx.id in new:   # (one held here already needs nothing more)
                    fetched[stx.id] = stx
                    queue.extend(self._needs(stx, needed_by))
        while queue:
            batch, queue = queue[:MAX_BATCH], queue[MAX_BATCH:]
            missing = vault.missing_transactions(batch)
            if len(missing) < len(batch):
                absent = set(missing)
                held.extend(t for t in batch if t not in absent)
            if not missing:
                continue
            if peer_done:
                raise TransactionResolutionError(
                    f"{peer.name} said it had sent all the history it would, but transaction "
                    f"{missing[0]} of that history is missing here: the history cannot be "
                    "verified back to issuance")
            self.progress_tracker.current_step = self.RESOLVING
            request = FetchTransactions(tuple(missing), tuple(held[:MAX_BATCH]))
            held.clear()
            reply = session.send_and_receive(FetchedTransactions, request)
            peer_done = reply.complete is True
            for stx in self._check_reply(reply, missing, needed_by):
                fetched[stx.id] = stx
                queue.extend(self._needs(stx, needed_by))
            if len(fetched) > MAX_TRANSACTIONS:
                raise TransactionResolutionError(
                    f"the history {peer.name} sent has more than {MAX_TRANSACTIONS} transactions "
                    "missing here; refusing to resolve it")
        if not peer_done:
            session.send(EndOfFetch())
        if not fetched:
            return []
        self.progress_tracker.current_step = self.VERIFYING
        chain = dependency_order(fetched)
        self.services.verifier.verify_chain(chain)
        vault.record_transactions(chain, relevant=False)
        return chain

    @staticmethod
    def _needs(stx: SignedTransaction, needed_by: dict[SecureHash, Optional[SecureHash]]
               ) -> list[SecureHash]:
        """The dependencies of ``stx`` not yet asked for (noted as needed by it)."""
        new = []
        for dep in dependencies(stx):
            if dep not in needed_by:
                needed_by[dep] = stx.id
                new.append(dep)
        return new

    def _check_reply(self, reply: FetchedTransactions, asked: Sequence[SecureHash],
                     needed_by: dict[SecureHash, Optional[SecureHash]],
                     partial: bool = False) -> tuple[SignedTransaction, ...]:
        """The transactions of ``reply``: only ones ``asked`` for, and (unless
        ``partial``: a push, after which the rest is asked for) all of them."""
        peer = self.session.counterparty
        txs = checked_transactions(reply.transactions, peer, "FetchedTransactions")
        absent = checked_ids(reply.missing, peer, "FetchedTransactions")
        wanted = set(asked)
        got = {stx.id for stx in txs}
        if got - wanted:
            raise TransactionResolutionError(f"{peer.name} sent transaction {min(got - wanted)}, "
                                             "which was not asked for")
        if partial:
            return txs
        lacking = [t for t in asked if t not in got]
        if lacking:
            tx_id = lacking[0]
            dependent = needed_by.get(tx_id)
            why = "it does not have it" if tx_id in absent else "it did not send it"
            of = f", on which transaction {dependent} depends" if dependent is not None else ""
            raise TransactionResolutionError(
                f"{peer.name} could not provide transaction {tx_id}{of} ({why}): the history "
                "cannot be verified back to issuance")
        return txs


class ReceiveTransactionFlow(FlowLogic):
    """Receive a transaction, resolve and verify its history, verify it, and (with
    ``record``) record it as relevant to this node. Without
    ``check_sufficient_signatures`` the transaction may still lack signatures (one that
    is being signed); those it has must all verify. ``pushed``: the sender pushes part of
    the history unasked (its `SendTransactionFlow` has ``push``)."""

    def __init__(self, session: FlowSession, check_sufficient_signatures: bool = True,
                 record: bool = False, pushed: bool = False) -> None:
        self.session = session
        self.check_sufficient_signatures = check_sufficient_signatures
        self.record = record
        self.pushed = pushed

    def call(self) -> SignedTransaction:
        stx = self.session.receive(SignedTransaction)
        stx.check_shape()
        self.sub_flow(ResolveTransactionsFlow(self.session, dependencies(stx),
                                              pushed=self.pushed))
        self.services.verifier.verify(stx, check_sufficient=self.check_sufficient_signatures)
        if self.record:
            self.services.vault.record_transactions([stx])
        return stx


class ReceiveStateAndRefFlow(FlowLogic):
    """Receive states with their refs, resolve the transactions that created them, and
    check each state is exactly that transaction's output at that index."""

    def __init__(self, session: FlowSession, state_type: type = ContractState) -> None:
        self.session = session
        self.state_type = state_type

    def call(self) -> list[StateAndRef]:
        received = self.session.receive(tuple)
        sars = checked_state_and_refs(received, self.session, self.state_type)
        self.sub_flow(ResolveTransactionsFlow(self.session, (s.ref.tx_id for s in sars)))
        check_states_match(self.services.vault, sars, self.session.counterparty)
        return list(sars)


def dependencies(stx: SignedTransaction) -> list[SecureHash]:
    """The ids of the transactions ``stx`` consumes or references outputs of: its
    history, which a node verifies before it trusts ``stx``."""
    tx = stx.tx
    if tx.references:
        return list(dict.fromkeys(ref.tx_id for ref in (*tx.inputs, *tx.references)))
    return list(dict.fromkeys(ref.tx_id for ref in tx.inputs))


def dependency_order(txs: dict[SecureHash, SignedTransaction]) -> list[SignedTransaction]:
    """``txs`` with every transaction after those of them it consumes (ties by id, so
    both sides of a replay get the same order)."""
    out: list[SignedTransaction] = []
    done: set[SecureHash] = set()
    for root in sorted(txs):
        stack = [(root, False)]
        while stack:
            tx_id, expanded = stack.pop()
            if tx_id in done or tx_id not in txs:
                continue
            if expanded:
                done.add(tx_id)
                out.append(txs[tx_id])
                continue
            stack.append((tx_id, True))
            for dep in sorted(set(dependencies(txs[tx_id])), reverse=True):
                if dep not in done:
                    stack.append((dep, False))
    return out


def checked_state_and_refs(value: Any, session: FlowSession, state_type: type) -> tuple[StateAndRef, ...]:
    peer = session.counterparty
    if type(value) is not tuple or any(
            type(s) is not StateAndRef or type(s.ref) is not StateRef
            or type(s.ref.tx_id) is not SecureHash or type(s.ref.index) is not int
            or not isinstance(s.state, state_type) for s in value):
        raise TransactionVerificationError(
            f"{peer.name} sent something other than states of type {state_type.__qualname__} "
            "with their refs")
    return value


def check_states_match(vault: Any, sars: Iterable[StateAndRef], peer: Any) -> None:
    """Each state is what the (resolved) transaction its ref names really created."""
    for sar in sars:
        actual = vault.state(sar.ref)
        if actual is None:
            raise TransactionResolutionError(f"state {sar.ref} from {peer.name}: its transaction "
                                             "is unknown here")
        if actual.state != sar.state:
            raise TransactionVerificationError(
                f"{peer.name} sent a state for {sar.ref} that is not what transaction "
                f"{sar.ref.tx_id} created there: {sar.state!r} instead of {actual.state!r}")
