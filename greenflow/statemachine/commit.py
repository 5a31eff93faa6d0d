"""Commit staging: what one round writes (checkpoints, journal entries, inbox and
outbox, results) in one synced transaction, and what is released only after it holds
(frames to the transport, acknowledgements, external calls, waiters); shedding
resident flows beyond ``max_resident``.

Part of the scheduler (`Scheduler` inherits it).
"""
from __future__ import annotations

import time
from math import ceil
import logging
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Optional

from greenflow import serialization
from greenflow.storage import payloads
from greenflow.runtime.checkpoint import AT_START, Checkpoint
from greenflow.storage.interface import encode_header
from greenflow.errors import FlowError, StoreError
from greenflow.status import FlowStatus
from greenflow.statemachine import stacks
from greenflow.statemachine.events import ExternalDone
from greenflow.runtime.divergence import code_change
from greenflow.runtime.fingerprint import fingerprint
from greenflow.runtime.flow_runtime import FlowRuntime
from greenflow.runtime.flow_runtime import Ended
from greenflow.runtime.journal import Kind, Outcome
from greenflow.runtime.recorded import unrecordable
from greenflow.storage.interface import Batch, encode_entries, journal_chunk

log = logging.getLogger("greenflow.scheduler")

#: The journal chunks a flow's drop deletes one by one; a flow with more is dropped with a
#: scan of its journal's keys.
MAX_CHUNK_HINTS = 64
#: A live resident flow lets go of its stored journal entries once it holds this many
#: (`FlowRuntime.forget_stored`): memory stays bounded however long the flow runs, and
#: short flows, which end first, never pay for it.
FORGET_AT = 64
#: A flow with more sessions than this retires those that ended on both sides from its
#: checkpoint at each commit (`Conversation.retire_ended_sessions`).
RETIRE_AFTER = 8
#: Seconds a commit may take before it is logged (`CommitStaging._slow_commit`).
SLOW_COMMIT = 5.0
# `FlowStatus.finished` as a set test: no property call per flow of every round.
_FINISHED = frozenset(s for s in FlowStatus if s.finished)


