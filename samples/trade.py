"""Delivery versus payment: a buyer's cash for a seller's commercial paper, atomically.

`greenflow run sample.trade` builds an in-process network (a notary, a bank that issues
cash, a seller and a buyer), issues 1,500 GBP of cash to the buyer and a commercial paper
of face value 1,000 GBP to the seller, then runs one trade at 1,000 GBP and shows both
sides' progress as it happens. The seller offers the paper and the price, with the
paper's history (the buyer never held it, so it is sent unasked); the buyer checks that
history back to its issuance, checks the price against its limit,
builds one transaction with its cash in and the paper out, signs it and collects the
seller's signature (with the cash's history, which the seller checks, and that it is
paid); the notary rules out a double spend
and both vaults record the same transaction, or neither does. Ends with the transaction
id and what each vault held before and after.

Cash is the ledger's own (`greenflow.ledger.finance`): amounts are integer pence of
pounds issued by the bank; the sample quotes prices and limits in whole pounds.

With --processes the same flows run on four real node processes instead.
"""
from __future__ import annotations

import json as _json
import sys
import threading
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Callable, Optional

import click

from greenflow import (FlowException, FlowLogic, FlowSession, Party, ProgressTracker, Step,
                       initiated_by, initiating_flow, serializable, startable)
from greenflow.ledger import (CommandData, Contract, ContractState, SignedTransaction,
                              StateAndRef, StateRef, TransactionBuilder, require_that)
# Cash, CashIssue and CashMove stay importable from here, as they were before the sample
# used the finance module's cash.
from greenflow.ledger.finance import (Amount, Cash, CashIssue, CashIssueFlow, CashMove,  # noqa: F401
                                      fraction_digits, generate_spend, select_cash)
from greenflow.ledger.flows import (CollectSignaturesFlow, DataVendingFlow, FinalityFlow,
                                    ReceiveFinalityFlow, ResolveTransactionsFlow,
                                    SignTransactionFlow, TransactionRefused, check_states_match)
from greenflow.ledger.transactions import LedgerTransaction
from greenflow.node import journaled, register_service_factory

DEFAULT_CURRENCY = "GBP"


def money(units: int, currency: str = DEFAULT_CURRENCY) -> Amount:
    """``units`` whole units of ``currency`` (the sample prices in pounds, not pence)."""
    return Amount(units * 10 ** fraction_digits(currency), currency)


def units(quantity: int, currency: str) -> Any:
    """A quantity of ``currency``'s smallest unit as whole units: an int when it is one
    (the sample's figures), else the exact decimal as text."""
    whole, rest = divmod(quantity, 10 ** fraction_digits(currency))
    return whole if not rest else str(Amount(quantity, currency).to_decimal())


def cash_units(cash: Cash) -> Any:
    """What a coin is worth in whole units of its currency."""
    return units(cash.quantity, cash.currency)


# ============================================================================ contracts
def _issuance(tx: LedgerTransaction, ins: list, outs: list, issue: type, move: type, what: str) -> bool:
    """The rules both assets share for issuing: issued from nothing, signed by the issuer.
    True when ``tx`` issues (nothing more to check); otherwise it must carry ``move``."""
    issues, moves = tx.commands_of_type(issue), tx.commands_of_type(move)
    if not issues:
        require_that(bool(moves), f"a transaction that moves {what} carries a {move.__name__} command")
        return False
    require_that(not ins and not moves, f"an issuance of {what} consumes no {what}")
    signers = {k for c in issues for k in c.signers}
    require_that(all(s.issuer.owning_key in signers for s in outs), f"the issuer of {what} signs its issuance")
    return True


def _owners_sign(tx: LedgerTransaction, ins: list, move: type, what: str) -> None:
    signers = {k for c in tx.commands_of_type(move) for k in c.signers}
    require_that(all(s.owner.owning_key in signers for s in ins),
                 f"the owner of every {what} input signs the move")


