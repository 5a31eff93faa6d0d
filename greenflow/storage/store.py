"""The node's durable store: one LMDB environment, one named database per concept.

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
from greenflow.status import FlowStatus
from greenflow.storage.page_trim import DEFAULT_BUDGET, MapTrimmer

log = logging.getLogger("greenflow.store")

_DBS = ("flows", "logic", "journal", "frames", "inbox", "outbox", "sessions", "timers", "expiry",
        "wake", "results", "clients", "meta", "payloads")
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")
# A journal chunk is written as b"T" + the commit's time (8-byte float) + the pickled
# entries, so the console can say when each entry was committed. Chunks written before
# that start with serialization's own tag (never b"T") and read as before.
_TIMED = b"T"
_TIME = struct.Struct(">d")


def journal_chunk(at: float, blob: bytes) -> bytes:
    """The stored form of one commit's journal chunk (``blob``: `serialization.dumps`)."""
    return _TIMED + _TIME.pack(at) + blob
INITIAL_MAP = 64 * 1024 * 1024
HEADER = "flows+logic"   # Batch op: a "flows" put that requires the flow's "logic" record


def fid_key(fid: str) -> bytes:
    return fid.encode()


def journal_key(fid: str, idx: int) -> bytes:
    return fid.encode() + _U32.pack(idx)


def inbox_key(fid: str, sid: str, seq: int) -> bytes:
    return b"%s\0%s\0%s" % (fid.encode(), sid.encode(), _U32.pack(seq))


def session_key(peer: str, sid: str, peer_role: int) -> bytes:
    """Routing key for frames arriving from ``peer`` on ``sid`` for our end, where
    ``peer_role`` is 1 when the peer is the responder (we initiated)."""
    return b"%s\0%s\0%d" % (peer.encode(), sid.encode(), peer_role)


def outbox_key(peer: str, sid: str, to_responder: bool, seq: int) -> bytes:
    return b"%s\0%s\0%d\0%s" % (peer.encode(), sid.encode(), int(to_responder), _U32.pack(seq))


def timer_key(deadline: float, fid: str) -> bytes:
    return _U64.pack(max(0, int(deadline * 1_000_000))) + fid.encode()


def expiry_key(when: float, db: str, key: bytes) -> bytes:
    return _U64.pack(max(0, int(when * 1_000_000))) + db.encode() + b"\0" + key


def parse_timer_key(key: bytes) -> tuple[float, str]:
    return _U64.unpack(key[:8])[0] / 1_000_000, key[8:].decode()


def dump_result(record: dict) -> bytes:
    """A finished flow's record as stored: its status as the plain string, so the C
    pickler never calls back into Python for the enum."""
    return serialization.dumps({**record, "status": FlowStatus(record["status"]).value})


def load_result(raw: bytes) -> dict:
    rec = serialization.loads(raw)
    rec["status"] = FlowStatus(rec["status"])  # also reads records stored with the enum
    return rec


class Batch:
    """Writes collected for one group commit: ``(db, key, value or None to delete)``,
    plus whole-flow deletions."""

    __slots__ = ("ops",)

    def __init__(self) -> None:
        # Applied in order: a flow started and finished in the same round must end dropped.
        self.ops: list[tuple[str, Any, Any]] = []

    def put(self, db: str, key: bytes, value: bytes) -> None:
        self.ops.append((db, key, value))

    def delete(self, db: str, key: bytes) -> None:
        self.ops.append((db, key, None))

    def put_header(self, key: bytes, value: bytes) -> None:
        """A flow's checkpoint header, written only if the flow's start record is in the
        store by then (committed before, or put earlier in this batch): a header without
        it could never be restored, so the store refuses to write one. A flow that ended
        earlier in the batch (its records dropped) is not brought back this way."""
        self.ops.append((HEADER, key, value))

    def drop_flow(self, fid: str, journal_len: int) -> None:
        """Remove a flow's checkpoint, start object, journal, frames and inbox."""
        self.ops.append(("", fid, journal_len))

    def __bool__(self) -> bool:
        return bool(self.ops)


