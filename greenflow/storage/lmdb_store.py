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
| expiry     | time (µs) + db name \0 key        | more db \0 key due then (msgpack) or b"" |
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
from threading import get_ident
from typing import Any, Optional

import lmdb

from greenflow.storage import store_guard
from greenflow.errors import StoreError, StoreLocked, StoreMissing
from greenflow.storage.interface import Batch, dump_result, journal_chunk, load_result
from greenflow.storage.lmdb_keys import DBS as _DBS, _encode_entries, _micros, expiry_entries
from greenflow.storage.lmdb_reader import READS, TABLE_READS, LmdbReader, TableReader
from greenflow.storage.lmdb_writer import LmdbWriter
from greenflow.storage.page_trim import DEFAULT_BUDGET, MapTrimmer

__all__ = ["LmdbStore", "Store", "Batch", "journal_chunk", "dump_result", "load_result"]

log = logging.getLogger("greenflow.store")

INITIAL_MAP = 64 * 1024 * 1024
#: The map of a read-only view (tools reading beside a running node): address space only,
#: no memory. A view mapped smaller than the running node's grown map could not begin a
#: read (MDB_MAP_RESIZED) once the node had grown it: a dump or replay check beside a
#: busy node reported most flows unreadable.
READ_VIEW_MAP = 1 << 40


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
            if self._lock is not None:
                self._lock.hold_data()
        except BaseException:
            if getattr(self, "env", None) is not None:
                self.env.close()
            if self._lock is not None:
                self._lock.release()
            raise
        self.commits = 0
        # Collaborators: the batch writer (the commit's hot loop) and the readers. The
        # store's read operations are theirs, bound here as its own attributes.
        self.writer = LmdbWriter(self)
        self.reader = LmdbReader(self)
        self.table_reader = TableReader(self.reader)
        for name in READS:
            setattr(self, name, getattr(self.reader, name))
        for name in TABLE_READS:
            setattr(self, name, getattr(self.table_reader, name))
        self._get = self.reader.get   # the console's raw read of a result record
        # Keeps the pages of the map this node touched from piling up in its RSS.
        self.trimmer = MapTrimmer(os.path.join(path, "data.mdb"),
                                  None if readonly else DEFAULT_BUDGET)

    def trim_map(self) -> bool:
        """Trim the map now if it is over budget (the node's upkeep, also when idle)."""
        return self.trimmer.enabled and self.trimmer.trim_if_over()

    def _open(self, path: str, sync: bool, readonly: bool, existed: bool) -> None:
        self.env = None
        store_guard.check_lmdb_files(path)
        if existed:
            store_guard.check_file(path)   # before LMDB maps it: no SIGBUS on a short file
        try:
            self.env = lmdb.open(path, map_size=READ_VIEW_MAP if readonly else INITIAL_MAP,
                                 max_dbs=len(_DBS) + 32,
                                 sync=sync, metasync=sync, readahead=False, lock=True,
                                 readonly=readonly)
        except lmdb.Error as exc:
            if "already open in this process" in str(exc):
                # LMDB allows one open environment per file and process: nothing is wrong
                # with the store (calling it damaged would advise throwing it away).
                raise StoreLocked(
                    f"the node store at {path} is open in this process already (a node of "
                    "this directory runs here): read it through that node (for example "
                    "node.checkpoints_dump()), or close the node first") from exc
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
        self.reader.point.renew()
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
        self.reader.point.renew()   # a read transaction begun before cannot see a new table
        try:
            self.tables[name] = self.env.open_db(name.encode(), create=not self.readonly)
        except lmdb.NotFoundError:
            self.tables[name] = None   # read-only, never created: reads are empty
        except lmdb.Error as exc:
            raise StoreError(f"store {self.path}: cannot open table {name!r}: {exc}") from exc

    def has_table(self, name: str) -> bool:
        return self.tables.get(name) is not None

    # ------------------------------------------------------------------ writes
    def commit(self, batch: Batch) -> None:
        """Apply ``batch`` in one synced write transaction, growing the map as needed."""
        if self.readonly:
            raise StoreError(f"store {self.path} is open read-only: nothing can be committed")
        if self._lock is not None:
            self._lock.check_data_file()
        writer = self.writer
        reader = self.reader.point
        if reader.writer_thread is None:
            reader.writer_thread = get_ident()
        for attempt in range(12):
            try:
                writer.refused = []
                with self.env.begin(write=True) as txn:
                    try:
                        writer.apply(txn, batch)
                    except (TypeError, ValueError, OverflowError, AttributeError,
                            struct.error) as exc:
                        # A value of the batch no database takes (a bug: batches check
                        # their rows): the transaction is aborted, and the node stops
                        # rather than fail every round the same way.
                        raise StoreError(f"commit to the node store at {self.path} failed "
                                         f"(nothing of it was written): a value of the "
                                         f"batch cannot be stored: {type(exc).__name__}: "
                                         f"{exc}") from exc
                self.commits += 1
                reader.renew()
                for fid in writer.refused:
                    log.error("store %s: refused the checkpoint header of flow %s: its start "
                              "record is not in the store (the flow ended or never started); "
                              "please file a bug", self.path, fid)
                self.trimmer.after_commit()
                return
            except lmdb.MapFullError:
                reader.renew()   # the map may only grow with no transaction open here
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

    # ------------------------------------------------------------------ upkeep
    def bytes_used(self) -> int:
        """Bytes of the data file that hold data now: the pages of every database (the
        file's high-water mark, ``last_pgno``, keeps pages freed since for reuse)."""
        def pages(st: dict) -> int:
            return st["branch_pages"] + st["leaf_pages"] + st["overflow_pages"]
        with self.env.begin() as txn:
            total = pages(txn.stat())   # the main database: the names of the others
            for handle in (*self.db.values(), *self.tables.values()):
                if handle is not None:
                    total += pages(txn.stat(handle))
        return int(total * self.env.stat()["psize"])

    def expire(self, before: float, limit: int = 10_000) -> int:
        """Delete finished flows' results, session dedup records and client ids that fell
        due before ``before`` (at most ``limit`` per call, so a sweep never stalls the
        scheduler)."""
        try:
            return self._expire(_micros(before), limit)
        finally:
            self.reader.point.renew()

    def _expire(self, cutoff: bytes, limit: int) -> int:
        done = 0
        with self.env.begin(write=True) as txn:
            cur = txn.cursor(db=self.db["expiry"])
            if not cur.first():
                return 0
            while done < limit:
                k = cur.key()
                if not k or k[:8] >= cutoff:
                    break
                entries = expiry_entries(k, cur.value())
                rest = entries[limit - done:]
                for entry in entries[:limit - done]:
                    db_name, _, key = entry.partition(b"\0")
                    txn.delete(key, db=self.db[db_name.decode()])
                    done += 1
                if rest:   # the limit reached within a shared record: keep what is left
                    cur.delete()
                    txn.put(k[:8] + rest[0], _encode_entries(rest[1:]) if rest[1:] else b"",
                            db=self.db["expiry"])
                    break
                if not cur.delete():
                    break
        return done


#: The name this class had before the storage interface; tests and tools still use it.
Store = LmdbStore
