"""Time windows, reference states, observers, the validating notary and the notary's
durable bookkeeping, on MockNetwork in both modes (resident, and every flow rebuilt by
replay after each suspension)."""
from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone

import pytest

import notaryflows as nf
from greenflow import FlowError, FlowStatus
from greenflow.ledger import (ContractViolation, SignedTransaction, StatesToRecord, TimeWindow,
                              TransactionBuilder, TransactionVerificationError)
from greenflow.ledger.flows import (NotaryConflictError, NotaryTimeWindowError,
                                    NotaryValidationError, ReceiveFinalityFlow)
from greenflow.ledger.transactions import _ID_DOMAIN, WireTransaction
from greenflow.node.node import Node
from greenflow.testing import MockNetwork
from greenflow.wire import canonical_encode


def run(net, node, flow):
    handle = node.start_flow(flow)
    net.run_network()
    return handle


def net_time(net) -> datetime:
    return datetime.fromtimestamp(net.clock.now(), timezone.utc)


@pytest.fixture
def parties(net):
    """A non-validating notary and three parties."""
    return net.notary, net.create_node("Alice"), net.create_node("Bob"), net.create_node("Carol")


# ====================================================================== time windows
def test_a_transaction_inside_its_time_window_is_notarised_and_contracts_see_the_window(net, parties):
    notary, alice, bob, _ = parties
    stx = run(net, alice, nf.IssueNoteFlow(bob.party, 10, notary.party, window=(-5, 60))).result()
    assert notary.party.owning_key in stx.signed_keys
    window = bob.services.vault.transaction(stx.id).tx.time_window
    assert window == TimeWindow(net_time(net) - timedelta(seconds=5), net_time(net) + timedelta(seconds=60))
    [note] = bob.services.vault.query(nf.Note)
    assert note.ref.tx_id == stx.id


@pytest.mark.parametrize("window, why", [
    ((3600, 7200), "is before the start of the window"),
    ((None, -1), "is at or after the end of the window"),
    ((-60, 0.000001), None),  # closes a microsecond after the flow's now: still open at the notary
])
def test_a_transaction_outside_its_time_window_is_refused_by_the_notary(net, parties, window, why):
    notary, alice, bob, _ = parties
    handle = run(net, alice, nf.IssueNoteFlow(bob.party, 10, notary.party, window=window))
    if why is None:  # the notary's time equals the flow's (nothing moved the clock)
        assert notary.party.owning_key in handle.result().signed_keys
        return
    with pytest.raises(NotaryTimeWindowError, match=rf"notary Notary refused transaction \w+ from "
                                                    rf"Alice: outside its time window \[.*\): the "
                                                    rf"notary's time .* {why}"):
        handle.result()
    assert bob.services.vault.query(nf.Note) == []
    assert notary.services.notary_service.refused == 1


def test_the_window_is_judged_by_the_notarys_clock_when_it_is_asked(net, parties):
    """The flow builds both transactions at the same moment; the notary is asked only
    after the flow slept 100 s, and judges at that time."""
    notary, alice, bob, _ = parties
    closes = alice.start_flow(nf.IssueNoteFlow(bob.party, 1, notary.party, window=(0, 30), wait=100))
    opens = alice.start_flow(nf.IssueNoteFlow(bob.party, 2, notary.party, window=(60, 200), wait=100))
    net.run_network()
    net.advance_clock(100)
    net.run_network()
    with pytest.raises(NotaryTimeWindowError, match="at or after the end of the window"):
        closes.result()
    assert notary.party.owning_key in opens.result().signed_keys
    assert [n.state.value for n in bob.services.vault.query(nf.Note)] == [2]


def test_a_contract_reads_the_time_window(net, parties):
    notary, alice, bob, _ = parties
    due = net_time(net) + timedelta(days=30)
    without = run(net, alice, nf.IssueNoteFlow(bob.party, 5, notary.party, due=due))
    with pytest.raises(ContractViolation, match="issued in a time window that closes by that date"):
        without.result()
    stx = run(net, alice, nf.IssueNoteFlow(bob.party, 5, notary.party, due=due, window=(0, 60))).result()
    assert bob.services.vault.query(nf.Note)[0].state.due == due
    assert stx.tx.time_window.until_time <= due


