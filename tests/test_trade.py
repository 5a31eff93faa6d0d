"""The trade sample on MockNetwork: delivery versus payment settles exactly once, or not
at all, whoever crashes and whatever goes wrong.

Every test runs in both network modes (`net_options`: flows kept in memory, and flows
dropped after every suspension and rebuilt by replay).
"""
from __future__ import annotations

import pytest

import ledgerflows
from greenflow.ledger.flows import NotaryError, TransactionRefused
from greenflow.samples.trade import (PRICE, BuyerFlow, Cash, CommercialPaper, IssueCashFlow,
                                     IssuePaperFlow, SellerFlow, TradeNetwork, UnacceptablePrice,
                                     holdings, prepare_trades)


@pytest.fixture
def tn(tmp_path, net_options):
    network = TradeNetwork.create(str(tmp_path / "net"), **net_options)
    yield network
    network.close()


def ledger_totals(tn: TradeNetwork) -> tuple[int, int]:
    """(cash, paper face value) held by the seller and the buyer together."""
    cash = paper = 0
    for node in (tn.seller, tn.buyer):
        h = holdings(node)
        cash += sum(h["cash"].values())
        paper += sum(h["paper"]["face_value"].values())
    return cash, paper


def finished_flow(node, cls):
    """Handle of the (single) finished flow of class ``cls`` on ``node``."""
    name = f"{cls.__module__}.{cls.__qualname__}"
    infos = [f for f in node.node.flows() if f.flow_class == name]
    assert len(infos) == 1, infos
    return node.node.handle(infos[0].id)


def assert_settled(tn: TradeNetwork, stx, paper, totals) -> None:
    """One transaction, recorded by both; value conserved; no flow or lock left."""
    for node in (tn.seller, tn.buyer):
        assert node.services.vault.has_transaction(stx.id), node.name
    assert holdings(tn.seller)["cash"] == {"GBP": PRICE}
    assert holdings(tn.seller)["paper"]["count"] == 0
    assert holdings(tn.buyer)["paper"]["references"] == [paper.state.reference]
    assert holdings(tn.buyer)["cash"] == {"GBP": 1_500 - PRICE}
    assert ledger_totals(tn) == totals
    assert tn.notary.services.notary_service.consumed_by(paper.ref) == stx.id.value
    for node in (tn.seller, tn.buyer, tn.notary, tn.bank):
        assert node.node.checkpoints_dump() == [], node.name
        assert node.services.vault.locks() == {}, node.name


def test_a_trade_moves_the_paper_and_the_cash_in_one_notarised_transaction(tn):
    [paper] = prepare_trades(tn, 1)
    totals = ledger_totals(tn)
    handle = tn.seller.start_flow(SellerFlow(tn.buyer.party, paper, PRICE))
    tn.net.run_network()
    stx = handle.result()
    assert finished_flow(tn.buyer, BuyerFlow).result().id == stx.id
    assert tn.notary.party.owning_key in stx.signed_keys
    assert {s.public_key for s in stx.sigs} == {tn.seller.party.owning_key, tn.buyer.party.owning_key,
                                                tn.notary.party.owning_key}
    assert_settled(tn, stx, paper, totals)


def _frames_of_one_trade(tmp_path, net_options) -> int:
    tn = TradeNetwork.create(str(tmp_path / "count"), **net_options)
    try:
        [paper] = prepare_trades(tn, 1)
        tn.seller.start_flow(SellerFlow(tn.buyer.party, paper, PRICE))
        return tn.net.run_network()
    finally:
        tn.close()


@pytest.mark.parametrize("role", ["seller", "buyer", "notary"])
def test_the_trade_settles_exactly_once_when_a_party_restarts_after_any_number_of_frames(
        tmp_path, net_options, role):
    frames = _frames_of_one_trade(tmp_path, net_options)
    assert frames == 10
    for k in range(frames + 1):
        tn = TradeNetwork.create(str(tmp_path / f"{role}-{k}"), **net_options)
        try:
            [paper] = prepare_trades(tn, 1)
            totals = ledger_totals(tn)
            handle = tn.seller.start_flow(SellerFlow(tn.buyer.party, paper, PRICE))
            tn.net.run_network(max_messages=k)
            tn.restart(role)
            tn.net.run_network()
            stx = tn.seller.node.handle(handle.id).result()
            assert_settled(tn, stx, paper, totals)
        except Exception as exc:
            raise AssertionError(f"{role} restarted after {k} of {frames} frames: {exc}") from exc
        finally:
            tn.close()


