"""The flow library refuses what it must, with errors that say why: a tampered
transaction, a missing signature, a forged history, a payload that cannot cross the
wire. Also: histories resolve in batches and back to issuance, and the ledger services
(identity, notary) answer as documented.
"""
from __future__ import annotations

import dataclasses
from datetime import datetime, timedelta, timezone

import pytest

import ledgerflows
from greenflow import NotSerializable
from greenflow.ledger import (ContractViolation, SecureHash, SignatureError, SignedTransaction,
                              StateAndRef, StateRef, TimeWindow, TransactionBuilder,
                              TransactionVerificationError)
from greenflow.ledger.flows import NotaryError, TransactionResolutionError
from greenflow.ledger.flows import resolve as resolve_module
from greenflow.samples.trade import (PRICE, BuyerFlow, Cash, CashMove, CommercialPaper,
                                     IssueCashFlow, PaperIssue, PaperMove, SellerFlow,
                                     TradeNetwork, TradeOffer, holdings, prepare_trades)


@pytest.fixture
def tn(tmp_path, net_options):
    network = TradeNetwork.create(str(tmp_path / "net"), **net_options)
    yield network
    network.close()


def sign(node, wtx) -> SignedTransaction:
    return node.services.key_management.sign(SignedTransaction(wtx))


def trade_transaction(tn: TradeNetwork, paper: StateAndRef, coin: StateAndRef):
    """The trade's transaction built by hand (unsigned): paper to the buyer, the whole
    coin to the seller."""
    builder = TransactionBuilder(tn.notary.party, salt=b"\x01" * 32)
    builder.add_input_state(paper).add_input_state(coin)
    builder.add_output_state(dataclasses.replace(paper.state, owner=tn.buyer.party))
    builder.add_output_state(dataclasses.replace(coin.state, owner=tn.seller.party))
    builder.add_command(PaperMove(), tn.seller.party).add_command(CashMove(), tn.buyer.party)
    return builder.to_wire_transaction()


def run(tn: TradeNetwork, node, flow):
    handle = node.start_flow(flow)
    tn.net.run_network()
    return handle


def finished(node, cls):
    name = f"{cls.__module__}.{cls.__qualname__}"
    [info] = [f for f in node.node.flows() if f.flow_class == name]
    return node.node.handle(info.id)


# ------------------------------------------------------------------ tampering and signatures
def test_a_transaction_changed_after_it_was_signed_is_refused_by_the_signer(tn):
    [paper] = prepare_trades(tn, 1)
    [coin] = tn.buyer.services.vault.query(Cash)
    stx = sign(tn.buyer, trade_transaction(tn, paper, coin))
    inflated = dataclasses.replace(stx.tx.outputs[1], quantity=1_000_000)
    tampered = SignedTransaction(dataclasses.replace(stx.tx, outputs=(stx.tx.outputs[0], inflated)),
                                 stx.sigs)
    assert tampered.id != stx.id
    handle = run(tn, tn.buyer, ledgerflows.ProposeFlow(tn.seller.party, tampered))
    expected = f"does not verify over transaction {tampered.id}: the transaction was changed after it was signed"
    with pytest.raises(SignatureError, match=expected):
        finished(tn.seller, ledgerflows.SignAnythingFlow).result()
    with pytest.raises(SignatureError, match=expected):  # the proposer learns why
        handle.result()
    assert not tn.seller.services.vault.has_transaction(tampered.id)


def test_the_notary_refuses_a_transaction_missing_a_signature(tn):
    [paper] = prepare_trades(tn, 1)
    [coin] = tn.buyer.services.vault.query(Cash)
    stx = sign(tn.buyer, trade_transaction(tn, paper, coin))  # the seller never signed
    handle = run(tn, tn.buyer, ledgerflows.RawNotaryClientFlow(stx))
    with pytest.raises(NotaryError, match=f"notary Notary refused transaction {stx.id} from Buyer: "
                                          f"transaction {stx.id} is missing signatures from Seller"):
        handle.result()
    assert tn.notary.services.notary_service.consumed_by(paper.ref) is None
    assert tn.notary.services.notary_service.notarised == 0


