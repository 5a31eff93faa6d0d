"""Who a console request comes from: a login form's session (cookie and CSRF token) or
HTTP basic authentication, both checked against the node's RPC users and login limits;
and what that user may do."""
from __future__ import annotations

import base64
import hmac
import logging
import secrets
import threading
import time
from typing import Any, Optional
from urllib.parse import quote

from greenflow.console import pages
from greenflow.console.responses import (SECURITY_HEADERS, START_PAGE, Refused, Response,
                                        console_location, cookie, error_answer, form_fields,
                                        header, redirect)

log = logging.getLogger("greenflow.console")

COOKIE = "greenflow_console"
SESSION_SECONDS = 12 * 3600.0
MAX_SESSIONS = 1000


class Session:
    __slots__ = ("username", "csrf", "expires")

    def __init__(self, username: str) -> None:
        self.username = username
        self.csrf = secrets.token_urlsafe(24)
        self.expires = time.monotonic() + SESSION_SECONDS


class ConsoleAuth:
    """The console's logins: its sessions (at most ``MAX_SESSIONS``, each for
    ``SESSION_SECONDS``), and the permission and CSRF checks of each request."""

    def __init__(self, rpc: Any) -> None:
        self.rpc = rpc
        self._sessions: dict[str, Session] = {}
        self._lock = threading.Lock()

    def login(self, body: bytes, client: str) -> Response:
        """A login form's answer; ``client`` (the caller's address) is what the RPC's
        login limits back off, as for basic authentication."""
        form = form_fields(body, self.rpc.limits.max_json_depth)
        username, password = form.get("username", ""), form.get("password", "")
        next_path = console_location(form.get("next", ""))
        token = base64.b64encode(f"{username}:{password}".encode("utf-8")).decode("ascii")
        try:
            account = self.rpc.authenticate("Basic " + token, client)
        except Exception as exc:  # noqa: BLE001 - RpcError 401 (or a login limit)
            status = getattr(exc, "status", 401)
            message = getattr(exc, "message", str(exc))
            return status, {"Content-Type": "text/html; charset=utf-8", **SECURITY_HEADERS}, \
                pages.login_page(message, next_path).encode("utf-8")
        sid = secrets.token_urlsafe(32)
        with self._lock:
            now = time.monotonic()
            for k in [k for k, s in self._sessions.items() if s.expires < now]:
                del self._sessions[k]
            while len(self._sessions) >= MAX_SESSIONS:
                self._sessions.pop(next(iter(self._sessions)))
            self._sessions[sid] = Session(account.username)
        log.info("console: %s logged in", account.username)
        status, hdrs, out = redirect(next_path)
        hdrs["Set-Cookie"] = (f"{COOKIE}={sid}; Path=/; HttpOnly; SameSite=Strict; "
                              f"Max-Age={int(SESSION_SECONDS)}")
        return status, hdrs, out

    def logout(self, headers: Any) -> Response:
        sid = cookie(headers, COOKIE)
        if sid:
            with self._lock:
                self._sessions.pop(sid, None)
        status, hdrs, out = redirect(START_PAGE)
        hdrs["Set-Cookie"] = f"{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0"
        return status, hdrs, out

    def session(self, headers: Any) -> Optional[Session]:
        sid = cookie(headers, COOKIE)
        if not sid:
            return None
        with self._lock:
            s = self._sessions.get(sid)
            if s is not None and s.expires < time.monotonic():
                del self._sessions[sid]
                s = None
        return s

    def check_csrf(self, session: Optional[Session], headers: Any, body: bytes) -> None:
        if session is None:  # HTTP basic authentication: a cross-site form cannot add this
            if not header(headers, "X-Greenflow-Console"):
                raise Refused(403, "Forbidden", "console actions with basic authentication need "
                                                 "an X-Greenflow-Console header")
            return
        sent = header(headers, "X-CSRF-Token") or form_fields(body, self.rpc.limits.max_json_depth).get("csrf", "")
        if not hmac.compare_digest(sent.encode(), session.csrf.encode()):
            raise Refused(403, "Forbidden", "missing or stale CSRF token: reload the page")

    @staticmethod
    def need(user: Any, permission: str) -> None:
        if not user.allows(permission):
            raise Refused(403, "Forbidden", f"user {user.username!r} lacks the "
                                             f"{permission!r} permission")

    def unauthorized(self, path: str, query: dict) -> Response:
        if path == "/metrics" or path.startswith(("/console/api/", "/console/static/")):
            return error_answer(path, 401, "Unauthorized", "log in first, or use HTTP basic "
                               "authentication with a user of the node")
        next_path = path if path != "/console/logout" else START_PAGE
        if query:
            next_path += "?" + "&".join(f"{quote(k)}={quote(v)}" for k, v in query.items())
        next_path = console_location(next_path)
        # Not "Basic": a browser would show its own password dialog instead of this form.
        return 401, {"Content-Type": "text/html; charset=utf-8",
                     "WWW-Authenticate": 'Form realm="greenflow", action="/console/login"',
                     **SECURITY_HEADERS}, pages.login_page(None, next_path).encode("utf-8")
