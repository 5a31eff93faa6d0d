"""The LMDB store's writes: applying one `Batch` (a scheduler round's group commit) in the
write transaction `LmdbStore.commit` opens, operation by operation. Kept apart from the
store's environment handling and its readers; this loop is the per-commit hot path."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional

from greenflow.errors import StoreError
from greenflow.storage import interface as op
from greenflow.storage.interface import Batch
from greenflow.storage.lmdb_keys import (_U32, EXPIRY_BYTES, EXPIRY_GROUP, _encode_entries,
                                         _inbox_key, _micros, _timer_key, expiry_entries)

if TYPE_CHECKING:
    from greenflow.storage.lmdb_store import LmdbStore


class LmdbWriter:
    """Applies batches to one `LmdbStore`'s databases. ``refused`` lists the flows whose
    header the last batch could not write (see `Batch.put_header`)."""

    def __init__(self, store: "LmdbStore") -> None:
        self.store = store
        self.db: dict[str, Any] = store.db
        self.tables: dict[str, Any] = store.tables
        self.refused: list[str] = []

    def apply(self, txn: Any, batch: Batch) -> None:
        """Write ``batch``'s operations in ``txn``, the commit's one write transaction."""
        db = self.db
        delete = txn.delete
        pack32 = _U32.pack
        d_flows, d_logic, d_journal = db["flows"], db["logic"], db["journal"]
        d_frames, d_wake, d_outbox = db["frames"], db["wake"], db["outbox"]
        d_results, d_sessions = db["results"], db["sessions"]
        # Puts go through one cursor per database: ~25% cheaper per write than
        # ``txn.put`` (no database argument to check on every call); a put through a
        # cursor searches from the root like any other (no position is relied upon).
        cur = txn.cursor
        p_outbox, p_wake, p_flows = (cur(d_outbox).put, cur(d_wake).put, cur(d_flows).put)
        p_journal, p_frames, p_results = (cur(d_journal).put, cur(d_frames).put,
                                          cur(d_results).put)
        c_logic = cur(d_logic)
        p_logic, has_logic = c_logic.put, c_logic.set_key   # set_key: no copy of the value
        OUT, UNOUT, WAKE, HEADER, JOURNAL, SNAPSHOT, START, RESULT, ROUTE, DROP = (
            op.PUT_OUTBOX, op.DELETE_OUTBOX, op.SET_WAKE, op.PUT_HEADER, op.APPEND_JOURNAL,
            op.PUT_SNAPSHOT, op.START_FLOW, op.PUT_RESULT, op.PUT_ROUTE, op.DROP_FLOW)
        # What expires, by when: written once per distinct time at the end (`_put_expiry`).
        expiring: dict[float, list[bytes]] = {}
        # Routes, by key, written at the end: a responder that starts and ends within one
        # round has its route replaced by the finished marker in the same batch, and the
        # first write need not reach the database (nothing else in a batch reads them).
        routes: dict[bytes, bytes] = {}
        # Flows whose start record this batch writes: their headers need no read to
        # check it (a drop later in the batch takes the flow out again).
        started: set[str] = set()
        # In the order of how often a commit carries them (ping-pong, per flow: 3 outbox
        # puts and as many deletes, 2 wake flags, headers, routes and results, a start, a
        # journal chunk, a snapshot and a drop). Keys are built inline: a call per op is
        # measurable here.
        # An outbox key: peer NUL sid NUL to_responder (0/1) NUL seq (big-endian u32).
        # Deletes (and the rarer writes) pass positional arguments (value, db): the C
        # binding parses them ~25% faster than keywords.
        for o in batch.ops:
            c = o[0]
            if c == OUT:
                p_outbox((o[1] + "\0" + o[2] + ("\x001\0" if o[3] else "\x000\0")).encode()
                         + pack32(o[4]), o[5])
            elif c == UNOUT:
                delete((o[1] + "\0" + o[2] + ("\x001\0" if o[3] else "\x000\0")).encode()
                       + pack32(o[4]), b"", d_outbox)
            elif c == WAKE:
                if o[2]:
                    p_wake(o[1].encode(), b"")
                else:
                    delete(o[1].encode(), b"", d_wake)
            elif c == HEADER:
                k = o[1].encode()
                if o[1] in started or has_logic(k):
                    p_flows(k, o[2])
                else:
                    self.refused.append(o[1])
            elif c == RESULT:
                k = o[1].encode()
                p_results(k, o[2])
                expiring.setdefault(o[3], []).append(b"results\0" + k)
            elif c == ROUTE:
                k = b"%s\0%s\0%d" % (o[1].encode(), o[2].encode(), o[3])
                routes[k] = o[4]
                if o[5] is not None:
                    expiring.setdefault(o[5], []).append(b"sessions\0" + k)
            elif c == JOURNAL:
                p_journal(o[1].encode() + pack32(o[2]), o[3])
            elif c == SNAPSHOT:
                p_frames(o[1].encode(), o[2])
            elif c == START:
                p_logic(o[1].encode(), o[2])
                started.add(o[1])
            elif c == DROP:
                started.discard(o[1])
                k = o[1].encode()
                delete(k, b"", d_flows)
                delete(k, b"", d_logic)
                delete(k, b"", d_frames)
                delete(k, b"", d_wake)
                if o[3] is not None and not o[4]:   # the usual hints: chunks known, no inbox
                    for start in o[3]:
                        delete(k + pack32(start), b"", d_journal)
                else:
                    self.drop_rest(txn, k, o[3], o[4])
            elif c == op.EXPIRE_CLIENT:
                expiring.setdefault(o[2], []).append(b"clients\0" + o[1].encode())
            else:
                self.apply_rare(txn, o)
        if routes:
            p_sessions = cur(d_sessions).put
            for k, v in routes.items():
                p_sessions(k, v)
        if expiring:
            self.put_expiry(txn, expiring)

    def put_expiry(self, txn: Any, expiring: dict[float, list[bytes]]) -> None:
        """One expiry record per distinct time of a batch and per `EXPIRY_BYTES` of its
        entries (the records of the flows a round ends share theirs), not one per record:
        its key is the time and the first entry (``db NUL key``), its value the other
        entries (`expiry_entries`), small enough to stay on its page (a value spilling
        onto overflow pages costs a search of LMDB's free list on every write). Where a
        record of that key exists already (the same entry due at the same time, written
        by an earlier batch), the two are merged."""
        d_expiry = self.db["expiry"]
        for when, entries in expiring.items():
            micros = _micros(when)
            i, n = 0, len(entries)
            while i < n:
                first = entries[i]
                j, size = i + 1, len(first)
                while j < n and size < EXPIRY_BYTES and j - i < EXPIRY_GROUP:
                    size += len(entries[j]) + 3
                    j += 1
                key = micros + first
                value = _encode_entries(entries[i + 1:j]) if j > i + 1 else b""
                if not txn.put(key, value, True, False, False, d_expiry):
                    merged = set(expiry_entries(key, txn.get(key, None, d_expiry)))
                    merged.update(entries[i:j])
                    merged.discard(first)
                    txn.put(key, _encode_entries(sorted(merged)), True, True, False, d_expiry)
                i = j

    def apply_rare(self, txn: Any, o: tuple) -> None:
        c = o[0]
        db = self.db
        if c == op.TABLE_PUT:
            txn.put(o[2], o[3], True, True, False, self.writable_table(o[1]))
        elif c == op.TABLE_DELETE:
            txn.delete(o[2], b"", self.writable_table(o[1]))
        elif c == op.PUT_INBOX:
            txn.put(_inbox_key(o[1], o[2], o[3]), o[4], True, True, False, db["inbox"])
        elif c == op.DELETE_INBOX:
            txn.delete(_inbox_key(o[1], o[2], o[3]), b"", db["inbox"])
        elif c == op.PUT_TIMER:
            txn.put(_timer_key(o[1], o[2]), b"", True, True, False, db["timers"])
        elif c == op.DELETE_TIMER:
            txn.delete(_timer_key(o[1], o[2]), b"", db["timers"])
        elif c == op.PUT_PAYLOAD:
            txn.put(_inbox_key(o[1], o[2], o[3]), o[4], True, True, False, db["payloads"])
        elif c == op.PUT_HEADER_UNCHECKED:
            txn.put(o[1].encode(), o[2], True, True, False, db["flows"])
        elif c == op.PUT_CLIENT:
            txn.put(o[1].encode(), o[2].encode(), True, True, False, db["clients"])
        else:
            raise StoreError(f"store {self.store.path}: unknown batch operation {o[0]!r}; "
                             "please file a bug")

    def writable_table(self, name: str) -> Any:
        handle = self.tables.get(name)
        if handle is None:
            raise StoreError(f"store {self.store.path}: table {name!r} is not open (open_table "
                             "first); nothing of this batch was written")
        return handle

    def drop_rest(self, txn: Any, k: bytes, chunks: Optional[tuple[int, ...]],
                  inbox: bool) -> None:
        """A dropped flow's journal, inbox and payloads (its header, start record,
        snapshot and wake flag are deleted by `apply` itself)."""
        # What the caller knows it stored is deleted by key; the rest found by a scan.
        if chunks is None:
            self.delete_prefix(txn, "journal", k, len(k) + 4)
        else:
            d_journal = self.db["journal"]
            for start in chunks:
                txn.delete(k + _U32.pack(start), b"", d_journal)
        if inbox:
            self.delete_prefix(txn, "inbox", k + b"\0")
            self.delete_prefix(txn, "payloads", k + b"\0")

    def delete_prefix(self, txn: Any, name: str, prefix: bytes, exact_len: int = 0) -> None:
        cur = txn.cursor(db=self.db[name])
        if cur.set_range(prefix):
            while True:
                k = cur.key()
                if not k.startswith(prefix):
                    break
                if exact_len and len(k) != exact_len:
                    # Another flow's journal whose id extends this one's ("f" and "f1").
                    if not cur.next():
                        break
                    continue
                if not cur.delete():
                    break
