"""The LMDB implementation of `greenflow.storage.interface.FlowStore`: one LMDB
environment, one named database per concept. The keys below are private to this module.

| database   | key                               | value                                  |
|------------|-----------------------------------|----------------------------------------|
| flows      | flow id                           | `Checkpoint` header (C pickle)         |
| logic      | flow id                           | the flow object as it was at start     |
| journal    | flow id + first index (4 bytes)   | a chunk: the entries one commit added  |
| frames     | flow id                           | diagnostic stack snapshot              |
| inbox      | flow id \\0 session \\0 seq         | accepted frame not yet consumed        |
| payloads   | flow id \\0 session \\0 seq         | a large received payload (`payloads`)  |
| outbox     | peer \\0 session \\0 role \\0 seq     | frame not yet acknowledged by the peer |
| sessions   | peer \\0 session \\0 role             | flow id (routing + duplicate initiations)|
| timers     | deadline (µs, 8 bytes) + flow id  | b""                                    |
| wake       | flow id                           | b"" : flows to run at restart          |
| results    | flow id                           | finished flow's result record          |
| expiry     | time (µs) + db name \0 key        | b"" : what to delete after retention   |
| clients    | client id                         | flow id                                |
| meta       | name                              | value                                  |

App tables (`open_table`) are further named databases: the table name, its keys as given.
All writes of a scheduler round go through one `Batch` and one synced transaction
(group commit). The map grows by itself when it fills.
"""
from __future__ import annotations

import logging
import os
import struct
from typing import Any, Iterator, Optional

import lmdb

from greenflow import serialization
from greenflow.runtime.checkpoint import Checkpoint
from greenflow.storage import store_guard
from greenflow.errors import StoreError, StoreMissing
from greenflow.runtime.journal import Entry
from greenflow.storage import interface as op
from greenflow.storage.interface import (Batch, assemble_journal, dump_result, journal_chunk,
                                         load_result)
from greenflow.storage.page_trim import DEFAULT_BUDGET, MapTrimmer

__all__ = ["LmdbStore", "Store", "Batch", "journal_chunk", "dump_result", "load_result"]

log = logging.getLogger("greenflow.store")

_DBS = ("flows", "logic", "journal", "frames", "inbox", "outbox", "sessions", "timers", "expiry",
        "wake", "results", "clients", "meta", "payloads")
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")
INITIAL_MAP = 64 * 1024 * 1024


def _fid_key(fid: str) -> bytes:
    return fid.encode()


def _journal_key(fid: str, idx: int) -> bytes:
    return fid.encode() + _U32.pack(idx)


def _inbox_key(fid: str, sid: str, seq: int) -> bytes:
    return b"%s\0%s\0%s" % (fid.encode(), sid.encode(), _U32.pack(seq))


def _session_key(peer: str, sid: str, peer_role: int) -> bytes:
    """Routing key for frames arriving from ``peer`` on ``sid`` for our end, where
    ``peer_role`` is 1 when the peer is the responder (we initiated)."""
    return b"%s\0%s\0%d" % (peer.encode(), sid.encode(), peer_role)


def _outbox_key(peer: str, sid: str, to_responder: bool, seq: int) -> bytes:
    # (Built inline in LmdbStore._apply, the hot path; kept here as the format's statement.)
    return b"%s\0%s\0%d\0%s" % (peer.encode(), sid.encode(), int(to_responder), _U32.pack(seq))


def _micros(t: float) -> bytes:
    return _U64.pack(max(0, round(t * 1_000_000)))


def _timer_key(deadline: Any, fid: str) -> bytes:
    if type(deadline) is bytes:   # a header written before timers were kept by deadline
        return deadline
    return _micros(deadline) + fid.encode()


def _expiry_key(when: float, db: str, key: bytes) -> bytes:
    return _micros(when) + db.encode() + b"\0" + key


def _parse_timer_key(key: bytes) -> tuple[float, str]:
    return _U64.unpack(key[:8])[0] / 1_000_000, key[8:].decode()


def _successor(prefix: bytes) -> Optional[bytes]:
    """The least key greater than every key starting with ``prefix`` (None: no bound)."""
    p = prefix.rstrip(b"\xff")
    if not p:
        return None
    return p[:-1] + bytes((p[-1] + 1,))