class CommercialPaperContract(Contract):
    """Paper is issued by its issuer; a move only changes its owner, with the old
    owner's signature."""

    def verify(self, tx: LedgerTransaction) -> None:
        ins, outs = tx.inputs_of_type(CommercialPaper), tx.outputs_of_type(CommercialPaper)
        if not ins and not outs:
            return
        require_that(all(type(p.face_value) is int and p.face_value > 0 for p in (*ins, *outs)),
                     "face values are positive")
        if _issuance(tx, ins, outs, PaperIssue, PaperMove, "paper"):
            return
        require_that(len(ins) == len(outs), "every paper moved comes out once")
        require_that(sorted(p.terms for p in ins) == sorted(p.terms for p in outs),
                     "a move changes only the owner of a paper")
        _owners_sign(tx, ins, PaperMove, "paper")


# ============================================================================ states
class OwnedState(ContractState):
    """A state its ``owner`` alone holds, so the owner alone records it."""

    owner: Party

    @property
    def participants(self) -> list[Party]:
        return [self.owner]


@serializable
@dataclass(frozen=True)
class CommercialPaper(OwnedState):
    """An IOU of its issuer: ``face_value`` in ``currency``, held by ``owner``."""

    contract = CommercialPaperContract
    reference: str
    face_value: int
    currency: str
    issuer: Party
    owner: Party

    @property
    def terms(self) -> tuple:
        """Everything but the owner: what a move must keep."""
        return (self.reference, self.face_value, self.currency, self.issuer.name,
                self.issuer.owning_key)

    def __str__(self) -> str:
        return f"{self.reference} ({self.face_value:,} {self.currency} paper of {self.issuer.short_name})"


@serializable
@dataclass(frozen=True)
class PaperIssue(CommandData):
    pass


@serializable
@dataclass(frozen=True)
class PaperMove(CommandData):
    pass


# ============================================================================ the buyer's limit
class TradePolicy:
    """``services.trade_policy``: the most a node pays for an asset, per currency, kept in
    its store (so a restarted buyer keeps its limit). No limit set: it buys nothing."""

    DB = "trade_policy"

    def __init__(self, node: Any) -> None:
        self._node = node
        node.store.open_table(self.DB)
        self._limits = {k.decode(): int(v) for k, v in node.store.table_items(self.DB)}

    def set_max_price(self, currency: str, amount: int) -> None:
        with self._node.services.writes() as batch:
            batch.table_put(self.DB, currency.encode(), str(int(amount)).encode())
        self._limits[currency] = int(amount)

    @journaled
    def max_price(self, currency: str) -> Optional[int]:
        limit = self._limits.get(currency)
        if limit is None:   # set since this node opened (through another worker of a cluster)
            raw = self._node.store.table_get(self.DB, currency.encode())
            if raw is not None:
                limit = self._limits[currency] = int(raw)
        return limit


register_service_factory("trade_policy", TradePolicy)


class UnacceptablePrice(FlowException):
    """The buyer will not pay the price asked (above its limit, or no limit set)."""


@serializable
@dataclass(frozen=True)
class TradeOffer:
    """What the seller proposes: this asset, for this price, paid to ``pay_to``."""

    asset: StateAndRef
    price: int
    currency: str
    pay_to: Party


# ============================================================================ issuance
def _salt(flow: FlowLogic) -> bytes:
    return flow.random().randbytes(32)


@initiating_flow
@startable
class IssueCashFlow(CashIssueFlow):
    """This node issues ``amount`` whole units of ``currency`` to ``owner``, in ``coins``
    states: the finance module's `CashIssueFlow` with arguments a command line gives, and
    a responder of this app's own (a node running only this app answers it)."""

    def __init__(self, amount: int, owner: Party, notary: Party, currency: str = DEFAULT_CURRENCY,
                 coins: int = 1) -> None:
        super().__init__(money(amount, currency), notary, owner, coins=coins)


@initiated_by(IssueCashFlow)
class ReceiveCashFlow(FlowLogic):
    def __init__(self, session: FlowSession) -> None:
        self.session = session

    def call(self) -> SignedTransaction:
        return self.sub_flow(ReceiveFinalityFlow(self.session))


