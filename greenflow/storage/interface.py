"""The storage seam: what the node asks of its durable store, in operations, not keys.

The scheduler, the ledger's services and the read-only tools speak to a `FlowStore`
(reads) and a `Batch` (writes). Neither names a database, a key encoding or a cursor,
so one store can be swapped for another: the LMDB store (`greenflow.storage.lmdb_store`)
and a PostgreSQL store implement the same protocol and run the same contract tests
(tests/test_store_contract.py). See docs/storage.md.

A `Batch` is a plain recorder: each method appends one tuple ``(opcode, *args)`` to
``ops``. It does no I/O and builds no keys, because it is on the hot path (every
suspension of every flow writes through it). ``FlowStore.commit(batch)`` applies the
ops **in order**, in **one** transaction: all of them or none (a flow started and
ended in the same round must end dropped; a failed commit leaves the store as it was).

Opening: `greenflow.storage.open_store(node_dir, url=..., sync=, readonly=, create=)`
chooses the implementation; a PostgreSQL store is constructed as
``PostgresStore.for_node(node_dir, url, *, sync, readonly, create)`` (``node_dir`` absolute).

This module imports no database driver. The small format helpers at the bottom (journal
chunks, result records) are shared by every implementation so the bytes mean the same
everywhere.
"""
from __future__ import annotations

import pickle
import struct
from typing import Any, Iterable, Iterator, Optional, Protocol, runtime_checkable

import msgspec

from greenflow import serialization
from greenflow.errors import StoreError
from greenflow.party import Party
from greenflow.runtime.checkpoint import _FIELDS, _SESSIONS, _STATUS, Checkpoint, SessionState
from greenflow.runtime.journal import Entry
from greenflow.storage.result_format import dump_result, load_result  # noqa: F401 (re-exported)
from greenflow.storage.rows import MAX_KEY_BYTES, check_key, checked_row  # noqa: F401 (re-exported)
from greenflow.status import FlowStatus


# ---------------------------------------------------------------------------- opcodes
# Small ints, compared by an implementation's apply loop (most frequent first there).
START_FLOW = 1             # (fid, logic_blob)
PUT_HEADER = 2             # (fid, header_blob): refused + logged if no start record
PUT_HEADER_UNCHECKED = 3   # (fid, header_blob)
APPEND_JOURNAL = 4         # (fid, start_index, chunk)
PUT_SNAPSHOT = 5           # (fid, blob)
SET_WAKE = 6               # (fid, on)
DROP_FLOW = 7              # (fid, journal_len, chunks, inbox)
PUT_INBOX = 8              # (fid, sid, seq, data)
DELETE_INBOX = 9           # (fid, sid, seq)
PUT_PAYLOAD = 10           # (fid, sid, seq, data)
PUT_OUTBOX = 11            # (peer, sid, to_responder, seq, data)
DELETE_OUTBOX = 12         # (peer, sid, to_responder, seq)
PUT_ROUTE = 13             # (peer, sid, peer_role, value, expires or None)
PUT_TIMER = 14             # (deadline, fid)
DELETE_TIMER = 15          # (deadline, fid)
PUT_RESULT = 16            # (fid, record_blob, expires)
PUT_CLIENT = 17            # (client_id, fid)
EXPIRE_CLIENT = 18         # (client_id, expires)
TABLE_PUT = 19             # (table, key, value)
TABLE_DELETE = 20          # (table, key)


