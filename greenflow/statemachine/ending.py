"""Ending flows: recording a finished flow's result, releasing its routes, sessions
and greenlet, evicting (hibernating) a waiting flow, and killing one.

Part of the scheduler (`Scheduler` inherits it).
"""
from __future__ import annotations

import logging
import traceback
from itertools import islice
from math import ceil
from typing import Any, Callable

from greenflow import serialization
from greenflow.errors import FlowException, KeyTooLong
from greenflow.log_limits import log_text
from greenflow.runtime.divergence import parked_reason
from greenflow.runtime.flow_runtime import Ended, FlowRuntime
from greenflow.runtime.init_fields import init_fields, init_parameters
from greenflow.runtime.checkpoint import Checkpoint
from greenflow.statemachine import parked
from greenflow.statemachine.hospital import backoff, is_transient
from greenflow.messages import MAX_ERROR_TEXT, cut_text, encode_frame, exception_text
from greenflow.flows.flow_logic import FlowLogic
from greenflow.flows.registry import qualified_name
from greenflow.status import FlowStatus
from greenflow.storage.interface import dump_result
from greenflow.runtime.traps import Unwind, recycle
from greenflow.statemachine.routing import FINISHED_ROUTE

log = logging.getLogger("greenflow.scheduler")
_DONE = (Ended.DONE,)
_KILLED = (Ended.KILLED,)
# Read once: an enum member looked up on its class costs a descriptor call each time.
_COMPLETED, _FAILED, _KILLED_STATUS = FlowStatus.COMPLETED, FlowStatus.FAILED, FlowStatus.KILLED
#: The cache of recent results keeps every record up to this size (stored bytes) until
#: its 15,000 records are full; bigger ones share `RECENT_BIG_RESULTS_BYTES`. Twenty flows
#: that returned 50 MB each held a gigabyte there; with a 64 KiB bound, flows that return
#: a transaction (~1.5 KB stored, ~5 KB in memory) still held ~100 MB in 15,000 records.
RECENT_RESULT_BYTES = 1 << 10
#: The stored bytes of the latest big records the cache keeps once committed (older ones,
#: and any record bigger than this, are read from the store when asked for): a client
#: reading the transactions its trades returned right after they end is not made to
#: decode each again, and the cache stays a few megabytes.
RECENT_BIG_RESULTS_BYTES = 2 << 20


#: The parts of a traceback a flow's failure logs from its start and from its end: a
#: failure deep in a recursion logs ~50 of them, not thousands of lines.
TRACEBACK_HEAD, TRACEBACK_TAIL = 20, 30


def failure_text(exc: BaseException) -> str:
    """``exc`` with its traceback, for the log: the outermost and innermost frames, each
    part cut (`cut_text`), what lies between counted."""
    parts = traceback.format_exception(type(exc), exc, exc.__traceback__)
    if len(parts) > TRACEBACK_HEAD + TRACEBACK_TAIL + 1:
        skipped = len(parts) - TRACEBACK_HEAD - TRACEBACK_TAIL
        parts = [*parts[:TRACEBACK_HEAD], f"  ... {skipped:,} more parts of the traceback ...\n",
                 *parts[-TRACEBACK_TAIL:]]
    return "".join(cut_text(part, MAX_ERROR_TEXT) for part in parts)