@startable
class IssuePaperFlow(FlowLogic):
    """This node issues itself a commercial paper (its own IOU); without a
    ``reference``, one is made up (``CP-`` and 8 hex digits)."""

    def __init__(self, reference: Optional[str], face_value: int, notary: Party,
                 currency: str = DEFAULT_CURRENCY) -> None:
        self.reference, self.face_value, self.notary = reference, face_value, notary
        self.currency = currency

    def call(self) -> StateAndRef:
        me = self.our_identity
        reference = self.reference or f"CP-{self.uuid().hex[:8].upper()}"
        builder = TransactionBuilder(self.notary, salt=_salt(self))
        builder.add_output_state(CommercialPaper(reference, self.face_value, self.currency, me, me))
        builder.add_command(PaperIssue(), me)
        stx = self.services.key_management.sign(SignedTransaction(builder.to_wire_transaction()))
        stx = self.sub_flow(FinalityFlow(stx))
        return stx.tx.out_ref(0)


# ============================================================================ the trade
#: The change that sends history unasked where the other side cannot hold it: the
#: seller sends the paper's issuance with its offer (the buyer never held this paper),
#: the buyer sends its coins' history with the transaction to sign (the seller never
#: held these coins). Each saves a request and the wait for its answer. Sellers of
#: version 1, and flows checkpointed before the change, keep the requests.
HISTORY_PUSHED = "trade-pushes-history"


@initiating_flow(version=2)
@startable
class SellerFlow(FlowLogic):
    """Sell ``asset`` (a paper this node owns) to ``buyer`` for ``price``. Returns the
    notarised transaction, recorded in both vaults."""

    OFFERING = Step("Offering the asset and its price")
    SHOWING_HISTORY = Step("Sending the asset's history to the buyer")
    SIGNING = Step("Checking the buyer's transaction pays us, and signing it")
    RECORDING = Step("Waiting for the notarised transaction")
    progress_tracker = ProgressTracker(OFFERING, SHOWING_HISTORY, SIGNING, RECORDING)

    def __init__(self, buyer: Party, asset: StateAndRef, price: int,
                 currency: str = DEFAULT_CURRENCY) -> None:
        self.buyer, self.asset, self.price, self.currency = buyer, asset, price, currency

    def call(self) -> SignedTransaction:
        asset = self.asset
        if not self.services.vault.is_unconsumed(asset.ref):
            raise FlowException(f"{self.our_identity.name} holds no unconsumed asset {asset.ref}")
        self.progress_tracker.current_step = self.OFFERING
        session = self.initiate_flow(self.buyer)
        session.send(TradeOffer(asset, self.price, self.currency, self.our_identity))
        self.progress_tracker.current_step = self.SHOWING_HISTORY
        pushed = self.versioned(HISTORY_PUSHED)
        self.sub_flow(DataVendingFlow(session, [asset.ref.tx_id],
                                      push=[asset.ref.tx_id] if pushed else None))
        self.progress_tracker.current_step = self.SIGNING
        check = self.payment_check(session)
        check.history_pushed = pushed
        signed = self.sub_flow(check)
        self.progress_tracker.current_step = self.RECORDING
        return self.sub_flow(ReceiveFinalityFlow(session, expected_tx_id=signed.id))

    def payment_check(self, session: FlowSession) -> SignTransactionFlow:
        """The sub-flow that checks the buyer's transaction and signs it."""
        return CheckPaymentFlow(session, self.asset, self.price, self.currency)


class CheckPaymentFlow(SignTransactionFlow):
    """The seller signs only a transaction that pays it the price, gives the buyer the
    asset offered, and spends nothing else of the seller's."""

    def __init__(self, session: FlowSession, asset: StateAndRef, price: int, currency: str) -> None:
        super().__init__(session)
        self.asset, self.price, self.currency = asset, price, currency

    def check_transaction(self, stx: SignedTransaction) -> None:
        tx = stx.tx
        me, buyer = self.our_identity, self.session.counterparty
        vault = self.services.vault
        if self.asset.ref not in tx.inputs:
            raise TransactionRefused(f"transaction {stx.id} does not transfer {self.asset.ref}")
        for ref in tx.inputs:
            sar = vault.state(ref)  # the transaction and its history are verified: recorded
            if ref != self.asset.ref and sar is not None and any(
                    p.owning_key == me.owning_key for p in sar.state.participants):
                raise TransactionRefused(f"transaction {stx.id} also spends {ref}, which is "
                                         f"{me.name}'s and was not offered")
        paid = sum(c.quantity for c in tx.outputs if isinstance(c, Cash)
                   and c.owner.owning_key == me.owning_key and c.currency == self.currency)
        if paid < self.price * 10 ** fraction_digits(self.currency):
            raise TransactionRefused(f"{buyer.name} pays {units(paid, self.currency):,} {self.currency}; "
                                     f"the price agreed is {self.price:,} {self.currency}")
        offered = self.asset.state
        delivered = [p for p in tx.outputs if isinstance(p, CommercialPaper)
                     and p.terms == offered.terms and p.owner.owning_key == buyer.owning_key]
        if len(delivered) != 1:
            raise TransactionRefused(f"transaction {stx.id} does not give {offered.reference} to "
                                     f"{buyer.name}")