class Batch:
    """The writes of one group commit, as ``(opcode, *args)`` tuples in ``ops``.

    Times (``deadline``, ``expires``) are seconds since the epoch (floats); a store keeps
    at least microsecond precision. ``expires`` means: `FlowStore.expire` may delete the
    record once ``expires`` has passed."""

    __slots__ = ("ops",)

    def __init__(self) -> None:
        self.ops: list[tuple] = []

    # -- flows
    def start_flow(self, fid: str, logic_blob: bytes) -> None:
        """The flow's start object (the flow as it was at start): what replay rebuilds it from."""
        self.ops.append((START_FLOW, fid, logic_blob))

    def put_header(self, fid: str, header_blob: bytes) -> None:
        """The flow's checkpoint header, written only if its start record is in the store
        by then (committed before, or `start_flow` earlier in this batch): a header without
        it could never be restored, so the store refuses it (and logs an error). A flow
        dropped earlier in the batch is not brought back this way."""
        self.ops.append((PUT_HEADER, fid, header_blob))

    def put_header_unchecked(self, fid: str, header_blob: bytes) -> None:
        """A header edit of a flow known to exist (hospital, kill): no start-record check."""
        self.ops.append((PUT_HEADER_UNCHECKED, fid, header_blob))

    def append_journal(self, fid: str, start_index: int, chunk: bytes) -> None:
        """Journal entries from ``start_index`` on (``chunk``: `journal_chunk`). A chunk
        supersedes the overlapping tail of chunks stored at lower start indexes, and
        replaces one stored at the same start index."""
        self.ops.append((APPEND_JOURNAL, fid, start_index, chunk))

    def put_snapshot(self, fid: str, blob: bytes) -> None:
        """The flow's diagnostic stack snapshot (``serialization.dumps`` of it)."""
        self.ops.append((PUT_SNAPSHOT, fid, blob))

    def set_wake(self, fid: str, on: bool) -> None:
        """Whether a restarted node must load the flow at once (it has something to do)."""
        self.ops.append((SET_WAKE, fid, on))

    def drop_flow(self, fid: str, journal_len: int, chunks: Optional[tuple[int, ...]] = None,
                  inbox: bool = True) -> None:
        """Remove everything of an unfinished flow: header, start record, journal,
        snapshot, wake flag, inbox and payloads set aside. (Timers, routes, outbox and the
        result are separate records, written or deleted by their own ops.) Hints from a
        caller that knows what it stored, so a store need not look: ``chunks``, the start
        indexes of every journal chunk stored (None: not known); ``inbox`` False, no inbox
        row or payload was ever stored. The meaning is the same either way."""
        self.ops.append((DROP_FLOW, fid, journal_len, chunks, inbox))

    # -- inbox and payloads
    def put_inbox(self, fid: str, sid: str, seq: int, data: bytes) -> None:
        self.ops.append((PUT_INBOX, fid, sid, seq, data))

    def delete_inbox(self, fid: str, sid: str, seq: int) -> None:
        self.ops.append((DELETE_INBOX, fid, sid, seq))

    def put_payload(self, fid: str, sid: str, seq: int, data: bytes) -> None:
        """A large received payload kept for the life of the flow (see `storage.payloads`)."""
        self.ops.append((PUT_PAYLOAD, fid, sid, seq, data))

    # -- outbox
    def put_outbox(self, peer: str, sid: str, to_responder: bool, seq: int, data: bytes) -> None:
        """A frame for ``peer``, re-sent until acknowledged (`delete_outbox`)."""
        self.ops.append((PUT_OUTBOX, peer, sid, to_responder, seq, data))

    def delete_outbox(self, peer: str, sid: str, to_responder: bool, seq: int) -> None:
        self.ops.append((DELETE_OUTBOX, peer, sid, to_responder, seq))

    # -- sessions
    def put_route(self, peer: str, sid: str, peer_role: int, value: bytes,
                  expires: Optional[float] = None) -> None:
        """Where frames from ``peer`` on ``sid`` go (``peer_role`` 1: the peer is the
        responder), or a marker for a finished/refused session; ``expires`` None: kept."""
        self.ops.append((PUT_ROUTE, peer, sid, peer_role, value, expires))

    # -- timers
    def put_timer(self, deadline: float, fid: str) -> None:
        self.ops.append((PUT_TIMER, deadline, fid))

    def delete_timer(self, deadline: float, fid: str) -> None:
        self.ops.append((DELETE_TIMER, deadline, fid))

    # -- results and clients
    def put_result(self, fid: str, record_blob: bytes, expires: float) -> None:
        """A finished flow's record (``record_blob``: `dump_result`), kept until ``expires``."""
        self.ops.append((PUT_RESULT, fid, record_blob, expires))

    def put_client(self, client_id: str, fid: str) -> None:
        """The flow a client's request id started (duplicate start requests find it)."""
        self.ops.append((PUT_CLIENT, client_id, fid))

    def expire_client(self, client_id: str, expires: float) -> None:
        self.ops.append((EXPIRE_CLIENT, client_id, expires))

    # -- app tables
    def table_put(self, table: str, key: bytes, value: bytes) -> None:
        """A row of an app's table (vault, notary, limits...), opened by `FlowStore.open_table`.
        A row no store takes (`greenflow.storage.rows`) raises here, in the writer's flow."""
        if type(key) is not bytes or type(value) is not bytes or not key \
                or len(key) > MAX_KEY_BYTES or type(table) is not str or not table:
            key, value = checked_row(table, key, value)
        self.ops.append((TABLE_PUT, table, key, value))

    def table_delete(self, table: str, key: bytes) -> None:
        if type(key) is not bytes or not key or len(key) > MAX_KEY_BYTES \
                or type(table) is not str or not table:
            key, _ = checked_row(table, key)
        self.ops.append((TABLE_DELETE, table, key))

    def __bool__(self) -> bool:
        return bool(self.ops)

    def __len__(self) -> int:
        return len(self.ops)


