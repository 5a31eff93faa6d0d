"""The operator console and ``/metrics``, served on the node's RPC port.

The RPC server hands every request for ``/console...`` and ``/metrics`` to
`ConsoleApp.handle`, which answers ``(status, headers, body)``: plain data, so the
console does not depend on which HTTP server carries it. A body is bytes, or an
iterator of bytes for a server-sent event stream.

Authentication is the RPC's: the node's users and their password hashes
(`RpcServer.authenticate`, login limits included). A client may send HTTP basic
authentication on every request (scripts, Prometheus); a browser logs in once with a
form and then carries a session cookie (HttpOnly, SameSite=Strict). Every page, API
call, static file and ``/metrics`` answers 401 without one or the other; an
unauthenticated page request gets the login form with that 401. Each action checks the
user's RPC permissions: ``read`` to see anything, ``kill`` to kill, ``admin`` to retry
a hospitalized flow or switch draining. State-changing requests need the session's
CSRF token (or, with basic authentication, an ``X-Greenflow-Console`` header, which a
cross-site form cannot send).
"""
from __future__ import annotations

import base64
import hmac
import json
import logging
import os
import secrets
import threading
import time
from typing import Any, Iterator, Optional, Union
from urllib.parse import parse_qs, quote, unquote

from greenflow.errors import UnknownFlow
from greenflow.rpc.metrics import NodeMetrics
from greenflow.console import data, pages

log = logging.getLogger("greenflow.console")

Body = Union[bytes, Iterator[bytes]]
Response = tuple[int, dict, Body]

COOKIE = "greenflow_console"
SESSION_SECONDS = 12 * 3600.0
MAX_SESSIONS = 1000
FLOWS_CACHE_SECONDS = 0.5
STATIC_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")
STATIC_TYPES = {".css": "text/css; charset=utf-8", ".js": "text/javascript; charset=utf-8",
                ".svg": "image/svg+xml", ".png": "image/png", ".ico": "image/x-icon"}
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; style-src 'self' 'unsafe-inline'; "
                               "img-src 'self' data:; frame-ancestors 'none'; form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


def is_console_path(path: str) -> bool:
    """Whether the RPC server should hand this request path to the console."""
    return path == "/metrics" or path == "/console" or path.startswith("/console/")


class _Session:
    __slots__ = ("username", "csrf", "expires")

    def __init__(self, username: str) -> None:
        self.username = username
        self.csrf = secrets.token_urlsafe(24)
        self.expires = time.monotonic() + SESSION_SECONDS


