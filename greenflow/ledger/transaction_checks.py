"""The checks a transaction passes before it is trusted: its shape (as a peer could send
it), its input and reference states resolved, its contracts run. `WireTransaction` and
`SignedTransaction` (`greenflow.ledger.transactions`) call these from their own methods."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

from greenflow.messages import exception_text
from greenflow.party import Party
from greenflow.ledger.contracts import Command, CommandData, Contract, contract_for
from greenflow.ledger.crypto import SecureHash
from greenflow.ledger.errors import ContractViolation, TransactionVerificationError
from greenflow.ledger.states import ContractState, StateAndRef, StateRef
from greenflow.ledger.time_window import TimeWindow

if TYPE_CHECKING:
    from greenflow.ledger.transactions import LedgerTransaction, WireTransaction

#: Resolves an input reference to the state it names (or to a `StateAndRef`); returns
#: None or raises `LookupError` when the transaction that created it is unknown here.
InputResolver = Callable[[StateRef], "ContractState | StateAndRef | None"]


def _key_label(key: Any, names: dict[bytes, str]) -> str:
    if type(key) is not bytes:
        return repr(key)
    short = key.hex()[:16] + "…"
    return f"{names[key]} ({short})" if key in names else short


def check_wire_shape(wtx: WireTransaction) -> None:
    """Refuse a `WireTransaction` of the wrong shape (`WireTransaction.check_shape`)."""
    def bad(why: str) -> TransactionVerificationError:
        return TransactionVerificationError(f"malformed transaction: {why}")

    for name in ("inputs", "outputs", "commands", "references"):
        if type(getattr(wtx, name)) is not tuple:
            raise bad(f"{name} is a {type(getattr(wtx, name)).__name__}, not a tuple")
    seen: set[StateRef] = set()
    for what, refs in (("inputs", wtx.inputs), ("references", wtx.references)):
        for i, ref in enumerate(refs):
            if (type(ref) is not StateRef or type(ref.tx_id) is not SecureHash
                    or type(ref.tx_id.value) is not bytes or len(ref.tx_id.value) != 32
                    or type(ref.index) is not int or ref.index < 0):
                raise bad(f"{what}[{i}] is not a StateRef: {ref!r}")
            if ref in seen:
                raise bad(f"input {ref} is consumed twice" if what == "inputs" else
                          f"reference {ref} is listed twice, or is also an input")
            seen.add(ref)
    for i, state in enumerate(wtx.outputs):
        if not isinstance(state, ContractState):
            raise bad(f"outputs[{i}] is a {type(state).__qualname__}, not a ContractState")
        _check_participants(state, i, bad)
    if not wtx.inputs and not wtx.outputs:
        raise bad("no inputs and no outputs")
    if not wtx.commands:
        raise bad("no commands: nothing says who must sign")
    for i, command in enumerate(wtx.commands):
        signers = getattr(command, "signers", None)
        if (type(command) is not Command or not isinstance(getattr(command, "value", None), CommandData)
                or type(signers) is not tuple or not signers
                or any(type(k) is not bytes or len(k) != 32 for k in signers)):
            raise bad(f"commands[{i}] is not a Command with CommandData and 32-byte signer keys")
    if wtx.notary is not None and (type(wtx.notary) is not Party or type(wtx.notary.owning_key) is not bytes):
        raise bad(f"notary is not a Party: {wtx.notary!r}")
    if wtx.inputs and wtx.notary is None:
        raise bad("a transaction that consumes inputs needs a notary to rule out double spends")
    if wtx.references and wtx.notary is None:
        raise bad("a transaction with reference states needs a notary to check they are current")
    if wtx.time_window is not None:
        if type(wtx.time_window) is not TimeWindow:
            raise bad(f"time_window is not a TimeWindow: {wtx.time_window!r}")
        wtx.time_window.check_shape()
        if wtx.notary is None:
            raise bad("a transaction with a time window needs a notary to vouch for the time")
    if type(wtx.salt) is not bytes:
        raise bad("salt is not bytes")


def _check_participants(state: ContractState, i: int,
                        bad: Callable[[str], TransactionVerificationError]) -> None:
    """An output's ``participants`` are Parties: finality sends the transaction to each
    and every vault matches them by key, so anything else would fail there, after the
    notary had signed, with an error that names neither the state nor the transaction."""
    what = f"outputs[{i}] ({type(state).__qualname__}).participants"
    try:
        parties = list(state.participants)
    except Exception as exc:  # noqa: BLE001 - app code: said with the state it failed on
        raise bad(f"{what} failed: {type(exc).__name__}: {exception_text(exc)}") from exc
    for j, party in enumerate(parties):
        if type(party) is not Party or type(party.owning_key) is not bytes:
            raise bad(f"{what}[{j}] is a {type(party).__qualname__}, not a Party")


def resolve_refs(tx_id: SecureHash, refs: tuple[StateRef, ...], resolve_input: InputResolver,
                 what: str) -> tuple[StateAndRef, ...]:
    """Each reference with the state it names; `TransactionVerificationError` naming the
    first that cannot be resolved."""
    out = []
    for ref in refs:
        try:
            found = resolve_input(ref)
        except LookupError:
            found = None
        state = found.state if isinstance(found, StateAndRef) else found
        if not isinstance(state, ContractState):
            raise TransactionVerificationError(
                f"transaction {tx_id}: {what} {ref} cannot be resolved; the transaction "
                "that created it is unknown here")
        out.append(StateAndRef(state, ref))
    return tuple(out)


def run_contracts(ltx: LedgerTransaction, tx_id: SecureHash) -> None:
    """Every contract of the transaction's input and output states, each once."""
    contracts: dict[str, type[Contract]] = {}
    for state in (*ltx.input_states, *ltx.outputs):
        name, cls = contract_for(state)
        contracts.setdefault(name, cls)
    for name, cls in contracts.items():
        try:
            said = cls().verify(ltx)
        except ContractViolation as exc:
            if type(exc) is not ContractViolation:
                raise  # the contract's own error class: the caller may catch it as such
            raise ContractViolation(f"contract {name} rejected transaction {tx_id}: "
                                    f"{exception_text(exc)}") from exc
        except Exception as exc:
            raise ContractViolation(
                f"contract {name} failed on transaction {tx_id}: {type(exc).__name__}: "
                f"{exception_text(exc)}") from exc
        if said is False:   # a contract rejects by raising; a "no" returned was taken as a yes
            raise ContractViolation(f"contract {name} returned False for transaction {tx_id}: "
                                    "taken as a rejection (a contract rejects by raising, "
                                    "see require_that)")


def signer_names(wtx: WireTransaction) -> dict[bytes, str]:
    """Who the keys in an error message belong to, as far as this transaction says."""
    names: dict[bytes, str] = {}
    for state in wtx.outputs:
        try:
            for party in state.participants:
                names[party.owning_key] = party.name
        except Exception:  # a malformed state must not hide the signature error
            pass
    if isinstance(wtx.notary, Party):
        names[wtx.notary.owning_key] = f"notary {wtx.notary.name}"
    return names