class FlowReads(Protocol):
    """The reads of flows: checkpoints, start records, journals, snapshots (what replay,
    the console and the dumps rebuild a flow from)."""

    def checkpoint(self, fid: str) -> Optional["Checkpoint"]: ...
    def header_blob(self, fid: str) -> Optional[bytes]: ...
    def logic_blob(self, fid: str) -> Optional[bytes]: ...
    def journal(self, fid: str, length: int) -> list["Entry"]: ...
    def journal_with_times(self, fid: str, length: int) -> tuple[list["Entry"], list[Optional[float]]]: ...
    def snapshot(self, fid: str) -> Any: ...
    def checkpoints(self) -> Iterator[tuple[str, "Checkpoint"]]:
        """Every stored header, in flow id order."""
        ...
    def header_blobs(self, reverse: bool = False, after: Optional[str] = None,
                     party_wide: bool = False) -> Iterator[tuple[str, bytes]]:
        """Every stored header as ``(fid, header_blob)``, in flow id order (``reverse``:
        descending, i.e. newest first, flow ids starting with their start time): a dump
        lists an unreadable one rather than stop (`load_checkpoint` reads one).
        ``after``: only flows strictly past that id in that order, so a listing goes on
        from where its last page ended without reading the rows before. A clustered
        worker's store lists the partitions it holds; ``party_wide``, every one of them
        (what indexes of the whole party are built from)."""
        ...
    def flow_count(self) -> int: ...
    def has_flow(self, fid: str) -> bool: ...


class MessageReads(Protocol):
    """The reads of what flows send and receive, and wait on: inbox, payloads set aside,
    wake flags, outbox, session routes, timers."""

    # -- inbox, payloads, wake
    def inbox(self, fid: str) -> list[tuple[str, int, bytes]]:
        """The flow's inbox rows ``(sid, seq, data)``, by session then sequence."""
        ...
    def payload(self, fid: str, sid: str, seq: int) -> Optional[bytes]: ...
    def flows_to_wake(self) -> set[str]:
        """Flows with a wake flag or with inbox rows (what a restart loads)."""
        ...

    # -- outbox, routes, timers
    def outbox(self, peer: Optional[str] = None) -> Iterator[tuple[str, bytes]]:
        """Committed, unacknowledged frames ``(peer, data)`` of one peer or all, per peer
        in (session id, to_responder, seq) order; read in short transactions, so a long
        outbox does not pin a snapshot."""
        ...
    def route(self, peer: str, sid: str, peer_role: int) -> Optional[bytes]: ...
    def timers(self) -> Iterator[tuple[float, str]]:
        """``(deadline, fid)`` of every stored timer, earliest first."""
        ...


