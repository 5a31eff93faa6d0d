"""The RPC's HTTP side: reading a request within its limits, authenticating it, routing
it to an operation of the `RpcServer`, and writing the JSON answer (or handing
``/console`` and ``/metrics`` to the console)."""
from __future__ import annotations

import json
import logging
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
from typing import TYPE_CHECKING, Any, Optional
from urllib.parse import parse_qs, unquote, urlsplit

from greenflow.console import MAX_BODY_BYTES as CONSOLE_BODY_BYTES, is_console_path
from greenflow.errors import (Fenced, FlowError, NodeClosed, NotHere, NotStartable,
                              UnknownFlow)
from greenflow.node.flow_listing import BadCursor
from greenflow.rpc import streams
from greenflow.rpc.documents import RpcError, check_text, error_json, flag, seconds, shown
from greenflow.rpc.limits import BoundedHTTPServer, LimitExceeded, parse_json_body
from greenflow.rpc.log_limits import clip

if TYPE_CHECKING:
    from greenflow.rpc.server import RpcServer

log = logging.getLogger("greenflow.rpc")

API = "/api/v1"
#: An error message is cut here: the values it quotes are capped where it is made, and
#: this bounds whatever a flow's own refusal of its arguments quotes.
MAX_MESSAGE = 2000
ERROR_TYPES = {400: "BadRequest", 404: "NotFound", 405: "MethodNotAllowed", 414: "URITooLong",
               431: "HeaderTooLarge", 505: "HTTPVersionNotSupported"}


class RpcHttpServer(BoundedHTTPServer):
    rpc: RpcServer


