"""Transactions: built, identified by a hash of their content, signed, verified.

A `WireTransaction` is the content: input references, output states, commands, notary, a
random salt and, when used, reference states (read, not consumed) and a time window. Its id is the SHA-256 of its canonical wire encoding, so every node computes
the same id from the same content, and any change to the content (an output altered in
transit) changes the id and voids every signature, which signs the id.

Everything a peer sends is checked before it is trusted: `WireTransaction.check_shape`
rejects fields of the wrong type (decoding rebuilds objects without running their
constructors), `SignedTransaction.verify_signatures` checks every signature and every
required signer, and `WireTransaction.verify` runs every contract involved (the checks
themselves are in `greenflow.ledger.transaction_checks`).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import datetime
from functools import cached_property
from typing import Iterable, Mapping, TypeVar

from greenflow.party import Party
from greenflow.wire import canonical_encode, encode, register_wire_type
from greenflow.wire.registry import keep_wire_bytes
from greenflow.ledger.contracts import Command, CommandData
from greenflow.ledger.crypto import KeyPair, SecureHash, verify
from greenflow.ledger.errors import SignatureError, TransactionVerificationError
from greenflow.ledger.states import ContractState, StateAndRef, StateRef
from greenflow.ledger.stored_form import module_prefix, unpack
from greenflow.ledger.time_window import TimeWindow
from greenflow.ledger.transaction_checks import (InputResolver, _key_label, check_wire_shape,
                                                resolve_refs, run_contracts, signer_names)

__all__ = [
    "LedgerTransaction", "SignatureError", "SignedTransaction", "TransactionBuilder",
    "TransactionSignature", "TransactionVerificationError", "WireTransaction",
]

S = TypeVar("S", bound=ContractState)

# Hashed ahead of the content, so a transaction id can never equal the hash of some other
# structure that happens to encode alike; the version moves if the content ever changes.
_ID_DOMAIN = "greenflow.WireTransaction/1"
# Signed ahead of the id, so a transaction signature cannot be replayed as a signature
# over anything else made with the same key.
_SIGNATURE_DOMAIN = b"greenflow.TransactionSignature/1:"

SALT_BYTES = 32
#: The shortest salt a builder takes (a flow's ``self.random().randbytes(32)`` is right).
MIN_SALT_BYTES = 16


def _signable(tx_id: SecureHash) -> bytes:
    return _SIGNATURE_DOMAIN + tx_id.value


@dataclass(frozen=True)
class TransactionSignature:
    """``public_key``'s signature of a transaction id."""

    public_key: bytes
    signature: bytes

    @classmethod
    def create(cls, keypair: KeyPair, tx_id: SecureHash) -> TransactionSignature:
        if not isinstance(keypair, KeyPair):
            raise TypeError(f"a transaction is signed with a KeyPair (in a flow: "
                            f"services.key_management.sign), not {type(keypair).__qualname__}")
        return cls(keypair.public_key, keypair.sign(_signable(tx_id)))

    def is_valid_for(self, tx_id: SecureHash) -> bool:
        return verify(self.public_key, _signable(tx_id), self.signature)


@dataclass(frozen=True)
class LedgerTransaction:
    """What a contract sees: the transaction with its input states resolved."""

    id: SecureHash
    inputs: tuple[StateAndRef, ...]
    outputs: tuple[ContractState, ...]
    commands: tuple[Command, ...]
    notary: Party | None
    #: States the transaction reads without consuming them; the notary has checked they
    #: were current when it signed.
    references: tuple[StateAndRef, ...] = ()
    #: When the notary may sign (and, once notarised, did): contracts read time here.
    time_window: TimeWindow | None = None

    @property
    def reference_states(self) -> tuple[ContractState, ...]:
        return tuple(r.state for r in self.references)

    def references_of_type(self, cls: type[S]) -> list[S]:
        return [r.state for r in self.references if isinstance(r.state, cls)]

    @property
    def input_states(self) -> tuple[ContractState, ...]:
        return tuple(i.state for i in self.inputs)

    def inputs_of_type(self, cls: type[S]) -> list[S]:
        return [i.state for i in self.inputs if isinstance(i.state, cls)]

    def outputs_of_type(self, cls: type[S]) -> list[S]:
        return [s for s in self.outputs if isinstance(s, cls)]

    def commands_of_type(self, cls: type[CommandData]) -> list[Command]:
        return [c for c in self.commands if isinstance(c.value, cls)]


