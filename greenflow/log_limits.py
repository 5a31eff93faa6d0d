"""Keeping the node's log bounded against what others send.

A client of the RPC, or anyone who can reach the P2P port, controls how often a warning
fires (one per failed login, one per refused connection) and what it quotes (a user
name, a path, the name a hello claims). Unbounded, that lets them fill the disk and
rotate away the lines that matter. So their text is cut and escaped before it is logged
(`clip`), repeated warnings are summarised once per interval (`RateLimitedLog`), and
``node.log`` rotates by size (`greenflow.rpc.node_process.setup_logging`). It lives
at the bottom of the package, so that every layer (the scheduler's inbound frames,
the transport, the RPC) can use it.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable

CLIP_CHARS = 80


def clip(text: Any, limit: int = CLIP_CHARS) -> str:
    """``text`` as a quoted, printable string of bounded length: non-printable characters
    escaped (``repr`` style), anything past ``limit`` characters cut and counted."""
    s = text if isinstance(text, str) else str(text)
    head = s[:limit]
    out = repr(head)
    if len(s) > limit:
        out += f"...(+{len(s) - limit} chars)"
    return out


_CONTROLS = {c: f"\\x{c:02x}" for c in (*range(0, 9), *range(11, 32), 127)}


def log_text(text: Any, limit: int = 4000) -> str:
    """Text a flow (and so perhaps a client) controls, as a log line may carry it: control
    characters escaped (an ESC sequence cannot restyle a terminal), each line after the
    first indented (a newline cannot start what looks like a record of its own), cut past
    ``limit`` characters. Unlike `clip`, keeps a multi-line message readable."""
    s = text if isinstance(text, str) else str(text)
    out = s[:limit].translate(_CONTROLS).replace("\n", "\n    ")
    if len(s) > limit:
        out += f"...(+{len(s) - limit} chars)"
    return out


class RateLimitedLog:
    """At most one line per ``interval`` seconds per key: the first occurrence is logged
    at once, the ones after it are counted, and the next line (when the interval has
    passed) says how many were left out. ``flush()`` writes pending summaries."""

    def __init__(self, logger: logging.Logger, interval: float = 10.0, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.log, self.interval, self.clock = logger, interval, clock
        self._lock = threading.Lock()
        self._state: dict[str, list] = {}  # key -> [last_logged_at, suppressed, last_text]

    def warning(self, key: str, msg: str, *args: Any) -> None:
        self._emit(logging.WARNING, key, msg, args)

    def info(self, key: str, msg: str, *args: Any) -> None:
        self._emit(logging.INFO, key, msg, args)

    def exception(self, key: str, msg: str, *args: Any) -> None:
        """As `warning`, at ERROR with the current exception's traceback when logged."""
        self._emit(logging.ERROR, key, msg, args, exc_info=True)

    def _emit(self, level: int, key: str, msg: str, args: tuple, exc_info: bool = False) -> None:
        now = self.clock()
        with self._lock:
            st = self._state.get(key)
            if st is not None and now - st[0] < self.interval:
                st[1] += 1
                st[2] = (msg, args, level)
                return
            suppressed = st[1] if st is not None else 0
            if len(self._state) > 1000:  # keys are ours, but stay bounded anyway
                self._state.clear()
            self._state[key] = [now, 0, None]
        if suppressed:
            self.log.log(level, msg + " (and %d more like it in the last %.0f s)",
                         *args, suppressed, self.interval, exc_info=exc_info)
        else:
            self.log.log(level, msg, *args, exc_info=exc_info)

    def flush(self, force: bool = False) -> None:
        """Write the summaries of keys whose interval has passed (all of them with
        ``force``), so the count of a burst that stopped is not lost."""
        now = self.clock()
        with self._lock:
            due = [(k, st) for k, st in self._state.items()
                   if st[1] and (force or now - st[0] >= self.interval)]
            for k, _ in due:
                self._state[k] = [now, 0, None]
        for _, (_, n, last) in due:
            msg, args, level = last
            if n > 1:   # the last one held back, and how many before it
                self.log.log(level, msg + " (and %d more like it in the last %.0f s)",
                             *args, n - 1, self.interval)
            else:       # (it was the only one: "and 0 more" said nothing)
                self.log.log(level, msg, *args)


__all__ = ["CLIP_CHARS", "RateLimitedLog", "clip"]
