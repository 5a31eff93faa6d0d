"""Why a transaction is refused.

Every one of them is a `FlowException`: a node that refuses a transaction tells the peer
that offered it why (the class, the message and the ``error_id`` cross the wire), and the
peer can catch the precise class.
"""
from __future__ import annotations

from greenflow.errors import FlowException

__all__ = ["ContractViolation", "SignatureError", "TransactionVerificationError"]


class TransactionVerificationError(FlowException):
    """A transaction is not valid: a malformed field, an input that cannot be resolved or
    is consumed twice, a contract that is not installed here. The message names the
    transaction and what is wrong; the subclasses narrow it down."""


class SignatureError(TransactionVerificationError):
    """A signature does not verify over the transaction id (the transaction was changed
    after it was signed, or the signature is forged), or a required signer has not signed.
    The message names the key and the transaction."""


class ContractViolation(TransactionVerificationError):
    """A contract's ``verify`` rejected the transaction: the rules of the states it
    touches do not allow it. The message names the contract and the rule broken."""