class CommitStaging:
    """The round's group commit, and what waits for it."""

    def commit(self) -> None:
        b = self.batch
        suspended: list[FlowRuntime] = []
        self.round_time = self.clock.now()   # stored with each journal chunk (when it happened)
        for rt in list(self.touched.values()):   # no (fid, rt) tuple per flow for the GC to walk
            fid = rt.flow_id
            if rt.cp.status not in _FINISHED:
                try:
                    self._stage_checkpoint(b, rt)
                except Exception as exc:
                    log.error("%s: flow %s cannot be checkpointed: %s", self.identity.name,
                              fid, exc)
                    self._finish(rt, (Ended.FAILED, FlowError(f"checkpoint failed: {exc}")))
                    continue   # its frames are queued (`_finish`)
                if rt.pending is not None:
                    suspended.append(rt)
            if rt.out:
                self._queue_frames(rt)
        victims = self._victims(suspended)
        for rt in victims:   # their locals go with this commit (`stacks`)
            stacks.before_eviction(self, b, rt)
        try:
            if b:
                t0 = time.perf_counter()
                self.store.commit(b)
                took = time.perf_counter() - t0
                self.stats["commits"] += 1
                if self.commit_observer is not None:
                    self.commit_observer(took, len(b.ops), len(suspended))
                if took >= SLOW_COMMIT:
                    self._slow_commit(took, len(b.ops))
        except StoreError as exc:
            # Nothing of this round is durable, so nothing of it may be seen: stop the node.
            log.critical("%s: %s; the node stops committing", self.identity.name, exc)
            self.commit_error = exc
            self.dead = True
            return
        resident = self.resident
        for rt in self.touched.values():
            rt.base = None   # committed: the store holds it now (read back if parked)
            if rt.committed >= FORGET_AT and rt.cursor == len(rt.journal) \
                    and resident.get(rt.flow_id) is rt:
                rt.forget_stored()   # live: its stored entries are read only by a replay
        if self.big_results:   # committed: the oldest beyond the budget are read from the
            self._keep_big_results()   # store from now on (`Ending`)
        self.batch = Batch()
        self._round_routes.clear()
        self.ended.clear()
        self.touched = {}
        sends, self.post_sends = self.post_sends, []
        acks, self.post_acks = self.post_acks, {}
        exts, self.post_externals = self.post_externals, []
        cbs, self.post_callbacks = self.post_callbacks, []
        for peer, data in sends:
            self.transport.send(peer, data)
        for peer_name, mids in acks.items():
            self.transport.ack(peer_name, tuple(mids))
        for rt in exts:
            self._run_external(rt)
        for cb in cbs:
            try:
                cb()
            except Exception:
                log.exception("post-commit callback failed")
        for rt in victims:
            if rt.pending is not None and self.resident.get(rt.flow_id) is rt:
                self._evict(rt, "hibernated")
        self.upkeep()

    def upkeep(self) -> Optional[float]:
        """Remove the results (and dedup records, client ids) past their retention, at
        most every minute (a tenth of the retention when shorter): after each commit, and
        when an idle node's loop wakes for it. Returns when the next sweep is due."""
        now = self.clock.now()
        if now >= self._next_sweep:
            self._next_sweep = now + min(60.0, self.retention / 10)
            try:
                n = self.store.expire(now)
                if n:
                    log.debug("%s: expired %d finished-flow records", self.identity.name, n)
                    # The cache of recent results must not show what the store dropped
                    # (a listing said COMPLETED where the handle said "no flow").
                    keep = self.retention
                    self.recent_results = {
                        fid: rec for fid, rec in self.recent_results.items()
                        if ceil(rec.get("finished_at", now) + keep) >= now}
            except StoreError as exc:
                log.error("%s: expiry sweep failed: %s", self.identity.name, exc)
            # Pages that reads mapped (a listing of every flow) while the node committed
            # nothing: the trim after commits would not see them (an idle node held 741
            # MB of them after one listing at a million flows).
            trim = getattr(self.store, "trim_map", None)
            if trim is not None:
                trim()
            self.peer_log.flush()   # the counts of bursts of peers' frames that stopped
        return self._next_sweep

    def _stage_checkpoint(self, b: Batch, rt: FlowRuntime) -> None:
        cp = rt.cp
        fid = rt.flow_id
        journal = rt.journal
        n = len(journal)
        # The pending entry (last, no outcome yet) lives in the header; chunks hold only
        # resolved entries, one chunk per commit, so nothing is stored twice.
        last = journal[-1] if journal and journal[-1].outcome is None else None
        resolved = n - (1 if last is not None else 0)
        if resolved > rt.committed:
            chunk = journal[rt.committed:resolved]
            n_ops = len(b.ops)
            payloads.set_aside(b, self.store, fid, chunk, rt.consumed)
            if len(b.ops) != n_ops:
                rt.inboxed = True   # a payload set aside
            start = rt.dropped + rt.committed   # (its index in the stored journal)
            chunks = rt.chunks   # where this flow's chunks start, ascending (`drop_flow`)
            if chunks is not None and (not chunks or chunks[-1] != start):
                # Past a few, the drop scans the flow's journal keys instead: kept whole,
                # the tuple was searched and copied at every commit (a flow of 20,000
                # round trips spent most of its time here).
                rt.chunks = chunks + (start,) if len(chunks) < MAX_CHUNK_HINTS else None
            b.append_journal(fid, start, journal_chunk(self.round_time, encode_entries(chunk)))
            rt.committed = resolved
        pend = rt.pending if rt.pending is not None else last
        cp.journal_len = rt.dropped + n
        cp.pending = (last.kind, last.key, last.deadline) if last is not None else None
        if len(cp.sessions) > rt.routed:  # added at the end (only the flow's own are retired)
            for st in list(cp.sessions.values())[rt.routed:]:
                if st.initiator:
                    continue  # routed by its id (_deliver_to_initiator): nothing to store
                key = (st.counterparty.name, st.sid, st.role_of_peer)
                self.routes[key] = fid
                self._put_route(key, fid.encode())
            rt.routed = len(cp.sessions)
        if len(cp.sessions) > RETIRE_AFTER:
            rt.retire_ended_sessions()
            rt.routed = len(cp.sessions)
        for q in rt.inbox.values():
            for item in q:
                if not item.persisted:
                    payloads.persist_inbox_frame(b, fid, item.frame)
                    item.persisted = True
                    rt.inboxed = True
        for sid, seq in rt.consumed:
            b.delete_inbox(fid, sid, seq)
        rt.consumed = ()
        wake = pend is None or pend.kind == Kind.EXTERNAL
        if rt.wake_stored is not wake:
            b.set_wake(fid, wake)
            rt.wake_stored = wake
        if pend is not None and pend.deadline is None and cp.timer_at is not None:
            b.delete_timer(cp.timer_at, fid)
            cp.timer_at = None
        if pend is not None:
            stacks.at_commit(self, b, rt)
        if rt.start_blob is not None:
            b.start_flow(fid, rt.start_blob)
            rt.start_blob = None
            if self.limits is not None and cp.invoker_sid is not None:
                self.limits.first_stored(b, rt)
        if cp.fingerprint is None:
            cp.fingerprint = fingerprint(rt)
        if rt.progress_stale:
            rt.refresh_progress()
        rt.base = encode_header(cp)
        rt.fresh = ()
        b.put_header(fid, rt.base)
        rt.dirty = False

    def _last_good(self, rt: FlowRuntime) -> Optional[Checkpoint]:
        """A fresh copy of the flow's last good checkpoint: ``rt.base`` (its starting
        state before its first commit, the staged header bytes within a round)
        or else what the store holds."""
        if rt.base is AT_START:
            return rt.cp.at_start()
        if rt.base is not None:
            return serialization.loads(rt.base)
        return self.store.checkpoint(rt.flow_id)

    def _code_changed(self, rt: FlowRuntime) -> str:
        try:
            base = self._last_good(rt)
            stored = base.fingerprint if base is not None else None
        except Exception:
            stored = None
        return code_change(rt.cp.flow_class, stored, rt.logic)

    def _run_external(self, rt: FlowRuntime) -> None:
        call = rt.external
        if call is None:
            return
        fn, args = call
        fid = rt.flow_id

        def work() -> None:
            try:
                out: tuple = (Outcome.OK, fn(*args))
            except BaseException as exc:  # noqa: BLE001 - recorded, re-raised in the flow
                # (SystemExit and the like too: the flow waits for an outcome, and on a
                # worker thread nothing else would ever give it one)
                out = (Outcome.EXC, exc)
            refused = unrecordable(fn, out)   # (pickled here, off the scheduler's thread)
            self.post(ExternalDone(fid, out if refused is None else (Outcome.EXC, refused)))

        if self.threaded and self.closing:
            # The node is closing: the call is not started now (the flow waits for it,
            # committed; it is made when the node reopens), so close need not wait.
            log.info("%s: closing: flow %s makes its external call when the node reopens",
                     self.identity.name, fid)
            return
        if self._workers is None:
            self._workers = ThreadPoolExecutor(max_workers=8 if self.threaded else 1,
                                               thread_name_prefix=f"gf-ext-{self.identity.name}")
        fut = self._workers.submit(work)
        if self.threaded:
            running = self.external_calls
            running[fut] = fid
            fut.add_done_callback(lambda f: running.pop(f, None))
        else:
            # MockNetwork: on a worker thread too (thread-local state, what blocks), but
            # waited for here, so the round's outcome stays deterministic.
            fut.result()

    def _slow_commit(self, took: float, writes: int) -> None:
        """Say so when a commit held the node up: every flow of the node waits for it, and
        nothing else would tell an operator why flows stopped moving (a disk that stalls,
        a database server that is overloaded or failing over)."""
        self.peer_log.warning(
            "slow commit", "%s: a commit of %d writes took %.1f s; every flow of the node "
            "waited for it (a slow or stalled disk, or an overloaded database server)",
            self.identity.name, writes, took)

    def close_externals(self) -> dict[Future, str]:
        """On the scheduler's thread, as a clean close begins: start no more external
        calls, and return those still running (future -> flow id), for the close to let
        them finish and their outcomes be committed. Without this a close abandoned a
        call in flight: its flow made it again when the node reopened."""
        self.closing = True
        return {f: fid for f, fid in list(self.external_calls.items()) if not f.done()}

    def stop_workers(self) -> None:
        """Let go of the external calls' threads: calls not started yet are cancelled
        (their flows make them when the node reopens); a running one keeps its thread
        until it returns, and its outcome, posted to a stopped scheduler, is dropped."""
        workers, self._workers = self._workers, None
        if workers is not None:
            workers.shutdown(wait=False, cancel_futures=True)

    def _victims(self, suspended: list[FlowRuntime]) -> list[FlowRuntime]:
        """Whom to hibernate after this commit: suspended flows dropped from memory
        (reload_after_suspend: all of them; otherwise the least recently active beyond
        max_resident)."""
        if self.reload_after_suspend:
            return [rt for rt in suspended if rt.flow_id in self.resident]
        excess = 0 if self.max_resident is None else len(self.resident) - self.max_resident
        victims: list[FlowRuntime] = []
        if excess > 0:
            for rt in self.resident.values():  # least recently active first
                if rt.pending is not None and not rt.dirty:
                    victims.append(rt)
                    if len(victims) >= excess:
                        break
        return victims