@dataclass(frozen=True)
class WireTransaction:
    """The content of a transaction, as it crosses the wire and as its id is computed.

    ``salt`` makes two transactions with the same content (two identical issuances) two
    different transactions with different ids and output references. ``references`` are
    states read but not consumed (the notary checks they are still current);
    ``time_window`` bounds when the notary may sign."""

    inputs: tuple[StateRef, ...]
    outputs: tuple[ContractState, ...]
    commands: tuple[Command, ...]
    notary: Party | None
    salt: bytes
    references: tuple[StateRef, ...] = ()
    time_window: TimeWindow | None = None

    def __post_init__(self) -> None:
        for name in ("inputs", "outputs", "commands", "references"):
            object.__setattr__(self, name, tuple(getattr(self, name)))

    @cached_property
    def id(self) -> SecureHash:
        """SHA-256 of the canonical encoding of the content (computed once per object;
        the object is frozen, and a received copy is a new object)."""
        content: tuple = (_ID_DOMAIN, self.inputs, self.outputs, self.commands, self.notary,
                          self.salt)
        if self.references or self.time_window is not None:
            # Only then, so a transaction without them keeps the id it always had (the
            # longer tuple encodes differently, so the two forms cannot collide).
            content += (self.references, self.time_window)
        data = canonical_encode(content)
        # Near what the transaction takes on the wire: finality refuses one that could
        # not be sent before anything is notarised or recorded (`FinalityFlow`).
        self.__dict__["_encoded_size"] = len(data)
        return SecureHash.sha256(data)

    @property
    def needs_notary(self) -> bool:
        """Whether the notary must sign: it consumes inputs (double spends), reads
        references (still current?) or has a time window (is it now?)."""
        return bool(self.inputs or self.references or self.time_window is not None)

    @property
    def required_signers(self) -> frozenset[bytes]:
        """Every key some command names, and the notary's when there are inputs (the
        notary signs to say none of them was consumed before), references or a time
        window (see `needs_notary`). Worked out once per object, which is frozen: a
        trade asks a dozen times."""
        known = self.__dict__.get("_required_signers")
        if known is not None:
            return known
        keys = {key for command in self.commands for key in command.signers}
        if self.notary is not None and self.needs_notary:
            keys.add(self.notary.owning_key)
        known = self.__dict__["_required_signers"] = frozenset(keys)
        return known

    def out_ref(self, index: int) -> StateAndRef:
        """Output ``index`` with the reference a later transaction consumes it by."""
        return StateAndRef(self.outputs[index], StateRef(self.id, index))

    def check_shape(self) -> None:
        """Refuse content of the wrong shape, as a peer could send it: decoding rebuilds
        objects field by field and does not run their constructors' checks. (Checked
        once per object: it is frozen, and a trade checks the same copy a dozen times.)"""
        if self.__dict__.get("_shape_ok"):
            return
        self._check_shape()
        self.__dict__["_shape_ok"] = True

    def _check_shape(self) -> None:
        check_wire_shape(self)

    def to_ledger_transaction(self, resolve_input: InputResolver) -> LedgerTransaction:
        """The transaction with every input state resolved (`TransactionVerificationError`
        naming the first input that cannot be)."""
        self.check_shape()
        inputs = self._resolve(self.inputs, resolve_input, "input")
        if not self.references and self.time_window is None:
            return LedgerTransaction(self.id, inputs, self.outputs, self.commands, self.notary)
        references = self._resolve(self.references, resolve_input, "reference state")
        return LedgerTransaction(self.id, inputs, self.outputs, self.commands, self.notary,
                                 references, self.time_window)

    def _resolve(self, refs: tuple[StateRef, ...], resolve_input: InputResolver,
                 what: str) -> tuple[StateAndRef, ...]:
        return resolve_refs(self.id, refs, resolve_input, what)

    def verify(self, resolve_input: InputResolver) -> LedgerTransaction:
        """Run the contract of every input and output state over the resolved transaction,
        each contract once; returns the resolved transaction. Any exception a contract
        raises is a rejection (`ContractViolation` naming the contract and transaction)."""
        ltx = self.to_ledger_transaction(resolve_input)
        run_contracts(ltx, self.id)
        return ltx