class ConsoleApp:
    """The console of one node process; ``rpc`` is its `greenflow.rpc.server.RpcServer`."""

    def __init__(self, rpc: Any) -> None:
        self.rpc = rpc
        self.metrics = NodeMetrics(proc=rpc.proc)
        self._sessions: dict[str, _Session] = {}
        self._lock = threading.Lock()
        self._flows_lock = threading.Lock()
        self._flows_cache: tuple[float, list, bool] = (-1e9, [], False)

    def attach(self, node: Any) -> None:
        """Once the node is open: hook the metrics into its scheduler."""
        self.metrics.attach(node)

    # ------------------------------------------------------------------ entry point
    def handle(self, method: str, path: str, query: dict, body: bytes, user: Any,
               headers: Any = None, client: str = "?") -> Response:
        """One request. ``user`` is the account HTTP basic authentication gave (the RPC
        server checked it), or None when the request carried none; ``headers`` (a
        mapping) gives the session cookie and the CSRF header."""
        headers = headers or {}
        try:
            return self._handle(method, path, query, body, user, headers, client)
        except UnknownFlow as exc:
            return self._error(path, 404, "UnknownFlow", str(exc))
        except data.FilterError as exc:
            return self._error(path, 400, "BadRequest", str(exc))
        except _Refused as exc:
            return self._error(path, exc.status, exc.type, exc.message)
        except Exception as exc:  # noqa: BLE001 - a bug: say so, keep serving
            if type(exc).__name__ == "RpcError":
                return self._error(path, exc.status, exc.type, exc.message)  # type: ignore[attr-defined]
            log.exception("console %s %s failed", method, path)
            return self._error(path, 500, "InternalError", f"{type(exc).__name__}: {exc}")

    def _handle(self, method: str, path: str, query: dict, body: bytes, user: Any,
                headers: Any, client: str) -> Response:
        session = None
        if path == "/console/login" and method == "POST":
            return self._login(body, client)
        if user is None:
            session = self._session(headers)
            if session is not None:
                user = self.rpc.proc.config.user(session.username)
                if user is None:  # the user was removed from node.toml
                    session = None
        if user is None:
            return self._unauthorized(path, query)
        if path == "/console/logout" and method == "POST":
            self._check_csrf(session, headers, body)
            return self._logout(headers)
        self._need(user, "read")
        if path == "/metrics":
            ctype, text = self.metrics.exposition()
            return 200, {"Content-Type": ctype, "Cache-Control": "no-store"}, text
        parts = [unquote(p) for p in path.split("/") if p][1:]
        csrf = session.csrf if session is not None else ""
        if method == "POST":
            self._check_csrf(session, headers, body)
            return self._post(parts, user, body)
        if method != "GET" and method != "HEAD":
            raise _Refused(405, "MethodNotAllowed", f"{method} {path} is not supported")
        if not parts or parts == ["login"]:
            return _redirect("/console/flows")
        if parts[0] == "static" and len(parts) == 2:
            return self._static(parts[1])
        if parts[0] == "api":
            return self._api(parts[1:], query)
        fragment = _header(headers, "X-Console-Fragment")
        node = self.rpc.node
        name = node.party.name
        if parts == ["flows"]:
            page = data.flow_page(*self._flows(node), query)
            if fragment:
                return _html(pages.flows_fragment(page, query))
            return _html(pages.layout("Flows", user, pages.flows_page(page, query), active="flows",
                                      csrf=csrf, node_name=name))
        if parts[0] == "flows" and len(parts) == 2:
            d = data.flow_detail(node, parts[1])
            if fragment:
                return _html(pages.flow_fragment(d))
            return _html(pages.layout(f"Flow {parts[1]}", user, pages.flow_page(d, user),
                                      active="flows", csrf=csrf, node_name=name))
        if parts == ["vault"]:
            v = data.vault_overview(node, query)
            if fragment:
                return _html(pages.vault_fragment(v, query))
            return _html(pages.layout("Vault", user, pages.vault_page(v, query), active="vault",
                                      csrf=csrf, node_name=name))
        if parts == ["node"]:
            n = data.node_overview(self.rpc.proc, node)
            if fragment:
                return _html(pages.node_fragment(n))
            return _html(pages.layout("Node", user, pages.node_page(n, user, csrf), active="node",
                                      csrf=csrf, node_name=name))
        raise _Refused(404, "NotFound", f"no console page {path}")

    def _flows(self, node: Any) -> tuple[list[dict], bool]:
        """The flow list, shared for a moment by every open page (each reloads it every
        few seconds)."""
        with self._flows_lock:
            at, rows, truncated = self._flows_cache
            if time.monotonic() - at > FLOWS_CACHE_SECONDS:
                rows, truncated = data.all_flows(node)
                self._flows_cache = (time.monotonic(), rows, truncated)
            return [dict(r) for r in rows], truncated

    # ------------------------------------------------------------------ JSON API
    def _api(self, p: list, query: dict) -> Response:
        node = self.rpc.node
        if p == ["flows"]:
            return _json(200, data.flow_page(*self._flows(node), query))
        if len(p) == 2 and p[0] == "flows":
            return _json(200, data.flow_detail(node, p[1]))
        if len(p) == 3 and p[0] == "flows" and p[2] == "events":
            node.handle(p[1])  # UnknownFlow -> 404 before the stream starts
            return 200, {"Content-Type": "text/event-stream", "Cache-Control": "no-cache",
                         "X-Accel-Buffering": "no"}, self._events(p[1])
        if p == ["node"]:
            return _json(200, data.node_overview(self.rpc.proc, node))
        if p == ["vault"]:
            return _json(200, data.vault_overview(node, query))
        raise _Refused(404, "NotFound", f"no console API /console/api/{'/'.join(p)}")

    def _post(self, p: list, user: Any, body: bytes) -> Response:
        node = self.rpc.node
        if len(p) == 4 and p[:2] == ["api", "flows"] and p[3] in ("kill", "retry"):
            fid, action = p[2], p[3]
            node.handle(fid)  # UnknownFlow -> 404
            if action == "kill":
                self._need(user, "kill")
                ok = node.kill_flow(fid)
            else:
                if not (user.allows("admin") or user.allows("retry")):
                    raise _Refused(403, "Forbidden", f"user {user.username!r} may not retry flows "
                                                     "(needs the 'admin' or 'retry' permission)")
                ok = node.retry_flow(fid)
            log.info("console: %s %s flow %s (%s)", user.username, action, fid,
                     "done" if ok else "nothing to do")
            return _json(200, {"flow_id": fid, "action": action, "done": bool(ok)})
        if p == ["node", "draining"]:
            self._need(user, "admin")
            form = _form(body)
            on = form.get("enabled", "").lower() in ("true", "1", "on")
            self.rpc.proc.set_draining(on)
            return _redirect("/console/node")
        raise _Refused(404, "NotFound", f"no console action /{'/'.join(['console'] + p)}")

    def _events(self, fid: str) -> Iterator[bytes]:
        """The flow's progress as server-sent events, from the RPC's progress hub (the
        same events as ``/api/v1/flows/<id>/progress``): ``progress`` per step change,
        ``end`` when it finishes."""
        rpc = self.rpc
        if not rpc.open_stream():
            yield _event("error", {"message": f"{rpc.limits.max_streams} event streams are "
                                              "open (max_streams): retry later"})
            return
        sub = rpc.hub.subscribe(fid)
        try:
            info = data.flow_detail(rpc.node, fid)
            yield _event("status", {"flow_id": fid, "status": info["status"],
                                    "step": info["progress_step"]})
            if info["status"] in ("COMPLETED", "FAILED", "KILLED"):
                return
            for item in sub.follow(lambda: rpc.stopping):
                if item is None:   # quiet: a keep-alive
                    yield b": keepalive\n\n"
                    continue
                _, step = item
                if step is not None:
                    yield _event("progress", {"flow_id": fid, "step": step})
                    continue
                try:
                    status = data.flow_detail(rpc.node, fid)["status"]
                except Exception:  # noqa: BLE001 - shutting down
                    status = None
                yield _event("end", {"flow_id": fid, "status": status})
                return
        finally:
            rpc.hub.unsubscribe(sub)
            rpc.close_stream()

    # ------------------------------------------------------------------ auth
    def _login(self, body: bytes, client: str) -> Response:
        """A login form's answer; ``client`` (the caller's address) is what the RPC's
        login limits back off, as for basic authentication."""
        form = _form(body)
        username, password = form.get("username", ""), form.get("password", "")
        next_path = form.get("next") or "/console/flows"
        if not next_path.startswith("/console/") or next_path.startswith("//"):
            next_path = "/console/flows"
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
            self._sessions[sid] = _Session(account.username)
        log.info("console: %s logged in", account.username)
        status, hdrs, out = _redirect(next_path)
        hdrs["Set-Cookie"] = (f"{COOKIE}={sid}; Path=/; HttpOnly; SameSite=Strict; "
                              f"Max-Age={int(SESSION_SECONDS)}")
        return status, hdrs, out

    def _logout(self, headers: Any) -> Response:
        sid = _cookie(headers, COOKIE)
        if sid:
            with self._lock:
                self._sessions.pop(sid, None)
        status, hdrs, out = _redirect("/console/flows")
        hdrs["Set-Cookie"] = f"{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0"
        return status, hdrs, out

    def _session(self, headers: Any) -> Optional[_Session]:
        sid = _cookie(headers, COOKIE)
        if not sid:
            return None
        with self._lock:
            s = self._sessions.get(sid)
            if s is not None and s.expires < time.monotonic():
                del self._sessions[sid]
                s = None
        return s

    def _check_csrf(self, session: Optional[_Session], headers: Any, body: bytes) -> None:
        if session is None:  # HTTP basic authentication: a cross-site form cannot add this
            if not _header(headers, "X-Greenflow-Console"):
                raise _Refused(403, "Forbidden", "console actions with basic authentication need "
                                                 "an X-Greenflow-Console header")
            return
        sent = _header(headers, "X-CSRF-Token") or _form(body).get("csrf", "")
        if not hmac.compare_digest(sent.encode(), session.csrf.encode()):
            raise _Refused(403, "Forbidden", "missing or stale CSRF token: reload the page")

    @staticmethod
    def _need(user: Any, permission: str) -> None:
        if not user.allows(permission):
            raise _Refused(403, "Forbidden", f"user {user.username!r} lacks the "
                                             f"{permission!r} permission")

    def _unauthorized(self, path: str, query: dict) -> Response:
        if path == "/metrics" or path.startswith(("/console/api/", "/console/static/")):
            return self._error(path, 401, "Unauthorized", "log in first, or use HTTP basic "
                               "authentication with a user of the node")
        next_path = path if path.startswith("/console/") and path != "/console/logout" else "/console/flows"
        if query:
            next_path += "?" + "&".join(f"{quote(k)}={quote(v)}" for k, v in query.items())
        # Not "Basic": a browser would show its own password dialog instead of this form.
        return 401, {"Content-Type": "text/html; charset=utf-8",
                     "WWW-Authenticate": 'Form realm="greenflow", action="/console/login"',
                     **SECURITY_HEADERS}, pages.login_page(None, next_path).encode("utf-8")

    def _error(self, path: str, status: int, type_: str, message: str) -> Response:
        hdrs: dict = {}
        if status == 401:
            hdrs["WWW-Authenticate"] = 'Basic realm="greenflow"' if path == "/metrics" else \
                'Form realm="greenflow", action="/console/login"'
        if path == "/metrics":
            return status, {"Content-Type": "text/plain; charset=utf-8", **hdrs}, \
                f"{type_}: {message}\n".encode("utf-8")
        st, h, b = _json(status, {"error": {"type": type_, "message": message}})
        h.update(hdrs)
        return st, h, b

    # ------------------------------------------------------------------ static files
    def _static(self, name: str) -> Response:
        ext = os.path.splitext(name)[1]
        if "/" in name or "\\" in name or name.startswith(".") or ext not in STATIC_TYPES:
            raise _Refused(404, "NotFound", f"no static file {name!r}")
        try:
            with open(os.path.join(STATIC_DIR, name), "rb") as fh:
                content = fh.read()
        except OSError:
            raise _Refused(404, "NotFound", f"no static file {name!r}") from None
        return 200, {"Content-Type": STATIC_TYPES[ext], "Cache-Control": "private, max-age=300",
                     "X-Content-Type-Options": "nosniff"}, content