@initiated_by(SellerFlow)
class BuyerFlow(FlowLogic):
    """Buy what the seller offers if the history checks out and the price is within
    this node's limit (`TradePolicy`): pay with this node's cash, in one transaction."""

    RECEIVING = Step("Receiving the offer")
    VERIFYING = Step("Checking the asset's history back to its issuance")
    CHECKING_PRICE = Step("Checking the price against our limit")
    SELECTING = Step("Selecting and locking our cash")
    SIGNING = Step("Building and signing the transaction")
    COLLECTING = Step("Collecting the seller's signature")
    FINALISING = Step("Notarising and recording")
    progress_tracker = ProgressTracker(RECEIVING, VERIFYING, CHECKING_PRICE, SELECTING, SIGNING,
                                       COLLECTING, FINALISING)

    def __init__(self, session: FlowSession) -> None:
        self.session = session

    def call(self) -> SignedTransaction:
        session, services = self.session, self.services
        seller = session.counterparty
        me = self.our_identity
        self.progress_tracker.current_step = self.RECEIVING
        offer = _checked_offer(session.receive(TradeOffer), seller)
        asset = offer.asset

        self.progress_tracker.current_step = self.VERIFYING
        pushed = (self.versioned(HISTORY_PUSHED)
                  and session.counterparty_flow_info().flow_version >= 2)
        self.sub_flow(ResolveTransactionsFlow(session, [asset.ref.tx_id], pushed=pushed))
        check_states_match(services.vault, [asset], seller)

        self.progress_tracker.current_step = self.CHECKING_PRICE
        limit = services.trade_policy.max_price(offer.currency)
        if limit is None or offer.price > limit:
            raise UnacceptablePrice(
                f"{me.name} will not pay {offer.price:,} {offer.currency} for {asset.state.reference}: "
                + ("it has no price limit in " + offer.currency if limit is None
                   else f"its limit is {limit:,} {offer.currency}"))

        self.progress_tracker.current_step = self.SELECTING
        coins = select_cash(services, money(offer.price, offer.currency))

        self.progress_tracker.current_step = self.SIGNING
        builder = TransactionBuilder(services.vault.notary_of(asset.ref), salt=_salt(self))
        builder.add_input_state(asset)
        builder.add_output_state(CommercialPaper(asset.state.reference, asset.state.face_value,
                                                 asset.state.currency, asset.state.issuer, me))
        builder.add_command(PaperMove(), seller)
        generate_spend(builder, coins, money(offer.price, offer.currency), offer.pay_to, me)
        builder.add_command(CashMove(), me)
        stx = SignedTransaction(builder.to_wire_transaction())
        # Our own check before we sign; the verifier remembers it by the transaction's id,
        # so finality checks only the signatures it has not seen.
        services.verifier.verify(stx, check_sufficient=False)
        stx = services.key_management.sign(stx)

        self.progress_tracker.current_step = self.COLLECTING
        own = list(dict.fromkeys(c.ref.tx_id for c in coins)) if pushed else None
        stx = self.sub_flow(CollectSignaturesFlow(stx, [session], push_history=own))

        self.progress_tracker.current_step = self.FINALISING
        return self.sub_flow(FinalityFlow(stx, [session]))


# ============================================================================ for RPC and the CLI
@startable
class SellPaperFlow(FlowLogic):
    """`SellerFlow` with arguments a command line can give: the paper by its
    ``reference``, or without one any paper of ours no other sale holds (soft-locked for
    this sale). Returns the transaction id."""

    def __init__(self, buyer: Party, price: int, reference: Optional[str] = None,
                 currency: str = DEFAULT_CURRENCY) -> None:
        self.buyer, self.price, self.reference, self.currency = buyer, price, reference, currency

    def call(self) -> str:
        vault = self.services.vault
        if self.reference is None:
            [paper] = vault.select(CommercialPaper, 1, amount_of="face_value")
        else:
            found = vault.query(CommercialPaper, where=lambda p: p.reference == self.reference)
            if not found:
                raise FlowException(f"{self.our_identity.name} holds no paper {self.reference}")
            paper = found[0]
        stx = self.sub_flow(SellerFlow(self.buyer, paper, self.price, self.currency))
        return str(stx.id)


