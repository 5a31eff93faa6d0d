"""The flow library: Corda's built-in flows as greenflow flows on the public API.

| flow | counterpart | does |
|---|---|---|
| `CollectSignaturesFlow` | `SignTransactionFlow` (subclass, `check_transaction`) | gathers the signatures a transaction needs |
| `FinalityFlow` | `ReceiveFinalityFlow` | notarises, records, sends to every participant |
| `NotaryClientFlow` | `NotaryServiceFlow` (on the notary) | the double-spend, reference-state and time-window checks (a validating notary also verifies the history) and the notary's signature |
| `SendTransactionFlow` | `ReceiveTransactionFlow` | a transaction with its history |
| `SendStateAndRefFlow` | `ReceiveStateAndRefFlow` | states with the history that created them |
| `DataVendingFlow` | `ResolveTransactionsFlow` | fetches missing history in batches, verifies it back to issuance |

Every flow here except the notary's runs inline as a sub-flow on sessions its caller
opened, so the caller's `@initiating_flow` decides which responder the peer starts.
Importing this package also registers the ledger's node services (``services.vault``,
``verifier``, ``key_management``, ``identity_service``).
"""
from __future__ import annotations

from greenflow.ledger import identity_service, key_management, vault, verifier  # noqa: F401  (service factories)
from greenflow.ledger.notary import NotaryConflictError, NotaryError, NotaryTimeWindowError, NotaryValidationError
from greenflow.ledger.recording import StatesToRecord
from greenflow.ledger.vault import InsufficientBalance, StatesLocked
from greenflow.ledger.verifier import TransactionResolutionError
from greenflow.ledger.flows.finality import FinalityFlow, ReceiveFinalityFlow, UnexpectedTransaction
from greenflow.ledger.flows.messages import EndOfFetch, FetchedTransactions, FetchTransactions
from greenflow.ledger.flows.notarisation import NotaryClientFlow, NotaryServiceFlow
from greenflow.ledger.flows.resolve import (DataVendingFlow, FetchRefused, ReceiveStateAndRefFlow, ReceiveTransactionFlow,
                      ResolveTransactionsFlow, SendStateAndRefFlow, SendTransactionFlow,
                      check_states_match)
from greenflow.ledger.flows.signatures import CollectSignaturesFlow, SignTransactionFlow, TransactionRefused

__all__ = ["NotaryConflictError", "NotaryTimeWindowError", "NotaryValidationError",
           "StatesToRecord"]
__all__ += [
    "CollectSignaturesFlow", "DataVendingFlow", "EndOfFetch", "FetchRefused", "FetchTransactions",
    "FetchedTransactions", "FinalityFlow", "InsufficientBalance", "NotaryClientFlow", "NotaryError",
    "NotaryServiceFlow", "ReceiveFinalityFlow", "ReceiveStateAndRefFlow", "ReceiveTransactionFlow",
    "ResolveTransactionsFlow", "SendStateAndRefFlow", "SendTransactionFlow", "SignTransactionFlow",
    "StatesLocked", "TransactionRefused", "TransactionResolutionError", "UnexpectedTransaction",
    "check_states_match",
]
