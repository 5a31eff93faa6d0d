"""Loading flows back into memory (replay from the journal), and the hospital's
mechanics: parking a failed flow at its last good checkpoint and retrying it.

Part of the scheduler (`Scheduler` inherits it); the policy, which failures are retried
and after how long, is `greenflow.statemachine.hospital`.
"""
from __future__ import annotations

import heapq
import logging
from typing import Optional

from greenflow import serialization
from greenflow.storage import payloads
from greenflow.statemachine import parked, stacks
from greenflow.runtime.checkpoint import Checkpoint
from greenflow.storage.interface import encode_header
from greenflow.errors import FlowError, StoreError, WireFormatError
from greenflow.runtime.flow_runtime import FlowRuntime, InboxItem, Resume
from greenflow.runtime.journal import Entry
from greenflow.messages import carries_message, decode_frame
from greenflow.status import FlowStatus
from greenflow.log_limits import log_text

log = logging.getLogger("greenflow.scheduler")


class Loading:
    """Rebuilding flows from the store; parking and retrying them."""

    def _resident_or_load(self, fid: str) -> Optional[FlowRuntime]:
        rt = self.resident.get(fid)
        if rt is not None:
            return rt
        return self._load(fid)

    def _load(self, fid: str, cp: Optional[Checkpoint] = None) -> Optional[FlowRuntime]:
        """Rebuild a non-resident flow from its checkpoint; it replays when it runs."""
        if fid in self.ended or fid in self.unreadable:   # (the store still holds what this
            return None                                     # round's batch dropped; see below)
        try:
            if cp is None:
                cp = self.store.checkpoint(fid)
            if cp is None or cp.status.finished:
                return None
            if cp.status == FlowStatus.HOSPITALIZED:
                if cp.retry_at is not None and cp.retry_at <= self.clock.now():
                    return self.retry(fid)  and self.resident.get(fid)  # type: ignore[return-value]
                return None
            raw_logic = self.store.logic_blob(fid)
            if raw_logic is None and self.store.result(fid) is not None:
                # A header left behind by a flow that had finished (written by an older
                # version): the result is what counts; drop the leftover.
                log.warning("%s: removing the stale checkpoint of finished flow %s",
                            self.identity.name, fid)
                self.batch.drop_flow(fid, cp.journal_len)
                return None
            if raw_logic is None:
                raise StoreError(f"the start record of flow {fid} is missing from the store")
            logic = serialization.loads(raw_logic)
            journal = self.store.journal(fid, cp.journal_len - (1 if cp.pending else 0))
            if cp.pending is not None:
                journal.append(Entry(cp.pending[0], cp.pending[1], None, cp.pending[2]))
            inbox_rows = self.store.inbox(fid)
        except Exception as exc:  # corrupt or unreadable: park this flow only
            log.error("%s: cannot restore flow %s: %s", self.identity.name, fid, exc)
            self._hospitalize_stored(fid, f"checkpoint cannot be restored: {type(exc).__name__}: {exc}")
            return None
        rt = FlowRuntime(self, cp, logic, journal)
        rt.base = None  # the store holds this very checkpoint: _park reads it back from there
        cp.fingerprint = None  # recomputed for the code running now at the next commit
        for sid, seq, data in inbox_rows:
            try:
                f = payloads.restore_inbox_frame(self.store, fid, decode_frame(data))
            except WireFormatError:
                continue
            st = cp.sessions.get(sid)
            unread = self.unread_from(st.counterparty.name) if st is not None else None
            rt.inbox_queue(sid, unread).append(InboxItem(f, True))
        rt.dirty = False
        rt.routed = len(cp.sessions)
        cp.status = FlowStatus.RUNNABLE
        self._make_resident(rt)
        self.run_queue.append(Resume(rt, None))
        return rt

    def _hospitalize_stored(self, fid: str, why: str) -> None:
        """Park a flow that is not in memory (its checkpoint could not be restored)."""
        try:
            cp = self.store.checkpoint(fid)
        except Exception:  # noqa: BLE001 - the header itself: nothing to park it in
            # Not loaded again (each frame a peer re-sends would try) and not woken at the
            # next start; listings show it parked, and an operator's kill ends it.
            self.unreadable.add(fid)
            self.batch.set_wake(fid, False)
            parked.mark(self.batch, fid)
            return
        if cp is None:
            return
        cp.status = FlowStatus.HOSPITALIZED
        cp.error = why
        self._count("hospitalized", cp.flow_class)
        self.batch.put_header_unchecked(fid, encode_header(cp))
        self.batch.set_wake(fid, False)
        parked.mark(self.batch, fid)

    def _park(self, rt: FlowRuntime, why: str, retry_in: Optional[float] = None,
              failure: Optional[BaseException] = None) -> None:
        """The flow hospital: put the flow back to its last checkpoint and park it.

        Whatever it did since that checkpoint is discarded (its frames are never sent),
        but frames it accepted since are kept in its inbox, since their senders may
        already have been told they arrived. With ``retry_in`` it is retried from there
        automatically; otherwise it waits for an operator (``retry`` or ``kill``).
        """
        fid = rt.flow_id
        cp = self._last_good(rt) or rt.cp
        b = self.batch
        for f in rt.fresh:
            st = cp.sessions.get(f.sid)
            if st is None:
                continue
            st.recv_seq = max(st.recv_seq, f.seq + 1)
            if f.info is not None and st.peer_info is None:
                st.peer_info = tuple(f.info)
            if carries_message(f):
                payloads.persist_inbox_frame(b, fid, f)
                rt.inboxed = True
        if rt.start_blob is not None:
            b.start_flow(fid, rt.start_blob)
            rt.start_blob = None
            if self.limits is not None and cp.invoker_sid is not None:
                self.limits.first_stored(b, rt)
        cp.status = FlowStatus.HOSPITALIZED
        cp.error = why
        if failure is not None:   # where it failed, with its locals, for the dump
            stacks.at_failure(self, b, rt, failure)
        cp.retry_at = None if retry_in is None else self.clock.now() + retry_in
        if retry_in is None:
            self._count("hospitalized", cp.flow_class)
        if retry_in is not None:
            cp.retries += 1
            heapq.heappush(self.timers, (cp.retry_at, fid))
        b.set_wake(fid, retry_in is not None)
        b.put_header(fid, encode_header(cp))
        parked.mark(b, fid)
        rt.out = ()
        self._evict(rt, "hospitalized")
        self.touched.pop(fid, None)
        level = logging.WARNING if retry_in is not None else logging.ERROR
        log.log(level, "%s: flow %s (%s) hospitalized: %s%s", self.identity.name, fid,
                cp.flow_class, log_text(why), f"; retry in {retry_in:.1f}s" if retry_in is not None else "")

    def retry(self, fid: str) -> bool:
        """Take a flow out of the hospital and run it again from its last checkpoint."""
        if fid in self.ended:
            return False
        try:
            cp = self.store.checkpoint(fid)
        except Exception as exc:
            raise FlowError(f"the checkpoint of flow {fid} cannot be read ({type(exc).__name__}: "
                            f"{exc}): it cannot run again; kill it") from exc
        if cp is None or cp.status != FlowStatus.HOSPITALIZED or fid in self.resident:
            return False
        cp.status = FlowStatus.RUNNABLE
        if cp.retry_at is None:
            # Parked for good, retried by an operator: a fresh start of the hospital's
            # retries (one more failure was parked at once, "after 5 retries").
            cp.retries = 0
        cp.retry_at = None
        cp.error = None
        self._count("retried", cp.flow_class)
        blob = encode_header(cp)
        self.batch.put_header_unchecked(fid, blob)
        parked.unmark(self.batch, fid)
        rt = self._load(fid, cp)
        if rt is not None:
            # Its last good checkpoint until this round commits: a failure in this round
            # goes back to it, not to the stored one of before the retry (whose retry
            # count a threaded node, retrying within a round, carried on: "after 6 retries").
            rt.base = blob
        return rt is not None