class LmdbStore:
    """The node's LMDB environment, a `FlowStore`.

    ``create=False`` refuses to make a new store where none is (`StoreMissing`): an
    initialised node that lost its store must not start afresh (see
    `greenflow.storage.store_guard` for every check made at open). A writable store holds an
    OS lock for as long as it is open (`StoreLocked` for a second opener)."""

    def __init__(self, path: str, *, sync: bool = True, readonly: bool = False,
                 create: bool = True) -> None:
        self.path = path
        self.readonly = readonly
        existed = store_guard.present(path)
        if readonly and not existed:
            raise StoreMissing(f"no node store at {path}")
        if not existed and not create:
            raise store_guard.missing(path)
        self._lock: Optional[store_guard.StoreLock] = None
        if not readonly:
            os.makedirs(path, exist_ok=True)
            self._lock = store_guard.StoreLock(path)
        try:
            self._open(path, sync, readonly, existed)
        except BaseException:
            if getattr(self, "env", None) is not None:
                self.env.close()
            if self._lock is not None:
                self._lock.release()
            raise
        self.commits = 0
        self._refused: list[str] = []   # headers a commit refused (see Batch.put_header)
        # Keeps the pages of the map this node touched from piling up in its RSS.
        self.trimmer = MapTrimmer(os.path.join(path, "data.mdb"),
                                  None if readonly else DEFAULT_BUDGET)

    def _open(self, path: str, sync: bool, readonly: bool, existed: bool) -> None:
        self.env = None
        if existed:
            store_guard.check_file(path)   # before LMDB maps it: no SIGBUS on a short file
        try:
            self.env = lmdb.open(path, map_size=INITIAL_MAP, max_dbs=len(_DBS) + 32,
                                 sync=sync, metasync=sync, readahead=False, lock=True,
                                 readonly=readonly)
        except lmdb.Error as exc:
            if existed:
                raise store_guard.corrupt(path, exc) from exc
            raise StoreError(f"cannot open the node store at {path}: {exc}") from exc
        try:
            if not readonly and self.env.info()["map_size"] < INITIAL_MAP:
                self.env.set_mapsize(INITIAL_MAP)
            self.db: dict[str, Any] = {}
            for name in _DBS:
                try:
                    self.db[name] = self.env.open_db(name.encode(), create=not readonly)
                except lmdb.NotFoundError:
                    # Read-only view of an older store: an empty stand-in keeps reads simple.
                    self.db[name] = None
            if self.db["meta"] is not None:
                store_guard.check_format(self.env, self.db["meta"], path, readonly=readonly)
        except (lmdb.Error, UnicodeDecodeError, ValueError, OverflowError) as exc:
            raise store_guard.corrupt(path, exc) from exc
        self.tables: dict[str, Any] = {}   # app tables opened (named databases)

    def close(self) -> None:
        self.env.close()
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    # ------------------------------------------------------------------ app tables
    def open_table(self, name: str) -> None:
        """Open (creating if needed) an app's table, e.g. the vault's. Its writes go
        through the same batches, so they commit with flow checkpoints."""
        if name in self.tables:
            return
        if not isinstance(name, str) or not name or "\0" in name:
            raise ValueError(f"bad table name {name!r}")
        if name in _DBS:
            raise ValueError(f"table name {name!r} is taken by the store itself")
        try:
            self.tables[name] = self.env.open_db(name.encode(), create=not self.readonly)
        except lmdb.NotFoundError:
            self.tables[name] = None   # read-only, never created: reads are empty
        except lmdb.Error as exc:
            raise StoreError(f"store {self.path}: cannot open table {name!r}: {exc}") from exc

    def _table(self, name: str) -> Any:
        try:
            return self.tables[name]
        except KeyError:
            pass
        if self.readonly:
            self.open_table(name)
            return self.tables[name]
        return None   # never opened here: nothing of it can have been read

    # ------------------------------------------------------------------ writes
    def commit(self, batch: Batch) -> None:
        """Apply ``batch`` in one synced write transaction, growing the map as needed."""
        if self.readonly:
            raise StoreError(f"store {self.path} is open read-only: nothing can be committed")
        for attempt in range(12):
            try:
                self._refused = []
                with self.env.begin(write=True) as txn:
                    self._apply(txn, batch)
                self.commits += 1
                for fid in self._refused:
                    log.error("store %s: refused the checkpoint header of flow %s: its start "
                              "record is not in the store (the flow ended or never started); "
                              "please file a bug", self.path, fid)
                self.trimmer.after_commit()
                return
            except lmdb.MapFullError:
                new_size = self.env.info()["map_size"] * 2
                log.info("store %s: map full, growing to %d MiB", self.path, new_size >> 20)
                try:
                    self.env.set_mapsize(new_size)
                except lmdb.Error as exc:
                    raise StoreError(store_guard.commit_failure(self.path, exc)) from exc
            except lmdb.Error as exc:
                raise StoreError(store_guard.commit_failure(self.path, exc)) from exc
        raise StoreError(store_guard.commit_failure(
            self.path, StoreError("the map could not grow enough for one commit")))

    def _apply(self, txn: Any, batch: Batch) -> None:
        db = self.db
        put, delete, get = txn.put, txn.delete, txn.get
        pack32 = _U32.pack
        d_flows, d_logic, d_journal, d_frames = db["flows"], db["logic"], db["journal"], db["frames"]
        d_wake, d_outbox = db["wake"], db["outbox"]
        OUT, UNOUT, WAKE, HEADER, JOURNAL, SNAPSHOT, START = (
            op.PUT_OUTBOX, op.DELETE_OUTBOX, op.SET_WAKE, op.PUT_HEADER, op.APPEND_JOURNAL,
            op.PUT_SNAPSHOT, op.START_FLOW)
        # In the order of how often a commit carries them (ping-pong, per flow: 9 outbox
        # puts and as many deletes, 6 wake flags and headers, 5 journal chunks and
        # snapshots, 2 starts). Keys are built inline: a call per op is measurable here.
        # Positional arguments (dupdata, overwrite, append, db): the C binding parses
        # them ~25% faster than the keyword, on every write of every commit.
        for o in batch.ops:
            c = o[0]
            if c == OUT:
                put(b"%s\0%s\0%d\0%s" % (o[1].encode(), o[2].encode(), o[3], pack32(o[4])),
                    o[5], True, True, False, d_outbox)
            elif c == UNOUT:
                delete(b"%s\0%s\0%d\0%s" % (o[1].encode(), o[2].encode(), o[3], pack32(o[4])),
                       b"", d_outbox)
            elif c == WAKE:
                if o[2]:
                    put(o[1].encode(), b"", True, True, False, d_wake)
                else:
                    delete(o[1].encode(), b"", d_wake)
            elif c == HEADER:
                k = o[1].encode()
                if get(k, None, d_logic) is None:
                    self._refused.append(o[1])
                else:
                    put(k, o[2], True, True, False, d_flows)
            elif c == JOURNAL:
                put(o[1].encode() + pack32(o[2]), o[3], True, True, False, d_journal)
            elif c == SNAPSHOT:
                put(o[1].encode(), o[2], True, True, False, d_frames)
            elif c == START:
                put(o[1].encode(), o[2], True, True, False, d_logic)
            else:
                self._apply_rare(txn, o)

    def _apply_rare(self, txn: Any, o: tuple) -> None:
        c = o[0]
        db = self.db
        if c == op.PUT_ROUTE:
            key = _session_key(o[1], o[2], o[3])
            txn.put(key, o[4], True, True, False, db["sessions"])
            if o[5] is not None:
                txn.put(_expiry_key(o[5], "sessions", key), b"", True, True, False, db["expiry"])
        elif c == op.DROP_FLOW:
            self._drop_flow(txn, o[1])
        elif c == op.PUT_RESULT:
            key = o[1].encode()
            txn.put(key, o[2], True, True, False, db["results"])
            txn.put(_expiry_key(o[3], "results", key), b"", True, True, False, db["expiry"])
        elif c == op.TABLE_PUT:
            txn.put(o[2], o[3], True, True, False, self._writable_table(o[1]))
        elif c == op.TABLE_DELETE:
            txn.delete(o[2], b"", self._writable_table(o[1]))
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
        elif c == op.EXPIRE_CLIENT:
            txn.put(_expiry_key(o[2], "clients", o[1].encode()), b"", True, True, False,
                    db["expiry"])
        else:
            raise StoreError(f"store {self.path}: unknown batch operation {o[0]!r}; "
                             "please file a bug")

    def _writable_table(self, name: str) -> Any:
        handle = self.tables.get(name)
        if handle is None:
            raise StoreError(f"store {self.path}: table {name!r} is not open (open_table "
                             "first); nothing of this batch was written")
        return handle

    def _drop_flow(self, txn: Any, fid: str) -> None:
        db = self.db
        k = _fid_key(fid)
        for name in ("flows", "logic", "frames", "wake"):
            txn.delete(k, db=db[name])
        self._delete_prefix(txn, "journal", k, len(k) + 4)
        self._delete_prefix(txn, "inbox", k + b"\0")
        self._delete_prefix(txn, "payloads", k + b"\0")

    def _delete_prefix(self, txn: Any, name: str, prefix: bytes, exact_len: int = 0) -> None:
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

    # ------------------------------------------------------------------ reads
    def _get(self, name: str, key: bytes) -> Optional[bytes]:
        handle = self.db[name]
        if handle is None:
            return None
        with self.env.begin(db=handle) as txn:
            return txn.get(key)

    def _items(self, handle: Any, prefix: bytes = b"", reverse: bool = False
               ) -> Iterator[tuple[bytes, bytes]]:
        if handle is None:
            return
        with self.env.begin(db=handle) as txn:
            cur = txn.cursor()
            if reverse:   # whole database only
                for k, v in cur.iterprev():
                    yield bytes(k), bytes(v)
                return
            if not cur.set_range(prefix):
                return
            for k, v in cur:
                if not k.startswith(prefix):
                    break
                yield bytes(k), bytes(v)

    # -- flows
    def checkpoint(self, fid: str) -> Optional[Checkpoint]:
        raw = self._get("flows", _fid_key(fid))
        return serialization.loads(raw) if raw is not None else None

    def header_blob(self, fid: str) -> Optional[bytes]:
        return self._get("flows", _fid_key(fid))

    def logic_blob(self, fid: str) -> Optional[bytes]:
        return self._get("logic", _fid_key(fid))

    def has_flow(self, fid: str) -> bool:
        return self._get("flows", _fid_key(fid)) is not None

    def journal(self, fid: str, length: int) -> list[Entry]:
        """The flow's journal. Each commit wrote one chunk starting at the flow's pending
        entry; a later chunk supersedes the overlapping tail of an earlier one."""
        return self.journal_with_times(fid, length)[0]

    def journal_with_times(self, fid: str, length: int) -> tuple[list[Entry], list[Optional[float]]]:
        """The journal, and for each entry the time of the commit that stored it (None
        for entries stored before chunks carried a time)."""
        prefix = _fid_key(fid)
        n = len(prefix)
        chunks = []
        for k, v in self._items(self.db["journal"], prefix):
            if len(k) != n + 4:
                continue   # another flow whose id extends this one's
            chunks.append((_U32.unpack(k[n:])[0], v))
        return assemble_journal(fid, chunks, length)

    def snapshot(self, fid: str) -> Any:
        raw = self._get("frames", _fid_key(fid))
        return serialization.loads(raw) if raw is not None else None

    def header_blobs(self, reverse: bool = False) -> Iterator[tuple[str, bytes]]:
        for k, raw in self._items(self.db["flows"], reverse=reverse):
            yield k.decode(), raw

    def checkpoints(self) -> Iterator[tuple[str, Checkpoint]]:
        for fid, raw in self.header_blobs():
            yield fid, serialization.loads(raw)

    def flow_count(self) -> int:
        return self._count(self.db["flows"])

    def _count(self, handle: Any) -> int:
        if handle is None:
            return 0
        with self.env.begin(db=handle) as txn:
            return txn.stat(handle)["entries"]

    # -- inbox, payloads, wake
    def inbox(self, fid: str) -> list[tuple[str, int, bytes]]:
        out = []
        for k, v in self._items(self.db["inbox"], _fid_key(fid) + b"\0"):
            _, sid, seq = k.split(b"\0", 2)
            out.append((sid.decode(), _U32.unpack(seq)[0], v))
        return out

    def payload(self, fid: str, sid: str, seq: int) -> Optional[bytes]:
        raw = self._get("payloads", _inbox_key(fid, sid, seq))
        return bytes(raw) if raw is not None else None

    def flows_to_wake(self) -> set[str]:
        wake = {k.decode() for k, _ in self._items(self.db["wake"])}
        wake.update(k.split(b"\0", 1)[0].decode() for k, _ in self._items(self.db["inbox"]))
        return wake

    # -- outbox, routes, timers
    def outbox(self, peer: Optional[str] = None) -> Iterator[tuple[str, bytes]]:
        """Committed frames not yet acknowledged, in key order (by peer, session, then
        sequence), read in a short read transaction per batch of rows."""
        handle = self.db["outbox"]
        if handle is None:
            return
        prefix = peer.encode() + b"\0" if peer is not None else b""
        after: Optional[bytes] = None
        while True:
            rows: list[tuple[bytes, bytes]] = []
            with self.env.begin(db=handle) as txn:
                cur = txn.cursor()
                if not cur.set_range(after if after is not None else prefix):
                    return
                for k, v in cur:
                    if not k.startswith(prefix):
                        break
                    if k == after:
                        continue
                    rows.append((bytes(k), bytes(v)))
                    if len(rows) >= 256:
                        break
            if not rows:
                return
            for k, v in rows:
                yield (peer if peer is not None else k.split(b"\0", 1)[0].decode()), v
            after = rows[-1][0]

    def route(self, peer: str, sid: str, peer_role: int) -> Optional[bytes]:
        raw = self._get("sessions", _session_key(peer, sid, peer_role))
        return bytes(raw) if raw is not None else None

    def timers(self) -> Iterator[tuple[float, str]]:
        for k, _ in self._items(self.db["timers"]):
            yield _parse_timer_key(k)

    # -- results and clients
    def result(self, fid: str) -> Optional[dict]:
        raw = self._get("results", _fid_key(fid))
        return load_result(raw) if raw is not None else None

    def results(self) -> Iterator[tuple[str, dict]]:
        for fid, raw in self.result_blobs():
            yield fid, load_result(raw)

    def result_blobs(self, reverse: bool = False) -> Iterator[tuple[str, bytes]]:
        for k, raw in self._items(self.db["results"], reverse=reverse):
            yield k.decode(), raw

    def client(self, client_id: str) -> Optional[str]:
        raw = self._get("clients", client_id.encode())
        return bytes(raw).decode() if raw is not None else None

    def meta(self, name: str) -> Optional[bytes]:
        raw = self._get("meta", name.encode())
        return bytes(raw) if raw is not None else None

    # -- app tables
    def table_get(self, name: str, key: bytes) -> Optional[bytes]:
        handle = self._table(name)
        if handle is None:
            return None
        with self.env.begin(db=handle) as txn:
            raw = txn.get(key)
            return bytes(raw) if raw is not None else None

    def table_items(self, name: str, prefix: bytes = b"", *, after: Optional[bytes] = None,
                    reverse: bool = False) -> Iterator[tuple[bytes, bytes]]:
        handle = self._table(name)
        if handle is None:
            return
        with self.env.begin(db=handle) as txn:
            cur = txn.cursor()
            if not reverse:
                if not cur.set_range(after if after is not None and after > prefix else prefix):
                    return
                for k, v in cur:
                    if not k.startswith(prefix):
                        break
                    if after is not None and k <= after:
                        continue
                    yield bytes(k), bytes(v)
                return
            # Descending: start at the last key of the prefix's range (or before ``after``).
            bound = _successor(prefix)
            if after is not None and (bound is None or after < bound):
                bound = after
            if bound is None:
                found = cur.last()
            elif cur.set_range(bound):
                found = cur.prev()
            else:
                found = cur.last()
            while found:
                k = cur.key()
                if not k.startswith(prefix):
                    if k < prefix:
                        break
                elif after is None or k < after:
                    yield bytes(k), bytes(cur.value())
                found = cur.prev()

    def table_count(self, name: str) -> int:
        return self._count(self._table(name))

    # ------------------------------------------------------------------ upkeep
    def bytes_used(self) -> int:
        """Bytes of the data file in use (pages written), not the map's size (metrics)."""
        return int((self.env.info()["last_pgno"] + 1) * self.env.stat()["psize"])

    def expire(self, before: float, limit: int = 10_000) -> int:
        """Delete finished flows' results, session dedup records and client ids that fell
        due before ``before`` (at most ``limit`` per call, so a sweep never stalls the
        scheduler)."""
        cutoff = _micros(before)
        done = 0
        with self.env.begin(write=True) as txn:
            cur = txn.cursor(db=self.db["expiry"])
            if not cur.first():
                return 0
            while done < limit:
                k = cur.key()
                if not k or k[:8] >= cutoff:
                    break
                db_name, _, key = k[8:].partition(b"\0")
                txn.delete(key, db=self.db[db_name.decode()])
                done += 1
                if not cur.delete():
                    break
        return done


#: The name this class had before the storage interface; tests and tools still use it.
Store = LmdbStore
