"""Large received payloads, stored once for the life of the flow that received them.

Replay needs every payload a flow received, so the store keeps them until the flow ends.
A small one is kept inside the journal entry of the ``receive`` it answered. A large
one (at least `ASIDE_BYTES`) is written once, as the flow's payload for its frame's
session and sequence number (`Batch.put_payload`), and never copied again:

- a frame that waits in the inbox is stored as a stub (its payload empty) plus the
  payload set aside; consuming it deletes the stub only;
- a frame consumed in the round it arrived has its payload set aside at that commit;
- the journal entry records ``(Outcome.STORED, seq)`` instead of the bytes, in the store and
  in memory, so a waiting flow does not hold what it received either.

Before, a payload that waited in the inbox was written twice (inbox, then journal) and
a resident flow kept every payload it had received in its in-memory journal. The
payloads go with the rest of the flow when it ends (`Batch.drop_flow`).
"""
from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any, Iterable

from greenflow.errors import FlowError
from greenflow.messages import Frame, encode_frame
from greenflow.runtime.journal import Kind, Outcome

if TYPE_CHECKING:
    from greenflow.runtime.journal import Entry
    from greenflow.storage.interface import Batch, FlowStore

#: Received payloads at least this large are stored aside, once; smaller ones stay inline
#: in the journal (one write per commit instead of one per payload).
ASIDE_BYTES = 64 * 1024


def _large(payload: Any) -> bool:
    return payload is not None and len(payload) >= ASIDE_BYTES


def persist_inbox_frame(b: "Batch", fid: str, frame: Frame) -> None:
    """Write an accepted, not yet consumed frame to the flow's inbox."""
    if _large(frame.payload):
        b.put_payload(fid, frame.sid, frame.seq, frame.payload)  # type: ignore[arg-type]
        stub = copy.copy(frame)
        stub.payload = b""              # never a valid encoding: "stored aside"
        b.put_inbox(fid, frame.sid, frame.seq, encode_frame(stub))
    else:
        b.put_inbox(fid, frame.sid, frame.seq, encode_frame(frame))


def restore_inbox_frame(store: "FlowStore", fid: str, frame: Frame) -> Frame:
    """An inbox frame read back from the store, with its payload if it was set aside."""
    if frame.payload == b"":
        data = store.payload(fid, frame.sid, frame.seq)
        if data is not None:
            frame.payload = data
    return frame


def set_aside(b: "Batch", store: "FlowStore", fid: str, entries: Iterable["Entry"],
              consumed: Iterable[tuple[str, int]]) -> None:
    """Before ``entries`` are written to the journal: replace each large received payload
    by a reference to its copy aside, writing that copy unless the payload waited in the
    inbox (then it is there already)."""
    waited = None
    for e in entries:
        out = e.outcome
        if e.kind != Kind.RECEIVE or out is None or out[0] != Outcome.DATA or len(out) != 3 \
                or not _large(out[1]):
            continue
        sid, seq = e.key[0], out[2]
        if waited is None:
            waited = set(consumed)
        if (sid, seq) not in waited or store.payload(fid, sid, seq) is None:
            b.put_payload(fid, sid, seq, out[1])
        e.outcome = (Outcome.STORED, seq)


def stored_payload(store: "FlowStore", fid: str, sid: str, seq: int) -> bytes:
    """A received payload set aside: what a replayed ``receive`` returns."""
    data = store.payload(fid, sid, seq)
    if data is None:
        raise FlowError(f"the payload received as message #{seq} on session {sid} of flow "
                        f"{fid} is missing from the store")
    return data