class ResultReads(Protocol):
    """The reads of finished flows' records and of the client ids that started flows."""

    def result(self, fid: str) -> Optional[dict]: ...
    def results(self) -> Iterator[tuple[str, dict]]:
        """Every kept result record, in flow id order."""
        ...
    def result_blobs(self, reverse: bool = False, after: Optional[str] = None
                     ) -> Iterator[tuple[str, bytes]]:
        """Every kept result as ``(fid, record_blob)`` (`load_result` reads one), in flow
        id order or ``reverse``; ``after`` as for `header_blobs`."""
        ...
    def client(self, client_id: str) -> Optional[str]: ...


class TableStore(Protocol):
    """The apps' tables (vault, notary, limits...): rows ordered by key, compared as
    unsigned bytes; written through `Batch.table_put` / `Batch.table_delete`."""

    def open_table(self, name: str) -> None:
        """Create the table if needed, so batches may write it (a writable store only;
        a read-only store opens what exists, reads of a table never created are empty)."""
        ...
    def has_table(self, name: str) -> bool:
        """Whether batches may write ``name`` (`open_table` opened it on this store)."""
        ...
    def table_get(self, name: str, key: bytes) -> Optional[bytes]: ...
    def table_items(self, name: str, prefix: bytes = b"", *, after: Optional[bytes] = None,
                    reverse: bool = False) -> Iterator[tuple[bytes, bytes]]:
        """Rows whose key starts with ``prefix``, in key order (``reverse``: descending);
        ``after``: only keys strictly past it in that order."""
        ...
    def table_count(self, name: str) -> int: ...


@runtime_checkable
class FlowStore(FlowReads, MessageReads, ResultReads, TableStore, Protocol):
    """A node's durable store. One writer (the node's scheduler thread); reads may come
    from other threads (RPC, console, transport) and see committed data only. The reads
    are grouped by concern in the protocols it combines (`FlowReads`, `MessageReads`,
    `ResultReads`, `TableStore`); everything names the whole, `FlowStore`.

    Errors: a failed commit raises `StoreError` naming ``path`` (nothing of the batch is
    applied); opening a missing or foreign store raises `StoreMissing` / `StoreError`."""

    path: str          # what to name in errors and logs
    readonly: bool
    commits: int       # commits done by this object (readers use it to prune caches)

    # -- lifecycle
    def commit(self, batch: Batch) -> None: ...
    def close(self) -> None: ...
    def expire(self, before: float, limit: int = 10_000) -> int:
        """Delete results, routes and client ids whose ``expires`` is before ``before``
        (at most ``limit``, earliest first); how many were deleted."""
        ...

    # -- meta
    def meta(self, name: str) -> Optional[bytes]: ...

    # Optional (found with getattr): ``bytes_used() -> int``, the store's size for metrics.


# ---------------------------------------------------------------------------- formats
# A journal chunk is b"T" + the commit's time (8-byte float) + the entries (tag b"J":
# `journal.encode_entries`; b"P"/b"D": pickled Entry objects, as stored before), so the
# console can say when each entry was committed. Chunks written before that start with
# serialization's own tag (never b"T") and read as before.
_TIMED = b"T"
_TIME = struct.Struct(">d")


def journal_chunk(at: float, blob: bytes) -> bytes:
    """The stored form of one commit's journal chunk (``blob``: `serialization.dumps`)."""
    return _TIMED + _TIME.pack(at) + blob


def assemble_journal(fid: str, chunks: Iterable[tuple[int, bytes]], length: int
                     ) -> tuple[list["Entry"], list[Optional[float]]]:
    """The journal from its chunks ``(start_index, chunk)`` in start order: a later chunk
    supersedes the overlapping tail of an earlier one. Shared by every store, so they agree."""
    out: list[Any] = []
    times: list[Optional[float]] = []
    for start, v in chunks:
        if start > len(out):
            raise StoreError(f"journal of flow {fid} has a gap before entry {start}")
        del out[start:]
        del times[start:]
        at: Optional[float] = None
        if v[:1] == _TIMED:
            at = _TIME.unpack_from(v, 1)[0]
            v = v[1 + _TIME.size:]
        entries = serialization.loads(v)
        out.extend(entries)
        times.extend([at] * len(entries))
    if len(out) < length:
        raise StoreError(f"journal of flow {fid} has {len(out)} entries, its checkpoint "
                         f"says {length}")
    return out[:length], times[:length]


