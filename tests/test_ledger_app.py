"""The ledger surface apps build on: linear states, amounts and cash, vault queries with
paging and tracking, and `greenflow vault query` on a node's store.

Every MockNetwork test runs in both network modes (`net_options`: flows kept in memory,
and flows dropped after every suspension and rebuilt by replay), and most restart a
node in the middle.
"""
from __future__ import annotations

import json
import os
from decimal import Decimal

import re

import pytest
from click.testing import CliRunner

from appflows import Deal, DealFlow
from greenflow.ledger import Amount, Issued, TokenMismatch, UniqueIdentifier
from greenflow.ledger.finance import (Cash, CashExitFlow, CashIssueFlow, CashPaymentFlow,
                                      InsufficientBalance, cash_balances, pounds)
from greenflow.ledger.vault_query import (PageSpecification, QueryCriteria, Sort, StateStatus,
                                          VaultQueryError, read_vault)
from greenflow.testing import MockNetwork


@pytest.fixture
def mock(tmp_path, net_options):
    network = MockNetwork(tmp_path / "net", **net_options)
    yield network
    network.close()


def run(net, node, flow):
    handle = node.start_flow(flow)
    net.run_network()
    return node.node.handle(handle.id).result()


# ---------------------------------------------------------------------------- amounts
def test_amounts_are_exact_integers_of_one_token():
    a = pounds("1,500.25")
    assert a == Amount(150_025, "GBP") and str(a) == "1,500.25 GBP"
    assert a + pounds(1) == Amount(150_125, "GBP") and a - pounds("0.25") == pounds(1_500)
    assert 2 * pounds(1) == pounds(2) and pounds(1).split_evenly(3) == [Amount(34, "GBP"), Amount(33, "GBP"),
                                                                        Amount(33, "GBP")]
    assert Amount.parse("12.5 USD") == Amount(1_250, "USD") and Amount.parse("JPY 100") == Amount(100, "JPY")
    with pytest.raises(TokenMismatch):
        pounds(1) + Amount.parse("1 USD")
    with pytest.raises(TokenMismatch):
        _ = pounds(1) < Amount.parse("1 USD")
    with pytest.raises(TypeError, match="never floats"):
        Amount.from_decimal(1.5, "GBP")
    with pytest.raises(TypeError):
        Amount(1.5, "GBP")
    with pytest.raises(ValueError, match="negative"):
        pounds(1) - pounds(2)
    with pytest.raises(ValueError, match="decimal places"):
        pounds("0.001")
    assert pounds("10.5").to_decimal() == Decimal("10.50")
    bank_a, bank_b = Issued(_party("A"), "GBP"), Issued(_party("B"), "GBP")
    with pytest.raises(TokenMismatch):
        Amount(1, bank_a) + Amount(1, bank_b)
    assert Amount(5, bank_a).without_issuer() == Amount(5, "GBP")


def _party(name):
    from greenflow import Party
    return Party(name, name.encode().ljust(32, b"\0"))


# ---------------------------------------------------------------------------- linear states
def test_a_linear_state_evolves_through_three_transactions_and_is_found_by_its_id(mock):
    alice, bob = mock.create_node("Alice"), mock.create_node("Bob")
    notary = mock.notary.party
    stx = run(mock, alice, DealFlow(bob.party, "100 widgets", notary, external_id="DEAL-1"))
    lid = stx.tx.outputs[0].linear_id
    assert lid.external_id == "DEAL-1"
    run(mock, bob, DealFlow(alice.party, "120 widgets", notary, linear_id=lid))
    bob = mock.restart_node(bob)
    alice = mock.restart_node(alice)
    run(mock, alice, DealFlow(bob.party, "150 widgets", notary, linear_id=lid))
    for node in (alice, bob):
        vault = node.services.vault
        [current] = vault.query_by(QueryCriteria(Deal, linear_ids=[lid])).states
        assert (current.state.terms, current.state.version, current.state.linear_id) == ("150 widgets", 3, lid)
        history = vault.query_by(QueryCriteria(Deal, status=StateStatus.ALL, linear_ids=[lid]))
        assert [s.state.version for s in history.states] == [1, 2, 3]
        assert [m.status for m in history.states_metadata] == [StateStatus.CONSUMED] * 2 + [StateStatus.UNCONSUMED]
        by_text = vault.query_by(QueryCriteria(Deal, status="all", linear_ids=[str(lid)]))
        assert by_text.total_states_available == 3
        assert vault.query_by(QueryCriteria(Deal, external_ids=["DEAL-1"])).states == (current,)
        assert vault.query_by(QueryCriteria(Deal, linear_ids=[UniqueIdentifier("DEAL-1")])).states == ()