@startable
class SetPriceLimitFlow(FlowLogic):
    """Set the most this node pays for an asset (`TradePolicy`)."""

    def __init__(self, amount: int, currency: str = DEFAULT_CURRENCY) -> None:
        self.amount, self.currency = amount, currency

    def call(self) -> int:
        self.services.trade_policy.set_max_price(self.currency, self.amount)
        return self.amount


@startable
class HoldingsFlow(FlowLogic):
    """What this node's vault holds (as `holdings` reports it)."""

    def call(self) -> dict:
        return holdings(self)


def _checked_offer(offer: TradeOffer, seller: Party) -> TradeOffer:
    """An offer as the seller's bytes built it: check every field before trusting it."""
    asset = offer.asset
    if (type(offer.price) is not int or offer.price <= 0 or type(offer.currency) is not str
            or type(asset) is not StateAndRef or type(asset.ref) is not StateRef
            or not isinstance(asset.state, CommercialPaper)):
        raise FlowException(f"malformed trade offer from {seller.name}")
    if offer.pay_to != seller or asset.state.owner != seller:
        raise FlowException(f"{seller.name} offers {asset.state.reference}, which it does not own, "
                            f"or asks to pay someone else ({offer.pay_to.name})")
    return offer


# ============================================================================ a trading network
PRICE = 1_000
CASH_PER_TRADE = 1_500
FACE_VALUE = 1_000
PRICE_LIMIT = 1_200


@dataclass
class TradeNetwork:
    """The sample's in-process network: a notary, a bank issuing cash, a seller, a buyer."""

    net: Any
    notary: Any
    bank: Any
    seller: Any
    buyer: Any

    @classmethod
    def create(cls, data_dir: str, validating_notary: bool = False,
               **node_options: Any) -> "TradeNetwork":
        """``validating_notary``: the notary verifies each trade and its history before
        it signs (the default notary checks only for double spends)."""
        from greenflow.testing import MockNetwork
        net = MockNetwork(data_dir, **node_options)
        return cls(net, net.create_notary(validating=validating_notary), net.create_node("Bank"),
                   net.create_node("Seller"), net.create_node("Buyer"))

    def restart(self, role: str) -> Any:
        """Power-cut the node playing ``role`` ("seller", "buyer", "notary", "bank") and
        reopen it from its store."""
        node = self.net.restart_node(getattr(self, role))
        setattr(self, role, node)
        return node

    def close(self) -> None:
        self.net.close()


def prepare_trades(tn: TradeNetwork, count: int, *, cash_per_trade: int = CASH_PER_TRADE,
                   face_value: int = FACE_VALUE, limit: Optional[int] = PRICE_LIMIT,
                   currency: str = DEFAULT_CURRENCY) -> list[StateAndRef]:
    """Issue ``count`` coins of cash to the buyer and ``count`` papers to the seller (one
    transaction each), set the buyer's price limit; returns the papers."""
    if limit is not None:
        tn.buyer.services.trade_policy.set_max_price(currency, limit)
    notary = tn.notary.party
    cash = tn.bank.node.start_flows([IssueCashFlow(cash_per_trade, tn.buyer.party, notary, currency)
                                     for _ in range(count)])
    papers = tn.seller.node.start_flows([IssuePaperFlow(f"CP-{i + 1:04d}", face_value, notary, currency)
                                         for i in range(count)])
    tn.net.run_network()
    for handle in cash:
        handle.result()
    return [handle.result() for handle in papers]


