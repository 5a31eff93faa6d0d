"""Cash on the ledger: the `Cash` state and contract, and the flows that issue, pay and
exit it (Corda's finance module, in Python form).

Cash is a claim on the bank that issued it: a `Cash` state holds an
``Amount[Issued[str]]`` (pence of pounds issued by Bank) and its owner. The contract
keeps each token's total: a transaction only creates cash its issuer signs for
(`CashIssue`), only destroys cash its issuer and owner sign away (`CashExit`), and
otherwise moves it with its owners' signatures (`CashMove`).

Paying picks coins with `select_cash`, which soft-locks them for the calling flow
(`Vault.select`): two flows paying at once never pick the same coin; a flow that finds
only locked coins fails with `InsufficientBalance` saying how much other flows hold.
The locks go when the flow ends.

    from greenflow.ledger.finance import CashIssueFlow, CashPaymentFlow, pounds
    bank.start_flow(CashIssueFlow(pounds(1_000), notary, owner=alice))
    alice.start_flow(CashPaymentFlow(pounds(300), bob))    # 700 comes back as change
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Iterable, Optional, Sequence

from greenflow.errors import FlowException
from greenflow.flows.flow_logic import FlowLogic
from greenflow.party import Party
from greenflow.flows.registry import initiated_by, initiating_flow, startable
from greenflow.flows.session import FlowSession
from greenflow.wire import serializable
from greenflow.ledger.amounts import Amount, Issued, TokenMismatch, dollars, euros, fraction_digits, pounds, swiss_francs
from greenflow.ledger.contracts import CommandData, Contract
from greenflow.ledger.errors import ContractViolation
from greenflow.ledger.flows.finality import FinalityFlow, ReceiveFinalityFlow
from greenflow.ledger.states import ContractState, StateAndRef
from greenflow.ledger.transactions import LedgerTransaction, SignedTransaction, TransactionBuilder
from greenflow.ledger.vault import InsufficientBalance

__all__ = [
    "Amount", "Cash", "CashContract", "CashExit", "CashExitFlow", "CashIssue", "CashIssueFlow",
    "CashMove", "CashPaymentFlow", "InsufficientBalance", "Issued", "TokenMismatch", "cash_balances",
    "dollars", "euros", "fraction_digits", "generate_spend", "pounds", "select_cash", "swiss_francs",
]


# ============================================================================ commands
@serializable
@dataclass(frozen=True)
class CashIssue(CommandData):
    """New cash: signed by the issuer of every token the transaction creates."""


@serializable
@dataclass(frozen=True)
class CashMove(CommandData):
    """Cash changes hands: signed by the owner of every cash input."""


@serializable
@dataclass(frozen=True)
class CashExit(CommandData):
    """``amount`` leaves the ledger (the issuer paid it out): signed by its issuer (and,
    as a spend, by the owners of the inputs)."""

    amount: Amount


# ============================================================================ the contract
def _token_key(cash: Any) -> tuple:
    """A Cash state's token as a plain tuple (cheap to hash, unlike the `Issued` it
    stands for), after checking every field a peer's bytes could get wrong: received
    states are rebuilt without running their constructors."""
    issuer = cash.issuer
    if not (type(cash.quantity) is int and cash.quantity > 0 and type(cash.currency) is str
            and type(issuer) is Party and type(cash.reference) is bytes and type(cash.owner) is Party):
        raise ContractViolation("cash is a positive integer quantity of a currency, with an issuer "
                                "(a Party), a reference (bytes) and an owner (a Party)")
    return (issuer.owning_key, issuer.name, cash.currency, cash.reference)


def _token_text(key: tuple) -> str:
    return str(Issued(Party(key[1], key[0]), key[2], key[3]))


class CashContract(Contract):
    """Per token (currency and issuer): outputs = inputs + issued - exited. Issuing needs
    the issuer's signature, exiting the issuer's, spending the owners'."""

    name = "greenflow.ledger.finance.CashContract"

    def verify(self, tx: LedgerTransaction) -> None:
        ins, outs = tx.inputs_of_type(Cash), tx.outputs_of_type(Cash)
        if not ins and not outs:
            return
        issues, moves = tx.commands_of_type(CashIssue), tx.commands_of_type(CashMove)
        exits = tx.commands_of_type(CashExit)
        if not (issues or moves or exits):
            raise ContractViolation("a transaction with cash carries a CashIssue, CashMove or CashExit command")
        # Messages are formatted only on failure: a valid transaction (every trade checks
        # a few) pays for no text.
        balance: dict[tuple, int] = {}
        for cash in ins:
            key = _token_key(cash)
            balance[key] = balance.get(key, 0) - cash.quantity
        consumed = set(balance)
        for cash in outs:
            key = _token_key(cash)
            balance[key] = balance.get(key, 0) + cash.quantity
        exit_signers: dict[tuple, set[bytes]] = {}
        for command in exits:
            amount = command.value.amount
            token = getattr(amount, "token", None)
            if not (type(amount) is Amount and type(amount.quantity) is int and amount.quantity > 0
                    and type(token) is Issued and type(token.issuer) is Party):
                raise ContractViolation("an exit names a positive amount of an Issued token")
            key = (token.issuer.owning_key, token.issuer.name, token.product, token.reference)
            if key not in consumed:
                raise ContractViolation(f"an exit of {amount} consumes cash of that token")
            balance[key] += amount.quantity
            exit_signers.setdefault(key, set()).update(command.signers)
        issue_signers = {k for c in issues for k in c.signers}
        issued = False
        for key, created in balance.items():
            if created > 0:
                if key in consumed:
                    raise ContractViolation(f"an issuance of {_token_text(key)} consumes none of it")
                if key[0] not in issue_signers:
                    raise ContractViolation(f"the issuer of {_token_text(key)} signs its issuance")
                issued = True
            elif created:
                raise ContractViolation(f"cash is conserved for each issuer and currency "
                                        f"({_token_text(key)}: {-created} more consumed than created)")
            if key in exit_signers and key[0] not in exit_signers[key]:
                raise ContractViolation(f"the issuer of {_token_text(key)} signs its exit")
        if issues and not issued:
            raise ContractViolation("an issuance creates cash")
        if ins:
            spenders = {k for c in moves for k in c.signers}
            for c in exits:
                spenders.update(c.signers)
            for cash in ins:
                if cash.owner.owning_key not in spenders:
                    raise ContractViolation("the owner of every cash input signs the move")