def test_a_contract_refuses_an_amendment_that_drops_the_linear_id(mock):
    from appflows import Amend, DealContract
    from greenflow.ledger import ContractViolation, StateAndRef, StateRef, TransactionBuilder
    from greenflow.ledger.crypto import SecureHash
    a, b = _party("A"), _party("B")
    old = Deal("x", 1, (a, b), UniqueIdentifier("D", __import__("uuid").UUID(int=1)))
    new = Deal("y", 2, (a, b), UniqueIdentifier("D", __import__("uuid").UUID(int=2)))
    builder = TransactionBuilder(a).add_input_state(StateAndRef(old, StateRef(SecureHash(b"\1" * 32), 0)))
    builder.add_output_state(new).add_command(Amend(), a, b)
    with pytest.raises(ContractViolation, match="linear id .* is kept"):
        builder.verify()
    assert DealContract


# ---------------------------------------------------------------------------- cash
def test_cash_issued_paid_in_part_with_change_and_exited_conserves_the_totals(mock):
    bank, alice, bob = (mock.create_node(n) for n in ("Bank", "Alice", "Bob"))
    notary = mock.notary.party
    run(mock, bank, CashIssueFlow(pounds(1_000), notary, owner=alice.party, coins=2))
    run(mock, bank, CashIssueFlow(pounds(50), notary))  # the bank's own till
    assert cash_balances(alice.services.vault) == {"GBP": pounds(1_000)}
    alice = mock.restart_node(alice)
    stx = run(mock, alice, CashPaymentFlow(pounds("300.50"), bob.party))
    owners = sorted((c.owner.name, c.amount.quantity) for c in stx.tx.outputs)
    assert owners == [("Alice", 19_950), ("Bob", 30_050)]  # the change came back
    assert cash_balances(alice.services.vault) == {"GBP": pounds("699.50")}
    assert cash_balances(bob.services.vault) == {"GBP": pounds("300.50")}
    run(mock, bob, CashPaymentFlow(pounds(100), bank.party))
    bank = mock.restart_node(bank)
    run(mock, bank, CashExitFlow(pounds(120)))
    assert cash_balances(bank.services.vault) == {"GBP": pounds(30)}
    held = sum(cash_balances(n.services.vault).get("GBP", pounds(0)).quantity for n in (bank, alice, bob))
    assert held == pounds(1_050 - 120).quantity  # issued, less exited
    for node in (bank, alice, bob):
        assert node.services.vault.locks() == {}
    with pytest.raises(InsufficientBalance, match="cannot select 1,000.00 GBP in Cash: 200.50 GBP is free"):
        run(mock, bob, CashPaymentFlow(pounds(1_000), alice.party))


def test_the_cash_contract_refuses_cash_made_from_nothing(mock):
    from greenflow.ledger import ContractViolation, StateAndRef, StateRef, TransactionBuilder
    from greenflow.ledger.crypto import SecureHash
    from greenflow.ledger.finance import CashMove
    bank, alice = _party("Bank"), _party("Alice")
    coin = Cash(Amount(100, Issued(bank, "GBP")), alice)
    builder = TransactionBuilder(bank).add_input_state(StateAndRef(coin, StateRef(SecureHash(b"\1" * 32), 0)))
    builder.add_output_state(Cash(Amount(150, Issued(bank, "GBP")), alice)).add_command(CashMove(), alice)
    with pytest.raises(ContractViolation, match="the issuer of GBP issued by Bank signs its issuance|an issuance"):
        builder.verify()
    builder = TransactionBuilder(bank).add_input_state(StateAndRef(coin, StateRef(SecureHash(b"\1" * 32), 0)))
    builder.add_output_state(Cash(Amount(60, Issued(bank, "GBP")), alice)).add_command(CashMove(), alice)
    with pytest.raises(ContractViolation, match="cash is conserved"):
        builder.verify()


