"""What the flow library's flows send each other, beyond transactions and signatures.

Decoding rebuilds these field by field without running a constructor, so whoever
receives one checks its fields (`checked_ids`) before trusting them.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from greenflow.party import Party
from greenflow.wire import serializable
from greenflow.ledger.crypto import SecureHash
from greenflow.ledger.errors import TransactionVerificationError
from greenflow.ledger.transactions import SignedTransaction

__all__ = ["EndOfFetch", "FetchTransactions", "FetchedTransactions", "checked_ids",
           "checked_transactions"]


@serializable
@dataclass(frozen=True)
class FetchTransactions:
    """Please send these transactions (dependencies of something you sent me). ``known``:
    ids of that history I hold already (at most `MAX_BATCH` of them), so that you can
    tell when nothing is left that I could ask for."""

    ids: tuple[SecureHash, ...]
    known: tuple[SecureHash, ...] = ()


@serializable
@dataclass(frozen=True)
class FetchedTransactions:
    """The answer: the transactions found, and the ids the sender does not have.
    ``complete``: with these, every transaction the sender would serve has been sent or
    is held by the receiver (it said so), so the sender serves no more and expects no
    `EndOfFetch`: a history of one level costs one round trip, not one and a half."""

    transactions: tuple[SignedTransaction, ...]
    missing: tuple[SecureHash, ...] = ()
    complete: bool = False


@serializable
@dataclass(frozen=True)
class EndOfFetch:
    """The receiver has every dependency it needs: the sender may go on."""


def checked_ids(value: Any, peer: Party, what: str) -> tuple[SecureHash, ...]:
    """``value`` as a tuple of well-formed transaction ids, or a clear refusal."""
    if type(value) is not tuple or any(
            type(t) is not SecureHash or type(t.value) is not bytes or len(t.value) != 32
            for t in value):
        raise TransactionVerificationError(f"malformed {what} from {peer.name}: not a tuple of "
                                           "transaction ids")
    return value


def checked_transactions(value: Any, peer: Party, what: str) -> tuple[SignedTransaction, ...]:
    """``value`` as a tuple of well-shaped signed transactions, or a clear refusal."""
    if type(value) is not tuple or any(type(t) is not SignedTransaction for t in value):
        raise TransactionVerificationError(f"malformed {what} from {peer.name}: not a tuple of "
                                           "signed transactions")
    for stx in value:
        stx.check_shape()
    return value
