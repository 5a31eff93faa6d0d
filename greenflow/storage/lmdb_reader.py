"""The LMDB store's reads: every read operation of `FlowStore` (a flow's checkpoint,
journal and inbox; the outbox, routes, timers, results, clients; app tables), each in a
short read transaction. `LmdbStore` hands these out as its own methods."""
from __future__ import annotations

from threading import get_ident
from typing import TYPE_CHECKING, Any, Iterator, Optional

from greenflow import serialization
from greenflow.runtime.checkpoint import Checkpoint
from greenflow.runtime.journal import Entry
from greenflow.storage.interface import MAX_KEY_BYTES, assemble_journal, load_result
from greenflow.storage.lmdb_keys import (_U32, _fid_key, _inbox_key, _parse_timer_key,
                                         _session_key, _successor)

if TYPE_CHECKING:
    from greenflow.storage.lmdb_store import LmdbStore

#: The read operations `LmdbStore` takes from its reader (the `FlowStore` reads).
READS = ("checkpoint", "header_blob", "logic_blob", "has_flow", "journal", "journal_with_times",
         "snapshot", "header_blobs", "checkpoints", "flow_count", "inbox", "payload",
         "flows_to_wake", "outbox", "route", "timers", "result", "results", "result_blobs",
         "client", "meta")
#: The app-table reads it takes from its `TableReader`.
TABLE_READS = ("table_get", "table_items", "table_count")


class PointReads:
    """Single-key reads. The writer's thread reads through one read transaction until
    its next write (`renew`), not one per read: a route looked up for every new session,
    a header for every flow loaded. Other threads open their own, short ones."""

    def __init__(self, env: Any) -> None:
        self.env = env
        self.writer_thread: Optional[int] = None   # set by the store's first commit
        self._txn: Any = None

    def get(self, handle: Any, key: bytes) -> Optional[bytes]:
        if get_ident() == self.writer_thread:
            txn = self._txn
            if txn is None:
                txn = self._txn = self.env.begin()
            return txn.get(key, None, handle)
        with self.env.begin(db=handle) as txn:
            return txn.get(key)

    def renew(self) -> None:
        """After a write on the writer's thread (a commit, an expiry sweep, a table
        opened): its next read sees it. (No other thread writes while a node runs.)"""
        if get_ident() == self.writer_thread:
            txn, self._txn = self._txn, None
            if txn is not None:
                txn.abort()


