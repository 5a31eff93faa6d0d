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

import logging
import threading
import time
from typing import Any, Callable, Iterator
from urllib.parse import unquote

from greenflow.errors import Fenced, NodeClosed, NotHere, UnknownFlow
from greenflow.rpc.log_limits import RateLimitedLog, clip
from greenflow.rpc.metrics import NodeMetrics
from greenflow.console import data, pages
from greenflow.console.auth import ConsoleAuth
from greenflow.console.responses import (Refused, Response, error_answer, form_fields, header,
                                        html_answer, json_answer, redirect, sse_event, static_file)

log = logging.getLogger("greenflow.console")

FLOWS_CACHE_SECONDS = 0.5
#: A console request's body: forms and actions are a few fields, so the RPC's
#: ``max_body_bytes`` (which a flow's arguments may need) is far more than any needs.
MAX_BODY_BYTES = 16 * 1024


def is_console_path(path: str) -> bool:
    """Whether the RPC server should hand this request path to the console."""
    return path == "/metrics" or path == "/console" or path.startswith("/console/")


class ConsoleApp:
    """The console of one node process; ``rpc`` is its `greenflow.rpc.server.RpcServer`."""

    def __init__(self, rpc: Any) -> None:
        self.rpc = rpc
        self.metrics = NodeMetrics(proc=rpc.proc)
        self.auth = ConsoleAuth(rpc)
        # As the RPC's: anyone who finds a failing request could repeat it to fill the log.
        self.warn = RateLimitedLog(log, rpc.limits.log_interval)
        self._flows_lock = threading.Lock()
        self._flows_cache: tuple[float, list, bool] = (-1e9, [], False)
        self._flows_keep = FLOWS_CACHE_SECONDS

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
            return error_answer(path, 404, "UnknownFlow", str(exc))
        except NotHere as exc:   # a clustered worker: kill or retry it where it runs
            return error_answer(path, 421, "NotHere", str(exc))
        except (NodeClosed, Fenced) as exc:   # e.g. a worker's generation replaced
            return error_answer(path, 503, "Unavailable", f"the node stopped serving during "
                                                          f"the request ({exc}): retry")
        except data.FilterError as exc:
            return error_answer(path, 400, "BadRequest", str(exc))
        except Refused as exc:
            return error_answer(path, exc.status, exc.type, exc.message)
        except Exception as exc:  # noqa: BLE001 - a bug: say so, keep serving
            if type(exc).__name__ == "RpcError":
                return error_answer(path, exc.status, exc.type, exc.message)  # type: ignore[attr-defined]
            self.warn.exception("500", "console %s %s failed", method, clip(path, 200))
            return error_answer(path, 500, "InternalError", f"{type(exc).__name__}: {exc}")

    def _handle(self, method: str, path: str, query: dict, body: bytes, user: Any,
                headers: Any, client: str) -> Response:
        session = None
        if path == "/console/login" and method == "POST":
            return self.auth.login(body, client)
        if user is None:
            session = self.auth.session(headers)
            if session is not None:
                user = self.rpc.proc.config.user(session.username)
                if user is None:  # the user was removed from node.toml
                    session = None
        if user is None:
            return self.auth.unauthorized(path, query)
        if path == "/console/logout" and method == "POST":
            self.auth.check_csrf(session, headers, body)
            return self.auth.logout(headers)
        self.auth.need(user, "read")
        if path == "/metrics":
            ctype, text = self.metrics.exposition()
            return 200, {"Content-Type": ctype, "Cache-Control": "no-store"}, text
        parts = [unquote(p) for p in path.split("/") if p][1:]
        csrf = session.csrf if session is not None else ""
        if method == "POST":
            self.auth.check_csrf(session, headers, body)
            return self._post(parts, user, body)
        if method != "GET" and method != "HEAD":
            raise Refused(405, "MethodNotAllowed", f"{method} {path} is not supported")
        if not parts or parts == ["login"]:
            return redirect("/console/flows")
        if parts[0] == "static" and len(parts) == 2:
            return static_file(parts[1])
        if parts[0] == "api":
            return self._api(parts[1:], query)
        fragment = header(headers, "X-Console-Fragment")
        node = self.rpc.node
        name = node.party.name
        if parts == ["flows"]:
            page = data.flow_page(*self._flows(node), query)
            if fragment:
                return html_answer(pages.flows_fragment(page, query))
            return html_answer(pages.layout("Flows", user, pages.flows_page(page, query), active="flows",
                                      csrf=csrf, node_name=name))
        if parts[0] == "flows" and len(parts) == 2:
            d = data.flow_detail(node, parts[1])
            if fragment:
                return html_answer(pages.flow_fragment(d))
            return html_answer(pages.layout(f"Flow {parts[1]}", user, pages.flow_page(d, user),
                                      active="flows", csrf=csrf, node_name=name))
        if parts == ["vault"]:
            v = data.vault_overview(node, query)
            if fragment:
                return html_answer(pages.vault_fragment(v, query))
            return html_answer(pages.layout("Vault", user, pages.vault_page(v, query), active="vault",
                                      csrf=csrf, node_name=name))
        if parts == ["node"]:
            n = data.node_overview(self.rpc.proc, node)
            if fragment:
                return html_answer(pages.node_fragment(n))
            return html_answer(pages.layout("Node", user, pages.node_page(n, user, csrf), active="node",
                                      csrf=csrf, node_name=name))
        raise Refused(404, "NotFound", f"no console page {path}")

    def _flows(self, node: Any) -> tuple[list[dict], bool]:
        """The flow list, shared for a moment by every open page (each reloads it every
        few seconds); for longer where reading it is costly (up to ten times what it took:
        0.5-1.8 s a read on a node holding a million flows), so that open pages cost the
        node at most about a tenth of a core."""
        with self._flows_lock:
            at, rows, truncated = self._flows_cache
            if time.monotonic() - at > self._flows_keep:
                cpu0 = time.thread_time()
                rows, truncated = data.all_flows(node)
                self._flows_keep = max(FLOWS_CACHE_SECONDS, 10 * (time.thread_time() - cpu0))
                self._flows_cache = (time.monotonic(), rows, truncated)
            return [dict(r) for r in rows], truncated

    # ------------------------------------------------------------------ JSON API
    def _api(self, p: list, query: dict) -> Response:
        node = self.rpc.node
        if p == ["flows"]:
            return json_answer(200, data.flow_page(*self._flows(node), query))
        if len(p) == 2 and p[0] == "flows":
            return json_answer(200, data.flow_detail(node, p[1]))
        if len(p) == 3 and p[0] == "flows" and p[2] == "events":
            node.handle(p[1])  # UnknownFlow -> 404 before the stream starts
            if not self.rpc.open_stream():
                # Refused before the stream starts, as the RPC's own streams are: a 200
                # that ends at once made a browser's EventSource reconnect for ever.
                raise Refused(503, "TooManyStreams", f"{self.rpc.limits.max_streams} event "
                                                     "streams are open (max_streams): retry later")
            return 200, {"Content-Type": "text/event-stream", "Cache-Control": "no-cache",
                         "X-Accel-Buffering": "no"}, _Held(self._events(p[1]), self.rpc.close_stream)
        if p == ["node"]:
            return json_answer(200, data.node_overview(self.rpc.proc, node))
        if p == ["vault"]:
            return json_answer(200, data.vault_overview(node, query))
        raise Refused(404, "NotFound", f"no console API /console/api/{'/'.join(p)}")

    def _post(self, p: list, user: Any, body: bytes) -> Response:
        node = self.rpc.node
        if len(p) == 4 and p[:2] == ["api", "flows"] and p[3] in ("kill", "retry"):
            fid, action = p[2], p[3]
            node.handle(fid)  # UnknownFlow -> 404
            if action == "kill":
                self.auth.need(user, "kill")
                ok = node.kill_flow(fid)
            else:
                if not user.allows("retry"):
                    raise Refused(403, "Forbidden", f"user {user.username!r} may not retry flows "
                                                     "(needs the 'admin' or 'retry' permission)")
                ok = node.retry_flow(fid)
            log.info("console: %s %s flow %s (%s)", user.username, action, fid,
                     "done" if ok else "nothing to do")
            with self._flows_lock:   # the next list shows what the action did
                self._flows_cache = (-1e9, [], False)
            return json_answer(200, {"flow_id": fid, "action": action, "done": bool(ok)})
        if p == ["node", "draining"]:
            self.auth.need(user, "admin")
            form = form_fields(body, self.rpc.limits.max_json_depth)
            on = form.get("enabled", "").lower() in ("true", "1", "on")
            self.rpc.proc.set_draining(on)
            return redirect("/console/node")
        raise Refused(404, "NotFound", f"no console action /{'/'.join(['console'] + p)}")

    def _events(self, fid: str) -> Iterator[bytes]:
        """The flow's progress as server-sent events, from the RPC's progress hub (the
        same events as ``/api/v1/flows/<id>/progress``): ``progress`` per step change,
        ``end`` when it finishes."""
        rpc = self.rpc
        sub = rpc.hub.subscribe(fid)
        try:
            info = data.flow_detail(rpc.node, fid)
            yield sse_event("status", {"flow_id": fid, "status": info["status"],
                                    "step": info["progress_step"]})
            if info["status"] in ("COMPLETED", "FAILED", "KILLED"):
                return
            for item in sub.follow(lambda: rpc.stopping):
                if item is None:   # quiet: a keep-alive
                    yield b": keepalive\n\n"
                    continue
                _, step = item
                if step is not None:
                    yield sse_event("progress", {"flow_id": fid, "step": step})
                    continue
                try:
                    status = data.flow_detail(rpc.node, fid)["status"]
                except Exception:  # noqa: BLE001 - shutting down
                    status = None
                yield sse_event("end", {"flow_id": fid, "status": status})
                return
            if sub.dropped and not rpc.stopping:   # as the RPC's streams say it
                yield sse_event("dropped", {"reason": f"more than {rpc.hub.buffer} events "
                                                      "behind: reload to follow again"})
        finally:
            rpc.hub.unsubscribe(sub)


class _Held:
    """An event stream holding one of the ``max_streams`` slots: given back once, when the
    stream ends or is closed, also one never started (a HEAD request)."""

    def __init__(self, events: Iterator[bytes], release: Callable[[], None]) -> None:
        self.events, self.release = events, release

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        try:
            return next(self.events)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        release, self.release = self.release, None
        if release is not None:
            self.events.close()
            release()