def load_checkpoint(blob: bytes) -> "Checkpoint":
    return serialization.loads(blob)


# Result records (`dump_result`, `load_result`): `greenflow.storage.result_format`.


# ------------------------------------------------------------------ typed header format
# Headers and journal chunks in typed forms, each behind its own tag byte so what was
# stored before (pickles, tags P and D) still loads through `serialization.loads`. Here
# rather than beside the classes: the state machine's pure transitions import those,
# and must not import the serializer (dill).
HEADER_TAG = b"H"   # version 1: msgpack array of the fields, in `Checkpoint` field order
_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder().decode
_astuple = msgspec.structs.astuple
_ATOMS = serialization.ATOMS
_PEER_INFO = 10     # index of peer_info in a stored session row (sid, name, key, ...)
_PENDING = _FIELDS.index("pending")


def encode_header(cp: Checkpoint) -> bytes:
    """The stored form of ``cp``. msgpack has one array type, so tuples come back as
    lists; the decoder restores the few tuple fields. A pending key holding anything but
    flat atoms (never seen from the runtime's own requests) falls back to the pickle."""
    pend = cp.pending
    if pend is not None:
        for x in pend[1]:   # a loop, not all() over a generator: once per suspension
            if type(x) not in _ATOMS:
                return serialization.dumps(cp)
    # `astuple` reads a struct's fields in C (~3x cheaper than an attrgetter of them).
    # The status stays the enum: msgspec writes a str enum as its value, the same bytes.
    state = list(_astuple(cp))
    if type(cp.status) is not FlowStatus:
        state[_STATUS] = FlowStatus(cp.status).value
    rows = []
    for st in cp.sessions.values():
        row = list(_astuple(st))
        party = row[1]
        row[1:2] = (party.name, party.owning_key)
        rows.append(row)
    state[_SESSIONS] = rows
    try:
        return HEADER_TAG + _encode(state)
    # An int past 64 bits; a str with a lone surrogate (e.g. a client id sent as a JSON
    # escape: UnicodeEncodeError, a ValueError), which the pickle keeps.
    except (TypeError, ValueError, OverflowError, msgspec.EncodeError):
        return serialization.dumps(cp)


def _decode_header(body: Any) -> Checkpoint:
    state = _decode(body)
    state[_STATUS] = FlowStatus(state[_STATUS])
    sessions = {}
    for row in state[_SESSIONS]:
        if row[_PEER_INFO] is not None:
            row[_PEER_INFO] = tuple(row[_PEER_INFO])
        sessions[row[0]] = SessionState(row[0], Party(row[1], row[2]), *row[3:])
    state[_SESSIONS] = sessions
    pend = state[_PENDING]
    if pend is not None:
        state[_PENDING] = (pend[0], tuple(pend[1]), pend[2])
    return Checkpoint(*state)


serialization.register_format(HEADER_TAG, _decode_header)


# ------------------------------------------------------------------ stored chunks
ENTRIES_TAG = b"J"   # a C pickle of the entries' state tuples, not of Entry objects


def encode_entries(entries: list[Entry]) -> bytes:
    """The stored form of a journal chunk: each entry as its plain state tuple, so the C
    pickler never calls back into Python per entry (about 3x cheaper than pickling the
    entries, and smaller). What the C pickler refuses (an outcome only dill can write)
    falls back to `serialization.dumps` of the entries, read back the same way."""
    try:
        return ENTRIES_TAG + pickle.dumps(
            [(e.kind, e.key, e.outcome, e.deadline) if e.sent is None
             else (e.kind, e.key, e.outcome, e.deadline, e.sent) for e in entries], 5)
    except Exception:  # noqa: BLE001 - pickle raises PicklingError, TypeError, ...
        return serialization.dumps(entries)


def _decode_entries(body: Any) -> list[Entry]:
    out = []
    for state in serialization.unpickle(body):
        e = Entry.__new__(Entry)
        e.__setstate__(state)
        out.append(e)
    return out


serialization.register_format(ENTRIES_TAG, _decode_entries)