def test_a_missing_signer_that_owns_no_output_is_named_by_the_node_that_checks(tn):
    """A required signer who is no participant of any output was named by a key prefix
    alone; the node knows the party (its network), so the error names it."""
    [paper] = prepare_trades(tn, 1)
    builder = TransactionBuilder(tn.notary.party, salt=b"\x02" * 32)
    builder.add_input_state(paper)
    builder.add_output_state(paper.state)
    builder.add_command(PaperMove(), tn.seller.party, tn.buyer.party)
    stx = sign(tn.seller, builder.to_wire_transaction())
    notary = [tn.notary.party.owning_key]
    buyer_key = tn.buyer.party.owning_key.hex()[:16]
    with pytest.raises(SignatureError, match=f"missing signatures from {buyer_key}"):
        stx.verify_signatures(notary)   # the transaction alone does not say whose key it is
    with pytest.raises(SignatureError, match=rf"missing signatures from Buyer \({buyer_key}"):
        tn.seller.services.verifier.check_signatures(stx, except_keys=notary)


def test_finality_refuses_a_transaction_missing_a_signature_before_asking_anyone(tn):
    [paper] = prepare_trades(tn, 1)
    [coin] = tn.buyer.services.vault.query(Cash)
    stx = sign(tn.buyer, trade_transaction(tn, paper, coin))
    sent = tn.net.delivered
    handle = run(tn, tn.buyer, ledgerflows.FinaliseFlow(stx, [tn.seller.party]))
    with pytest.raises(SignatureError, match="is missing signatures from Seller"):
        handle.result()
    assert tn.net.delivered == sent  # refused locally: no frame left the buyer
    assert not tn.buyer.services.vault.has_transaction(stx.id)


def test_collected_and_notarised_signatures_make_a_transaction_final_for_both(tn):
    [paper] = prepare_trades(tn, 1)
    [coin] = tn.buyer.services.vault.query(Cash)
    stx = sign(tn.buyer, trade_transaction(tn, paper, coin))
    signed = run(tn, tn.buyer, ledgerflows.CollectFlow(stx, [tn.seller.party])).result()
    assert signed.signed_keys == {tn.buyer.party.owning_key, tn.seller.party.owning_key}
    # The seller resolved the cash's history while signing, so it holds both histories.
    final = run(tn, tn.seller, ledgerflows.FinaliseFlow(signed, [tn.buyer.party])).result()
    assert tn.notary.party.owning_key in final.signed_keys
    assert holdings(tn.seller)["cash"] == {"GBP": 1_500}
    assert holdings(tn.buyer)["paper"]["references"] == ["CP-0001"]


def note_transaction(tn: TradeNetwork, state, *, time_window: bool = False) -> SignedTransaction:
    """``state`` issued by the seller (signed by it), with the notary on it."""
    builder = TransactionBuilder(tn.notary.party, salt=b"\x02" * 32)
    builder.add_output_state(state).add_command(ledgerflows.Jot(), tn.seller.party)
    if time_window:   # the notary must sign it
        now = datetime.fromtimestamp(tn.net.clock.now(), tz=timezone.utc)
        builder.set_time_window(TimeWindow.between(now - timedelta(minutes=1), now + timedelta(hours=1)))
    return sign(tn.seller, builder.to_wire_transaction())


@pytest.mark.parametrize("time_window", [False, True])
def test_finality_refuses_a_transaction_too_big_to_send_before_the_notary_or_a_vault_sees_it(
        tn, time_window):
    """It was recorded here, then failed at the send (payloads are limited to 8 MiB):
    a state of two parties in one vault only (and with a time window, the notary had
    signed it first)."""
    both = (tn.seller.party, tn.buyer.party)
    stx = note_transaction(tn, ledgerflows.Note(both, "x" * (9 << 20)), time_window=time_window)
    sent = tn.net.delivered
    handle = run(tn, tn.seller, ledgerflows.FinaliseFlow(stx, [tn.buyer.party]))
    with pytest.raises(NotSerializable, match=r"bytes encoded, and a message is limited to 8388608 "
                                              "bytes: .* neither notarised nor recorded"):
        handle.result()
    assert tn.net.delivered == sent   # the notary was not asked
    for node in (tn.seller, tn.buyer):
        assert not node.services.vault.has_transaction(stx.id)
        assert node.services.vault.query(ledgerflows.Note) == []
    small = note_transaction(tn, ledgerflows.Note(both, "x" * 1_000), time_window=time_window)
    run(tn, tn.seller, ledgerflows.FinaliseFlow(small, [tn.buyer.party])).result()
    assert [len(n.state.text) for n in tn.buyer.services.vault.query(ledgerflows.Note)] == [1_000]