class _Refused(Exception):
    def __init__(self, status: int, type_: str, message: str) -> None:
        super().__init__(message)
        self.status, self.type, self.message = status, type_, message


def _json(status: int, doc: Any) -> Response:
    return status, {"Content-Type": "application/json", "Cache-Control": "no-store"}, \
        (json.dumps(doc, default=str) + "\n").encode("utf-8")


def _html(text: str, status: int = 200) -> Response:
    return status, {"Content-Type": "text/html; charset=utf-8", **SECURITY_HEADERS}, text.encode("utf-8")


def _redirect(location: str) -> Response:
    return 303, {"Location": location, "Content-Type": "text/plain; charset=utf-8"}, b""


def _event(kind: str, doc: Any) -> bytes:
    return f"event: {kind}\ndata: {json.dumps(doc)}\n\n".encode("utf-8")


def _header(headers: Any, name: str) -> str:
    try:
        v = headers.get(name)
    except AttributeError:
        v = None
    return v or ""


def _cookie(headers: Any, name: str) -> Optional[str]:
    raw = _header(headers, "Cookie")
    for part in raw.split(";"):
        k, _, v = part.strip().partition("=")
        if k == name and v:
            return v
    return None


def _form(body: bytes) -> dict:
    if not body:
        return {}
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return {}
    if text.lstrip().startswith("{"):
        try:
            doc = json.loads(text)
            return {str(k): str(v).lower() if isinstance(v, bool) else str(v) for k, v in doc.items()} \
                if isinstance(doc, dict) else {}
        except ValueError:
            return {}
    return {k: v[-1] for k, v in parse_qs(text, keep_blank_values=True).items()}