def test_cash_is_issued_only_under_a_notary_of_the_network(mock):
    """Cash under a party that is no notary could never be spent: the issuance is refused,
    naming the party and the network's notaries, and nothing reaches a vault."""
    from greenflow.ledger.finance import CashFlowError
    assert mock.notary is not None   # the network's notary (made on first use)
    bank, alice = mock.create_node("Bank"), mock.create_node("Alice")
    with pytest.raises(CashFlowError, match=r"under Alice: it is not a notary of this network "
                                            r"\(notaries: Notary"):
        run(mock, bank, CashIssueFlow(pounds(10), alice.party, owner=alice.party))
    assert cash_balances(alice.services.vault) == {} and cash_balances(bank.services.vault) == {}


@pytest.mark.parametrize("flow, says", [
    (lambda n: CashPaymentFlow(pounds(5), "Bob"),
     "CashPaymentFlow's recipient is a Party (from the network map or the identity service), "
     "not a str"),
    (lambda n: CashPaymentFlow(pounds(5), n["Bob"], issuers="Bank"),
     "CashPaymentFlow's issuers is a list of Party, not a str"),
    (lambda n: CashPaymentFlow(pounds(5), n["Bob"], issuers=["Bank"]),
     "each of CashPaymentFlow's issuers is a Party"),
    (lambda n: CashIssueFlow(pounds(5), "Notary"), "CashIssueFlow's notary is a Party"),
    (lambda n: CashIssueFlow(pounds(5), n["Notary"], owner="Alice"),
     "CashIssueFlow's owner is a Party"),
    (lambda n: CashIssueFlow(pounds(5), n["Notary"], reference="r1"),
     "CashIssueFlow's reference is bytes, not a str"),
    (lambda n: CashExitFlow(pounds(5), reference="r1"), "CashExitFlow's reference is bytes"),
])
def test_cash_flows_given_no_party_or_no_bytes_say_which_argument(mock, flow, says):
    """They failed with AttributeError: 'str' object has no attribute 'owning_key' (or
    'name'), or a contract's refusal of the transaction they built."""
    from greenflow.ledger.finance import CashFlowError
    alice, bob = mock.create_node("Alice"), mock.create_node("Bob")
    run(mock, alice, CashIssueFlow(pounds(10), mock.notary.party))
    parties = {"Bob": bob.party, "Notary": mock.notary.party}
    with pytest.raises(CashFlowError, match="^" + re.escape(says)):
        run(mock, alice, flow(parties))
    assert cash_balances(alice.services.vault) == {"GBP": pounds(10)}


def test_two_payments_racing_for_the_same_coin_never_spend_it_twice(mock):
    bank, alice, bob, carol = (mock.create_node(n) for n in ("Bank", "Alice", "Bob", "Carol"))
    run(mock, bank, CashIssueFlow(pounds(100), mock.notary.party, owner=alice.party))
    first = alice.start_flow(CashPaymentFlow(pounds(80), bob.party))
    second = alice.start_flow(CashPaymentFlow(pounds(80), carol.party))
    mock.run_network()
    outcomes = []
    for h in (first, second):
        try:
            outcomes.append(alice.node.handle(h.id).result())
        except InsufficientBalance as exc:
            outcomes.append(exc)
    paid = [o for o in outcomes if not isinstance(o, Exception)]
    failed = [o for o in outcomes if isinstance(o, Exception)]
    assert len(paid) == 1 and len(failed) == 1
    assert "0.00 GBP is free (100.00 GBP more is locked by other flows)" in str(failed[0])
    assert cash_balances(alice.services.vault) == {"GBP": pounds(20)}
    received = {n.name: cash_balances(n.services.vault) for n in (bob, carol)}
    assert sorted(received.values(), key=len) == [{}, {"GBP": pounds(80)}]
    assert alice.services.vault.locks() == {}