class RpcHandler(BaseHTTPRequestHandler):
    """One connection's requests: authentication, routing to the `RpcServer`'s
    operations, JSON answers; event streams in `greenflow.rpc.streams`."""

    protocol_version = "HTTP/1.1"
    # Headers and body go out in separate writes: with Nagle's algorithm on, the body
    # waits for the client's delayed ACK (40 ms on Linux) on every kept-alive request.
    disable_nagle_algorithm = True
    server: RpcHttpServer
    server_version = "greenflow-rpc/1"

    # ------------------------------------------------------------------ plumbing
    def setup(self) -> None:
        self.timeout = self.server.limits.request_timeout  # each read and each send
        super().setup()

    def handle_one_request(self) -> None:
        self.server.reading(self.connection)  # from now, the request must arrive in time
        super().handle_one_request()

    def parse_request(self) -> bool:
        """Tell the server the headers are in, so the longer body deadline applies: the
        short header deadline is what stops clients that never finish their headers."""
        ok = super().parse_request()   # the request line is in and the headers are read
        if ok and self.request_version == "HTTP/0.9":   # "GET /path" with no version
            # Served, it got a bare body with no status line and no headers.
            self.send_error(400, "the request line has no HTTP version (HTTP/1.1)")
            return False
        if ok and (self.headers.defects
                   or any("\n" in v or "\r" in v for _, v in self.headers.raw_items())):
            # A header line the parser could not take ("Transfer-Encoding : chunked", which
            # it took for the start of the body, dropping the headers after it) or one
            # folded onto the next line: a proxy in front may read either otherwise, and
            # disagree with this server on where the request ends (RFC 9112 5.1, 5.2).
            self.send_error(400, "a header line is malformed (whitespace before its colon, "
                                 "or folded onto the next line)")
            return False
        if ok:
            self.server.headers_read(self.connection)
        return ok

    def handle_expect_100(self) -> bool:
        """"100 Continue" only for a body the node will read: one past the body limit is
        answered 413 at once (the client was told to send it first, then refused)."""
        lengths = self.headers.get_all("Content-Length") or []
        limit = self.server.limits.max_body_bytes
        if is_console_path(urlsplit(self.target).path):
            limit = min(limit, CONSOLE_BODY_BYTES)
        if len(lengths) == 1 and lengths[0].isascii() and lengths[0].isdigit() \
                and int(lengths[0]) > limit:
            return True   # no 100: `_read_body` answers 413 without reading the body
        return super().handle_expect_100()

    def log_message(self, fmt: str, *args: Any) -> None:
        log.debug("RPC %s: %s", self.address_string(), clip(fmt % args, 200))

    def send_error(self, code: int, message: Optional[str] = None,
                   explain: Optional[str] = None) -> None:
        """The standard library's own refusals (a malformed request line, too long a URI or
        header, an unknown HTTP version, a method no ``do_`` handles) as the JSON errors
        every other answer uses, not its HTML page."""
        if code == 501:   # no do_<METHOD>: a method the API does not take at all
            code, message = 405, f"the API takes no {clip(self.command, 20)} requests"
        kind = ERROR_TYPES.get(code) or "".join(w.capitalize() for w in
                                                 HTTPStatus(code).phrase.replace("-", " ").split())
        self.log_error("code %d, message %s", code, clip(message or "", 200))
        self.close_connection = True
        if self.request_version == "HTTP/0.9":   # an unreadable request line: no version
            self.request_version = "HTTP/1.1"    # known, but a status line says more
        body = json.dumps({"error": {"type": kind, "message": shown(
            message or HTTPStatus(code).description, MAX_MESSAGE)}}).encode() + b"\n"
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        if code == 405:
            self.send_header("Allow", "GET, POST, DELETE")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _send_json(self, status: int, doc: Any, headers: Optional[dict] = None) -> None:
        body = json.dumps(doc, indent=None).encode("utf-8") + b"\n"
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("X-Content-Type-Options", "nosniff")   # never read as a page
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _read_body(self, console: bool) -> bytes:
        limit = self.server.limits.max_body_bytes
        if console:
            limit = min(limit, CONSOLE_BODY_BYTES)
        if self.headers.get("Transfer-Encoding") is not None:
            # Not read, so its bytes must not be taken for the next request: close.
            self.close_connection = True
            raise RpcError(411, "LengthRequired", "send the body with a Content-Length "
                                                  "(Transfer-Encoding is not accepted)")
        lengths = self.headers.get_all("Content-Length") or []
        # Digits only (RFC 9110): int() would also take "+17", "1_7" and "17 ", which a
        # proxy in front may read otherwise, so the body's end would be disputed.
        if not lengths:
            n = 0
        elif len(lengths) == 1 and lengths[0].isascii() and lengths[0].isdigit():
            n = int(lengths[0])
        else:
            n = -1
        if n < 0:
            self.close_connection = True
            raise RpcError(400, "BadRequest", "the Content-Length header is malformed")
        if n > limit:
            self.close_connection = True
            which = "for the console" if console else "max_body_bytes"
            raise RpcError(413, "BodyTooLarge", f"the body has {n} bytes; at most {limit} ({which})")
        raw = self.rfile.read(n) if n else b""
        if len(raw) < n:
            raise ConnectionResetError("the client sent less than its Content-Length")
        return raw

    def _parse(self, raw: bytes) -> Any:
        if not raw.strip():
            return {}
        try:
            return parse_json_body(raw, self.server.limits.max_json_depth)
        except LimitExceeded as exc:
            raise RpcError(exc.status, exc.type, exc.message) from None

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    def do_DELETE(self) -> None:
        self._handle("DELETE")

    def do_HEAD(self) -> None:
        """The console's pages answer HEAD as GET without the body (browsers, proxies and
        monitors check pages so); the JSON API takes no HEAD (405, as any method it does
        not take)."""
        if is_console_path(urlsplit(self.target).path):
            self._handle("HEAD")
        else:
            self.send_error(HTTPStatus.NOT_IMPLEMENTED, f"Unsupported method ({self.command!r})")

    @property
    def target(self) -> str:
        """The request target as the client sent it. `http.server` decodes the request line
        as Latin-1; clients send paths in UTF-8 (raw or %-encoded), so a raw ``/flows/é``
        would otherwise be echoed and looked up as ``/flows/Ã©``."""
        try:
            return self.path.encode("latin-1").decode("utf-8")
        except UnicodeError:
            return self.path

    def _handle(self, method: str) -> None:
        rpc = self.server.rpc
        try:
            url = urlsplit(self.target)
            parts = [unquote(p) for p in url.path.split("/") if p]
            pairs = parse_qs(url.query)
            # A repeated status adds to the filter; any other repeated parameter is refused
            # below (the last one silently won: status=A&status=B listed B alone).
            query = {k: ",".join(v) if k == "status" else v[-1] for k, v in pairs.items()}
            twice = next((k for k, v in pairs.items() if len(v) > 1 and k != "status"), None)
            console = is_console_path(url.path)
            try:
                raw = self._read_body(console)
            except (OSError, ValueError):  # timed out, cut short or reset: no answer is owed
                self.close_connection = True
                return
            self.server.busy(self.connection)
            if console:
                return self._console(rpc, method, url.path, query, raw)
            if method != "GET":
                self._same_site()
            try:
                user = rpc.authenticate(self.headers.get("Authorization"), self.client_address[0])
            except LimitExceeded as exc:
                raise RpcError(exc.status, exc.type, exc.message, exc.retry_after) from None
            if twice is not None:
                raise RpcError(400, "BadRequest",
                               f"the query gives {clip(twice, 40)} more than once")
            body = self._parse(raw) if method == "POST" else None
            check_text(body, "")
            check_text(query, "")
            self._route(rpc, method, parts, query, body, user)
        except RpcError as exc:
            headers = {"WWW-Authenticate": 'Basic realm="greenflow"'} if exc.status == 401 else {}
            if exc.status == 401:
                # Not kept alive: clients without credentials held every connection slot
                # with a request each few seconds, and operators got 503 Busy.
                self.close_connection = True
            if exc.retry_after:
                headers["Retry-After"] = str(max(1, round(exc.retry_after)))
            self._send_json(exc.status, {"error": {"type": exc.type,
                                                   "message": shown(exc.message, MAX_MESSAGE)}},
                            headers)
        except UnknownFlow as exc:
            self._send_json(404, {"error": error_json(exc)})
        except BadCursor as exc:
            self._send_json(400, {"error": {"type": "BadRequest", "message": shown(str(exc))}})
        except NotStartable as exc:
            self._send_json(403, {"error": error_json(exc)})
        except (BrokenPipeError, ConnectionResetError):
            pass
        except TimeoutError as exc:
            self._send_json(504, {"error": {"type": "Timeout", "message": str(exc)}})
        except NotHere as exc:   # a clustered worker: another one runs the flow
            self._send_json(421, {"error": {**error_json(exc), "owner": exc.owner, "rpc": exc.rpc}})
        except (NodeClosed, Fenced) as exc:   # e.g. a worker's partitions changing hands
            # under the request: the call never ran, or its commit was rolled back
            self._send_json(503, {"error": {"type": "Unavailable", "message": shown(
                f"the node stopped serving during the request ({exc}); nothing was done: "
                "retry", MAX_MESSAGE)}}, {"Retry-After": "1"})
        except FlowError as exc:
            self._send_json(503 if "closed" in str(exc) else 500, {"error": error_json(exc)})
        except Exception as exc:  # noqa: BLE001 - a bug: say so, keep serving
            self.server.warn.exception("500", "RPC %s %s failed", method, clip(self.target, 200))
            self._send_json(500, {"error": {"type": "InternalError",
                                            "message": f"{type(exc).__name__}: {exc}; please "
                                                       "file a bug with the node log"}})

    def _console(self, rpc: RpcServer, method: str, path: str, query: dict, raw: bytes) -> None:
        """Hand the request to the console (`greenflow.console`) and write its answer: a
        body of bytes, or an iterator of chunks (server-sent events) on a closing connection."""
        header = self.headers.get("Authorization")
        client = self.client_address[0]
        try:
            user = rpc.authenticate(header, client) if header else None
        except LimitExceeded as exc:
            raise RpcError(exc.status, exc.type, exc.message, exc.retry_after) from None
        status, headers, body = rpc.console.handle(method, path, query, raw, user, self.headers,
                                                   client)
        # Checked before the first byte goes out: a value that could split the answer or
        # fail to encode is then one clean 500, never a second answer after half a first.
        for k, v in headers.items():
            if not all(" " <= c <= "~" for c in str(v)):
                raise ValueError(f"the console's {k} header is not printable ASCII")
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        if isinstance(body, (bytes, bytearray)):
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)
            return
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        try:
            for chunk in body if self.command != "HEAD" else ():
                self.wfile.write(chunk)
                self.wfile.flush()
        finally:
            close = getattr(body, "close", None)
            if close is not None:
                close()

    def _same_site(self) -> None:
        """Refuse a state-changing request a web page of another site made a browser send:
        with credentials the browser holds for this port (Basic, asked for by the API and
        `/metrics`), a cross-site form could kill flows or stop the node. Browsers say so
        (`Sec-Fetch-Site`, `Origin`); curl and the clients send neither."""
        site = self.headers.get("Sec-Fetch-Site")
        origin = self.headers.get("Origin")
        if site is not None and site.strip().lower() not in ("same-origin", "none"):
            raise RpcError(403, "CrossSite", f"a request a page of another site made ("
                                             f"Sec-Fetch-Site: {clip(site, 40)}) is refused")
        if origin is not None:
            host = urlsplit(origin.strip()).netloc.lower()
            if not host or host != (self.headers.get("Host") or "").strip().lower():
                raise RpcError(403, "CrossSite", f"a request from another origin "
                                                 f"({clip(origin, 80)}) is refused")

    def _need(self, user: Any, permission: str) -> None:
        if not user.allows(permission):
            raise RpcError(403, "Forbidden", f"user {user.username!r} lacks the "
                                             f"{permission!r} permission")

    def _route(self, rpc: RpcServer, method: str, parts: list, query: dict, body: Any,
               user: Any) -> None:
        if parts[:2] != ["api", "v1"]:
            raise RpcError(404, "NotFound", f"no such endpoint {clip(self.target, 200)}; the API is "
                                            f"under {API}/")
        p = parts[2:]
        route = (method, tuple(p[:1]) + tuple("*" if i == 1 else x for i, x in enumerate(p[1:], 1)))
        read = lambda: self._need(user, "read")  # noqa: E731
        if route == ("GET", ("node",)):
            read()
            return self._send_json(200, rpc.node_info())
        if route == ("GET", ("network",)):
            read()
            return self._send_json(200, {"nodes": rpc.network()})
        if route == ("GET", ("flows",)):
            read()
            return self._send_json(200, rpc.flows(query.get("status"), query.get("limit"),
                                                  query.get("cursor")))
        if route == ("POST", ("flows",)):
            code, doc = rpc.start_flow(body, user)
            return self._send_json(code, doc)
        if route == ("GET", ("flows", "*")):
            read()
            return self._send_json(200, rpc.flow(p[1]))
        if route == ("GET", ("flows", "*", "result")):
            read()
            code, doc = rpc.result(p[1], seconds(query.get("wait", 0), "wait"))
            return self._send_json(code, doc)
        if route == ("GET", ("flows", "*", "progress")):
            read()
            return streams.progress_stream(self, rpc, p[1], flag(query.get("steps", 1), "steps"))
        if route == ("GET", ("progress",)):
            read()
            return streams.progress_stream(self, rpc, None, flag(query.get("steps", 1), "steps"))
        if route in (("POST", ("flows", "*", "kill")), ("DELETE", ("flows", "*"))):
            self._need(user, "kill")
            return self._send_json(200, rpc.act(p[1], "kill"))
        if route == ("POST", ("flows", "*", "retry")):
            self._need(user, "retry")
            return self._send_json(200, rpc.act(p[1], "retry"))
        if route == ("GET", ("checkpoints",)):
            read()
            return self._send_json(200, rpc.checkpoints(query.get("limit"), query.get("cursor")))
        if route == ("GET", ("vault", "*")) and p[1] == "states":
            read()
            return self._send_json(200, rpc.vault_states(query))
        if route == ("GET", ("vault", "*")) and p[1] == "updates":
            read()
            return streams.vault_updates(self, rpc, query)
        if route == ("GET", ("draining",)):
            read()
            return self._send_json(200, rpc.draining())
        if route == ("POST", ("draining",)):
            self._need(user, "admin")
            return self._send_json(200, rpc.set_draining(body))
        if route == ("POST", ("shutdown",)):
            self._need(user, "admin")
            return self._send_json(202, rpc.shutdown())
        raise RpcError(*((404, "NotFound") if method == "GET" else (405, "MethodNotAllowed")),
                       f"no endpoint {method} {clip(self.target, 200)}; see docs/rpc.md")