class Store:
    """The node's LMDB environment.

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
        self._refused: list[bytes] = []   # headers a commit refused (see Batch.put_header)
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
            self.db = {}
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

    def close(self) -> None:
        self.env.close()
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def ensure_db(self, name: str) -> None:
        """Open (creating if needed) a named database for an app service, e.g. the vault.
        Its writes go through the same batches, so they commit with flow checkpoints."""
        if name not in self.db:
            if not name or "\0" in name:
                raise ValueError(f"bad database name {name!r}")
            self.db[name] = self.env.open_db(name.encode())

    # ------------------------------------------------------------------ writes
    def commit(self, batch: Batch) -> None:
        """Apply ``batch`` in one synced write transaction, growing the map as needed."""
        for attempt in range(12):
            try:
                self._refused = []
                with self.env.begin(write=True) as txn:
                    self._apply(txn, batch)
                self.commits += 1
                for key in self._refused:
                    log.error("store %s: refused the checkpoint header of flow %s: its start "
                              "record is not in the store (the flow ended or never started); "
                              "please file a bug", self.path, key.decode(errors="replace"))
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
        logic, flows = db["logic"], db["flows"]
        for name, key, value in batch.ops:
            # Positional arguments (dupdata, overwrite, append, db): the C binding parses
            # them ~25% faster than the keyword, on every write of every commit.
            if name == "":
                self._drop_flow(txn, key, value)
            elif value is None:
                delete(key, b"", db[name])
            elif name == HEADER:
                if get(key, None, logic) is None:
                    self._refused.append(key)
                else:
                    put(key, value, True, True, False, flows)
            else:
                put(key, value, True, True, False, db[name])

    def _drop_flow(self, txn: Any, fid: str, jlen: int) -> None:
        db = self.db
        k = fid_key(fid)
        for name in ("flows", "logic", "frames", "wake"):
            txn.delete(k, db=db[name])
        self._delete_prefix(txn, "journal", k)
        self._delete_prefix(txn, "inbox", k + b"\0")
        self._delete_prefix(txn, "payloads", k + b"\0")

    def _delete_prefix(self, txn: Any, name: str, prefix: bytes) -> None:
        cur = txn.cursor(db=self.db[name])
        if cur.set_range(prefix):
            while cur.key().startswith(prefix):
                if not cur.delete():
                    break

    # ------------------------------------------------------------------ reads
    def get(self, name: str, key: bytes) -> Optional[bytes]:
        """Committed value of ``key`` in database ``name`` (None when absent)."""
        return self._get(name, key)

    def _get(self, name: str, key: bytes) -> Optional[bytes]:
        if self.db[name] is None:
            return None
        with self.env.begin(db=self.db[name]) as txn:
            return txn.get(key)

    def checkpoint(self, fid: str) -> Optional[Checkpoint]:
        raw = self._get("flows", fid_key(fid))
        return serialization.loads(raw) if raw is not None else None

    def logic_blob(self, fid: str) -> Optional[bytes]:
        return self._get("logic", fid_key(fid))

    def journal(self, fid: str, length: int) -> list[Entry]:
        """The flow's journal. Each commit wrote one chunk starting at the flow's pending
        entry; a later chunk supersedes the overlapping tail of an earlier one."""
        return self.journal_with_times(fid, length)[0]

    def journal_with_times(self, fid: str, length: int) -> tuple[list[Entry], list[Optional[float]]]:
        """The journal, and for each entry the time of the commit that stored it (None
        for entries stored before chunks carried a time)."""
        out: list[Entry] = []
        times: list[Optional[float]] = []
        prefix = fid_key(fid)
        n = len(prefix)
        with self.env.begin(db=self.db["journal"]) as txn:
            cur = txn.cursor()
            if cur.set_range(prefix):
                for k, v in cur:
                    if not k.startswith(prefix) or len(k) != n + 4:
                        break
                    start = _U32.unpack(k[n:])[0]
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

    def inbox(self, fid: str) -> list[tuple[str, int, bytes]]:
        prefix = fid_key(fid) + b"\0"
        out = []
        with self.env.begin(db=self.db["inbox"]) as txn:
            cur = txn.cursor()
            if cur.set_range(prefix):
                for k, v in cur:
                    if not k.startswith(prefix):
                        break
                    _, sid, seq = k.split(b"\0", 2)
                    out.append((sid.decode(), _U32.unpack(seq)[0], bytes(v)))
        return out

    def frames(self, fid: str) -> Any:
        raw = self._get("frames", fid_key(fid))
        return serialization.loads(raw) if raw is not None else None

    def route(self, key: bytes) -> Optional[bytes]:
        return self._get("sessions", key)

    def result(self, fid: str) -> Optional[dict]:
        raw = self._get("results", fid_key(fid))
        return load_result(raw) if raw is not None else None

    def client(self, client_id: str) -> Optional[str]:
        raw = self._get("clients", client_id.encode())
        return raw.decode() if raw is not None else None

    def meta(self, name: str) -> Optional[bytes]:
        return self._get("meta", name.encode())

    def iter_db(self, name: str) -> Iterator[tuple[bytes, bytes]]:
        if self.db[name] is None:
            return
        with self.env.begin(db=self.db[name]) as txn:
            for k, v in txn.cursor():
                yield bytes(k), bytes(v)

    def outbox_frames(self, peer: str) -> Iterator[bytes]:
        """Committed frames for ``peer`` not yet acknowledged, in key order (by session,
        then sequence), read in a short read transaction per batch of rows."""
        prefix = peer.encode() + b"\0"
        after = prefix
        while True:
            rows: list[tuple[bytes, bytes]] = []
            with self.env.begin(db=self.db["outbox"]) as txn:
                cur = txn.cursor()
                if not cur.set_range(after):
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
            for _, v in rows:
                yield v
            after = rows[-1][0]

    def keys(self, name: str) -> list[bytes]:
        with self.env.begin(db=self.db[name]) as txn:
            return [bytes(k) for k in txn.cursor().iternext(keys=True, values=False)]

    def count(self, name: str) -> int:
        with self.env.begin(db=self.db[name]) as txn:
            return txn.stat(self.db[name])["entries"]

    def expire(self, before: float, limit: int = 10_000) -> int:
        """Delete finished flows' results and session dedup records that fell due before
        ``before`` (at most ``limit`` per call, so a sweep never stalls the scheduler)."""
        cutoff = _U64.pack(max(0, int(before * 1_000_000)))
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

    def inbox_flow_ids(self) -> set[str]:
        return {k.split(b"\0", 1)[0].decode() for k in self.keys("inbox")}