# ---------------------------------------------------------------------------- queries
def test_paging_through_a_thousand_states_and_a_feed_that_sees_a_new_one(mock):
    bank, alice = mock.create_node("Bank"), mock.create_node("Alice")
    run(mock, bank, CashIssueFlow(pounds(1_000), mock.notary.party, owner=alice.party, coins=1_000))
    alice = mock.restart_node(alice)
    vault = alice.services.vault
    with pytest.raises(VaultQueryError, match="1,000 states match"):
        vault.query_by(QueryCriteria(Cash))
    seen, numbered = [], []
    for n in range(1, 11):
        page = vault.query_by(QueryCriteria(Cash), PageSpecification(page_number=n, page_size=100))
        assert page.total_states_available == 1_000 and len(page.states) == 100
        numbered.extend(s.ref for s in page.states)
    cursor = None
    while True:
        page = vault.query_by(QueryCriteria(Cash), PageSpecification(page_size=100, cursor=cursor))
        seen.extend(s.ref for s in page.states)
        cursor = page.next_cursor
        if cursor is None:
            break
    assert len(seen) == len(set(seen)) == 1_000 and seen == numbered
    assert set(seen) == {s.ref for s in vault.query(Cash)}
    top = vault.query_by(QueryCriteria(Cash), PageSpecification(page_size=3), Sort("amount.quantity", True))
    assert [s.state.amount.quantity for s in top.states] == [100, 100, 100]

    feed = vault.track_by(QueryCriteria(Cash), PageSpecification(page_size=100))
    assert feed.snapshot.total_states_available == 1_000
    assert feed.updates.poll() == []
    bob = mock.create_node("Bob")
    run(mock, alice, CashPaymentFlow(pounds("1.50"), bob.party))
    update = feed.updates.next(timeout=5)
    assert update is not None and len(update.consumed) == 2
    assert [s.state.amount for s in update.produced] == [Amount(50, Issued(bank.party, "GBP"))]
    feed.updates.close()
    assert vault.query_by(QueryCriteria(Cash, status="consumed")).total_states_available == 2
    assert vault.query_by(QueryCriteria(Cash, participants=[bob.party])).states == ()
    every = vault.query_by(QueryCriteria(Cash, status="all"), PageSpecification(page_size=2_000))
    assert every.total_states_available == 1_001  # the change took a new place in the index
    assert len({s.ref for s in every.states}) == 1_001


def test_a_feed_nobody_reads_is_dropped_at_its_bound(mock, monkeypatch):
    """A feed holds at most ``Feed.max_buffered`` updates for its reader: one that falls
    further behind is dropped (closed, its updates let go), as a progress stream is."""
    from greenflow.ledger.vault_feed import Feed
    monkeypatch.setattr(Feed, "max_buffered", 2)
    bank = mock.create_node("Bank")
    vault = bank.services.vault
    idle, read = (vault.track_by(QueryCriteria(Cash)).updates for _ in range(2))
    got = []
    for _ in range(3):
        run(mock, bank, CashIssueFlow(pounds(1), mock.notary.party))
        got += read.poll()
    assert len(got) == 3 and all(len(u.produced) == 1 for u in got)
    assert idle.closed and "max_buffered" in idle.dropped
    assert idle.next(timeout=0.1) is None and idle.poll() == []
    assert idle not in vault._feeds.feeds and read in vault._feeds.feeds
    read.close()


@pytest.mark.parametrize("how", ["restarted", "closed"])
def test_a_feed_ends_when_its_node_goes(mock, how):
    """A feed whose node was power-cut or closed stayed open, not dropped: ``next()``
    without a timeout, or iterating it, waited for ever."""
    import threading
    bank = mock.create_node("Bank")
    run(mock, bank, CashIssueFlow(pounds(1), mock.notary.party))
    feed = bank.services.vault.track_by(QueryCriteria(Cash)).updates
    got: list = []
    reader = threading.Thread(target=lambda: got.append(list(feed)), daemon=True)
    reader.start()
    if how == "restarted":
        mock.restart_node(bank)
    else:
        bank.node.close()
    reader.join(5)
    assert not reader.is_alive() and got == [[]]
    assert feed.closed and feed.dropped == "the node closed"
    assert feed.next() is None and feed.poll() == []