# ====================================================================== reference states
def test_a_reference_state_is_resolved_checked_and_left_unconsumed(net, parties):
    notary, alice, bob, _ = parties
    oracle = net.create_node("Oracle")
    rate = run(net, oracle, nf.IssueRateFlow(7, notary.party)).result()
    run(net, oracle, nf.ShareRateFlow(rate, alice.party)).result()
    stx = run(net, alice, nf.IssueNoteFlow(bob.party, 70, notary.party, rate=rate)).result()

    assert stx.tx.references == (rate.ref,) and notary.party.owning_key in stx.signed_keys
    # Bob resolved and verified the reference's history with the rest of the chain.
    assert bob.services.vault.has_transaction(rate.ref.tx_id)
    assert bob.services.vault.query(nf.Note)[0].state.rate == 7
    # Read, not consumed: the notary did not mark it, the oracle still holds it and can update it.
    assert notary.services.notary_service.consumed_by(rate.ref) is None
    assert [r.ref for r in oracle.services.vault.query(nf.Rate)] == [rate.ref]
    run(net, oracle, nf.UpdateRateFlow(rate, 8)).result()


def test_a_stale_reference_state_is_refused_by_the_notary(net, parties):
    notary, alice, bob, _ = parties
    oracle = net.create_node("Oracle")
    rate = run(net, oracle, nf.IssueRateFlow(7, notary.party)).result()
    run(net, oracle, nf.ShareRateFlow(rate, alice.party)).result()
    update = run(net, oracle, nf.UpdateRateFlow(rate, 8))
    new_rate = update.result()

    stale = run(net, alice, nf.IssueNoteFlow(bob.party, 70, notary.party, rate=rate))
    with pytest.raises(NotaryConflictError, match=rf"from Alice: stale reference: reference state "
                                                  rf"{re.escape(str(rate.ref))} is stale: it was consumed by "
                                                  rf"transaction {new_rate.ref.tx_id.value.hex()}"):
        stale.result()
    assert bob.services.vault.query(nf.Note) == []

    run(net, oracle, nf.ShareRateFlow(new_rate, alice.party)).result()
    stx = run(net, alice, nf.IssueNoteFlow(bob.party, 80, notary.party, rate=new_rate)).result()
    assert [n.state.rate for n in bob.services.vault.query(nf.Note)] == [8]
    assert stx.tx.references == (new_rate.ref,)


def test_a_contract_reads_the_reference_states(net, parties):
    notary, alice, bob, _ = parties
    oracle = net.create_node("Oracle")
    rate = run(net, oracle, nf.IssueRateFlow(7, notary.party)).result()
    run(net, oracle, nf.ShareRateFlow(rate, alice.party)).result()
    # A note that claims a rate of 9 while referencing the oracle's rate of 7.
    builder = TransactionBuilder(notary.party, salt=b"\x09" * 32)
    builder.add_output_state(nf.Note(alice.party, bob.party, 70, rate=9)).add_command(nf.NoteIssue(), alice.party)
    builder.add_reference_state(rate)
    with pytest.raises(ContractViolation, match="references the oracle's Rate of that value"):
        builder.verify()
    builder.outputs[0] = nf.Note(alice.party, bob.party, 70, rate=7)
    assert builder.verify().references_of_type(nf.Rate) == [rate.state]


# ====================================================================== observers
def test_an_observer_records_a_transaction_it_is_no_participant_of(net, parties):
    notary, alice, bob, carol = parties
    regulator, auditor = net.create_node("Regulator"), net.create_node("Auditor")
    stx = run(net, alice, nf.IssueNoteFlow(bob.party, 10, notary.party, observers=[regulator.party],
                                           relevant_observers=[auditor.party])).result()
    for observer in (regulator, auditor):
        assert observer.services.vault.transaction(stx.id) == stx
    # ALL_VISIBLE: the regulator holds the note although it is none of its participants.
    [seen] = regulator.services.vault.query(nf.Note)
    assert seen.ref.tx_id == stx.id and regulator.party not in seen.state.participants
    assert auditor.services.vault.query(nf.Note) == []  # ONLY_RELEVANT: nothing of its own

    # The note moves on (notarised, since it consumes it); the observer follows, across its restart.
    regulator = net.restart_node(regulator)
    moved = run(net, bob, nf.MoveNoteFlow(seen, carol.party, observers=[regulator.party])).result()
    assert [s.ref.tx_id for s in regulator.services.vault.query(nf.Note)] == [moved.id]
    assert [s.ref.tx_id for s in carol.services.vault.query(nf.Note)] == [moved.id]


def test_states_to_record_is_the_receivers_choice():
    with pytest.raises(TypeError, match="states_to_record is a StatesToRecord"):
        ReceiveFinalityFlow(None, states_to_record="all")  # type: ignore[arg-type]
    assert {s.name for s in StatesToRecord} == {"NONE", "ONLY_RELEVANT", "ALL_VISIBLE"}