def holdings(node: Any, currency: Optional[str] = None) -> dict:
    """What a node's vault holds: cash per currency, and its papers (``node``: anything
    with ``services``, a node or a running flow)."""
    vault = node.services.vault
    cash: dict[str, int] = defaultdict(int)
    for sar in vault.query(Cash):
        if currency is None or sar.state.currency == currency:
            cash[sar.state.currency] += sar.state.quantity
    papers = sorted((sar.state for sar in vault.query(CommercialPaper)), key=lambda p: p.reference)
    face: dict[str, int] = defaultdict(int)
    for p in papers:
        face[p.currency] += p.face_value
    return {"cash": {c: units(q, c) for c, q in cash.items()}, "paper": {"count": len(papers), "face_value": dict(face),
                                          "references": [p.reference for p in papers[:10]]}}


def describe_holdings(h: dict) -> str:
    parts = []
    paper = h["paper"]
    if paper["count"] == 1:
        parts.append(f"paper {paper['references'][0]}")
    elif paper["count"]:
        parts.append(f"{paper['count']:,} papers")
    if paper["count"]:
        parts[-1] += " (" + ", ".join(f"{v:,} {c}" for c, v in paper["face_value"].items()) + " face)"
    parts.extend(f"cash {v:,} {c}" for c, v in h["cash"].items() if v)
    return ", ".join(parts) or "nothing"


# ============================================================================ the command line
SAMPLE_OPTIONS = [
    click.Option(["--trades"], type=click.IntRange(min=1), default=1, show_default=True,
                 help="Run N trades concurrently (a progress bar, then trades per second)."),
    click.Option(["--price"], type=click.IntRange(min=1), default=PRICE, show_default=True,
                 help=f"The price asked per paper, in {DEFAULT_CURRENCY} (the buyer's limit is "
                      f"{PRICE_LIMIT:,}: above it the trade fails with UnacceptablePrice)."),
    click.Option(["--crash"], is_flag=True,
                 help="Power-cut the buyer in the middle of the trade, restart it from its "
                      "store and show the trade completing."),
    click.Option(["--json", "as_json"], is_flag=True, help="Print the summary as JSON only."),
    click.Option(["--processes"], is_flag=True,
                 help="Run the four nodes as real processes (TCP on loopback, driven over RPC); "
                      "--crash then sends the buyer SIGKILL."),
]


class _Display:
    """Both sides' progress steps as they happen (one trade), or a progress bar (many)."""

    def __init__(self, trades: int, quiet: bool) -> None:
        self.trades = trades
        self.quiet = quiet
        self.seller_flows: set[str] = set()
        self.failures: list[str] = []   # why flows that did not complete ended
        self.done = 0
        self.last: dict[str, Optional[str]] = {}
        self.buyer_step: Optional[str] = None
        self.ended: dict[str, int] = {}
        self.bar: Any = None
        self._lock = threading.Lock()  # node processes report on threads of their own
        if trades > 1 and not quiet:
            self.bar = click.progressbar(length=trades, label=f"Trading {trades:,}", file=sys.stderr,
                                         show_pos=True, show_eta=False)
            self.bar.__enter__()

    def listener(self, side: str, node: Any) -> Callable[[str, Optional[str]], None]:
        """A progress listener for an in-process node."""
        def on_step(flow_id: str, step: Optional[str]) -> None:
            outcome = None
            if step is None:
                record = node.scheduler.recent_results.get(flow_id) or {}
                outcome = (getattr(record.get("status"), "value", "ENDED"), record.get("error"))
            self.show(side, flow_id, step, outcome)
        return on_step

    def show(self, side: str, flow_id: str, step: Optional[str],
             outcome: Optional[tuple[str, Any]] = None) -> None:
        """A step of ``side``'s flow (``step`` None: it ended, with ``outcome`` = (status,
        error))."""
        with self._lock:
            if side == "Buyer" and step is not None:
                self.buyer_step = step
            if step is None:
                self.ended[side] = self.ended.get(side, 0) + 1
                if outcome is not None and outcome[0] != "COMPLETED" and outcome[1]:
                    self.failures.append(f"{side}: {outcome[0]}: {outcome[1]}")
            if step is None and flow_id in self.seller_flows:
                self.done += 1
                if self.bar is not None:
                    self.bar.update(1)
            last = self.last.get(side) or ""
            if self.quiet or self.trades > 1 or (step is not None and last.startswith(step)):
                return  # nothing new: the same step, or back from a sub-flow
            if step is None:
                self.last[side] = None
                if last:
                    status, error = outcome or ("ENDED", None)
                    click.echo(f"  {side:<7}│ " + ("✓ done" if status == "COMPLETED"
                                                 else f"✗ {status}: {error}"))
                return
            self.last[side] = step
            click.echo(f"  {side:<7}│ {step}")

    def note(self, text: str) -> None:
        if not self.quiet:
            if self.bar is not None:
                click.echo("", err=True)
            click.echo(text)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.__exit__(None, None, None)
            self.bar = None