def test_participants_that_are_no_parties_are_refused_naming_the_state_before_anything_is_sent(tn):
    """They failed in finality with "'str' object has no attribute 'owning_key'", or
    with the app's bare KeyError, naming neither the state nor the transaction."""
    for state, says in [
            (ledgerflows.Note(("Buyer", tn.seller.party)),
             r"outputs\[0\] \(Note\)\.participants\[0\] is a str, not a Party"),
            (ledgerflows.BrokenNote(tn.seller.party),
             r"outputs\[0\] \(BrokenNote\)\.participants failed: KeyError: 'no such holder'")]:
        stx = note_transaction(tn, state)
        sent = tn.net.delivered
        handle = run(tn, tn.seller, ledgerflows.FinaliseFlow(stx, [tn.buyer.party]))
        with pytest.raises(TransactionVerificationError, match="malformed transaction: " + says):
            handle.result()
        assert tn.net.delivered == sent
        assert not tn.seller.services.vault.has_transaction(stx.id)


def test_a_contract_error_whose_message_cannot_be_read_still_names_the_contract(tn):
    stx = note_transaction(tn, ledgerflows.ExplodingNote(tn.seller.party))
    handle = run(tn, tn.seller, ledgerflows.FinaliseFlow(stx, []))
    with pytest.raises(ContractViolation, match=r"contract ledgerflows\.Exploding failed on transaction "
                                                r"\w+: Unreadable: <Unreadable\.__str__ raised RuntimeError>"):
        handle.result()


def test_a_contract_that_returns_false_rejects_the_transaction(tn):
    """The return value was ignored: a contract saying no by returning False passed."""
    stx = note_transaction(tn, ledgerflows.RefusedNote(tn.seller.party))
    handle = run(tn, tn.seller, ledgerflows.FinaliseFlow(stx, []))
    with pytest.raises(ContractViolation, match=r"contract ledgerflows\.SaysNo returned False for "
                                                r"transaction \w+: taken as a rejection"):
        handle.result()
    assert not tn.seller.services.vault.has_transaction(stx.id)


def test_a_second_contract_class_taking_an_installed_name_is_logged(caplog):
    from greenflow.ledger.contracts import _CONTRACTS, Contract, contract_for
    earlier = dict(_CONTRACTS)
    try:
        class First(Contract):
            name = "tests.same-name"

        class Second(Contract):
            name = "tests.same-name"

        assert contract_for(type("S", (), {"contract": "tests.same-name"})())[1] is Second
        assert any("contract 'tests.same-name' was " in r.getMessage() and "is now" in r.getMessage()
                   for r in caplog.records)
    finally:
        _CONTRACTS.clear()
        _CONTRACTS.update(earlier)


def test_collecting_signatures_from_a_session_to_this_node_itself_is_refused(tn):
    """It was taken: the node answered itself, signing twice over."""
    from greenflow.errors import FlowError
    [paper] = prepare_trades(tn, 1)
    [coin] = tn.buyer.services.vault.query(Cash)
    stx = sign(tn.buyer, trade_transaction(tn, paper, coin))
    handle = run(tn, tn.buyer, ledgerflows.CollectFlow(stx, [tn.buyer.party, tn.seller.party]))
    with pytest.raises(FlowError, match="CollectSignaturesFlow: a session to this node itself .Buyer."):
        handle.result()


# ------------------------------------------------------------------ forged histories
def test_a_paper_that_was_never_issued_is_refused_by_the_buyer(tn):
    prepare_trades(tn, 1)  # the buyer gets cash (and the seller a real paper it keeps)
    seller = tn.seller.party
    ghost = StateAndRef(CommercialPaper("CP-GHOST", 1_000, "GBP", seller, seller),
                        StateRef(SecureHash.sha256(b"never issued"), 0))
    builder = TransactionBuilder(tn.notary.party, salt=b"\x02" * 32)
    builder.add_input_state(ghost).add_output_state(ghost.state).add_command(PaperMove(), seller)
    forged = sign(tn.seller, builder.to_wire_transaction())
    tn.seller.services.vault.record_transactions([forged])  # the seller lies to itself
    handle = run(tn, tn.seller, SellerFlow(tn.buyer.party, forged.tx.out_ref(0), PRICE))
    expected = (f"Seller could not provide transaction {ghost.ref.tx_id}, on which transaction "
                f"{forged.id} depends \\(it does not have it\\): the history cannot be verified "
                "back to issuance")
    with pytest.raises(TransactionResolutionError, match=expected):
        finished(tn.buyer, BuyerFlow).result()
    with pytest.raises(TransactionResolutionError, match=expected):
        handle.result()
    assert not tn.buyer.services.vault.has_transaction(forged.id)
    assert holdings(tn.buyer)["cash"] == {"GBP": 1_500}
    assert tn.buyer.services.vault.locks() == {}