def test_a_trade_takes_ten_frames(tmp_path, net_options):
    """Offer, and the paper's history sent with it unasked (it is all there is); the
    transaction, and the coins' history sent with it unasked; the seller's `EndOfFetch`
    (it holds the paper's history, which the buyer did not send) and its signature; the
    notary's request and signature; the notarised transaction; and the seller's end.
    Two round trips fewer than asking for each history: 7 messages one after another, not 11."""
    assert _frames_of_one_trade(tmp_path, net_options) == 10


def test_soft_locks_survive_a_restart_and_go_when_the_flow_ends(tn):
    [paper] = prepare_trades(tn, 1)
    handle = tn.seller.start_flow(SellerFlow(tn.buyer.party, paper, PRICE))
    while not tn.buyer.services.vault.locks():
        assert tn.net.run_network(max_messages=1), "the buyer never locked its cash"
    locked = tn.buyer.services.vault.locks()
    tn.restart("buyer")
    assert tn.buyer.services.vault.locks() == locked  # read back from the store
    [coin] = tn.buyer.services.vault.query(Cash)
    assert coin.ref in locked
    tn.net.run_network()
    handle.result()
    assert tn.buyer.services.vault.locks() == {}


def test_a_price_above_the_buyers_limit_fails_both_sides_and_records_nothing(tn):
    [paper] = prepare_trades(tn, 1, limit=900)
    before = {n.name: holdings(n) for n in (tn.seller, tn.buyer)}
    handle = tn.seller.start_flow(SellerFlow(tn.buyer.party, paper, PRICE))
    tn.net.run_network()
    with pytest.raises(UnacceptablePrice, match="Buyer will not pay 1,000 GBP for CP-0001: its limit is 900 GBP"):
        finished_flow(tn.buyer, BuyerFlow).result()
    with pytest.raises(UnacceptablePrice, match="its limit is 900 GBP"):  # the seller sees it too
        handle.result()
    assert {n.name: holdings(n) for n in (tn.seller, tn.buyer)} == before
    assert tn.notary.services.notary_service.notarised == 0
    assert tn.buyer.services.vault.locks() == {}


def test_a_refused_signature_releases_the_cash_the_buyer_had_locked(tn):
    [paper] = prepare_trades(tn, 1)
    [coin] = tn.buyer.services.vault.query(Cash)
    handle = tn.seller.start_flow(ledgerflows.GreedySellerFlow(tn.buyer.party, paper, PRICE))
    seen_locked = set()
    while tn.net.run_network(max_messages=1):
        seen_locked |= set(tn.buyer.services.vault.locks())
    assert coin.ref in seen_locked  # the buyer had selected and locked it ...
    with pytest.raises(TransactionRefused, match="Buyer pays 1,000 GBP; the price agreed is 2,000 GBP"):
        handle.result()
    with pytest.raises(TransactionRefused):
        finished_flow(tn.buyer, BuyerFlow).result()
    assert tn.buyer.services.vault.locks() == {}  # ... and the failed flow released it
    # The same coin pays for the next, honest trade.
    other = tn.seller.start_flow(IssuePaperFlow("CP-0002", 1_000, tn.notary.party))
    tn.net.run_network()
    stx = tn.seller.start_flow(SellerFlow(tn.buyer.party, other.result(), PRICE))
    tn.net.run_network()
    assert coin.ref in stx.result().tx.inputs