@dataclass(frozen=True)
class SignedTransaction:
    """A transaction and the signatures collected over its id so far."""

    wtx: WireTransaction
    sigs: tuple[TransactionSignature, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.wtx, WireTransaction):
            raise TypeError(f"a SignedTransaction holds a WireTransaction "
                            f"(builder.to_wire_transaction()), not {type(self.wtx).__qualname__}")
        object.__setattr__(self, "sigs", tuple(self.sigs))

    @property
    def id(self) -> SecureHash:
        return self.wtx.id

    @property
    def tx(self) -> WireTransaction:
        return self.wtx

    @property
    def signed_keys(self) -> frozenset[bytes]:
        return frozenset(s.public_key for s in self.sigs)

    def with_signature(self, signature: TransactionSignature) -> SignedTransaction:
        """A copy with ``signature`` added (replacing an earlier one by the same key)."""
        kept = tuple(s for s in self.sigs if s.public_key != signature.public_key)
        return type(self)(self.wtx, (*kept, signature))

    def sign_with(self, keypair: KeyPair) -> SignedTransaction:
        """A copy signed by ``keypair`` as well."""
        return self.with_signature(TransactionSignature.create(keypair, self.id))

    def missing_signers(self, except_keys: Iterable[bytes] = ()) -> frozenset[bytes]:
        """Required keys that have not signed yet, ``except_keys`` aside."""
        return self.wtx.required_signers - self.signed_keys - frozenset(except_keys)

    def check_shape(self) -> None:
        """`WireTransaction.check_shape`, and signatures that are pairs of bytes (once
        per object, which is frozen)."""
        if self.__dict__.get("_shape_ok"):
            return
        if type(self.wtx) is not WireTransaction:
            raise TransactionVerificationError(
                f"malformed signed transaction: {type(self.wtx).__qualname__} is not a WireTransaction")
        self.wtx.check_shape()
        if type(self.sigs) is not tuple or any(
                type(s) is not TransactionSignature or type(s.public_key) is not bytes
                or type(s.signature) is not bytes for s in self.sigs):
            raise SignatureError(f"malformed signatures on transaction {self.id}")
        self.__dict__["_shape_ok"] = True

    def verify_signatures(self, except_keys: Iterable[bytes] = (), *,
                          names: Mapping[bytes, str] | None = None) -> None:
        """Every signature must verify over this transaction's id, and every required
        signer but ``except_keys`` (typically the notary's, before notarisation) must have
        signed; `SignatureError` names the key and the transaction otherwise (and the
        party, as far as the transaction's states or ``names``, key -> party name, say:
        a node passes the parties it knows)."""
        self.check_shape()
        message = _signable(self.id)
        for sig in self.sigs:
            if not verify(sig.public_key, message, sig.signature):
                raise SignatureError(
                    f"the signature by {_key_label(sig.public_key, self._names(names))} does not verify "
                    f"over transaction {self.id}: the transaction was changed after it was signed, "
                    "or the signature was not made with that key")
        missing = self.missing_signers(except_keys)
        if missing:
            known = self._names(names)
            who = ", ".join(sorted(_key_label(k, known) for k in missing))
            raise SignatureError(f"transaction {self.id} is missing signatures from {who}")

    def verify(self, resolve_input: InputResolver, except_keys: Iterable[bytes] = ()) -> LedgerTransaction:
        """Signatures first (cheap to fail, and proof of who proposed it), then contracts."""
        self.verify_signatures(except_keys)
        return self.wtx.verify(resolve_input)

    def _names(self, extra: Mapping[bytes, str] | None = None) -> dict[bytes, str]:
        found = signer_names(self.wtx)
        return found if not extra else {**extra, **found}

    def stored_form(self) -> bytes:
        """How a node keeps this transaction (`greenflow.ledger.stored_form`): made once
        per object, which is frozen; the vault's recording makes it, and a flow that
        then returns the transaction stores its result from the same bytes."""
        known = self.__dict__.get("_stored")
        if known is None:
            tx = self.wtx
            known = module_prefix((*map(type, tx.outputs), None,
                                   *(type(c.value) for c in tx.commands))) + encode(self)
            self.__dict__["_stored"] = known
        return known

    def __reduce__(self) -> tuple:
        # Pickled as its stored form: a result record or checkpoint holding a transaction
        # costs one cached bytes object instead of a pickle of its ~70 objects.
        return unpack, (self.stored_form(),)


def _same(a: object, b: object) -> bool:
    """The same objects (not merely equal ones: ``1 == True``, but they hash apart)."""
    if type(a) is tuple and type(b) is tuple:
        return len(a) == len(b) and all(x is y for x, y in zip(a, b))
    return a is b