# ====================================================================== the validating notary
@pytest.fixture
def vparties(net):
    """A validating notary and three parties."""
    return (net.create_notary("Validator", validating=True), net.create_node("Alice"),
            net.create_node("Bob"), net.create_node("Carol"))


def test_a_validating_notary_verifies_the_history_and_signs_a_valid_transaction(net, vparties):
    notary, alice, bob, carol = vparties
    assert notary.services.notary_service.kind == "validating"
    issued = run(net, alice, nf.IssueNoteFlow(alice.party, 10, notary.party)).result()
    moved = run(net, alice, nf.MoveNoteFlow(issued.tx.out_ref(0), bob.party)).result()
    again = run(net, bob, nf.MoveNoteFlow(moved.tx.out_ref(0), carol.party)).result()
    assert notary.party.owning_key in again.signed_keys
    # It fetched and verified the whole chain (and so holds it), not just the last link.
    assert all(notary.services.vault.has_transaction(stx.id) for stx in (issued, moved))
    assert carol.services.vault.query(nf.Note)[0].ref.tx_id == again.id
    assert notary.services.notary_service.notarised == 2


def test_a_validating_notary_refuses_a_transaction_whose_history_does_not_verify(net, vparties):
    notary, alice, bob, _ = vparties
    # A note that breaks its contract (negative value), slipped into Alice's vault unchecked.
    builder = TransactionBuilder(notary.party, salt=b"\x05" * 32)
    builder.add_output_state(nf.Note(alice.party, alice.party, -5)).add_command(nf.NoteIssue(), alice.party)
    forged = alice.services.key_management.sign(SignedTransaction(builder.to_wire_transaction()))
    alice.services.vault.record_transactions([forged])

    handle = run(net, alice, nf.MoveNoteFlow(forged.tx.out_ref(0), bob.party))
    with pytest.raises(NotaryValidationError, match=rf"notary Validator refused transaction \w+ from "
                                                    rf"Alice: its history does not verify: contract "
                                                    rf"notaryflows.NoteContract rejected transaction "
                                                    rf"{forged.id}: a note's value is positive"):
        handle.result()
    service = notary.services.notary_service
    assert service.consumed_by(forged.tx.out_ref(0).ref) is None and service.notarised == 0
    assert not notary.services.vault.has_transaction(forged.id)
    assert bob.services.vault.query(nf.Note) == []


def test_a_validating_notary_refuses_a_transaction_that_does_not_verify(net, vparties):
    notary, alice, bob, _ = vparties
    issued = run(net, alice, nf.IssueNoteFlow(alice.party, 10, notary.party)).result()
    builder = TransactionBuilder(notary.party, salt=b"\x06" * 32)
    builder.add_input_state(issued.tx.out_ref(0))
    builder.add_output_state(nf.Note(alice.party, bob.party, 1_000)).add_command(nf.NoteMove(), alice.party)
    inflated = alice.services.key_management.sign(SignedTransaction(builder.to_wire_transaction()))
    handle = run(net, alice, nf.AskNotaryFlow(inflated))  # Alice skips her own contract check
    with pytest.raises(NotaryValidationError, match="it does not verify: contract notaryflows.NoteContract "
                                                    "rejected transaction .*: a move changes only the owner"):
        handle.result()
    assert notary.services.notary_service.consumed_by(issued.tx.out_ref(0).ref) is None


def test_a_validating_notary_restarted_while_it_resolves_a_history_still_decides(net, vparties):
    notary, alice, bob, _ = vparties
    issued = run(net, alice, nf.IssueNoteFlow(alice.party, 10, notary.party)).result()
    handle = alice.start_flow(nf.MoveNoteFlow(issued.tx.out_ref(0), bob.party))
    for _ in range(40):  # stop as soon as the notary is fetching the history
        net.run_network(max_messages=1)
        serving = [f for f in notary.node.flows() if f.flow_class.endswith("NotaryServiceFlow")]
        if serving:
            break
    assert serving[0].status == FlowStatus.SUSPENDED or serving[0].status == FlowStatus.HIBERNATED
    assert serving[0].progress_step == "Fetching missing history"
    notary = net.restart_node(notary)
    net.run_network()
    assert notary.party.owning_key in handle.result().signed_keys
    assert notary.services.notary_service.kind == "validating"


