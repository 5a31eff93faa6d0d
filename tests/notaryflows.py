"""A small ledger app for the notary tests: notes (IOUs with an optional due date and
rate), a rate published by an oracle, and the flows that issue, move and observe them.

Checkpoints name flows by qualified name, so these live at module level (tests/ is on
``sys.path``, see conftest) and survive a node restart in the same process.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Optional, Sequence

from greenflow import FlowLogic, FlowSession, Party, initiated_by, initiating_flow, serializable
from greenflow.ledger import (CommandData, Contract, ContractState, SignedTransaction, StateAndRef,
                              StatesToRecord, TransactionBuilder, require_that)
from greenflow.ledger.flows import (FinalityFlow, ReceiveFinalityFlow, ReceiveStateAndRefFlow,
                                    SendStateAndRefFlow)


# ============================================================================ states
@serializable
@dataclass(frozen=True)
class Note(ContractState):
    """``issuer`` owes ``owner`` ``value``; by ``due``, if set; at ``rate``, if set (the
    issuance then references the oracle's current `Rate` of that value)."""

    contract = "notaryflows.NoteContract"
    issuer: Party
    owner: Party
    value: int
    due: Optional[datetime] = None
    rate: Optional[int] = None

    @property
    def participants(self) -> list[Party]:
        return [self.issuer] if self.issuer == self.owner else [self.issuer, self.owner]


@serializable
@dataclass(frozen=True)
class Rate(ContractState):
    """A figure an oracle publishes and others read as a reference state."""

    contract = "notaryflows.RateContract"
    oracle: Party
    value: int

    @property
    def participants(self) -> list[Party]:
        return [self.oracle]


@serializable
@dataclass(frozen=True)
class NoteIssue(CommandData):
    pass


@serializable
@dataclass(frozen=True)
class NoteMove(CommandData):
    pass


@serializable
@dataclass(frozen=True)
class RateIssue(CommandData):
    pass


@serializable
@dataclass(frozen=True)
class RateUpdate(CommandData):
    pass


class NoteContract(Contract):
    def verify(self, tx) -> None:  # noqa: ANN001
        notes_in, notes_out = tx.inputs_of_type(Note), tx.outputs_of_type(Note)
        if tx.commands_of_type(NoteIssue):
            require_that(not notes_in, "an issuance consumes no notes")
            for note in notes_out:
                require_that(note.value > 0, "a note's value is positive")
                if note.due is not None:
                    window = tx.time_window
                    require_that(window is not None and window.until_time is not None
                                 and window.until_time <= note.due,
                                 "a note with a due date is issued in a time window that closes "
                                 "by that date")
                if note.rate is not None:
                    require_that(any(r.value == note.rate for r in tx.references_of_type(Rate)),
                                 "a note issued at a rate references the oracle's Rate of that value")
        elif tx.commands_of_type(NoteMove):
            require_that(len(notes_in) == 1 and len(notes_out) == 1, "a move takes one note to one note")
            before, after = notes_in[0], notes_out[0]
            require_that(replace(before, owner=after.owner) == after, "a move changes only the owner")
        else:
            require_that(False, "a note transaction issues or moves")


class RateContract(Contract):
    def verify(self, tx) -> None:  # noqa: ANN001
        rates_in, rates_out = tx.inputs_of_type(Rate), tx.outputs_of_type(Rate)
        if tx.commands_of_type(RateIssue):
            require_that(not rates_in and rates_out, "an issuance creates rates and consumes none")
        else:
            require_that(tx.commands_of_type(RateUpdate) and len(rates_in) == 1 and len(rates_out) == 1
                         and rates_in[0].oracle == rates_out[0].oracle,
                         "an update replaces one rate by its oracle's new one")


def _sign(flow: FlowLogic, builder: TransactionBuilder) -> SignedTransaction:
    return flow.services.key_management.sign(SignedTransaction(builder.to_wire_transaction()))


# ============================================================================ observers
@initiating_flow
class ObserveAll(FlowLogic):
    """Opens a session whose responder records as an observer: every state it sees
    (run as a sub-flow; it returns the session, which FinalityFlow's observers take)."""

    def __init__(self, party: Party) -> None:
        self.party = party

    def call(self) -> FlowSession:
        return self.initiate_flow(self.party)


@initiated_by(ObserveAll)
class RecordAllVisible(FlowLogic):
    def __init__(self, session: FlowSession) -> None:
        self.session = session

    def call(self) -> SignedTransaction:
        return self.sub_flow(ReceiveFinalityFlow(self.session,
                                                 states_to_record=StatesToRecord.ALL_VISIBLE))


@initiating_flow
class ObserveRelevant(ObserveAll):
    """The same, to a responder that keeps only the states it participates in."""


@initiated_by(ObserveRelevant)
class RecordRelevant(FlowLogic):
    def __init__(self, session: FlowSession) -> None:
        self.session = session

    def call(self) -> SignedTransaction:
        return self.sub_flow(ReceiveFinalityFlow(self.session))


def observer_sessions(flow: FlowLogic, all_visible: Sequence[Party],
                      relevant: Sequence[Party]) -> list[FlowSession]:
    return ([flow.sub_flow(ObserveAll(p)) for p in all_visible]
            + [flow.sub_flow(ObserveRelevant(p)) for p in relevant])


# ============================================================================ notes
@initiating_flow
class IssueNoteFlow(FlowLogic):
    """Issue a note of ours to ``owner``. ``window``: seconds from the flow's now for
    the time window bounds (None: open); ``wait``: seconds to sleep between signing and
    finality (the time a slow counterparty might take); ``rate``: a `Rate` to reference."""

    def __init__(self, owner: Party, value: int, notary: Party, *,
                 window: Optional[tuple[Optional[float], Optional[float]]] = None,
                 due: Optional[datetime] = None, rate: Optional[StateAndRef] = None,
                 wait: float = 0.0, observers: Sequence[Party] = (),
                 relevant_observers: Sequence[Party] = ()) -> None:
        self.owner, self.value, self.notary = owner, value, notary
        self.window, self.due, self.rate, self.wait = window, due, rate, wait
        self.observers, self.relevant_observers = list(observers), list(relevant_observers)

    def call(self) -> SignedTransaction:
        me = self.our_identity
        builder = TransactionBuilder(self.notary, salt=self.random().randbytes(32))
        rate = None if self.rate is None else self.rate.state.value
        builder.add_output_state(Note(me, self.owner, self.value, self.due, rate))
        builder.add_command(NoteIssue(), me)
        if self.rate is not None:
            builder.add_reference_state(self.rate)
        if self.window is not None:
            now = self.now()
            start, end = self.window
            builder.set_time_window(None if start is None else now + timedelta(seconds=start),
                                    None if end is None else now + timedelta(seconds=end))
        stx = _sign(self, builder)
        if self.wait:
            self.sleep(self.wait)
        sessions = [] if self.owner == me else [self.initiate_flow(self.owner)]
        observers = observer_sessions(self, self.observers, self.relevant_observers)
        return self.sub_flow(FinalityFlow(stx, sessions, observers=observers))


@initiated_by(IssueNoteFlow)
class ReceiveNoteFlow(FlowLogic):
    def __init__(self, session: FlowSession) -> None:
        self.session = session

    def call(self) -> SignedTransaction:
        return self.sub_flow(ReceiveFinalityFlow(self.session))


@initiating_flow
class MoveNoteFlow(FlowLogic):
    """Give ``note`` (ours) to ``new_owner``. ``value``: a different value for the
    output (a move the contract refuses)."""

    def __init__(self, note: StateAndRef, new_owner: Party, *, observers: Sequence[Party] = (),
                 value: Optional[int] = None) -> None:
        self.note, self.new_owner, self.observers, self.value = note, new_owner, list(observers), value

    def call(self) -> SignedTransaction:
        me = self.our_identity
        notary = self.services.vault.notary_of(self.note.ref)
        builder = TransactionBuilder(notary, salt=self.random().randbytes(32))
        out = replace(self.note.state, owner=self.new_owner)
        if self.value is not None:
            out = replace(out, value=self.value)
        builder.add_input_state(self.note).add_output_state(out).add_command(NoteMove(), me)
        stx = _sign(self, builder)
        others = {p.name: p for p in (*self.note.state.participants, *out.participants) if p != me}
        sessions = [self.initiate_flow(p) for _, p in sorted(others.items())]
        return self.sub_flow(FinalityFlow(stx, sessions,
                                          observers=observer_sessions(self, self.observers, ())))


@initiated_by(MoveNoteFlow)
class ReceiveMovedNoteFlow(ReceiveNoteFlow):
    pass


@initiating_flow
class AskNotaryFlow(FlowLogic):
    """Ask the notary to sign ``stx`` with none of our own checks of its contracts:
    what a careless or dishonest party can do."""

    def __init__(self, stx: SignedTransaction) -> None:
        self.stx = stx

    def call(self) -> SignedTransaction:
        from greenflow.ledger.flows import NotaryClientFlow
        return self.stx.with_signature(self.sub_flow(NotaryClientFlow(self.stx)))


# ============================================================================ rates
class IssueRateFlow(FlowLogic):
    def __init__(self, value: int, notary: Party) -> None:
        self.value, self.notary = value, notary

    def call(self) -> StateAndRef:
        me = self.our_identity
        builder = TransactionBuilder(self.notary, salt=self.random().randbytes(32))
        builder.add_output_state(Rate(me, self.value)).add_command(RateIssue(), me)
        return self.sub_flow(FinalityFlow(_sign(self, builder))).tx.out_ref(0)


class UpdateRateFlow(FlowLogic):
    def __init__(self, rate: StateAndRef, value: int) -> None:
        self.rate, self.value = rate, value

    def call(self) -> StateAndRef:
        me = self.our_identity
        builder = TransactionBuilder(self.services.vault.notary_of(self.rate.ref),
                                     salt=self.random().randbytes(32))
        builder.add_input_state(self.rate).add_output_state(Rate(me, self.value))
        builder.add_command(RateUpdate(), me)
        return self.sub_flow(FinalityFlow(_sign(self, builder))).tx.out_ref(0)


@initiating_flow
class ShareRateFlow(FlowLogic):
    """Send ``rate`` with its history to ``peer`` (which can then reference it)."""

    def __init__(self, rate: StateAndRef, peer: Party) -> None:
        self.rate, self.peer = rate, peer

    def call(self) -> None:
        self.sub_flow(SendStateAndRefFlow(self.initiate_flow(self.peer), [self.rate]))


@initiated_by(ShareRateFlow)
class ReceiveRateFlow(FlowLogic):
    def __init__(self, session: FlowSession) -> None:
        self.session = session

    def call(self) -> list:
        return self.sub_flow(ReceiveStateAndRefFlow(self.session, Rate))