# ============================================================================ the state
@serializable
@dataclass(frozen=True, init=False)
class Cash(ContractState):
    """``amount`` (an ``Amount[Issued[str]]``: pence of pounds issued by a bank) owned
    by ``owner``, who alone records it: ``Cash(pounds(10).issued_by(bank), alice)``.

    It is stored and sent flat (quantity, currency, issuer, reference, owner) and
    ``amount`` is rebuilt on reading: a transaction's id and encoding then cost no more
    than a plain state's, which every trade computes a dozen times."""

    contract = CashContract
    quantity: int
    currency: str
    issuer: Party
    reference: bytes
    owner: Party

    def __init__(self, amount: Optional[Amount] = None, owner: Optional[Party] = None, *,
                 quantity: Optional[int] = None, currency: Optional[str] = None,
                 issuer: Optional[Party] = None, reference: Optional[bytes] = None) -> None:
        """``Cash(amount, owner)``; the stored fields by name are accepted too, so that
        ``dataclasses.replace(cash, owner=bob)`` works (an ``amount`` given replaces them)."""
        if amount is not None:
            token = getattr(amount, "token", None)
            if not isinstance(amount, Amount) or not isinstance(token, Issued) or not isinstance(token.product, str):
                raise TypeError(f"Cash holds an Amount of an Issued currency (pounds(10).issued_by(bank)), "
                                f"not {amount!r}")
            quantity, currency, issuer, reference = amount.quantity, token.product, token.issuer, token.reference
        if type(quantity) is not int or quantity <= 0 or not isinstance(currency, str) \
                or not isinstance(issuer, Party):
            raise TypeError("Cash(amount, owner) takes a positive Amount of an Issued currency")
        if not isinstance(owner, Party):
            raise TypeError(f"the owner of cash is a Party, not {owner!r}")
        _set_fields(self, quantity, currency, issuer, b"" if reference is None else reference, owner)

    @classmethod
    def _of(cls, quantity: int, currency: str, issuer: Party, reference: bytes, owner: Party) -> "Cash":
        """A coin from fields already checked (those of coins being spent): no Amount is
        built and nothing is checked again."""
        obj = cls.__new__(cls)
        _set_fields(obj, quantity, currency, issuer, reference, owner)
        return obj

    @property
    def amount(self) -> Amount:
        return Amount(self.quantity, Issued(self.issuer, self.currency, self.reference))

    @property
    def token(self) -> Issued:
        return Issued(self.issuer, self.currency, self.reference)

    @property
    def participants(self) -> list[Party]:
        return [self.owner]

    def with_new_owner(self, owner: Party) -> "Cash":
        return Cash(self.amount, owner)

    def __str__(self) -> str:
        return f"{self.amount} owned by {self.owner.short_name}"

    def __repr__(self) -> str:
        return f"Cash({self.amount!r}, {self.owner!r})"


