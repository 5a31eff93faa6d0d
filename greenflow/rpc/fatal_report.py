"""A node process killed by a fatal signal says so in its own log.

A fault inside C code (SIGSEGV; SIGBUS when a memory-mapped store file shrinks under the
process; SIGFPE, SIGABRT, SIGILL) ends the process before any Python logging can run, so
``node.log`` (or a cluster worker's log) used to end mid-sentence. Python's `faulthandler`
writes, from the signal handler itself, the signal's name and the stack of the thread that
faulted to one file descriptor; `FatalReport` points it at the log file the node writes,
and follows that file across rotations. Only that thread's: walking the other threads'
frames while they run can fault in turn (seen: a dump that began with another thread
ended in a second, nested "Segmentation fault" before it reached the faulting one).

The descriptor must stay open as long as faulthandler holds it (a closed number may be
reused by another file, which a fault would then scribble into), so before the log's
stream closes the report goes back to stderr.
"""
from __future__ import annotations

import faulthandler
import sys
import threading
from typing import IO, Any, Optional

_lock = threading.Lock()
_target: Optional[IO[Any]] = None


def report_into(stream: IO[Any]) -> None:
    """Send the report of a fatal signal to ``stream`` (an open file with a descriptor)."""
    global _target
    with _lock:
        try:
            faulthandler.enable(file=stream, all_threads=False)
        except (ValueError, OSError, AttributeError):   # no descriptor: leave it as it was
            return
        _target = stream


def withdraw(stream: Optional[IO[Any]]) -> None:
    """``stream`` is about to close: report to stderr again (or not at all, without one)."""
    global _target
    with _lock:
        if stream is None or _target is not stream:
            return
        _target = None
        try:
            faulthandler.enable(file=sys.__stderr__, all_threads=False)
        except (ValueError, OSError, AttributeError):   # no usable stderr (a daemon)
            faulthandler.disable()


class FatalReport:
    """For a `logging.FileHandler` subclass (listed before it): the report of a fatal
    signal goes into the handler's file, the current one after each rotation."""

    stream: Any

    def _open(self) -> IO[Any]:
        stream = super()._open()   # type: ignore[misc]
        report_into(stream)
        return stream

    def doRollover(self) -> None:
        withdraw(self.stream)
        super().doRollover()   # type: ignore[misc]   # reopens through _open

    def close(self) -> None:
        withdraw(getattr(self, "stream", None))
        super().close()   # type: ignore[misc]