def run_sample(data_dir: str, trades: int = 1, price: int = PRICE, crash: bool = False,
               as_json: bool = False, processes: bool = False) -> int:
    """The trade (or ``trades`` concurrent ones) under ``data_dir``: on an in-process
    network, or (``processes``) on real node processes over TCP."""
    say = (lambda *_: None) if as_json else click.echo
    if processes:
        from greenflow.samples._trade_processes import run_on_processes
        summary = run_on_processes(data_dir, trades, price, crash, say, quiet=as_json)
    else:
        summary = _run_in_process(data_dir, trades, price, crash, say, quiet=as_json)
    if as_json:
        click.echo(_json.dumps(summary, indent=2))
    else:
        _print_summary(summary)
    return 0


def _run_in_process(data_dir: str, trades: int, price: int, crash: bool, say: Callable[[str], None],
                    quiet: bool) -> dict:
    tn = TradeNetwork.create(data_dir)
    try:
        left = sum(n.node.pending_flows_count for n in (tn.notary, tn.bank, tn.seller, tn.buyer))
        if left:   # an earlier run in this directory was interrupted: its flows go on first
            click.echo(f"resuming {left:,} unfinished flow(s) of an earlier run in {data_dir} "
                       "first", err=True)
        announce_network(say, tn.notary.name, tn.bank.name, tn.seller.name, tn.buyer.name)
        papers = prepare_trades(tn, trades, cash_per_trade=cash_per_trade(price))
        before = {"seller": holdings(tn.seller), "buyer": holdings(tn.buyer)}
        announce_trades(say, tn.seller.name, tn.buyer.name, before, trades, price)
        display = _Display(trades, quiet=quiet)
        tn.seller.node.add_progress_listener(display.listener("Seller", tn.seller.node))
        tn.buyer.node.add_progress_listener(display.listener("Buyer", tn.buyer.node))
        crash_info = None
        t0 = time.perf_counter()
        handles = tn.seller.node.start_flows(
            [SellerFlow(tn.buyer.party, paper, price) for paper in papers])
        display.seller_flows.update(h.id for h in handles)
        if crash:
            crash_info = _crash_buyer_mid_trade(tn, display)
        tn.net.run_network()
        elapsed = time.perf_counter() - t0
        display.close()
        results = [h.result() for h in handles]  # a failed trade raises its error here
        after = {"seller": holdings(tn.seller), "buyer": holdings(tn.buyer)}
        problems = settlement_problems(before, after, trades, tn.buyer.name)
        problems += [f"{node.name} did not record transaction {stx.id}" for stx in results
                     for node in (tn.seller, tn.buyer) if not node.services.vault.has_transaction(stx.id)]
        left = sum(len(node.node.checkpoints_dump()) for node in (tn.seller, tn.buyer, tn.notary))
        if left:
            problems.append(f"{left} flow checkpoint(s) left unfinished")
        if problems:
            raise click.ClickException("the trade did not settle cleanly: " + "; ".join(problems))
        return make_summary(trades, [str(r.id) for r in results], tn.notary.name, elapsed, crash_info,
                            (tn.seller.name, tn.buyer.name), before, after)
    finally:
        tn.close()


def cash_per_trade(price: int) -> int:
    return max(CASH_PER_TRADE, price + 500)


def announce_network(say: Callable[[str], None], notary: str, bank: str, seller: str, buyer: str) -> None:
    say(f"Network: {notary} (notary), {bank} (issues cash), {seller}, {buyer}")


def announce_trades(say: Callable[[str], None], seller: str, buyer: str, before: dict, trades: int,
                    price: int) -> None:
    say(f"Issued: {seller} holds {describe_holdings(before['seller'])}; {buyer} holds "
        f"{describe_holdings(before['buyer'])} (its limit: {PRICE_LIMIT:,} {DEFAULT_CURRENCY})")
    say(f"{seller} offers {trades:,} paper(s) to {buyer} at {price:,} {DEFAULT_CURRENCY} each"
        + (":" if trades == 1 else ""))


