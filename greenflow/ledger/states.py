"""Ledger states: the facts a transaction consumes and creates.

A state is immutable: a change of owner or amount is a new state in a new transaction that
consumes the old one. `StateRef` names a state by the transaction that created it and its
position among that transaction's outputs, so it is unique and never reused.
"""
from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar, Optional

from greenflow.party import Party
from greenflow.wire import register_wire_type
from greenflow.ledger.crypto import SecureHash

if TYPE_CHECKING:
    from greenflow.ledger.contracts import Contract

__all__ = ["ContractState", "LinearState", "StateAndRef", "StateRef", "UniqueIdentifier"]


class ContractState:
    """Base of every ledger state.

    Subclasses are frozen dataclasses marked ``@serializable`` (they travel between nodes
    inside transactions; the builder refuses anything else), set ``contract`` to the
    `Contract` class or registered contract name that rules them, and say who must know
    about them in ``participants``::

        @serializable
        @dataclass(frozen=True)
        class Iou(ContractState):
            contract = "myapp.IouContract"
            amount: Amount
            owner: Party

            @property
            def participants(self) -> list[Party]:
                return [self.owner]
    """

    contract: ClassVar[str | type[Contract]] = ""

    @property
    def participants(self) -> list[Party]:
        """The parties that record this state in their vaults when it is created or
        consumed (every one of them gets the transaction in finality)."""
        raise NotImplementedError(f"{type(self).__qualname__} must define participants")


@dataclass(frozen=True)
class UniqueIdentifier:
    """The identity of an agreement that lives through many transactions: each evolution
    of a `LinearState` is a new state with the same ``linear_id``. ``external_id`` is an
    optional name from outside the ledger (a trade reference); ``id`` makes it unique.

    Inside a flow give ``id`` from the flow (``UniqueIdentifier("REF-1", self.uuid())``):
    a fresh ``uuid4()`` drawn by flow code would differ when the flow is replayed."""

    external_id: Optional[str] = None
    id: uuid.UUID = field(default_factory=uuid.uuid4)

    def __str__(self) -> str:
        return f"{self.external_id}_{self.id}" if self.external_id else str(self.id)

    def __lt__(self, other: "UniqueIdentifier") -> bool:
        return self.id < other.id

    @classmethod
    def from_string(cls, text: str) -> "UniqueIdentifier":
        """What `str` gives back: ``"EXT_uuid"`` or a bare uuid. `ValueError` quoting
        ``text`` for anything else."""
        ext, sep, rest = str(text).rpartition("_")
        try:
            return cls(ext if sep else None, uuid.UUID(rest))
        except ValueError:
            shown = text if len(text) <= 80 else text[:77] + "..."
            raise ValueError(f"{shown!r} is not a linear id such as "
                             f"{cls.ARG_EXAMPLE}") from None

    parse_arg = from_string   # how the CLI and RPC turn an argument's text into one
    ARG_EXAMPLE = "'DEAL-1_6f1c0a52-3c1e-4d2b-9a57-0d3f6c1a2b3c' or a bare uuid"


class LinearState(ContractState):
    """A state that evolves: a loan, a deal under negotiation. Every version carries the
    same ``linear_id``, so the vault finds the current one by it and a contract can insist
    each input has exactly one successor (`require_linear_ids_kept`)::

        @serializable
        @dataclass(frozen=True)
        class Deal(LinearState):
            contract = DealContract
            terms: str
            parties: tuple[Party, ...]
            linear_id: UniqueIdentifier

            @property
            def participants(self) -> list[Party]:
                return list(self.parties)
    """

    linear_id: UniqueIdentifier


@dataclass(frozen=True, order=True)
class StateRef:
    """Output ``index`` of transaction ``tx_id``: where a state came from, and the key by
    which the notary marks it consumed."""

    tx_id: SecureHash
    index: int

    def __str__(self) -> str:
        return f"{self.tx_id}({self.index})"


@dataclass(frozen=True)
class StateAndRef:
    """A state together with its reference: what a transaction needs to consume it."""

    state: ContractState
    ref: StateRef

    def __repr__(self) -> str:
        return f"StateAndRef({self.state!r}, {self.ref.tx_id.short}({self.ref.index}))"


register_wire_type(UniqueIdentifier)
register_wire_type(StateRef)
register_wire_type(StateAndRef)
