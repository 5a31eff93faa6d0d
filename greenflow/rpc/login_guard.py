"""Checking basic-auth credentials without letting failures cost the node much: see
`greenflow.rpc.limits` for the why."""
from __future__ import annotations

import base64
import collections
import hashlib
import heapq
import logging
import threading
import time
from typing import Any, Callable, Optional

from greenflow.rpc.log_limits import RateLimitedLog, clip
from greenflow.network.node_config import check_password

log = logging.getLogger("greenflow.rpc")
from greenflow.rpc.limit_settings import LimitExceeded, RpcLimits


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
        scheme, _, credentials = (header or "").strip().partition(" ")
        if scheme.lower() != "basic":   # scheme names are case-insensitive (RFC 9110)
            raise LimitExceeded(401, "Unauthorized", "this node needs HTTP basic authentication")
        try:
            user, _, password = base64.b64decode(credentials.strip(), validate=True) \
                .decode("utf-8").partition(":")
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