class Ending:
    """How flows leave memory: finished, evicted or killed."""

    def _finish(self, rt: FlowRuntime, res: tuple) -> None:
        kind = res[0]
        fid = rt.flow_id
        if kind == Ended.DIVERGED or rt.diverged is not None:
            self._park(rt, parked_reason(rt.diverged or "", self._code_changed(rt)))
            return
        if kind == Ended.FAILED and type(res[1]) is AttributeError:
            why = self._field_added(rt, res[1])
            if why:   # the code's fault, not the flow's: parked until compatible code runs
                self._park(rt, why, failure=res[1])
                return
        if kind == Ended.FAILED and is_transient(res[1]):
            exc = res[1]
            why = f"{type(exc).__name__}: {exception_text(exc)}"
            if rt.cp.retries < self.max_retries:
                self._park(rt, why, retry_in=backoff(rt.cp.retries, self.retry_backoff),
                           failure=exc)
            else:
                self._park(rt, f"{why} (still failing after {rt.cp.retries} retries)",
                           failure=exc)
            return
        cp = rt.cp
        now = self.clock.now()
        # Rounded up to the second: never sooner than the retention asks, and the records
        # of the flows a round ends share one expiry entry in the store.
        expires = float(ceil(now + self.retention))   # (a retention is at most a century)
        record: dict[str, Any] = {"flow_class": cp.flow_class, "client_id": cp.client_id,
                                  "started_at": cp.started_at, "finished_at": now}
        if kind == Ended.DONE:
            rt.end_frames(_DONE)
            record["status"] = status = _COMPLETED
            record["value"] = res[1]
        elif kind == Ended.FAILED:
            exc = res[1]
            if isinstance(exc, (FlowException, KeyTooLong)):   # (says all: no traceback)
                log.info("%s: flow %s (%s) failed: %s: %s", self.identity.name, fid,
                         cp.flow_class, type(exc).__name__, log_text(exception_text(exc)))
            else:   # once per interval per class, the rest counted: a peer starting
                # responders that fail at once filled every rotated log in a minute
                self.peer_log.warning(f"failed {cp.flow_class}", "%s: flow %s (%s) failed:\n%s",
                                      self.identity.name, fid, cp.flow_class,
                                      log_text(failure_text(exc), 20_000))
            rt.end_frames((Ended.FAILED, exc))
            record["status"] = status = _FAILED
            text = exception_text(exc, MAX_ERROR_TEXT)
            record["error"] = f"{type(exc).__name__}: {text}"
            if isinstance(exc, FlowException):
                # Kept as the wire carries it: unpickling would call the class's __init__
                # with the message alone, which a FlowException never gets rebuilt by.
                record["flow_exception"] = (qualified_name(type(exc)), text,
                                            exc.ensure_error_id())
                fields = {k: v for k, v in getattr(exc, "__dict__", {}).items()
                          if k != "error_id" and not k.startswith("_gf_")}
                if fields:   # its own attributes (e.shortfall), where they pickle
                    blob = serialization.try_dumps(fields, limit=64 * 1024)
                    if blob is not None:
                        record["flow_exception_fields"] = blob
            else:
                record["exc"] = serialization.try_dumps(exc, limit=1 << 20)
        else:   # KILLED, or UNWOUND (a kill's unwinding)
            rt.end_frames(_KILLED)
            record["status"] = status = _KILLED_STATUS
            record["error"] = "FlowKilled: killed by an operator"
        cp.status = status
        self.ended.add(fid)
        b = self.batch
        if self.limits is not None and cp.invoker_sid is not None:
            self.limits.ended(b, rt)
        if rt.start_blob is None:  # something of it was stored
            b.drop_flow(fid, max(cp.journal_len, 0), rt.chunks, rt.inboxed)
            if cp.timer_at is not None:
                b.delete_timer(cp.timer_at, fid)
        for st in cp.sessions.values():
            if st.initiator:
                continue  # late frames on it are recognised by the flow's result record
            key = (st.counterparty.name, st.sid, st.role_of_peer)
            self._put_route(key, FINISHED_ROUTE + fid.encode(), expires)
            self.routes.pop(key, None)
        try:
            blob = dump_result(record)
        except Exception as exc:  # the return value cannot be stored
            record.pop("value", None)
            record["status"] = status = cp.status = _FAILED
            record["error"] = (f"FlowError: the result of {cp.flow_class} cannot be stored: "
                               f"{exception_text(exc)}")
            blob = dump_result(record)
        b.put_result(fid, blob, expires)
        if len(blob) > RECENT_RESULT_BYTES:
            self.big_results.append((fid, len(blob)))
        self._count(status._value_, cp.flow_class)
        if cp.client_id is not None:
            b.expire_client(cp.client_id, expires)
        for fn in self.flow_end_listeners:
            try:
                fn(fid)
            except Exception:
                log.exception("%s: flow-end listener failed for flow %s", self.identity.name, fid)
        if rt.out:
            self._queue_frames(rt)
        self._release(rt)
        self.resident.pop(fid, None)
        self.touched.pop(fid, None)
        recent = self.recent_results
        recent[fid] = record
        if len(recent) > 15_000:  # the store has them all; this is a cache of the latest
            # Trimmed in bulk: popping the oldest one by one walks the dict's deleted
            # slots from its start each time, which grew with every pop.
            self.recent_results = dict(islice(recent.items(), len(recent) - 10_000, None))
        waiters = self.waiters.pop(fid, None)
        if waiters:
            self.post_callbacks.extend((lambda w=w: w(record)) for w in waiters)
        if self.progress_listeners:
            self.progress_changed(rt, None)

    def _keep_big_results(self) -> None:
        """After a commit: this round's big result records join the kept ones; the
        oldest beyond the byte budget leave `recent_results` (the store has them)."""
        kept = self.kept_big
        kept.extend(self.big_results)
        self.kept_big_bytes += sum(size for _, size in self.big_results)
        self.big_results = []
        recent = self.recent_results
        while self.kept_big_bytes > RECENT_BIG_RESULTS_BYTES:
            fid, size = kept.popleft()
            self.kept_big_bytes -= size
            recent.pop(fid, None)

    def when_finished(self, fid: str, fn: Callable[[dict], None]) -> None:
        """``fn(result record)`` once flow ``fid`` has ended and its result is durable."""
        self.waiters.setdefault(fid, []).append(fn)

    def forget_waiter(self, fid: str, fn: Callable[[dict], None]) -> None:
        """Undo `when_finished` (its caller stopped waiting)."""
        fns = self.waiters.get(fid)
        if fns is not None:
            try:
                fns.remove(fn)
            except ValueError:
                pass
            if not fns:
                del self.waiters[fid]

    def _queue_frames(self, rt: FlowRuntime) -> None:
        put = self.batch.put_outbox
        send = self.post_sends.append
        for o in rt.out:
            peer, frame = o.peer, o.frame
            data = encode_frame(frame)
            put(peer.name, frame.sid, frame.to_responder, frame.seq, data)
            send((peer, data))
        rt.out = ()

    def _evict(self, rt: FlowRuntime, why: str = "evicted") -> None:
        """Drop a flow from memory (its checkpoint is durable), unwinding its greenlet
        with I/O refused so its ``finally`` blocks run now, not at a random GC moment."""
        g = rt.greenlet
        rt.io_refused = why
        if g is not None and not g.dead and g:
            try:
                g.throw(Unwind(why))
            except BaseException:  # noqa: BLE001 - whatever the flow did while unwinding
                pass
        self._release(rt)
        self.resident.pop(rt.flow_id, None)
        for st in rt.cp.sessions.values():
            if not st.initiator:
                self.routes.pop((st.counterparty.name, st.sid, st.role_of_peer), None)

    @staticmethod
    def _release(rt: FlowRuntime) -> None:
        """Break the runtime <-> greenlet cycle, so a finished or evicted flow is freed by
        reference counting at once, not later by the cyclic collector (which at high
        concurrency cost a third of the scheduler's time); an idle greenlet is kept for
        the next flow (`traps.recycle`)."""
        g = rt.greenlet
        if g is not None:
            rt.greenlet = None
            recycle(g, rt.sched.idle_greenlets)

    def _field_added(self, rt: FlowRuntime, exc: AttributeError) -> str:
        """Why a flow failed reading a field that its class's ``__init__`` sets (a
        parameter, or ``self.name = ...``; see `init_fields`) but the object lacks: most
        likely a field added since the flow started (a restored flow, and every object
        its fields hold, is not made again by the code running now: its ``__init__`` ran
        once, under the code it started with). The code's fault, not the flow's: the flow
        is parked until code that runs it is deployed. Empty for any other error."""
        obj, name = getattr(exc, "obj", None), getattr(exc, "name", None)
        if obj is None or isinstance(obj, type) or not name or hasattr(type(obj), name) \
                or name in getattr(obj, "__dict__", {name: None}) \
                or name not in init_fields(type(obj)):
            return ""
        cls = qualified_name(type(obj))
        what = "this flow object" if isinstance(obj, FlowLogic) else f"a {cls} object of the flow"
        verb = "takes" if name in init_parameters(type(obj)) else "sets"
        return (f"AttributeError: {cls}.__init__ {verb} {name!r}, but {what} has no attribute "
                f"{name!r}: a field added since the flow started (its __init__ ran under the "
                f"code it started with), or an __init__ that does not always set it"
                f"{self._code_changed(rt)}; give {name} a class-level default or deploy code "
                "that sets it, then retry the flow")

    def _unreadable_killed(self, fid: str, exc: BaseException) -> Checkpoint:
        """What is known of a flow whose checkpoint cannot be read, for its kill: its id
        and class (from its start record, if that reads). Its sessions were in the
        checkpoint, so its peers are not told; its records are dropped by a scan."""
        self.unreadable.discard(fid)
        try:
            name = qualified_name(type(serialization.loads(self.store.logic_blob(fid))))  # type: ignore[arg-type]
        except Exception:  # noqa: BLE001 - damaged too: the id is enough
            name = "<unreadable>"
        log.warning("%s: flow %s (%s), whose checkpoint cannot be read (%s: %s), is killed; "
                    "its peers are not told (its sessions were in that checkpoint)",
                    self.identity.name, fid, name, type(exc).__name__, exc)
        return Checkpoint(fid, name)

    def kill(self, fid: str) -> bool:
        rt = self.resident.get(fid)
        if rt is None:
            try:
                cp = None if fid in self.ended else self.store.checkpoint(fid)
            except Exception as exc:  # noqa: BLE001 - a damaged checkpoint: killed all the same
                cp = self._unreadable_killed(fid, exc)
            if cp is None:
                return False
            if self.store.logic_blob(fid) is None and self.store.result(fid) is not None:
                self.batch.drop_flow(fid, cp.journal_len)   # a finished flow's leftover header:
                return True                                 # its result stands
            try:
                logic = serialization.loads(self.store.logic_blob(fid))  # type: ignore[arg-type]
            except Exception:
                logic = None
            rt = FlowRuntime(self, cp, logic, [])  # type: ignore[arg-type]
            parked.unmark(self.batch, fid)   # parked ones are on disk only
        self._evict(rt, "killed")   # unwinds its greenlet with I/O refused
        rt.out = ()              # anything produced while unwinding is not sent
        self._finish(rt, (Ended.KILLED,))
        return True
