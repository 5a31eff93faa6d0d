"""What keeps one RPC client from starving the others: limits, the login guard and the
HTTP server that enforces them (see docs/rpc.md, "Limits").

The server is the standard library's `http.server` on a bounded pool: one worker thread
per open connection, at most ``max_connections`` of them (a connection beyond that is
answered ``503`` at once and closed, so a burst gets an answer instead of a hang), a real
listen backlog, and a deadline per request: from the end of one answer to the end of
the next request's body a connection has ``request_timeout`` seconds, so idle,
half-open and trickling connections give their thread back. A third-party server
(waitress) was considered: its fixed task pool would be held by the long-lived
``/progress`` streams, and the limits that matter here (logins, streams, JSON depth) are
the application's own anyway, so the node keeps no dependency for its RPC.

Password checks (Argon2id, ~0.1 s and 64 MB each by design) are what a flood of wrong
passwords would spend: `LoginGuard` remembers successful checks, runs one check at a
time with a bounded wait, one per client address (concurrent ones wait for it), backs a client
off with ``429`` after ``login_failures`` failures in ``login_window`` seconds, and
answers an unknown user name only after the same hash work as a known one, so names
cannot be told apart by timing.
"""
from __future__ import annotations

import base64
import collections
import hashlib
import heapq
import http.server
import json
import logging
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, fields
from typing import Any, Callable, Optional

from greenflow.rpc.log_limits import RateLimitedLog, clip
from greenflow.network.node_config import ConfigError, check_password

log = logging.getLogger("greenflow.rpc")


class LimitExceeded(Exception):
    """A request is refused by a limit: answered with ``status`` and the message."""

    def __init__(self, status: int, type_: str, message: str,
                 retry_after: Optional[float] = None) -> None:
        super().__init__(message)
        self.status, self.type, self.message, self.retry_after = status, type_, message, retry_after


@dataclass
class RpcLimits:
    """The RPC's limits; set any of them in the ``[rpc]`` table of ``node.toml``."""

    max_connections: int = 128      # connections served at once, one worker thread each
    max_streams: int = 32           # of those, /progress streams
    backlog: int = 1024             # the listen queue of connections not yet accepted
    request_timeout: float = 20.0   # end of an answer -> end of the next request; also each send
    max_body_bytes: int = 1 << 20   # a request body
    max_json_depth: int = 64        # nesting of [ and { in a body
    stream_buffer: int = 1000       # events a /progress stream may be behind before it is dropped
    stream_status_flows: int = 1000  # flows listed in the first event of /progress
    login_failures: int = 5         # failed logins per client address within login_window ...
    login_window: float = 60.0      # ... before it gets 429 until the window clears
    login_wait: float = 5.0         # a password check waits this long for its turn, then 503
    log_interval: float = 10.0      # repeated warnings: one line per interval

    @classmethod
    def from_config(cls, doc: Optional[dict], where: str = "node.toml [rpc]") -> "RpcLimits":
        doc = dict(doc or {})
        known = {f.name: f for f in fields(cls)}
        out = cls()
        for key, value in doc.items():
            f = known.get(key)
            if f is None:
                raise ConfigError(f"{where}: unknown option {key!r} (known: {', '.join(known)})")
            want = int if f.type in ("int", int) else float
            if isinstance(value, bool) or not isinstance(value, (int, float)) \
                    or (want is int and not isinstance(value, int)) or value <= 0:
                raise ConfigError(f"{where}: `{key}` must be a positive "
                                  f"{'integer' if want is int else 'number'}, found {value!r}")
            setattr(out, key, want(value))
        if out.max_streams >= out.max_connections:
            raise ConfigError(f"{where}: `max_streams` ({out.max_streams}) must be below "
                              f"`max_connections` ({out.max_connections}), or streams could "
                              "hold every connection")
        return out


