"""The RPC's HTTP server: the standard library's on a bounded worker pool, with a
connection cap (overall and per client address) and deadlines per request (see
`greenflow.rpc.limits`)."""
from __future__ import annotations

import collections
import http.server
import logging
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Optional

from greenflow.rpc.log_limits import RateLimitedLog

log = logging.getLogger("greenflow.rpc")
from greenflow.rpc.limit_settings import RpcLimits


# ---------------------------------------------------------------------------- the server
class _Conn:
    __slots__ = ("sock", "address", "deadline", "waiting_since")

    def __init__(self, sock: socket.socket, address: str, now: float) -> None:
        self.sock, self.address = sock, address
        self.deadline: Optional[float] = None  # reading a request (or its headers) must end by then
        self.waiting_since = now               # when the node began to wait for the request


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
        self.per_address: dict[str, int] = {}  # open connections by client address
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
        address = client_address[0] if client_address else "?"
        with self.conn_lock:
            full = len(self.open_connections) >= self.limits.max_connections
            mine = self.per_address.get(address, 0)
            crowding = not full and mine >= self.limits.max_connections_per_address
            if not full and not crowding:
                now = time.monotonic()
                conn = self.open_connections[request] = _Conn(request, address, now)
                conn.deadline = now + self._header_budget()
                self.per_address[address] = mine + 1
        if crowding:
            # Without this one address could hold every connection with requests it
            # never finishes, so everyone else would get 503 Busy (slowloris).
            self.refused += 1
            self.warn.warning("crowding", "RPC: %s has %d connections open (the limit per "
                              "address): refusing new ones from it with 503",
                              address, self.limits.max_connections_per_address)
            body = (b'{"error": {"type": "TooManyConnections", "message": "%s has %d RPC '
                    b'connections open already (max_connections_per_address): close one or '
                    b'retry later"}}\n' % (address.encode(),
                                            self.limits.max_connections_per_address))
            return self._refuse(request, REFUSED % (b"503 Service Unavailable", 1, len(body), body))
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
            c = self.open_connections.pop(request, None)
            if c is not None:
                left = self.per_address[c.address] - 1
                if left:
                    self.per_address[c.address] = left
                else:
                    del self.per_address[c.address]

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
    def _header_budget(self) -> float:
        return min(self.limits.header_timeout, self.limits.request_timeout)

    def reading(self, sock: socket.socket) -> None:
        """The handler starts waiting for a request on ``sock``: its headers must arrive
        within ``header_timeout``. A client that trickles header lines (slowloris) so
        holds a connection for that short time, not for the whole ``request_timeout``."""
        with self.conn_lock:
            c = self.open_connections.get(sock)
            if c is not None:
                c.waiting_since = time.monotonic()
                c.deadline = c.waiting_since + self._header_budget()

    def headers_read(self, sock: socket.socket) -> None:
        """The request's headers are in: its body must end within ``request_timeout`` of
        the start of the wait (a large body may take longer than the headers)."""
        with self.conn_lock:
            c = self.open_connections.get(sock)
            if c is not None and c.deadline is not None:
                c.deadline = c.waiting_since + self.limits.request_timeout

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
    def busy_count(self) -> int:
        """Connections whose request is being worked on (`busy`), event streams included."""
        with self.conn_lock:
            return sum(1 for c in self.open_connections.values() if c.deadline is None)

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

