"""The persisted header of an unfinished flow: its session table, status and pending
request. Written at every group commit the flow took part in; small.

Stored as a typed msgpack array (`greenflow.storage.interface.encode_header`); headers
stored as pickles, by `__reduce__` below or before it, still load.

Both classes are msgspec structs the cyclic garbage collector does not track
(``gc=False``): a node holds one checkpoint and a few session states for every flow in
flight, and the collector walked all of them at each young-generation collection
(measured at 10,000 flows in flight: ~55 -> ~47 us of collection per ping-pong flow).
They can be untracked because they never take part in a reference cycle: their fields
are atoms, tuples of atoms, parties and dicts of those (keep it so: a cycle through
them would never be freed)."""
from __future__ import annotations

from operator import attrgetter
from typing import Optional

import msgspec

from greenflow.party import Party
from greenflow.status import FlowStatus

# Session states (our side).
NEW, OPEN, CLOSED = 0, 1, 2

#: ``FlowRuntime.base`` of a flow not committed yet: its last good state is the one it
#: started with (`Checkpoint.at_start`).
AT_START = "at start"


#: How a flow words a peer that ended its flow normally (`SessionState.peer_ended`).
PEER_ENDED_ITS_FLOW = "ended its flow"
#: The ``recv_seq`` of a retired session brought back (`Conversation.retired_session`):
#: every frame on it is a duplicate.
RETIRED_RECV_SEQ = 1 << 62


class SessionState(msgspec.Struct, gc=False):
    """One session as this flow sees it. Sequence numbers make delivery exactly-once:
    the peer's frames are accepted strictly in ``recv_seq`` order and duplicates dropped."""

    sid: str
    counterparty: Party
    initiator: bool           # True: we opened it
    protocol: str             # qualified name of the initiating class
    version: int              # the initiating flow's version
    app: str
    state: int = NEW
    send_seq: int = 0         # next sequence number we send
    recv_seq: int = 0         # next sequence number we accept from the peer
    peer_info: Optional[tuple[int, str]] = None   # (flow version, app name) of the peer
    peer_ended: Optional[str] = None              # why the peer ended, once consumed
    sent_info: bool = False   # responder: peer info sent with our first frame
    info_requested: bool = False  # initiator: asked the peer for its flow info
    # Why the peer ended, when its last message (consumed) carried its END: the next
    # receive sees the end (and it becomes ``peer_ended``), as if a separate END followed.
    peer_ending: Optional[str] = None

    def __reduce__(self) -> tuple:
        # Positional state: no field names in every stored header (disk per flow).
        return (SessionState, _session_state(self))

    @staticmethod
    def answering(sid: str, peer: Party, protocol: str, version: int, app: str) -> "SessionState":
        """The session a responder starts with: opened by ``peer``, whose flow info came
        with the initiation."""
        return SessionState(sid, peer, False, protocol, version, app, OPEN, peer_info=(version, app))

    @property
    def received(self) -> Optional[int]:
        """The peer's frames taken so far, for listings; None once the session takes no
        more (ended by this side for too much unread, or retired and brought back)."""
        return self.recv_seq if self.recv_seq < RETIRED_RECV_SEQ else None

    @property
    def role_of_peer(self) -> int:
        """Routing role of the peer's end: 1 = the peer is the responder."""
        return 1 if self.initiator else 0


class Checkpoint(msgspec.Struct, gc=False):
    flow_id: str
    flow_class: str
    status: FlowStatus = FlowStatus.RUNNABLE
    client_id: Optional[str] = None
    started_at: float = 0.0
    sessions: dict[str, SessionState] = {}
    suspension_count: int = 0
    progress_step: Optional[str] = None
    error: Optional[str] = None
    journal_len: int = 0
    pending: Optional[tuple] = None          # (kind, key, deadline) of the pending entry
    invoker_sid: Optional[str] = None        # responder: the session that started us
    timer_at: Optional[float] = None         # deadline of the flow's stored timer
    fingerprint: Optional[dict] = None       # flow classes on the stack -> code digest
    retries: int = 0                         # hospital: automatic retries so far
    retry_at: Optional[float] = None         # hospital: when the next retry is due
    seed: Optional[bytes] = None             # keys the flow's replayed randomness (replay_safe)

    def clone(self) -> "Checkpoint":
        """An independent copy (its own session states), cheaper than a pickle round
        trip."""
        cp = Checkpoint(*_checkpoint_state(self))
        cp.sessions = {sid: SessionState(*_session_state(st)) for sid, st in self.sessions.items()}
        return cp

    def at_start(self) -> "Checkpoint":
        """A new checkpoint as this flow's was when it started (`AT_START`): what a flow
        parked before its first commit goes back to. Rebuilt from what never changes
        (its id, class, client id, start time and the session that started a
        responder), so starting a flow keeps no copy of its checkpoint."""
        cp = Checkpoint(self.flow_id, self.flow_class, client_id=self.client_id,
                        started_at=self.started_at, invoker_sid=self.invoker_sid)
        st = self.sessions.get(self.invoker_sid) if self.invoker_sid is not None else None
        if st is not None:
            cp.sessions[st.sid] = SessionState.answering(st.sid, st.counterparty, st.protocol,
                                                         st.version, st.app)
        return cp

    def __reduce__(self) -> tuple:
        # Flat, builtin-only state: the C pickler writes it without calling back into
        # Python for the status enum, each SessionState and each Party (those callbacks
        # were about half the cost of pickling a header, i.e. of every commit of a flow).
        state = list(_checkpoint_state(self))
        state[_STATUS] = self.status.value
        state[_SESSIONS] = tuple(
            (st.sid, st.counterparty.name, st.counterparty.owning_key, *_session_rest(st))
            for st in self.sessions.values())
        return (_restore_checkpoint, tuple(state))


_session_state = attrgetter(*SessionState.__struct_fields__)
_session_rest = attrgetter(*SessionState.__struct_fields__[2:])
_checkpoint_state = attrgetter(*Checkpoint.__struct_fields__)
_FIELDS = list(Checkpoint.__struct_fields__)
_STATUS, _SESSIONS = _FIELDS.index("status"), _FIELDS.index("sessions")


def _restore_checkpoint(*state: object) -> Checkpoint:
    """Inverse of `Checkpoint.__reduce__`. (Headers written before it pickled as
    ``Checkpoint(*fields)`` with real objects inside; those still load as they are.)"""
    cp = Checkpoint(*state)  # type: ignore[arg-type]
    cp.status = FlowStatus(cp.status)
    if type(cp.timer_at) is bytes:   # stored as the store's timer key (8-byte µs + flow id)
        cp.timer_at = int.from_bytes(cp.timer_at[:8], "big") / 1_000_000
    cp.sessions = {row[0]: SessionState(row[0], Party(row[1], row[2]), *row[3:])  # type: ignore[index]
                   for row in cp.sessions}  # type: ignore[union-attr]
    return cp