def _set_fields(obj: Cash, quantity: int, currency: str, issuer: Party, reference: bytes, owner: Party) -> None:
    # The whole __dict__ at once (a frozen dataclass refuses attribute by attribute).
    object.__setattr__(obj, "__dict__", {"quantity": quantity, "currency": currency, "issuer": issuer,
                                         "reference": reference, "owner": owner})


# ============================================================================ helpers
def _spendable(currency: str, issuers: Optional[Sequence[Party]]) -> Any:
    if issuers is None:
        return lambda c: c.currency == currency
    keys = frozenset(p.owning_key for p in issuers)
    return lambda c: c.currency == currency and c.issuer.owning_key in keys


def _value(cash: Cash) -> Amount:
    return Amount(cash.quantity, cash.currency)


def select_cash(services: Any, amount: Amount, issuers: Optional[Sequence[Party]] = None) -> list[StateAndRef]:
    """Coins of ``amount``'s currency (of ``issuers`` only, if given) adding up to at least
    ``amount``, soft-locked for the calling flow until it ends (call from a flow).
    `InsufficientBalance` when the free coins do not add up; it says how much is free and
    how much other flows hold locked."""
    if not isinstance(amount, Amount) or not isinstance(amount.token, str):
        raise TypeError(f"select cash by an Amount of a currency code, not {amount!r}")
    return services.vault.select(Cash, amount, amount_of=_value,
                                 where=_spendable(amount.token, issuers))


def generate_spend(builder: TransactionBuilder, coins: Iterable[StateAndRef], amount: Amount,
                   payee: Party, change_to: Party) -> None:
    """Add ``coins`` as inputs, ``amount`` to ``payee`` and the rest back to ``change_to``
    as outputs, one per issuer (tokens of different issuers never merge). The caller adds
    a `CashMove` signed by the coins' owners."""
    due = amount.quantity
    # Per token (issuer, currency, reference): a plain tuple, cheap to hash.
    paid: dict[tuple, int] = {}
    change: dict[tuple, int] = {}
    for coin in coins:
        builder.add_input_state(coin)
        cash = coin.state
        quantity = cash.quantity
        if cash.currency != amount.token:
            raise TokenMismatch(f"a coin of {cash.token} cannot pay {amount}")
        token = (cash.issuer, cash.currency, cash.reference)
        take = min(due, quantity)
        due -= take
        if take:
            paid[token] = paid.get(token, 0) + take
        if quantity - take:
            change[token] = change.get(token, 0) + quantity - take
    if due:
        raise InsufficientBalance(f"the coins given fall {Amount(due, amount.token)} short of {amount}")
    for (issuer, currency, reference), q in paid.items():
        builder.add_output_state(Cash._of(q, currency, issuer, reference, payee))
    for (issuer, currency, reference), q in change.items():
        builder.add_output_state(Cash._of(q, currency, issuer, reference, change_to))


def cash_balances(vault: Any) -> dict[str, Amount]:
    """Our unconsumed cash per currency, all issuers together (for reports, outside flows
    or inside: `Vault.query` is journaled)."""
    totals: dict[str, int] = defaultdict(int)
    for sar in vault.query(Cash):
        totals[sar.state.currency] += sar.state.quantity
    return {currency: Amount(q, currency) for currency, q in sorted(totals.items())}


def _salt(flow: FlowLogic) -> bytes:
    return flow.random().randbytes(32)


class CashFlowError(FlowException):
    """A cash flow was given arguments it cannot act on (a negative or zero amount, a
    recipient that is no Party)."""


def _party(value: Any, what: str) -> Party:
    if not isinstance(value, Party):
        raise CashFlowError(f"{what} is a Party (from the network map or the identity "
                            f"service), not a {type(value).__qualname__}")
    return value


def _issuers(value: Any, what: str) -> Optional[list[Party]]:
    if value is None:
        return None
    if not isinstance(value, (list, tuple)):
        raise CashFlowError(f"{what} is a list of Party, not a {type(value).__qualname__}")
    return [_party(p, f"each of {what}") for p in value]


def _reference(value: Any, what: str) -> bytes:
    if type(value) is not bytes:
        raise CashFlowError(f"{what} is bytes, not a {type(value).__qualname__}")
    return value


def _positive(amount: Any, what: str) -> Amount:
    if not isinstance(amount, Amount) or not isinstance(amount.token, str) or amount.quantity <= 0:
        raise CashFlowError(f"{what} takes a positive Amount of a currency (e.g. pounds(10)), not {amount!r}")
    return amount


