"""Vault feeds of a clustered party (`Vault.track_by` on a worker of
`greenflow.ledger.vault_backend_pg`): every state the party records or consumes,
whichever worker recorded it.

A single node's feeds are told by its own recordings (`Vault._apply`). A worker's own
recordings are a fraction of the party's, so here a feed is fed from the database's
change log instead (``vault_changes``: one row per insert or delete of a
``vault_states`` row, under the writing transaction's id, by a trigger), the worker's
own commits and the others' alike, so that each update reaches a feed once and
nothing depends on which worker wrote it:

- while a feed is open, a thread of the worker (`_LogReader`, on a connection of its
  own: flows never wait on it) reads the log every `POLL_S` for the transactions that
  committed since its previous read's snapshot (`pg_visible_in_snapshot`, as the
  vault's refresh does); with no feed open there is no thread and no read;
- a read's rows are taken in transaction id order: a worker's group commits run one
  after the other, so its commits come in the order it made them;
- the rows of one transaction (a group commit: many recorded transactions) make one
  `VaultUpdate` per recorded transaction, as on a single node: the states it produced
  (a state's key names its transaction) and those it consumed (the consumed marker
  written with the delete names the consuming transaction), filtered by each feed's
  criteria;
- a feed starts at the snapshot of the refresh its page was read after (the refresh
  and the feed's start are taken while the reader is between reads): a change that
  snapshot saw is in the page, one it did not is in the feed.

Log rows are deleted after five minutes (`vault_backend_pg._CHANGES_KEPT_S`): a reader
that could not read for longer (the database unreachable, the process stopped) may
have lost rows, so it drops its feeds (``Feed.dropped`` says why) rather than hand out
a gap; the client opens a new feed, whose snapshot is current.
"""
from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from typing import Any, Optional

from greenflow.ledger import vault_pg_sql as sql_
from greenflow.ledger.shared_rows import SharedRows
from greenflow.ledger.states import StateAndRef
from greenflow.ledger.vault import _ref_from_key, _unpack
from greenflow.ledger.vault_feed import Feed
from greenflow.ledger.vault_indexes import VaultFeeds, offer

__all__ = ["POLL_S", "SharedFeeds"]

log = logging.getLogger("greenflow.ledger.vault")

#: How often a worker with a feed open reads the change log (seconds).
POLL_S = 0.1
#: A reader whose last good read began this long ago may have missed pruned log rows
#: (they are kept `vault_backend_pg._CHANGES_KEPT_S`, 300 s; a margin for transactions
#: that wrote a row some seconds before they committed).
BEHIND_S = 270.0
_TX_CACHE = 64


class _Snapshot:
    """A PostgreSQL snapshot (``xmin:xmax:xip,...``) and whether it saw a transaction id."""
    __slots__ = ("xmin", "xmax", "xip")

    def __init__(self, text: str) -> None:
        xmin, xmax, xip = text.split(":")
        self.xmin, self.xmax = int(xmin), int(xmax)
        self.xip = frozenset(int(x) for x in xip.split(",") if x)

    def sees(self, xid: int) -> bool:
        return xid < self.xmin or (xid < self.xmax and xid not in self.xip)


class SharedFeeds(VaultFeeds):
    """`VaultFeeds` of a worker: fed by `_LogReader` from the change log, not by the
    vault's own recordings (those reach the log with their commit, like the others')."""

    def __init__(self, vault: Any) -> None:
        super().__init__(vault)
        self._guard = threading.RLock()     # the list of feeds and the reader
        self._starts: dict[int, _Snapshot] = {}
        self._reader: Optional[_LogReader] = None

    def publish(self, notary: Any, consumed: list, produced: list) -> None:
        """Nothing: this worker's recordings reach its feeds through the log."""

    def open(self, criteria: Any) -> Feed:
        """A feed starting at the snapshot of a refresh of the vault taken now (the
        caller holds the vault's lock and reads the page next). The reader is kept
        between reads meanwhile, so it has not gone past that snapshot."""
        feed = Feed(criteria, self.vault._node.store, self.close, self.vault._node)
        while True:
            with self._guard:
                reader = self._reader
            with reader.cycle if reader is not None else _NoLock():
                with self._guard:
                    if self._reader is not reader:
                        continue            # stopped or replaced meanwhile: again
                    self.vault._refresh()
                    start = self.vault._snapshot
                    self._starts[id(feed)] = _Snapshot(start)
                    self.feeds = self.feeds + [feed]     # copied: the reader iterates it
                    if reader is None:
                        self._reader = _LogReader(self, start)
                        self._reader.start()
                    return feed

    def close(self, feed: Feed) -> None:
        with self._guard:
            if feed not in self.feeds:
                return
            self.feeds = [f for f in self.feeds if f is not feed]
            self._starts.pop(id(feed), None)
            if not self.feeds and self._reader is not None:
                self._reader.stop()
                self._reader = None

    def deliver(self, xid: int, nkey: bytes, consumed: list, produced: list) -> None:
        """One recorded transaction's change, written by transaction ``xid``, to every
        feed that started before it committed (the caller holds ``_guard`` and is the
        current reader)."""
        for feed in self.feeds:
            start = self._starts.get(id(feed))
            if start is not None and not start.sees(xid):
                offer(feed, nkey, consumed, produced, -1)   # durable already

    def drop_all(self, reason: str) -> None:
        for feed in list(self.feeds):
            feed.drop(reason)

    def wants_notaries(self) -> bool:
        return any(f.criteria.notaries is not None for f in self.feeds)


class _NoLock:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: Any) -> None:
        return None


