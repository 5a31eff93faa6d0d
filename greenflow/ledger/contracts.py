"""Contracts: the rules every transaction touching a state must obey.

A contract is code every party runs for itself over the same transaction: whether a
transaction is valid never depends on who asks. Contracts are found by name in a registry
(the name is what a state's ``contract`` says), so a node verifies only with contracts it
has installed and never loads one a peer names.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from greenflow.party import Party
from greenflow.wire import register_wire_type
from greenflow.ledger.errors import ContractViolation, TransactionVerificationError

log = logging.getLogger("greenflow.ledger")

if TYPE_CHECKING:
    from greenflow.ledger.states import ContractState
    from greenflow.ledger.transactions import LedgerTransaction

__all__ = [
    "Command", "CommandData", "Contract", "ContractViolation", "contract_for", "contract_name",
    "register_contract", "require_linear_ids_kept", "require_that",
]


class CommandData:
    """Base of command values (``Issue``, ``Move``...): what a transaction means to do, so
    a contract knows which rules apply. Subclasses are ``@serializable`` dataclasses."""


@dataclass(frozen=True)
class Command:
    """A command value and the public keys that must sign any transaction carrying it.

    ``signers`` may be given as public keys (bytes) or parties (their owning keys); they are
    kept as a tuple of keys, since a command in a transaction never changes."""

    value: CommandData
    signers: tuple[bytes, ...]

    def __post_init__(self) -> None:
        if not isinstance(self.value, CommandData):
            raise TypeError(f"a command's value is a CommandData (a @serializable dataclass "
                            f"subclassing it), not {type(self.value).__qualname__}")
        keys = tuple(_public_key(s) for s in self.signers)
        if not keys:
            raise ValueError("a command needs at least one signer")
        object.__setattr__(self, "signers", keys)


def _public_key(signer: bytes | Party) -> bytes:
    if isinstance(signer, Party):
        return signer.owning_key
    if type(signer) is bytes:
        return signer
    raise TypeError(f"a signer is a public key (bytes) or a Party, not {type(signer).__name__}")


register_wire_type(Command)


class Contract:
    """Base of contracts. Subclasses implement `verify` and are registered by their
    qualified name when defined (or under ``name``, if they set it)."""

    #: The registry name; defaults to ``module.qualname``.
    name: str = ""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        register_contract(cls)

    def verify(self, tx: LedgerTransaction) -> None:
        """Raise `ContractViolation` (see `require_that`) unless ``tx`` obeys this
        contract's rules for the states of it that this contract rules."""
        raise NotImplementedError(f"{type(self).__qualname__} must implement verify(tx)")


_CONTRACTS: dict[str, type[Contract]] = {}


def contract_name(contract: str | type[Contract]) -> str:
    """The registry name of a contract given as a name or a class."""
    if isinstance(contract, str):
        return contract
    return contract.name or f"{contract.__module__}.{contract.__qualname__}"


def register_contract(cls: type[Contract]) -> type[Contract]:
    """Install ``cls`` under its name (done by subclassing `Contract`; a later class of the
    same name replaces the earlier, as a reloaded module does). Another class taking an
    installed name (two contracts that set the same ``name``) is logged: from then on
    the states that name it are checked by the later class's rules."""
    name = contract_name(cls)
    earlier = _CONTRACTS.get(name)
    if earlier is not None and (earlier.__module__, earlier.__qualname__) != (
            cls.__module__, cls.__qualname__):
        log.warning("contract %r was %s.%s and is now %s.%s: the states that name it are "
                    "checked by the later class's rules", name, earlier.__module__,
                    earlier.__qualname__, cls.__module__, cls.__qualname__)
    _CONTRACTS[name] = cls
    return cls


def contract_for(state: ContractState) -> tuple[str, type[Contract]]:
    """The name and class of the contract that rules ``state``."""
    ref = getattr(type(state), "contract", "")
    if not ref:
        raise TransactionVerificationError(f"{type(state).__qualname__} names no contract")
    name = contract_name(ref)
    cls = _CONTRACTS.get(name)
    if cls is None:
        raise TransactionVerificationError(
            f"contract {name!r} (of {type(state).__qualname__}) is not installed here")
    return name, cls


def require_that(condition: Any, message: str) -> None:
    """The one-line rule of a contract: ``require_that(total_in == total_out, "cash is
    conserved")`` raises `ContractViolation` with the rule's text when it does not hold."""
    if not condition:
        raise ContractViolation(message)



def require_linear_ids_kept(tx: LedgerTransaction, state_type: type) -> list[tuple[Any, Any]]:
    """The rule of an agreement that evolves: every input of ``state_type`` (a
    `LinearState`) has exactly one output with its ``linear_id``, and no output repeats an
    id. Outputs with ids no input has are new agreements. Returns the (input, output)
    pairs, for the contract's other rules (what may change between versions)."""
    ins, outs = tx.inputs_of_type(state_type), tx.outputs_of_type(state_type)
    by_id: dict[Any, Any] = {}
    for out in outs:
        require_that(out.linear_id not in by_id,
                     f"no two {state_type.__name__} outputs share the linear id {out.linear_id}")
        by_id[out.linear_id] = out
    seen: set = set()
    pairs = []
    for inp in ins:
        lid = inp.linear_id
        require_that(lid not in seen, f"no two {state_type.__name__} inputs share the linear id {lid}")
        seen.add(lid)
        out = by_id.get(lid)
        require_that(out is not None,
                     f"the {state_type.__name__} with linear id {lid} is kept: an output carries it on")
        pairs.append((inp, out))
    return pairs