def test_a_paper_issued_without_its_issuers_signature_is_refused_by_the_buyer(tn):
    prepare_trades(tn, 1)  # the buyer gets cash (and the seller a real paper it keeps)
    seller, bank = tn.seller.party, tn.bank.party
    builder = TransactionBuilder(tn.notary.party, salt=b"\x03" * 32)
    builder.add_output_state(CommercialPaper("CP-FAKE", 1_000, "GBP", bank, seller))
    builder.add_command(PaperIssue(), seller)  # the bank's IOU, signed by the seller
    forged = sign(tn.seller, builder.to_wire_transaction())
    tn.seller.services.vault.record_transactions([forged])
    handle = run(tn, tn.seller, SellerFlow(tn.buyer.party, forged.tx.out_ref(0), PRICE))
    with pytest.raises(ContractViolation, match=f"rejected transaction {forged.id}: the issuer of "
                                                 "paper signs its issuance"):
        handle.result()
    assert not tn.buyer.services.vault.has_transaction(forged.id)


# ------------------------------------------------------------------ the wire
def test_a_payload_that_cannot_cross_the_wire_is_refused_at_send(tn):
    handle = run(tn, tn.seller, ledgerflows.SendFlow(tn.buyer.party, ledgerflows.NotOnTheWire()))
    with pytest.raises(NotSerializable, match="ledgerflows.NotOnTheWire' cannot cross the wire"):
        handle.result()
    assert tn.buyer.node.flows() == []  # nothing reached the buyer


def test_an_offer_holding_an_unserialisable_state_is_refused_at_send(tn):
    seller = tn.seller.party
    asset = StateAndRef(ledgerflows.UnserialisableState(seller), StateRef(SecureHash.sha256(b"x"), 0))
    offer = TradeOffer(asset, PRICE, "GBP", seller)
    handle = run(tn, tn.seller, ledgerflows.SendFlow(tn.buyer.party, offer))
    with pytest.raises(NotSerializable, match="UnserialisableState"):
        handle.result()


# ------------------------------------------------------------------ resolution
def test_a_wide_history_is_fetched_in_batches(tn, monkeypatch):
    monkeypatch.setattr(resolve_module, "MAX_BATCH", 3)  # both sides: more than 3 is refused
    tn.buyer.services.trade_policy.set_max_price("GBP", 1_200)
    handles = tn.bank.node.start_flows([IssueCashFlow(150, tn.buyer.party, tn.notary.party)
                                        for _ in range(7)])
    tn.net.run_network()
    issuances = [h.result() for h in handles]
    paper = run(tn, tn.seller, ledgerflows_issue_paper(tn)).result()
    stx = run(tn, tn.seller, SellerFlow(tn.buyer.party, paper, PRICE)).result()
    assert len([r for r in stx.tx.inputs if r != paper.ref]) == 7  # seven coins, seven histories
    for issuance in issuances:
        assert tn.seller.services.vault.has_transaction(issuance.id)


def test_a_deep_history_is_verified_back_to_issuance(tn):
    [paper] = prepare_trades(tn, 1)
    buyer = tn.buyer.party
    chain = []
    for i in range(5):  # the buyer moves its coin to itself five times
        [coin] = tn.buyer.services.vault.query(Cash)
        builder = TransactionBuilder(tn.notary.party, salt=bytes([i]) * 32)
        builder.add_input_state(coin).add_output_state(coin.state).add_command(CashMove(), buyer)
        chain.append(run(tn, tn.buyer, ledgerflows.FinaliseFlow(sign(tn.buyer, builder.to_wire_transaction()),
                                                                [])).result())
    stx = run(tn, tn.seller, SellerFlow(tn.buyer.party, paper, PRICE)).result()
    for link in chain:  # the seller checked every link before signing
        assert tn.seller.services.vault.has_transaction(link.id)
    assert holdings(tn.seller)["cash"] == {"GBP": PRICE}
    assert tn.seller.services.vault.has_transaction(stx.id)