def test_a_validating_notary_resolves_references_and_judges_windows_and_staleness(net, vparties):
    notary, alice, bob, _ = vparties
    oracle = net.create_node("Oracle")
    rate = run(net, oracle, nf.IssueRateFlow(7, notary.party)).result()
    run(net, oracle, nf.ShareRateFlow(rate, alice.party)).result()
    stx = run(net, alice, nf.IssueNoteFlow(bob.party, 70, notary.party, rate=rate, window=(0, 60))).result()
    assert notary.party.owning_key in stx.signed_keys
    # To verify the note's contract it needed the rate: it fetched it from Alice.
    assert notary.services.vault.has_transaction(rate.ref.tx_id)

    late = run(net, alice, nf.IssueNoteFlow(bob.party, 70, notary.party, rate=rate, window=(None, -1)))
    with pytest.raises(NotaryTimeWindowError, match="at or after the end of the window"):
        late.result()
    run(net, oracle, nf.UpdateRateFlow(rate, 8)).result()
    stale = run(net, alice, nf.IssueNoteFlow(bob.party, 70, notary.party, rate=rate))
    with pytest.raises(NotaryConflictError, match="stale reference"):
        stale.result()
    assert [n.ref.tx_id for n in bob.services.vault.query(nf.Note)] == [stx.id]


def test_a_validating_notary_must_be_a_notary(tmp_path):
    with pytest.raises(FlowError, match="validating_notary=True needs notary=True"):
        Node(str(tmp_path / "n"), "Solo", validating_notary=True, threaded=False)


# ====================================================================== durable bookkeeping
def test_the_notarys_bookkeeping_survives_its_restart(net, parties):
    notary, alice, bob, carol = parties
    issued = run(net, alice, nf.IssueNoteFlow(alice.party, 10, notary.party)).result()
    note = issued.tx.out_ref(0)
    moved = run(net, alice, nf.MoveNoteFlow(note, bob.party)).result()
    assert (notary.services.notary_service.notarised, notary.services.notary_service.refused) == (1, 0)

    notary = net.restart_node(notary)
    service = notary.services.notary_service
    assert (service.notarised, service.refused) == (1, 0)
    assert service.committed(moved.id) == "Alice"
    # Alice tries to spend the same note again, to Carol: refused after the restart too.
    double = run(net, alice, nf.MoveNoteFlow(note, carol.party))
    with pytest.raises(NotaryConflictError, match=rf"double spend: input {re.escape(str(note.ref))} was already consumed "
                                                  rf"by transaction {moved.id.value.hex()}"):
        double.result()
    assert carol.services.vault.query(nf.Note) == []

    notary = net.restart_node(notary)
    service = notary.services.notary_service
    assert (service.notarised, service.refused) == (1, 1)
    assert service.consumed_by(note.ref) == moved.id.value


def test_asking_again_for_a_signed_transaction_gets_the_same_answer_after_its_window(net, parties):
    """Asking twice is not a double spend, even once the window has closed (a client
    that lost the answer in a crash asks again)."""
    notary, alice, bob, _ = parties
    stx = run(net, alice, nf.IssueNoteFlow(bob.party, 10, notary.party, window=(0, 30))).result()
    unsigned = SignedTransaction(stx.wtx, tuple(s for s in stx.sigs if s.public_key != notary.party.owning_key))
    notary = net.restart_node(notary)
    net.advance_clock(3600)
    again = run(net, alice, nf.AskNotaryFlow(unsigned)).result()
    assert set(again.sigs) == set(stx.sigs)
    assert notary.services.notary_service.notarised == 1


# ====================================================================== the data
def test_time_window_and_references_are_part_of_the_transaction_id(tmp_path):
    with MockNetwork(tmp_path / "n") as net:
        alice, notary = net.create_node("Alice"), net.notary
        t0 = net_time(net)
        builder = TransactionBuilder(notary.party, salt=b"\x01" * 32)
        builder.add_output_state(nf.Note(alice.party, alice.party, 1)).add_command(nf.NoteIssue(), alice.party)
        plain = builder.to_wire_transaction()
        # Without them, the id is what it always was.
        legacy = (_ID_DOMAIN, plain.inputs, plain.outputs, plain.commands, plain.notary, plain.salt)
        assert plain.id.value == __import__("hashlib").sha256(canonical_encode(legacy)).digest()
        assert not plain.needs_notary
        builder.set_time_window(t0, t0 + timedelta(seconds=10))
        windowed = builder.to_wire_transaction()
        builder.set_time_window(t0, t0 + timedelta(seconds=11))
        assert len({plain.id, windowed.id, builder.to_wire_transaction().id}) == 3
        assert windowed.needs_notary and notary.party.owning_key in windowed.required_signers
        # A signature over one window is no signature over another.
        signed = alice.services.key_management.sign(SignedTransaction(windowed))
        moved = SignedTransaction(builder.to_wire_transaction(), signed.sigs)
        with pytest.raises(TransactionVerificationError, match="does not verify"):
            moved.verify_signatures(except_keys=[notary.party.owning_key])