class _LogReader:
    """The thread that reads the change log for a worker's open feeds (see the module
    doc); started with the first feed, stopped with the last."""

    def __init__(self, feeds: SharedFeeds, snapshot: str) -> None:
        self.feeds = feeds
        self.cursor = snapshot
        self.cycle = threading.Lock()       # held for a read and its delivery
        self.rows = SharedRows(feeds.vault._node.store)
        self.stopped = False
        self._wake = threading.Event()
        self._txs: OrderedDict[bytes, Any] = OrderedDict()
        self._good_at = time.monotonic()    # when the last good read began
        self._failing = False
        self.reads = 0
        self._thread = threading.Thread(target=self._run, daemon=True,
                                        name="gf-vault-feeds")

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self.stopped = True
        self._wake.set()

    def _run(self) -> None:
        try:
            while not self._wake.wait(POLL_S if not self._failing else 1.0):
                with self.cycle:
                    if self.stopped:
                        break
                    self._once()
        finally:
            self.rows.close()

    def _once(self) -> None:
        began = time.monotonic()
        try:
            rows = self.rows.run("reading the vault's change log for its feeds",
                                 lambda c: c.execute(sql_.FEED_CHANGES, {"s": self.cursor}).fetchall())
            updates, snapshot = self._group(rows)
            txs = self._fetch_txs(updates)
        except Exception as exc:   # the database is away: read again, from the same snapshot
            if not self._failing:
                log.warning("vault feeds: reading the change log failed (%s); retrying", exc)
            self._failing = True
            if time.monotonic() - self._good_at > BEHIND_S:
                self._fell_behind()
            return
        self._failing = False
        if began - self._good_at > BEHIND_S:
            return self._fell_behind()
        self._good_at = began
        self.cursor = snapshot
        self.reads += 1
        with self.feeds._guard:
            if self.feeds._reader is not self:     # stopped meanwhile: its feeds are gone
                return
            for xid, tx_id, gone, new in updates:
                self._deliver(xid, tx_id, gone, new, txs)

    def _fell_behind(self) -> None:
        with self.feeds._guard:
            if self.feeds._reader is not self:
                return
        self.feeds.drop_all("the worker could not read the vault's change log for "
                            f"{BEHIND_S:.0f} s: changes may have been pruned from it")

    def _group(self, rows: list) -> tuple[list, str]:
        """The log's rows as (xid, transaction, consumed rows, produced rows) per recorded
        transaction, in the order written, and the read's snapshot."""
        snapshot = self.cursor
        events = []
        for n, (xid, op, key, state, marker, at) in enumerate(rows):
            if xid == "x":
                snapshot = bytes(key).decode()
            else:
                events.append((int(xid), at, n, op, bytes(key),
                               None if state is None else bytes(state),
                               None if marker is None else bytes(marker)))
        events.sort(key=lambda e: e[:3])
        grouped: OrderedDict[tuple[int, bytes], tuple[list, list]] = OrderedDict()
        for xid, _, _, op, key, state, marker in events:
            if op == "I":
                grouped.setdefault((xid, key[:32]), ([], []))[1].append((key, state))
            else:
                tx_id = marker[:32] if marker is not None and len(marker) >= 32 else b""
                grouped.setdefault((xid, tx_id), ([], []))[0].append((key, None))
        return [(xid, tx, gone, new) for (xid, tx), (gone, new) in grouped.items()], snapshot

    def _fetch_txs(self, updates: list) -> dict[bytes, Any]:
        """The recorded transactions the updates need: those whose outputs were consumed
        (their content), those whose produced rows are gone already, and, when a feed
        filters by notary, each update's own."""
        want: set[bytes] = set()
        notaries = self.feeds.wants_notaries()
        for _, tx_id, gone, new in updates:
            want.update(key[:32] for key, _ in gone)
            want.update(key[:32] for key, state in new if state is None)
            if notaries and tx_id:
                want.add(tx_id)
        have = {k: self._txs[k] for k in want if k in self._txs}
        missing = sorted(want - have.keys())
        if missing:
            found = self.rows.run("reading the vault's transactions for its feeds",
                                  lambda c: c.execute(sql_.FEED_TXS, (missing,)).fetchall())
            for key, raw in found:
                have[bytes(key)] = stx = _unpack(raw)
                self._txs[bytes(key)] = stx
                if len(self._txs) > _TX_CACHE:
                    self._txs.popitem(last=False)
        return have

    def _deliver(self, xid: int, tx_id: bytes, gone: list, new: list, txs: dict) -> None:
        consumed = [s for s in (self._state(key, None, txs) for key, _ in gone) if s is not None]
        produced = [s for s in (self._state(key, raw, txs) for key, raw in new) if s is not None]
        produced.sort(key=lambda s: s.ref.index)
        stx = txs.get(tx_id)
        if stx is not None:
            order = {ref: n for n, ref in enumerate(stx.tx.inputs)}
            consumed.sort(key=lambda s: order.get(s.ref, len(order)))
        notary = stx.tx.notary if stx is not None else None
        nkey = notary.owning_key if notary is not None else b""
        if consumed or produced:
            self.feeds.deliver(xid, nkey, consumed, produced)

    def _state(self, key: bytes, raw: Optional[bytes], txs: dict) -> Optional[StateAndRef]:
        if raw is not None:
            return _unpack(raw)
        ref = _ref_from_key(key)
        stx = txs.get(key[:32])
        if stx is None or not 0 <= ref.index < len(stx.tx.outputs):
            log.warning("vault feeds: state %s changed, but its transaction is not recorded", ref)
            return None
        return StateAndRef(stx.tx.outputs[ref.index], ref)