def _moved_twice(tn: TradeNetwork) -> list:
    """The buyer's coin: its issuance, then two moves to itself (oldest first)."""
    buyer = tn.buyer.party
    [coin] = tn.buyer.services.vault.query(Cash)
    chain = [tn.buyer.services.vault.transaction(coin.ref.tx_id)]
    for i in range(2):
        [coin] = tn.buyer.services.vault.query(Cash)
        builder = TransactionBuilder(tn.notary.party, salt=bytes([i]) * 32)
        builder.add_input_state(coin).add_output_state(coin.state).add_command(CashMove(), buyer)
        chain.append(run(tn, tn.buyer, ledgerflows.FinaliseFlow(
            sign(tn.buyer, builder.to_wire_transaction()), [])).result())
    return chain


def test_a_pushed_history_is_taken_unasked_and_what_it_depends_on_is_fetched(tn):
    prepare_trades(tn, 1)
    issuance, move1, move2 = _moved_twice(tn)
    handle = tn.buyer.start_flow(ledgerflows.PushHistoryFlow(tn.seller.party, move2))
    # the transaction, move1 pushed with it, one request for the issuance, its answer
    assert tn.net.run_network() == 4
    handle.result()
    took = finished(tn.seller, ledgerflows.ReceivePushedFlow).result()
    assert took == [issuance.id, move1.id]   # verified and recorded oldest first
    assert all(tn.seller.services.vault.has_transaction(t) for t in took)
    assert not tn.seller.services.vault.has_transaction(move2.id)   # only resolved against


def test_a_pushed_transaction_that_was_not_asked_for_is_refused(tn):
    prepare_trades(tn, 1)
    issuance, move1, move2 = _moved_twice(tn)
    run(tn, tn.buyer, ledgerflows.PushHistoryFlow(tn.seller.party, move2, extra=issuance))
    with pytest.raises(TransactionResolutionError, match=f"{issuance.id}, which was not asked for"):
        finished(tn.seller, ledgerflows.ReceivePushedFlow).result()
    assert not tn.seller.services.vault.has_transaction(issuance.id)
    assert tn.seller.node.checkpoints_dump() == []


def test_a_peer_that_stops_serving_history_too_early_is_refused_not_waited_for(tn):
    prepare_trades(tn, 1)
    buyer = tn.buyer.party
    chain = []
    for i in range(2):  # issuance <- move <- move: a history two levels deep
        [coin] = tn.buyer.services.vault.query(Cash)
        builder = TransactionBuilder(tn.notary.party, salt=bytes([i]) * 32)
        builder.add_input_state(coin).add_output_state(coin.state).add_command(CashMove(), buyer)
        chain.append(run(tn, tn.buyer, ledgerflows.FinaliseFlow(sign(tn.buyer, builder.to_wire_transaction()),
                                                                [])).result())
    run(tn, tn.buyer, ledgerflows.ShortChangeFlow(tn.seller.party, chain[-1]))
    with pytest.raises(TransactionResolutionError, match="said it had sent all the history"):
        finished(tn.seller, ledgerflows.ShortChangedFlow).result()
    assert not tn.seller.services.vault.has_transaction(chain[0].id)
    assert tn.seller.node.checkpoints_dump() == []


def ledgerflows_issue_paper(tn: TradeNetwork):
    from greenflow.samples.trade import IssuePaperFlow
    return IssuePaperFlow("CP-0001", 1_000, tn.notary.party)


# ------------------------------------------------------------------ services
def test_the_identity_service_knows_the_network_and_its_notary(tn):
    identities = tn.buyer.services.identity_service
    assert identities.party("Seller") == tn.seller.party
    assert identities.party("Nobody") is None
    assert identities.notaries() == [tn.notary.party]
    assert identities.party_from_key(tn.bank.party.owning_key) == tn.bank.party
    with pytest.raises(Exception, match="no party named 'Nobody' on the network"):
        identities.require_party("Nobody")


def test_a_node_that_is_not_a_notary_has_no_notary_service(tn):
    assert tn.buyer.services.get("notary_service") is None
    assert tn.notary.node.is_notary and not tn.buyer.node.is_notary