def test_time_windows_refuse_what_makes_no_sense():
    t0 = datetime(2030, 1, 1, tzinfo=timezone.utc)
    with pytest.raises(ValueError, match="timezone-aware"):
        TimeWindow(datetime(2030, 1, 1))
    with pytest.raises(ValueError, match="at least one bound"):
        TimeWindow()
    with pytest.raises(ValueError, match="is empty"):
        TimeWindow(t0, t0)
    window = TimeWindow.between(t0, t0 + timedelta(hours=2))
    assert window.contains(t0) and not window.contains(t0 + timedelta(hours=2))
    assert window.midpoint == t0 + timedelta(hours=1)
    assert TimeWindow.until(t0).contains(t0 - timedelta(days=999))
    assert TimeWindow.around(t0, timedelta(seconds=5)).contains(t0 + timedelta(seconds=4))
    # Kept in UTC whatever offset it was given in, so every node hashes the same bytes.
    plus_two = t0.astimezone(timezone(timedelta(hours=2)))
    assert TimeWindow.starting(plus_two).from_time.utcoffset() == timedelta(0)


def test_a_malformed_window_or_reference_from_a_peer_is_refused(tmp_path):
    import dataclasses
    with MockNetwork(tmp_path / "n") as net:
        alice, notary = net.create_node("Alice"), net.notary
        builder = TransactionBuilder(notary.party, salt=b"\x01" * 32)
        builder.add_output_state(nf.Note(alice.party, alice.party, 1)).add_command(nf.NoteIssue(), alice.party)
        wtx = builder.to_wire_transaction()
        bad_window = object.__new__(TimeWindow)
        object.__setattr__(bad_window, "from_time", datetime(2030, 1, 1))
        object.__setattr__(bad_window, "until_time", None)
        for tx, why in [
            (dataclasses.replace(wtx, time_window=bad_window), "not a timezone-aware datetime"),
            (dataclasses.replace(wtx, time_window="soon"), "time_window is not a TimeWindow"),
            (dataclasses.replace(wtx, notary=None, time_window=TimeWindow.until(datetime.now(timezone.utc))),
             "a time window needs a notary"),
            (dataclasses.replace(wtx, references=("ref",)), r"references\[0\] is not a StateRef"),
        ]:
            with pytest.raises(TransactionVerificationError, match=why):
                WireTransaction.check_shape(tx)


# ====================================================================== chosen at bootstrap
def test_the_notary_kind_is_chosen_at_bootstrap_and_kept_by_the_node_directory(tmp_path):
    from click.testing import CliRunner

    from greenflow.network.bootstrap import bootstrap_network
    from greenflow.cli.network import command
    from greenflow.network.node_config import ConfigError, NodeConfig
    from greenflow.rpc.node_process import NodeProcess

    out = CliRunner().invoke(command, ["bootstrap", "--dir", str(tmp_path / "v"), "--nodes", "Alice",
                                       "--notary", "Notary", "--validating-notary", "--base-port", "0"])
    assert out.exit_code == 0, out.output
    assert "Notary (validating notary)" in out.output
    assert NodeConfig.load(str(tmp_path / "v" / "Notary")).validating_notary
    assert not NodeConfig.load(str(tmp_path / "v" / "Alice")).validating_notary
    proc = NodeProcess(str(tmp_path / "v" / "Notary"), rpc=False).start()
    try:
        assert proc.node.services.notary_service.kind == "validating"
    finally:
        proc.stop()

    [plain] = [c for c in bootstrap_network(str(tmp_path / "p"), ["Bob"], notary="Notary", base_port=0)
               if c.notary]
    assert not plain.validating_notary and "validating_notary" not in (tmp_path / "p" / "Notary" / "node.toml").read_text()
    with pytest.raises(ConfigError, match="needs a notary name"):
        bootstrap_network(str(tmp_path / "x"), ["Bob"], validating_notary=True, base_port=0)
    toml = tmp_path / "p" / "Bob" / "node.toml"
    toml.write_text(toml.read_text().replace("notary = false\n", "notary = false\nvalidating_notary = true\n"))
    with pytest.raises(ConfigError, match="`validating_notary = true` needs `notary = true`"):
        NodeConfig.load(str(tmp_path / "p" / "Bob"))