def test_selling_one_paper_to_two_buyers_settles_one_and_the_notary_refuses_the_other(tn):
    buyer2 = tn.net.create_node("Buyer2")
    buyer2.services.trade_policy.set_max_price("GBP", 1_200)
    [paper] = prepare_trades(tn, 1)
    tn.bank.start_flow(IssueCashFlow(1_500, buyer2.party, tn.notary.party))
    tn.net.run_network()
    first = tn.seller.start_flow(SellerFlow(tn.buyer.party, paper, PRICE))
    second = tn.seller.start_flow(SellerFlow(buyer2.party, paper, PRICE))
    tn.net.run_network()
    outcomes = {}
    for handle, buyer in ((first, tn.buyer), (second, buyer2)):
        try:
            outcomes[buyer.name] = handle.result()
        except NotaryError as exc:
            outcomes[buyer.name] = exc
    settled = {k: v for k, v in outcomes.items() if not isinstance(v, NotaryError)}
    refused = {k: v for k, v in outcomes.items() if isinstance(v, NotaryError)}
    assert len(settled) == 1 and len(refused) == 1, outcomes
    [(winner_name, stx)] = settled.items()
    [(loser_name, error)] = refused.items()
    winner, loser = (tn.buyer, buyer2) if winner_name == "Buyer" else (buyer2, tn.buyer)
    assert f"input {paper.ref} was already consumed by transaction {stx.id}" in str(error)
    assert "double spend" in str(error)
    with pytest.raises(NotaryError, match="double spend"):
        finished_flow(loser, BuyerFlow).result()
    assert holdings(winner)["paper"]["references"] == ["CP-0001"]
    assert holdings(loser) == {"cash": {"GBP": 1_500},
                               "paper": {"count": 0, "face_value": {}, "references": []}}
    assert loser.services.vault.locks() == {}
    assert holdings(tn.seller)["cash"] == {"GBP": PRICE}
    for node in (tn.seller, tn.buyer, buyer2, tn.notary):
        assert node.node.checkpoints_dump() == []


def test_many_concurrent_trades_each_select_their_own_cash(tn):
    papers = prepare_trades(tn, 12)
    totals = ledger_totals(tn)
    handles = tn.seller.node.start_flows([SellerFlow(tn.buyer.party, p, PRICE) for p in papers])
    tn.net.run_network()
    txs = [h.result() for h in handles]
    spent = [ref for stx in txs for ref in stx.tx.inputs]
    assert len(spent) == len(set(spent)) == 24  # a paper and a coin each, never twice
    assert ledger_totals(tn) == totals
    assert holdings(tn.buyer)["paper"]["count"] == 12
    assert holdings(tn.seller)["cash"] == {"GBP": 12 * PRICE}
    assert all(isinstance(s.state, CommercialPaper) for s in tn.buyer.services.vault.query(CommercialPaper))


def test_each_side_runs_the_contracts_of_each_transaction_once(tn, monkeypatch):
    """The buyer checks its transaction before it signs and the seller before it signs:
    at finality both remember the verdict by the transaction's id (its content hash), and
    check only the signatures new to them (the notary's)."""
    from greenflow.ledger import transactions
    [paper] = prepare_trades(tn, 1)
    contracts_run: list = []
    checked: list = []
    real_run, real_verify = transactions.run_contracts, transactions.verify
    monkeypatch.setattr(transactions, "run_contracts",
                        lambda ltx, tx_id: (contracts_run.append(tx_id), real_run(ltx, tx_id))[1])
    monkeypatch.setattr(transactions, "verify",
                        lambda key, msg, sig: (checked.append((key, msg)), real_verify(key, msg, sig))[1])
    handle = tn.seller.start_flow(SellerFlow(tn.buyer.party, paper, PRICE))
    tn.net.run_network()
    stx = handle.result()
    cash_issue = next(ref.tx_id for ref in stx.tx.inputs if ref != paper.ref)
    # buyer: the paper's issuance and the trade; seller: the cash's issuance and the trade
    assert sorted(map(str, contracts_run)) == sorted(map(str, [paper.ref.tx_id, cash_issue, stx.id, stx.id]))
    # each signature on the trade checked once by each party that did not make it: the
    # buyer's by the seller and the notary, the seller's by the buyer and the notary, the
    # notary's by the buyer and the seller; and each issuance's by the party resolving it
    assert len(checked) == 8, checked