def test_vault_query_on_the_command_line_reads_a_nodes_store(tmp_path):
    from greenflow.cli.main import main
    net = MockNetwork(tmp_path / "net")
    alice, bob = net.create_node("Alice"), net.create_node("Bob")
    stx = run(net, alice, DealFlow(bob.party, "terms", net.notary.party, external_id="X-1"))
    lid = stx.tx.outputs[0].linear_id
    run(net, alice, DealFlow(bob.party, "better terms", net.notary.party, linear_id=lid))
    node_dir = alice.node.base_dir
    net.close()
    page = read_vault(node_dir, QueryCriteria(Deal, status="all"))
    assert [s.state.terms for s in page.states] == ["terms", "better terms"]
    runner = CliRunner()
    result = runner.invoke(main, ["vault", "query", "--node", node_dir, "--type", "appflows:Deal",
                                  "--linear-id", str(lid), "--status", "all", "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    assert doc["total"] == 2 and [s["state"]["terms"] for s in doc["states"]] == ["terms", "better terms"]
    result = runner.invoke(main, ["vault", "query", "--node", node_dir, "--type", "appflows:Deal"])
    assert result.exit_code == 0, result.output
    assert "better terms" in result.output and "1 of 1" in result.output
    result = runner.invoke(main, ["vault", "query", "--node", node_dir, "--type", "appflows:Nope"])
    assert result.exit_code != 0 and "appflows has no class 'Nope'" in result.output
    assert os.path.isdir(node_dir)


# ---------------------------------------------------------------------------- over RPC
def test_vault_states_and_updates_over_rpc(tmp_path):
    import threading

    from greenflow.network.bootstrap import bootstrap_network
    from greenflow.rpc.node_process import NodeProcess
    from greenflow.rpc.client import RpcClient, RpcClientError

    configs = {c.name: c for c in bootstrap_network(str(tmp_path), ["Alice"], notary="Notary", base_port=0,
                                                     apps=["greenflow.ledger.finance"], rpc_password="pw")}
    procs = [NodeProcess(c.base_dir, node_options={"sync": False}).start() for c in configs.values()]
    try:
        alice = RpcClient.for_node(configs["Alice"].base_dir, "admin", "pw")
        issue = {"amount": "100.00 GBP", "notary": "Notary", "coins": 3}
        out = alice.start_flow("greenflow.ledger.finance.CashIssueFlow", issue, wait=30)
        assert out["status"] == "COMPLETED", out
        page = alice.vault_query(type="greenflow.ledger.finance:Cash", page_size=2)
        assert page["total"] == 3 and len(page["states"]) == 2 and page["next_cursor"]
        rest = alice.vault_query(type="greenflow.ledger.finance:Cash", page_size=2, cursor=page["next_cursor"])
        assert len(rest["states"]) == 1 and rest["next_cursor"] is None
        assert rest["states"][0]["state"]["quantity"] == 3_333
        with pytest.raises(RpcClientError, match="holds no states of type os:system"):
            alice.vault_query(type="os:system")
        with pytest.raises(RpcClientError, match="unknown query parameter"):
            alice.vault_query(typo="x")

        events = []
        stream = alice.vault_updates(timeout=30, type="greenflow.ledger.finance:Cash")
        events.append(next(stream))
        threading.Thread(target=lambda: alice.start_flow("greenflow.ledger.finance.CashExitFlow",
                                                         {"amount": "10.00 GBP"}, wait=30)).start()
        events.append(next(stream))
        stream.close()
        assert events[0][0] == "snapshot" and events[0][1]["total"] == 3
        kind, update = events[1]
        assert kind == "update" and update["consumed"] and update["produced"]
        assert sum(s["state"]["quantity"] for s in update["consumed"]) - 1_000 == \
            sum(s["state"]["quantity"] for s in update["produced"])
    finally:
        for p in procs:
            if p.node is not None:
                p.stop()


def test_a_query_by_type_or_linear_id_reads_only_the_states_it_names(mock):
    bank, alice, bob = (mock.create_node(n) for n in ("Bank", "Alice", "Bob"))
    run(mock, bank, CashIssueFlow(pounds(500), mock.notary.party, owner=alice.party, coins=500))
    deals = [run(mock, alice, DealFlow(bob.party, f"deal {i}", mock.notary.party, external_id=f"D-{i}"))
             .tx.outputs[0].linear_id for i in range(3)]
    vault = alice.services.vault
    engine, reader = vault._engine, vault._index
    looked_at, scanned = [], []
    real_consumed_at, real_scan = engine.consumed_at, reader.scan
    engine.consumed_at = lambda rkey: looked_at.append(rkey) or real_consumed_at(rkey)
    reader.scan = lambda name, prefix, after=None: scanned.append(name) or real_scan(name, prefix, after)
    try:
        [found] = vault.query_by(QueryCriteria(Deal, linear_ids=[deals[1]])).states
        assert found.state.terms == "deal 1"
        assert len(looked_at) == 1 and [n for n in scanned if n != "vault_types"] == ["vault_by_linear"]
        looked_at.clear()
        scanned.clear()
        assert vault.query_by(QueryCriteria(Deal)).total_states_available == 3
        assert len(looked_at) == 3  # the three deals, none of the 500 coins
        assert scanned.count("vault_by_type") == 1
        looked_at.clear()
        assert [s.state.terms for s in vault.query_by(QueryCriteria(external_ids=["D-2"])).states] == ["deal 2"]
        assert len(looked_at) == 1
    finally:
        engine.consumed_at, reader.scan = real_consumed_at, real_scan
    assert len(reader.pending["vault_by_type"]) <= 3  # writes of committed rounds are not kept


def test_criteria_by_time_recorded_notary_participant_and_predicate(mock):
    from datetime import datetime, timezone
    alice, bob, carol = (mock.create_node(n) for n in ("Alice", "Bob", "Carol"))
    notary = mock.notary.party
    run(mock, alice, DealFlow(bob.party, "early", notary))
    mock.advance_clock(3_600)
    noon = datetime.fromtimestamp(mock.clock.now(), tz=timezone.utc)
    mock.advance_clock(1)
    run(mock, alice, DealFlow(carol.party, "late", notary))
    vault = alice.services.vault
    terms = lambda **kw: [s.state.terms for s in vault.query_by(QueryCriteria(Deal, **kw)).states]  # noqa: E731
    assert terms(recorded_after=noon) == ["late"] and terms(recorded_before=noon) == ["early"]
    assert terms(participants=[carol.party]) == ["late"] and terms(participants=[alice.party]) == ["early", "late"]
    assert terms(notaries=[notary]) == ["early", "late"] and terms(notaries=[bob.party]) == []
    assert terms(where=lambda d: d.terms.startswith("e")) == ["early"]
    page = vault.query_by(QueryCriteria(Deal))
    assert [m.recorded_time for m in page.states_metadata][1] > noon
    assert page.states_metadata[0].notary == notary.owning_key.hex()
    with pytest.raises(VaultQueryError, match="status is one of"):
        QueryCriteria(Deal, status="spent")
    with pytest.raises(VaultQueryError, match="cannot sort by 'nope'"):
        vault.query_by(QueryCriteria(Deal), sorting=Sort("nope"))
    with pytest.raises(VaultQueryError, match="page_size"):
        PageSpecification(page_size=0)


def test_query_arguments_of_the_wrong_kind_are_refused_naming_them(mock):
    """A bare value where a list belongs, a name where a Party belongs, a date given as
    text: each failed deep in the query (AttributeError, TypeError), and one answered
    wrongly: ``external_ids="D-1"`` matched nothing, silently, as the letters of a str."""
    alice, bob = mock.create_node("Alice"), mock.create_node("Bob")
    deal = run(mock, alice, DealFlow(bob.party, "terms", mock.notary.party, external_id="D-1"))
    lid = deal.tx.outputs[0].linear_id
    vault = alice.services.vault
    assert len(vault.query_by(QueryCriteria(Deal, external_ids=["D-1"])).states) == 1
    refused = [
        (lambda: QueryCriteria(Deal, external_ids="D-1"), "external_ids is a list of str, not str 'D-1'"),
        (lambda: QueryCriteria(Deal, linear_ids=lid), "linear_ids is a list of UniqueIdentifiers"),
        (lambda: QueryCriteria(Deal, linear_ids=[7]), "linear_ids is a list of .*; it holds int 7"),
        (lambda: QueryCriteria(Deal, participants=["Bob"]), "participants is a list of Party objects; it holds str 'Bob'"),
        (lambda: QueryCriteria(Deal, participants=bob.party), "participants is a list of Party objects, not Party"),
        (lambda: QueryCriteria(Deal, notaries=[mock.notary.party.owning_key]), "notaries is a list of Party"),
        (lambda: QueryCriteria(Deal, recorded_after="2020-01-01"), "recorded_after is a datetime"),
        (lambda: QueryCriteria(Deal, where="terms"), "where is a function of the state"),
        (lambda: Sort(5), "a sort key is a name"),
        (lambda: Sort("terms", descending="no"), "descending is True or False, not str 'no'"),
        (lambda: PageSpecification(cursor=5), "cursor is a page's next_cursor"),
        (lambda: vault.query_by("Deal"), "criteria is a QueryCriteria, not str 'Deal'"),
        (lambda: vault.query_by(QueryCriteria(Deal), {"page_size": 10}), "paging is a PageSpecification, not dict"),
        (lambda: vault.query_by(QueryCriteria(Deal), None, "terms"), "sorting is a Sort, not str 'terms'"),
        # An offset cursor no page hands out (from the end of the list).
        (lambda: vault.query_by(QueryCriteria(Deal), PageSpecification(cursor="by0z"), Sort("terms")), "bad cursor"),
        (lambda: vault.query_json({"type": 5}), "query parameter type is text, not int 5"),
        (lambda: vault.query_json({"sort": 5}), "query parameter sort is text"),
    ]
    for call, says in refused:
        with pytest.raises(VaultQueryError, match=says):
            call()


def test_a_vault_recorded_before_the_indexes_indexes_its_states_when_it_opens(mock):
    bank, alice = mock.create_node("Bank"), mock.create_node("Alice")
    run(mock, bank, CashIssueFlow(pounds(5), mock.notary.party, owner=alice.party, coins=5))
    store = alice.node.store
    from greenflow.ledger.vault_query import INDEX_DBS
    from greenflow.storage.interface import Batch
    b = Batch()                             # as a store written before the indexes were
    for name in INDEX_DBS:
        for key, _ in list(store.table_items(name)):
            b.table_delete(name, key)
    store.commit(b)
    alice = mock.restart_node(alice)
    page = alice.services.vault.query_by(QueryCriteria(Cash))
    assert page.total_states_available == 5 and page.states_metadata[0].recorded_time is None
    run(mock, alice, CashPaymentFlow(pounds(2), bank.party))
    assert alice.services.vault.query_by(QueryCriteria(Cash, status="consumed")).total_states_available == 2
    assert cash_balances(alice.services.vault) == {"GBP": pounds(3)}


def test_contract_rules_for_exits_and_linear_ids_name_what_is_wrong():
    import uuid as _uuid

    from appflows import Amend
    from greenflow.ledger import ContractViolation, StateAndRef, StateRef, TransactionBuilder
    from greenflow.ledger.crypto import SecureHash
    from greenflow.ledger.finance import CashExit
    bank, alice = _party("Bank"), _party("Alice")
    token = Issued(bank, "GBP")
    coin = StateAndRef(Cash(Amount(100, token), alice), StateRef(SecureHash(b"\1" * 32), 0))
    unsigned = TransactionBuilder(bank).add_input_state(coin).add_command(CashExit(Amount(100, token)), alice)
    with pytest.raises(ContractViolation, match="the issuer of GBP issued by Bank signs its exit"):
        unsigned.verify()
    signed = TransactionBuilder(bank).add_input_state(coin).add_command(CashExit(Amount(100, token)), alice, bank)
    signed.verify()
    too_much = TransactionBuilder(bank).add_input_state(coin).add_command(CashExit(Amount(150, token)), alice, bank)
    with pytest.raises(ContractViolation, match="issuance"):
        too_much.verify()
    lid = UniqueIdentifier("D", _uuid.UUID(int=7))
    old = StateAndRef(Deal("x", 1, (alice, bank), lid), StateRef(SecureHash(b"\2" * 32), 0))
    twice = TransactionBuilder(bank).add_input_state(old).add_command(Amend(), alice, bank)
    twice.add_output_state(Deal("y", 2, (alice, bank), lid)).add_output_state(Deal("z", 2, (alice, bank), lid))
    with pytest.raises(ContractViolation, match="no two Deal outputs share the linear id D_"):
        twice.verify()


def test_cash_reads_back_its_amount_and_copies_with_dataclasses_replace():
    import dataclasses
    bank, alice, bob = _party("Bank"), _party("Alice"), _party("Bob")
    cash = Cash(pounds(5).issued_by(bank), alice)
    assert cash.amount == Amount(500, Issued(bank, "GBP")) and cash.token == Issued(bank, "GBP")
    assert dataclasses.replace(cash, owner=bob) == Cash(pounds(5).issued_by(bank), bob)
    assert dataclasses.replace(cash, amount=pounds(7).issued_by(bank)).quantity == 700
    assert cash.with_new_owner(bob).owner == bob and str(cash) == "5.00 GBP issued by Bank owned by Alice"
    with pytest.raises(TypeError, match="Issued currency"):
        Cash(pounds(5), alice)  # not issued by anyone