def make_summary(trades: int, tx_ids: list[str], notary: str, elapsed: float, crash_info: Optional[dict],
                 names: tuple[str, str], before: dict, after: dict) -> dict:
    """The run's summary (what ``--json`` prints)."""
    return {
        "ok": True, "trades": trades, "tx_id": tx_ids[0], "transactions": tx_ids[:10],
        "transactions_total": len(tx_ids),   # ("transactions": the first 10 of them)
        "notary": notary, "seconds": round(elapsed, 4),
        "trades_per_second": round(trades / elapsed, 1) if elapsed else None,
        "crash": crash_info,
        **{side: {"name": name, "before": before[side], "after": after[side]}
           for side, name in zip(("seller", "buyer"), names)},
    }


def _crash_buyer_mid_trade(tn: TradeNetwork, display: _Display) -> dict:
    """Deliver one frame at a time until the buyer is collecting the seller's signature,
    then cut its power and reopen it from its store."""
    net = tn.net
    mark = BuyerFlow.COLLECTING.label
    while not (display.buyer_step or "").startswith(mark):
        if not net.run_network(max_messages=1) and not net.in_flight:
            why = f": {display.failures[0]}" if display.failures else ""
            raise click.ClickException("--crash: the trade ended before the buyer reached "
                                       f"'{mark}'; nothing to crash{why}")
    step = display.buyer_step
    waiting = [f for f in tn.buyer.node.flows() if not f.status.finished]
    display.note(f"  ⚡ power cut: {tn.buyer.name} stops at '{step}' with {len(waiting)} flow(s) "
                 "unfinished; reopening it from its store")
    tn.restart("buyer")
    tn.buyer.node.add_progress_listener(display.listener("Buyer", tn.buyer.node))
    resumed = [f for f in tn.buyer.node.flows() if not f.status.finished]
    display.note(f"  ↻ {tn.buyer.name} reopened: {len(resumed)} flow(s) resume from their checkpoints")
    return {"node": tn.buyer.name, "at_step": step, "flows_resumed": len(resumed)}


def settlement_problems(before: dict, after: dict, trades: int, buyer: str) -> list[str]:
    """What is wrong with the vaults after ``trades`` trades: nothing created or lost, and
    the buyer got every paper."""
    problems = []
    for what in ("cash", "paper"):
        total_before, total_after = _total(before, what), _total(after, what)
        if total_before != total_after:
            problems.append(f"{what} is not conserved: {total_before} before, {total_after} after")
    expected = before["buyer"]["paper"]["count"] + trades
    if after["buyer"]["paper"]["count"] != expected:
        problems.append(f"{buyer} holds {after['buyer']['paper']['count']} papers, expected {expected}")
    return problems


def _total(h: dict, what: str) -> dict:
    out: dict[str, int] = defaultdict(int)
    for side in h.values():
        source = side["cash"] if what == "cash" else side["paper"]["face_value"]
        for currency, amount in source.items():
            out[currency] += amount
    return dict(out)


def _print_summary(s: dict) -> None:
    click.echo("")
    if s["crash"]:
        click.echo(f"{s['crash']['node']} was power-cut at '{s['crash']['at_step']}' and finished "
                   "the trade after its restart.")
    if s["trades"] == 1:
        click.echo(f"Trade settled in {s['seconds']:.3f} s: one transaction, notarised by "
                   f"{s['notary']} and recorded by both sides")
        click.echo(f"  transaction  {s['tx_id']}")
    else:
        click.echo(f"{s['trades']:,} trades settled in {s['seconds']:.2f} s: "
                   f"{s['trades_per_second']:,} trades/s (one transaction each, notarised by "
                   f"{s['notary']})")
        click.echo(f"  first transaction  {s['tx_id']}")
    width = max(len(describe_holdings(s[side]["before"])) for side in ("seller", "buyer")) + 3
    click.echo(f"  {'':<8}{'before':<{width}}after")
    for side in ("seller", "buyer"):
        click.echo(f"  {s[side]['name']:<8}{describe_holdings(s[side]['before']):<{width}}"
                   f"{describe_holdings(s[side]['after'])}")