class TransactionBuilder:
    """Collects inputs, outputs and commands, then yields the transaction.

    Without a ``salt``, one is drawn with ``os.urandom``: inside a flow that is the flow's
    journaled randomness (see ``greenflow.runtime.replay_safe``), so a flow replayed after a
    restart builds the very same transaction; outside a flow it is fresh OS randomness.
    """

    def __init__(self, notary: Party | None = None, *, salt: bytes | None = None) -> None:
        if notary is not None and not isinstance(notary, Party):
            raise TypeError(f"a transaction's notary is a Party (or None), not "
                            f"{type(notary).__qualname__}")
        if salt is not None and (type(salt) is not bytes or len(salt) < MIN_SALT_BYTES):
            raise (ValueError if type(salt) is bytes else TypeError)(
                f"a transaction's salt is bytes, at least {MIN_SALT_BYTES} of them (unguessable: "
                f"it keeps the transaction's id from giving away its content), not "
                + (f"{len(salt)} bytes" if type(salt) is bytes else type(salt).__qualname__))
        self.notary = notary
        self.salt = os.urandom(SALT_BYTES) if salt is None else salt
        self.inputs: list[StateAndRef] = []
        self.outputs: list[ContractState] = []
        self.commands: list[Command] = []
        self.references: list[StateAndRef] = []
        self.time_window: TimeWindow | None = None

    def add_input_state(self, state_and_ref: StateAndRef) -> TransactionBuilder:
        if not isinstance(state_and_ref, StateAndRef):
            raise TypeError(f"an input is a StateAndRef, not {type(state_and_ref).__name__}")
        refs = self._refs("inputs")
        if state_and_ref.ref in refs:
            raise ValueError(f"input {state_and_ref.ref} is already in this transaction")
        self.inputs.append(state_and_ref)
        refs.add(state_and_ref.ref)
        return self

    def _refs(self, which: str) -> set:
        """The refs of ``inputs`` or ``references``, kept beside the list: a payment of
        20,000 coins was built in quadratic time (45 s of the node's one thread). Worked
        out again when the list's length says it was changed by hand (or this builder
        was stored by a version without them)."""
        states = getattr(self, which)
        sets = self.__dict__.setdefault("_ref_sets", {})
        refs = sets.get(which)
        if refs is None or len(refs) != len(states):
            refs = sets[which] = {s.ref for s in states}
        return refs

    def add_reference_state(self, state_and_ref: StateAndRef) -> TransactionBuilder:
        """Read ``state_and_ref`` without consuming it (Corda's reference input): the
        contracts see it in ``tx.references``, the notary signs only if it is still
        unconsumed, and it stays unconsumed. It must be under this transaction's notary."""
        if not isinstance(state_and_ref, StateAndRef):
            raise TypeError(f"a reference is a StateAndRef, not {type(state_and_ref).__name__}")
        ref = state_and_ref.ref
        refs = self._refs("references")
        if ref in refs or ref in self._refs("inputs"):
            raise ValueError(f"state {ref} is already in this transaction")
        self.references.append(state_and_ref)
        refs.add(ref)
        return self

    def set_time_window(self, from_time: datetime | TimeWindow | None = None,
                        until_time: datetime | None = None) -> TransactionBuilder:
        """Let the notary sign only while its clock is in ``[from_time, until_time)``
        (either bound may be None; or pass a `TimeWindow`). Inside a flow take the time
        once: ``now = self.now(); b.set_time_window(now, now + timedelta(seconds=30))``."""
        if isinstance(from_time, TimeWindow):
            if until_time is not None:
                raise TypeError("set_time_window takes a TimeWindow or two bounds, not both")
            self.time_window = from_time
        else:
            self.time_window = TimeWindow(from_time, until_time)
        return self

    def add_output_state(self, state: ContractState) -> TransactionBuilder:
        params = getattr(type(state), "__dataclass_params__", None)
        if not isinstance(state, ContractState) or params is None or not params.frozen:
            raise TypeError(f"an output is a ContractState that is a frozen dataclass, not {state!r}")
        self.outputs.append(state)
        return self

    def add_command(self, value: CommandData, *signers: bytes | Party) -> TransactionBuilder:
        """``signers``: public keys or parties whose signatures the command requires."""
        self.commands.append(Command(value, signers))  # type: ignore[arg-type]  # normalised
        return self

    def to_wire_transaction(self) -> WireTransaction:
        """The transaction built so far. Asked again with nothing changed (``verify()``,
        then this), it is the same object, so its id is hashed once."""
        parts = (self.notary, self.salt, tuple(self.inputs), tuple(self.outputs),
                 tuple(self.commands), tuple(self.references), self.time_window)
        last = self.__dict__.get("_built")
        if last is not None and len(last[0]) == len(parts) and all(
                _same(a, b) for a, b in zip(last[0], parts)):
            return last[1]
        wtx = WireTransaction(tuple(i.ref for i in self.inputs), tuple(self.outputs),
                              tuple(self.commands), self.notary, self.salt,
                              tuple(r.ref for r in self.references), self.time_window)
        self._built = (parts, wtx)
        return wtx

    def verify(self) -> LedgerTransaction:
        """Run the contracts over what has been built, with the input (and reference)
        states added."""
        states = {i.ref: i.state for i in (*self.inputs, *self.references)}
        return self.to_wire_transaction().verify(states.get)

    def sign_with(self, *keypairs: KeyPair) -> SignedTransaction:
        """The transaction signed by ``keypairs`` (usually the builder's own key)."""
        stx = SignedTransaction(self.to_wire_transaction())
        for keypair in keypairs:
            stx = stx.sign_with(keypair)
        return stx


for _cls in (TransactionSignature, LedgerTransaction, WireTransaction, SignedTransaction):
    register_wire_type(_cls)
keep_wire_bytes(SignedTransaction)   # encoded once per object, also when it arrived