class LmdbReader:
    """Reads one `LmdbStore`'s databases. A database missing from a read-only view of an
    older store (handle None) reads as empty."""

    def __init__(self, store: "LmdbStore") -> None:
        self.store = store
        self.env = store.env
        self.db: dict[str, Any] = store.db
        self.point = PointReads(store.env)
        self.get_in = self.point.get

    def get(self, name: str, key: bytes) -> Optional[bytes]:
        handle = self.db[name]
        if handle is None:
            return None
        return self.get_in(handle, key)

    def items(self, handle: Any, prefix: bytes = b"", reverse: bool = False,
              after: Optional[bytes] = None) -> Iterator[tuple[bytes, bytes]]:
        """Rows of a database whose key starts with ``prefix`` (``reverse``: the whole
        database, descending), only keys strictly past ``after`` in that order."""
        if handle is None:
            return
        with self.env.begin(db=handle) as txn:
            cur = txn.cursor()
            if reverse:   # whole database only
                if after is None or not cur.set_range(after):
                    if not cur.last():
                        return
                for k, v in cur.iterprev():
                    if after is not None and k >= after:
                        continue
                    yield bytes(k), bytes(v)
                return
            if not cur.set_range(prefix if after is None or after < prefix else after):
                return
            for k, v in cur:
                if not k.startswith(prefix):
                    break
                if after is not None and k <= after:
                    continue
                yield bytes(k), bytes(v)

    # -- flows
    def checkpoint(self, fid: str) -> Optional[Checkpoint]:
        raw = self.get("flows", _fid_key(fid))
        return serialization.loads(raw) if raw is not None else None

    def header_blob(self, fid: str) -> Optional[bytes]:
        return self.get("flows", _fid_key(fid))

    def logic_blob(self, fid: str) -> Optional[bytes]:
        return self.get("logic", _fid_key(fid))

    def has_flow(self, fid: str) -> bool:
        return self.get("flows", _fid_key(fid)) is not None

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
        for k, v in self.items(self.db["journal"], prefix):
            if len(k) != n + 4:
                continue   # another flow whose id extends this one's
            chunks.append((_U32.unpack(k[n:])[0], v))
        return assemble_journal(fid, chunks, length)

    def snapshot(self, fid: str) -> Any:
        raw = self.get("frames", _fid_key(fid))
        return serialization.loads(raw) if raw is not None else None

    def header_blobs(self, reverse: bool = False, after: Optional[str] = None,
                     party_wide: bool = False) -> Iterator[tuple[str, bytes]]:
        start = _fid_key(after) if after is not None else None
        for k, raw in self.items(self.db["flows"], reverse=reverse, after=start):
            yield k.decode(), raw

    def checkpoints(self) -> Iterator[tuple[str, Checkpoint]]:
        for fid, raw in self.header_blobs():
            yield fid, serialization.loads(raw)

    def flow_count(self) -> int:
        return self.count(self.db["flows"])

    def count(self, handle: Any) -> int:
        if handle is None:
            return 0
        with self.env.begin(db=handle) as txn:
            return txn.stat(handle)["entries"]

    # -- inbox, payloads, wake
    def inbox(self, fid: str) -> list[tuple[str, int, bytes]]:
        out = []
        for k, v in self.items(self.db["inbox"], _fid_key(fid) + b"\0"):
            _, sid, seq = k.split(b"\0", 2)
            out.append((sid.decode(), _U32.unpack(seq)[0], v))
        return out

    def payload(self, fid: str, sid: str, seq: int) -> Optional[bytes]:
        raw = self.get("payloads", _inbox_key(fid, sid, seq))
        return bytes(raw) if raw is not None else None

    def flows_to_wake(self) -> set[str]:
        wake = {k.decode() for k, _ in self.items(self.db["wake"])}
        wake.update(k.split(b"\0", 1)[0].decode() for k, _ in self.items(self.db["inbox"]))
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
        raw = self.get("sessions", _session_key(peer, sid, peer_role))
        return bytes(raw) if raw is not None else None

    def timers(self) -> Iterator[tuple[float, str]]:
        for k, _ in self.items(self.db["timers"]):
            yield _parse_timer_key(k)

    # -- results and clients
    def result(self, fid: str) -> Optional[dict]:
        raw = self.get("results", _fid_key(fid))
        return load_result(raw) if raw is not None else None

    def results(self) -> Iterator[tuple[str, dict]]:
        for fid, raw in self.result_blobs():
            yield fid, load_result(raw)

    def result_blobs(self, reverse: bool = False, after: Optional[str] = None
                     ) -> Iterator[tuple[str, bytes]]:
        start = _fid_key(after) if after is not None else None
        for k, raw in self.items(self.db["results"], reverse=reverse, after=start):
            yield k.decode(), raw

    def client(self, client_id: str) -> Optional[str]:
        raw = self.get("clients", client_id.encode())
        return bytes(raw).decode() if raw is not None else None

    def meta(self, name: str) -> Optional[bytes]:
        raw = self.get("meta", name.encode())
        return bytes(raw) if raw is not None else None


class TableReader:
    """Reads the apps' tables (named databases beside the store's own, e.g. the vault's)."""

    def __init__(self, reader: LmdbReader) -> None:
        self.reader = reader
        self.store = reader.store
        self.env = reader.env

    def handle(self, name: str) -> Any:
        store = self.store
        try:
            return store.tables[name]
        except KeyError:
            pass
        if store.readonly:
            store.open_table(name)
            return store.tables[name]
        return None   # never opened here: nothing of it can have been read

    def table_get(self, name: str, key: bytes) -> Optional[bytes]:
        handle = self.handle(name)
        if handle is None or len(key) > MAX_KEY_BYTES:   # LMDB raises for a longer one
            return None
        raw = self.reader.get_in(handle, key)
        return bytes(raw) if raw is not None else None

    def table_items(self, name: str, prefix: bytes = b"", *, after: Optional[bytes] = None,
                    reverse: bool = False) -> Iterator[tuple[bytes, bytes]]:
        handle = self.handle(name)
        if handle is None or len(prefix) > MAX_KEY_BYTES:
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
        return self.reader.count(self.handle(name))