# ============================================================================ flows
@initiating_flow
@startable
class CashIssueFlow(FlowLogic):
    """This node issues ``amount`` of a currency to ``owner`` (itself by default), as
    ``coins`` states, notarised by ``notary`` when spent. Returns the transaction."""

    def __init__(self, amount: Amount, notary: Party, owner: Optional[Party] = None,
                 reference: bytes = b"", coins: int = 1) -> None:
        self.amount, self.notary, self.owner = amount, notary, owner
        self.reference, self.coins = reference, coins

    def call(self) -> SignedTransaction:
        amount = _positive(self.amount, "CashIssueFlow")
        notary = _party(self.notary, "CashIssueFlow's notary")
        owner = None if self.owner is None else _party(self.owner, "CashIssueFlow's owner")
        reference = _reference(self.reference, "CashIssueFlow's reference")
        if type(self.coins) is not int or not 1 <= self.coins <= amount.quantity:
            raise CashFlowError(f"cannot issue {amount} as {self.coins} coins")
        notaries = self.services.identity_service.notaries()
        if notaries and notary not in notaries:   # its cash could never be spent
            raise CashFlowError(f"cannot issue {amount} under {notary.name}: it is not a "
                                f"notary of this network (notaries: "
                                f"{', '.join(n.name for n in notaries)})")
        me = self.our_identity
        owner = owner or me
        builder = TransactionBuilder(notary, salt=_salt(self))
        for part in amount.issued_by(me, reference).split_evenly(self.coins):
            builder.add_output_state(Cash(part, owner))
        builder.add_command(CashIssue(), me)
        stx = self.services.key_management.sign(SignedTransaction(builder.to_wire_transaction()))
        sessions = [] if owner == me else [self.initiate_flow(owner)]
        return self.sub_flow(FinalityFlow(stx, sessions))


@initiated_by(CashIssueFlow)
class CashIssueResponder(FlowLogic):
    """Records cash issued to this node."""

    def __init__(self, session: FlowSession) -> None:
        self.session = session

    def call(self) -> SignedTransaction:
        return self.sub_flow(ReceiveFinalityFlow(self.session))


@initiating_flow
@startable
class CashPaymentFlow(FlowLogic):
    """Pay ``amount`` to ``recipient`` from this node's cash (of ``issuers`` only, if
    given); the change comes back to this node. Returns the transaction."""

    def __init__(self, amount: Amount, recipient: Party,
                 issuers: Optional[list[Party]] = None) -> None:
        self.amount, self.recipient, self.issuers = amount, recipient, issuers

    def call(self) -> SignedTransaction:
        amount = _positive(self.amount, "CashPaymentFlow")
        recipient = _party(self.recipient, "CashPaymentFlow's recipient")
        issuers = _issuers(self.issuers, "CashPaymentFlow's issuers")
        me = self.our_identity
        services = self.services
        coins = select_cash(services, amount, issuers)
        builder = TransactionBuilder(services.vault.notary_of(coins[0].ref), salt=_salt(self))
        generate_spend(builder, coins, amount, recipient, me)
        builder.add_command(CashMove(), me)
        stx = SignedTransaction(builder.to_wire_transaction())
        services.verifier.verify(stx, check_sufficient=False)  # remembered: finality checks signatures only
        stx = services.key_management.sign(stx)
        sessions = [] if recipient == me else [self.initiate_flow(recipient)]
        return self.sub_flow(FinalityFlow(stx, sessions))


@initiated_by(CashPaymentFlow)
class CashPaymentResponder(FlowLogic):
    """Records a payment to this node."""

    def __init__(self, session: FlowSession) -> None:
        self.session = session

    def call(self) -> SignedTransaction:
        return self.sub_flow(ReceiveFinalityFlow(self.session))


@startable
class CashExitFlow(FlowLogic):
    """The issuer takes ``amount`` of its own cash, which it holds, off the ledger (it
    was redeemed outside it). Returns the transaction."""

    def __init__(self, amount: Amount, reference: bytes = b"") -> None:
        self.amount, self.reference = amount, reference

    def call(self) -> SignedTransaction:
        amount = _positive(self.amount, "CashExitFlow")
        reference = _reference(self.reference, "CashExitFlow's reference")
        me = self.our_identity
        services = self.services
        token = Issued(me, amount.token, reference)
        coins = services.vault.select(Cash, amount, amount_of=_value,
                                      where=lambda c: c.token == token)
        builder = TransactionBuilder(services.vault.notary_of(coins[0].ref), salt=_salt(self))
        total = 0
        for coin in coins:
            builder.add_input_state(coin)
            total += coin.state.quantity
        if total > amount.quantity:
            builder.add_output_state(Cash(Amount(total - amount.quantity, token), me))
        builder.add_command(CashExit(Amount(amount.quantity, token)), me)
        stx = SignedTransaction(builder.to_wire_transaction())
        services.verifier.verify(stx, check_sufficient=False)  # remembered: finality checks signatures only
        stx = services.key_management.sign(stx)
        return self.sub_flow(FinalityFlow(stx))
