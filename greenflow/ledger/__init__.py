"""The ledger's data layer: keys and hashes, states, contracts and transactions.

Pure data and checks, no I/O beyond key files: the vault, the notary and the flows that
move transactions between nodes build on these. Every type here that travels between
nodes is registered with the safe wire encoding (`greenflow.wire`).
"""
from __future__ import annotations

from greenflow.ledger.amounts import Amount, Issued, TokenMismatch
from greenflow.ledger.contracts import (Command, CommandData, Contract, contract_for, contract_name,
                        register_contract, require_linear_ids_kept, require_that)
from greenflow.ledger.crypto import (KeyFileError, KeyPair, SecureHash, load_keypair, load_or_create_keypair,
                     save_keypair, verify)
from greenflow.ledger.errors import ContractViolation, SignatureError, TransactionVerificationError
from greenflow.ledger.recording import StatesToRecord
from greenflow.ledger.states import ContractState, LinearState, StateAndRef, StateRef, UniqueIdentifier
from greenflow.ledger.time_window import TimeWindow
from greenflow.ledger.transactions import (LedgerTransaction, SignedTransaction, TransactionBuilder,
                           TransactionSignature, WireTransaction)

__all__ = [
    "Amount", "Issued", "LinearState", "StatesToRecord", "TimeWindow", "TokenMismatch",
    "UniqueIdentifier", "require_linear_ids_kept",
    "Command", "CommandData", "Contract", "ContractState", "ContractViolation", "KeyFileError",
    "KeyPair", "LedgerTransaction", "SecureHash", "SignatureError", "SignedTransaction",
    "StateAndRef", "StateRef", "TransactionBuilder", "TransactionSignature",
    "TransactionVerificationError", "WireTransaction", "contract_for", "contract_name",
    "load_keypair", "load_or_create_keypair", "register_contract", "require_that", "save_keypair",
    "verify",
]