# ---------------------------------------------------------------------------- JSON
def json_depth(value: Any, limit: int) -> int:
    """The nesting depth of a parsed JSON value, walked without recursion and stopping
    as soon as it passes ``limit`` (so the cost is linear in the value, bounded)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        v, d = stack.pop()
        if isinstance(v, dict):
            v = v.values()
        elif not isinstance(v, list):
            continue
        deepest = max(deepest, d)
        if deepest > limit:
            return deepest
        stack.extend((x, d + 1) for x in v if isinstance(x, (list, dict)))
    return deepest


def parse_json_body(raw: bytes, limit: int) -> Any:
    """The body as JSON, or `LimitExceeded` (400) naming what is wrong with it: not JSON,
    or nested deeper than ``limit`` (``max_json_depth``)."""
    too_deep = LimitExceeded(400, "BadRequest", f"the body is nested deeper than {limit} "
                             "levels (max_json_depth)")
    try:
        doc = json.loads(raw)
    except RecursionError:
        raise too_deep from None
    except ValueError as exc:
        raise LimitExceeded(400, "BadRequest", f"the body is not JSON: {exc}") from None
    if json_depth(doc, limit) > limit:
        raise too_deep
    return doc


# ---------------------------------------------------------------------------- logins
class LoginGuard:
    """Checks basic-auth credentials without letting failures cost the node much."""

    MAX_CLIENTS = 10_000  # addresses tracked for back-off (oldest forgotten first)

    def __init__(self, limits: RpcLimits, user_for: Callable[[str], Any],
                 any_hash: Callable[[], Optional[str]]) -> None:
        self.limits = limits
        self._user_for, self._any_hash = user_for, any_hash
        self._ok: dict[str, set[bytes]] = {}
        self._lock = threading.Lock()                  # the tables below
        self._hash_gate = _PriorityGate()              # one Argon2 check at a time
        self._failures: "collections.OrderedDict[str, collections.deque]" = collections.OrderedDict()
        self._per_client: dict[str, list] = {}  # address -> [lock, users of the entry]
        self.warn = RateLimitedLog(log, limits.log_interval)
        self.failed = 0  # counters, for tests and the node's stats
        self.backed_off = 0

    def authenticate(self, client: str, header: Optional[str]) -> Any:
        """The account for ``header`` sent from address ``client``, or `LimitExceeded`
        (401 wrong credentials, 429 backed off, 503 checks saturated)."""
        if not header or not header.startswith("Basic "):
            raise LimitExceeded(401, "Unauthorized", "this node needs HTTP basic authentication")
        try:
            user, _, password = base64.b64decode(header[6:], validate=True).decode("utf-8").partition(":")
        except (ValueError, UnicodeError):
            raise LimitExceeded(401, "Unauthorized", "malformed basic authentication") from None
        # Backed-off clients are refused before the cache is consulted: a cache hit is a
        # correct guess, so answering it during back-off would be a free guessing oracle.
        wait = self._backoff(client)
        if wait:
            self.backed_off += 1
            self.warn.warning("backoff", "RPC: refusing logins from %s for %.0f s after %d "
                              "failed logins", client, wait, self.limits.login_failures)
            raise LimitExceeded(429, "TooManyFailedLogins",
                                f"too many failed logins from {client}: retry in {wait:.0f} s",
                                retry_after=wait)
        account = self._user_for(user)
        digest = hashlib.sha256(user.encode("utf-8", "replace") + b"\0"
                                + password.encode("utf-8", "replace")).digest()
        if account is not None and digest in self._ok.get(user, ()):
            return account
        # One check at a time per address: the others wait for it (a client's threads
        # logging in together after a restart pay one check, then hit the cache), so a
        # flooding address costs one hash at a time and soon backs itself off.
        with self._lock:
            entry = self._per_client.setdefault(client, [threading.Lock(), 0])
            entry[1] += 1
        try:
            if not entry[0].acquire(timeout=self.limits.login_wait):
                raise LimitExceeded(503, "Busy", "password checks are saturated: retry later",
                                    retry_after=1)
            try:
                return self._check(client, user, password, account, digest)
            finally:
                entry[0].release()
        finally:
            with self._lock:
                entry[1] -= 1
                if not entry[1]:
                    self._per_client.pop(client, None)

    def _check(self, client: str, user: str, password: str, account: Any, digest: bytes) -> Any:
        wait = self._backoff(client)
        if wait:
            self.backed_off += 1
            raise LimitExceeded(429, "TooManyFailedLogins",
                                f"too many failed logins from {client}: retry in {wait:.0f} s",
                                retry_after=wait)
        if account is not None and digest in self._ok.get(account.username, ()):
            return account  # checked by the request this one waited for
        # Addresses with fewer recent failures go first: an honest first login does not
        # queue behind the checks of addresses that keep failing.
        if not self._hash_gate.acquire(self._failure_count(client), self.limits.login_wait):
            raise LimitExceeded(503, "Busy", "password checks are saturated: retry later",
                                retry_after=1)
        try:
            # An unknown user costs the same hash work as a known one (any configured
            # hash has the node's parameters), so timing does not reveal user names.
            stored = account.password_hash if account is not None else self._any_hash()
            ok = check_password(stored, password) if stored else False
            ok = ok and account is not None
        finally:
            self._hash_gate.release()
        if not ok:
            self._fail(client)
            self.failed += 1
            self.warn.warning("failed", "RPC: failed login as %s from %s", clip(user), client)
            raise LimitExceeded(401, "Unauthorized", "wrong username or password")
        with self._lock:
            self._ok.setdefault(user, set()).add(digest)
            self._failures.pop(client, None)
        return account

    def _failure_count(self, client: str) -> int:
        with self._lock:
            q = self._failures.get(client)
            return len(q) if q else 0

    def backoff(self, client: str) -> float:
        """Seconds ``client`` must still wait before a login is checked again (0: none)."""
        return self._backoff(client)

    def _backoff(self, client: str) -> float:
        now = time.monotonic()
        with self._lock:
            q = self._failures.get(client)
            if q is None:
                return 0.0
            while q and now - q[0] > self.limits.login_window:
                q.popleft()
            if len(q) < self.limits.login_failures:
                return 0.0
            return max(1.0, self.limits.login_window - (now - q[0]))

    def _fail(self, client: str) -> None:
        with self._lock:
            q = self._failures.pop(client, None)
            if q is None:
                q = collections.deque(maxlen=self.limits.login_failures)
            q.append(time.monotonic())
            self._failures[client] = q
            while len(self._failures) > self.MAX_CLIENTS:
                self._failures.popitem(last=False)


class _PriorityGate:
    """A lock whose waiters enter lowest priority value first (FIFO among equals)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._busy = False
        self._waiting: list[tuple[int, int]] = []
        self._seq = 0

    def acquire(self, priority: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self._cond:
            self._seq += 1
            me = (priority, self._seq)
            heapq.heappush(self._waiting, me)
            while self._busy or self._waiting[0] != me:
                left = deadline - time.monotonic()
                if left <= 0:
                    self._waiting.remove(me)
                    heapq.heapify(self._waiting)
                    self._cond.notify_all()
                    return False
                self._cond.wait(left)
            heapq.heappop(self._waiting)
            self._busy = True
            return True

    def release(self) -> None:
        with self._cond:
            self._busy = False
            self._cond.notify_all()


# ---------------------------------------------------------------------------- the server
class _Conn:
    __slots__ = ("sock", "deadline")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.deadline: Optional[float] = None  # reading a request must end by then


REFUSED = (b"HTTP/1.1 %s\r\nContent-Type: application/json\r\n"
           b"Retry-After: %d\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s")


TARPIT_SECONDS = 1.0


class BoundedHTTPServer(http.server.HTTPServer):
    """`http.server.HTTPServer` with a bounded worker pool, a connection cap and a
    deadline per request (see the module's docstring)."""

    MAX_LINGERING = 512   # refused connections closing (their answer sent)
    MAX_DELAYED = 256     # backed-off connections waiting for their 429

    allow_reuse_address = True
    daemon_threads = True

    def __init__(self, address: tuple[str, int], handler: type, limits: RpcLimits) -> None:
        self.limits = limits
        self.request_queue_size = limits.backlog
        super().__init__(address, handler)
        self.conn_lock = threading.Lock()
        self.open_connections: dict[socket.socket, _Conn] = {}
        self._pool = ThreadPoolExecutor(max_workers=limits.max_connections,
                                        thread_name_prefix="gf-rpc")
        self._lingering: "collections.deque[tuple[float, socket.socket]]" = collections.deque()
        self._delayed: "collections.deque[tuple[float, socket.socket, bytes]]" = collections.deque()
        self._closed = threading.Event()
        self.refused = 0
        # Set by the RPC: seconds a client address is backed off for (0: it is not). Such a
        # client is answered 429 in the accept loop, with no worker and no parsing, so a
        # flood from it costs the node little more than the accepts.
        self.backoff: Optional[Callable[[str], float]] = None
        self.warn = RateLimitedLog(log, limits.log_interval)
        self.warners: list[RateLimitedLog] = [self.warn]  # summaries flushed by the janitor
        self._janitor = threading.Thread(target=self._sweep, name="gf-rpc-janitor", daemon=True)
        self._janitor.start()

    # ------------------------------------------------------------------ accepting
    def process_request(self, request: Any, client_address: Any) -> None:
        wait = self.backoff(client_address[0]) if self.backoff and client_address else 0.0
        if wait:
            body = (b'{"error": {"type": "TooManyFailedLogins", "message": "too many failed '
                    b'logins from %s: retry in %d s"}}\n' % (client_address[0].encode(), wait))
            answer = REFUSED % (b"429 Too Many Requests", max(1, round(wait)), len(body), body)
            with self.conn_lock:  # answered a second later: a client that waits for its
                if len(self._delayed) < self.MAX_DELAYED:  # answers floods 1 request/s
                    self._delayed.append((time.monotonic() + TARPIT_SECONDS, request, answer))
                    return
            return self._refuse(request, answer)
        with self.conn_lock:
            full = len(self.open_connections) >= self.limits.max_connections
            if not full:
                conn = self.open_connections[request] = _Conn(request)
                conn.deadline = time.monotonic() + self.limits.request_timeout
        if full:
            self.refused += 1
            self.warn.warning("full", "RPC: %d connections open (the limit): refusing new ones "
                              "with 503 (latest from %s)", self.limits.max_connections,
                              client_address[0] if client_address else "?")
            body = (b'{"error": {"type": "Busy", "message": "the node serves %d RPC connections '
                    b'already (max_connections): retry later"}}\n' % self.limits.max_connections)
            return self._refuse(request, REFUSED % (b"503 Service Unavailable", 1, len(body), body))
        try:
            self._pool.submit(self._work, request, client_address)
        except RuntimeError:  # the pool is shut down: the server is stopping
            self._forget(request)
            self.shutdown_request(request)

    def _work(self, request: Any, client_address: Any) -> None:
        try:
            self.finish_request(request, client_address)
        except OSError:  # the client reset, left or timed out: nothing to answer or log
            pass
        except Exception:  # noqa: BLE001 - one connection's failure, keep serving
            self.handle_error(request, client_address)
        finally:
            self._forget(request)
            self.shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Into the node's log, once per interval (the standard library prints every
        traceback to stderr, which a client could use to flood it)."""
        self.warn.exception("error", "RPC: a connection from %s failed",
                            client_address[0] if client_address else "?")

    def _forget(self, request: Any) -> None:
        with self.conn_lock:
            self.open_connections.pop(request, None)

    def _refuse(self, sock: socket.socket, answer: bytes) -> None:
        """Answer without a worker, then close after a short linger (closing with the
        request unread would reset the connection and lose the answer)."""
        try:
            sock.setblocking(False)
            try:
                sock.recv(65536)
            except OSError:
                pass
            sock.send(answer)
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            sock.close()
            return
        with self.conn_lock:
            if len(self._lingering) < self.MAX_LINGERING:
                self._lingering.append((time.monotonic() + 1.0, sock))
                return
        sock.close()

    # ------------------------------------------------------------------ deadlines
    def reading(self, sock: socket.socket) -> None:
        """The handler starts waiting for a request on ``sock``: start its deadline."""
        with self.conn_lock:
            c = self.open_connections.get(sock)
            if c is not None:
                c.deadline = time.monotonic() + self.limits.request_timeout

    def busy(self, sock: socket.socket) -> None:
        """The request is read: no deadline while the node works on it."""
        with self.conn_lock:
            c = self.open_connections.get(sock)
            if c is not None:
                c.deadline = None

    def _sweep(self) -> None:
        while not self._closed.wait(0.25):
            now = time.monotonic()
            with self.conn_lock:
                late = [c.sock for c in self.open_connections.values()
                        if c.deadline is not None and now > c.deadline]
                for c in late:
                    self.open_connections[c].deadline = None
                done, due = [], []
                while self._lingering and self._lingering[0][0] <= now:
                    done.append(self._lingering.popleft()[1])
                while self._delayed and self._delayed[0][0] <= now:
                    due.append(self._delayed.popleft())
            for w in self.warners:
                w.flush()
            for _, sock, answer in due:
                self._refuse(sock, answer)
            for sock in late:
                try:
                    sock.shutdown(socket.SHUT_RDWR)  # the worker's read ends; it cleans up
                except OSError:
                    pass
            for sock in done:
                try:
                    sock.recv(65536)
                except OSError:
                    pass
                sock.close()

    # ------------------------------------------------------------------ stopping
    def close_connections(self) -> None:
        """End kept-alive connections too: ``shutdown()`` only stops accepting new ones."""
        self._closed.set()
        for w in self.warners:
            w.flush(force=True)
        with self.conn_lock:
            conns = list(self.open_connections)
            lingering = [s for _, s in self._lingering] + [s for _, s, _ in self._delayed]
            self._lingering.clear()
            self._delayed.clear()
        for sock in conns:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for sock in lingering:
            sock.close()
        self._pool.shutdown(wait=False, cancel_futures=True)


__all__ = ["BoundedHTTPServer", "LimitExceeded", "LoginGuard", "RpcLimits", "json_depth", "parse_json_body"]
