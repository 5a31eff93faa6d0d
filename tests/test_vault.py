"""Cash selection and soft locks in the vault, through flows on MockNetwork: what one
flow holds no other flow can select, what it held comes back when it ends, and locks and
the free states are the same after a power cut.

Every test runs in both network modes (`net_options`).
"""
from __future__ import annotations

import pytest

from greenflow import FlowStatus
from greenflow.ledger.vault import InsufficientBalance
from greenflow.samples.trade import Cash, IssueCashFlow, TradeNetwork
from ledgerflows import HoldCashFlow

COIN = 1_500


@pytest.fixture
def tn(tmp_path, net_options):
    network = TradeNetwork.create(str(tmp_path / "net"), **net_options)
    issued = network.bank.node.start_flows([IssueCashFlow(COIN, network.buyer.party, network.notary.party)
                                            for _ in range(3)])
    network.net.run_network()
    for h in issued:
        h.result()
    yield network
    network.close()


def hold(tn, amount: int, seconds: float = 60.0):
    handle = tn.buyer.start_flow(HoldCashFlow(amount, seconds))
    tn.net.run_network()
    return handle


def held_refs(tn, handle) -> set:
    return {ref for ref, fid in tn.buyer.services.vault.locks().items() if fid == handle.id}


def test_concurrent_flows_select_different_coins_and_a_third_is_told_what_is_locked(tn):
    a, b = hold(tn, COIN), hold(tn, COIN)
    assert len(held_refs(tn, a)) == len(held_refs(tn, b)) == 1
    assert held_refs(tn, a).isdisjoint(held_refs(tn, b))

    greedy = hold(tn, 2 * COIN, seconds=0)
    with pytest.raises(InsufficientBalance) as err:
        greedy.result()
    assert (f"cannot select {2 * COIN:,}.00 GBP in Cash: {COIN:,}.00 GBP is free ({2 * COIN:,}.00 GBP more "
            "is locked by other flows)") in str(err.value)


def test_the_coins_a_flow_held_are_selectable_again_once_it_ends(tn):
    a, b, c = hold(tn, COIN), hold(tn, COIN, seconds=600), hold(tn, COIN, seconds=600)
    a_coin = held_refs(tn, a)
    tn.net.advance_clock(61)
    tn.net.run_network()
    assert set(a.result()) == a_coin
    assert held_refs(tn, a) == set()
    d = hold(tn, COIN)
    assert held_refs(tn, d) == a_coin  # the only coin nobody holds
    status = {f.id: f.status for f in tn.buyer.node.flows()}
    assert status[a.id] is FlowStatus.COMPLETED
    assert all(status[h.id] in (FlowStatus.SUSPENDED, FlowStatus.HIBERNATED) for h in (b, c, d))


def test_locks_and_free_coins_are_the_same_after_a_restart(tn):
    a = hold(tn, COIN, seconds=600)
    locked = tn.buyer.services.vault.locks()
    tn.restart("buyer")
    assert tn.buyer.services.vault.locks() == locked
    b, c = hold(tn, COIN), hold(tn, COIN)
    picked = held_refs(tn, b) | held_refs(tn, c)
    assert len(picked) == 2 and picked.isdisjoint(locked)
    with pytest.raises(InsufficientBalance):
        hold(tn, COIN, seconds=0).result()
    tn.net.advance_clock(601)
    tn.net.run_network()
    assert set(tn.buyer.node.handle(a.id).result()) == set(locked)
    assert tn.buyer.services.vault.locks() == {}
    assert sum(s.state.amount.quantity for s in tn.buyer.services.vault.query(Cash)) == 3 * COIN * 100


@pytest.mark.parametrize("how, says", [
    ("query", "TypeError: Vault.query takes a class of states (e.g. Cash), not str"),
    ("query where", "TypeError: Vault.query's where is a function of the state, not int 5"),
    ("select type", "TypeError: Vault.select takes a class of states (e.g. Cash), not str"),
    ("select zero", "ValueError: Vault.select takes an amount above zero, not 0"),
    ("soft_lock one", "TypeError: Vault.soft_lock takes a list of StateRef, not one str"),
    ("release", "TypeError: Vault.release takes StateRefs (a StateAndRef's .ref), not bytes"),
    ("sign", "TypeError: key_management.sign takes a SignedTransaction"),
])
def test_vault_and_key_calls_name_an_argument_of_the_wrong_kind(tn, how, says):
    """They failed deep inside (issubclass() arg 2 must be a class; 'str' object has no
    attribute 'tx_id' or 'with_signature'), and a select of 0 or less locked a coin."""
    from ledgerflows import VaultMisuse
    h = tn.buyer.start_flow(VaultMisuse(how))
    tn.net.run_network()
    assert h.result().startswith(says)
    assert tn.buyer.services.vault.locks() == {}
