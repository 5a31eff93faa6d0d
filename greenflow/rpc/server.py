"""The node's RPC: JSON over HTTP, so ``curl`` and any HTTP client work. See docs/rpc.md.

Every request needs HTTP basic authentication against a user of ``node.toml``, whose
password is stored as a PyNaCl ``pwhash`` (Argon2id) hash. Checking that hash costs about
0.1 s and 64 MB by design, so `greenflow.rpc.limits.LoginGuard` remembers successful
checks (keyed by a SHA-256, never the password), runs one at a time and backs off
clients that keep failing. The server, its worker pool and its limits are in
`greenflow.rpc.limits`.

Requests run on the server's own threads; they reach flows only through the `Node` API
(which hands work to the scheduler thread), never by touching flow state themselves.
"""
from __future__ import annotations

import dataclasses
import enum
import json
import logging
import os
import queue
import threading
import time
import uuid
from datetime import date, datetime, timedelta
from decimal import Decimal
from http.server import BaseHTTPRequestHandler
from typing import Any, Callable, Iterator, Optional
from urllib.parse import parse_qs, unquote, urlsplit

from greenflow.console import ConsoleApp, is_console_path
from greenflow.errors import FlowError, FlowKilled, NotStartable, UnknownFlow
from greenflow.flows.flow_logic import FlowLogic
from greenflow.network.network_map import NetworkMapError, format_address
from greenflow.node.node import FlowHandle
from greenflow.rpc.flow_start import (FlowArgumentError, FlowTargetError, bind_arguments, instantiate,
                         requested_class_name, resolve_startable)
from greenflow.rpc.log_limits import RateLimitedLog, clip
from greenflow.party import Party
from greenflow.flows.registry import qualified_name
from greenflow.rpc.limits import BoundedHTTPServer, LimitExceeded, LoginGuard, RpcLimits, parse_json_body

log = logging.getLogger("greenflow.rpc")

API = "/api/v1"
MAX_BODY_BYTES = RpcLimits.max_body_bytes
MAX_WAIT_SECONDS = 600.0
MAX_BATCH = 10_000
KEEPALIVE_SECONDS = 15.0
REPR_LIMIT = 400


class RpcError(Exception):
    """An error answered to the client as ``{"error": {"type", "message"}}``."""

    def __init__(self, status: int, type_: str, message: str,
                 retry_after: Optional[float] = None) -> None:
        super().__init__(message)
        self.status, self.type, self.message = status, type_, message
        self.retry_after = retry_after


# ---------------------------------------------------------------------- JSON values
def to_json(value: Any, depth: int = 0) -> Any:
    """A JSON-ready view of a flow result or argument: builtins as themselves, parties as
    their names, bytes as hex, dates ISO 8601, Decimals as strings, dataclasses as dicts;
    anything else as ``{"repr": ...}`` (bounded)."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if value == value and value not in (float("inf"), float("-inf")) else str(value)
    if depth > 50:
        return {"repr": "..."}
    if isinstance(value, Party):
        return value.name
    if isinstance(value, enum.Enum):
        return value.name
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).hex()
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, (Decimal, uuid.UUID)):
        return str(value)
    if isinstance(value, dict):
        return {k if isinstance(k, str) else str(to_json(k, depth + 1)): to_json(v, depth + 1)
                for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [to_json(v, depth + 1) for v in value]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        out = {f.name: to_json(getattr(value, f.name, None), depth + 1)
               for f in dataclasses.fields(value)}
        out["__type__"] = qualified_name(type(value))
        return out
    try:
        text = repr(value)
    except Exception as exc:  # noqa: BLE001 - user __repr__
        text = f"<unrepresentable {type(value).__qualname__}: {exc}>"
    return {"repr": text[:REPR_LIMIT], "type": qualified_name(type(value))}


def error_json(exc: BaseException) -> dict:
    return {"type": type(exc).__name__, "message": str(exc)}


# ---------------------------------------------------------------------- starting flows
def may_start_some(user: Any) -> bool:
    """Whether ``user`` may start any flow at all (checked before a class is looked up)."""
    return any(p in ("ALL", "start") or p.startswith("start:") for p in user.permissions)


def resolve_flow_class(path: Any, apps: Optional[list[str]]) -> type:
    """``module.Class`` or ``module:Class`` -> the class, which must be a `FlowLogic` in
    one of the node's apps and ``@startable`` (`greenflow.rpc.flow_start`, shared with the
    command line; nothing outside the apps is imported)."""
    try:
        return resolve_startable(path, apps=apps, node=True)
    except FlowTargetError as exc:
        raise RpcError(400, "UnknownFlowClass", str(exc)) from None


def build_flow(cls: type, args: Any, resolve_party: Callable[[str], Party]) -> FlowLogic:
    """Instantiate ``cls`` from JSON arguments. Each value (JSON, or text as typed on a
    command line) is converted by the constructor's type hints with the CLI's rules
    (`greenflow.rpc.flow_start`): a `Party` parameter takes a party's name."""
    if args is None:
        args = {}
    if not isinstance(args, dict):
        raise RpcError(400, "BadArguments", "`args` must be a JSON object of name: value")
    try:
        bound = bind_arguments(cls, args)
        for name in bound.party_names:
            try:
                resolve_party(name)
            except NetworkMapError as exc:
                raise RpcError(400, "UnknownParty", str(exc)) from None
        return instantiate(cls, bound.resolve(resolve_party))
    except FlowArgumentError as exc:
        raise RpcError(400, "BadArguments", str(exc)) from None
    except RpcError:
        raise
    except Exception as exc:  # noqa: BLE001 - the flow's own validation
        raise RpcError(400, "BadArguments",
                       f"{cls.__qualname__}(...) refused its arguments: {type(exc).__name__}: {exc}") from None


# ---------------------------------------------------------------------- progress
class _Subscriber:
    __slots__ = ("flow_id", "queue", "dropped")

    def __init__(self, flow_id: Optional[str], size: int) -> None:
        self.flow_id = flow_id
        self.queue: "queue.Queue[Optional[tuple]]" = queue.Queue(maxsize=size)
        self.dropped = False

    def follow(self, stopping: Callable[[], bool]) -> Iterator[Optional[tuple]]:
        """The ``(flow_id, step)`` changes as they come, and None after
        ``KEEPALIVE_SECONDS`` of quiet (so a stream's writer notices a client that left);
        ends when the hub closes or drops this subscriber, or ``stopping()`` says so."""
        last = time.monotonic()
        while not stopping() and not self.dropped:
            try:
                item = self.queue.get(timeout=1.0)
            except queue.Empty:
                if time.monotonic() - last > KEEPALIVE_SECONDS:
                    last = time.monotonic()
                    yield None
                continue
            if item is None:
                return
            last = time.monotonic()
            yield item


class ProgressHub:
    """Fans the node's progress changes out to streaming clients, one bounded queue each.

    The scheduler never waits on a client: a client whose queue is full (it reads slower
    than flows make progress, or not at all) is dropped, its stream closed and a line
    logged, so a stream held open without reading costs at most ``buffer`` events.
    """

    def __init__(self, buffer: int = RpcLimits.stream_buffer, log_interval: float = 10.0) -> None:
        self.buffer = buffer
        self._lock = threading.Lock()
        self._subs: list[_Subscriber] = []
        self.dropped = 0
        self._warn = RateLimitedLog(log, log_interval)

    def __call__(self, flow_id: str, step: Optional[str]) -> None:  # scheduler thread
        with self._lock:
            subs = self._subs
        for sub in subs:
            if sub.flow_id is None or sub.flow_id == flow_id:
                try:
                    sub.queue.put_nowait((flow_id, step))
                except queue.Full:
                    self._drop(sub)

    def _drop(self, sub: _Subscriber) -> None:
        with self._lock:
            if sub.dropped:
                return
            sub.dropped = True
            self._subs = [s for s in self._subs if s is not sub]
            self.dropped += 1
        self._warn.warning("dropped", "RPC: dropped a progress stream that fell %d events "
                           "behind (stream_buffer)", self.buffer)

    def subscribe(self, flow_id: Optional[str]) -> _Subscriber:
        sub = _Subscriber(flow_id, self.buffer)
        with self._lock:
            self._subs = self._subs + [sub]  # copy on write: the scheduler iterates unlocked
        return sub

    def unsubscribe(self, sub: _Subscriber) -> None:
        with self._lock:
            self._subs = [s for s in self._subs if s is not sub]

    @property
    def subscribers(self) -> int:
        return len(self._subs)

    def close(self) -> None:
        with self._lock:
            subs, self._subs = self._subs, []
        for sub in subs:
            sub.dropped = True  # the stream loop sees it within a second


# ---------------------------------------------------------------------- the server
class RpcServer:
    """Serves the RPC of one `greenflow.rpc.node_process.NodeProcess`."""

    def __init__(self, proc: Any, address: tuple[str, int],
                 limits: Optional[RpcLimits] = None) -> None:
        self.proc = proc
        self.limits = limits or RpcLimits.from_config(getattr(proc.config, "rpc", None))
        self.hub = ProgressHub(self.limits.stream_buffer, self.limits.log_interval)
        self.logins = LoginGuard(self.limits, proc.config.user, self._any_hash)
        self._streams = threading.BoundedSemaphore(self.limits.max_streams)
        self.httpd = _Server(address, _Handler, self.limits)
        self.httpd.rpc = self
        self.httpd.warners += [self.logins.warn, self.hub._warn]
        self.httpd.backoff = self.logins.backoff
        self._thread: Optional[threading.Thread] = None
        self.stopping = False
        self.console = ConsoleApp(self)  # /console... and /metrics (see _Handler._console)

    @property
    def address(self) -> tuple[str, int]:
        return self.httpd.server_address[:2]  # type: ignore[return-value]

    @property
    def node(self) -> Any:
        node = self.proc.node
        if node is None or self.stopping:
            raise RpcError(503, "ShuttingDown", "the node is shutting down")
        return node

    def start(self) -> None:
        self.node.add_progress_listener(self.hub)
        self.console.attach(self.node)
        self._thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="gf-rpc", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self.stopping = True
        self.hub.close()
        if self._thread is not None:
            self.httpd.shutdown()
            self._thread.join(10)
        self.httpd.server_close()
        self.httpd.close_connections()

    # ------------------------------------------------------------------ auth
    def _any_hash(self) -> Optional[str]:
        users = self.proc.config.rpc_users
        return users[0].password_hash if users else None

    def open_stream(self) -> bool:
        """Take one of the ``max_streams`` slots for a long-lived event stream (RPC
        progress or the console's); False when all are taken. `close_stream` gives it back."""
        return self._streams.acquire(blocking=False)

    def close_stream(self) -> None:
        self._streams.release()

    def authenticate(self, header: Optional[str], client: str = "?") -> Any:
        """The account of a request from address ``client`` (`LoginGuard`)."""
        return self.logins.authenticate(client, header)

    # ------------------------------------------------------------------ operations
    def node_info(self) -> dict:
        proc, node = self.proc, self.node
        cfg = proc.config
        return {"name": node.party.name, "public_key": node.party.owning_key.hex(),
                "p2p_address": format_address(proc.transport.address),
                "rpc_address": format_address(self.address), "apps": cfg.apps,
                "notary": cfg.notary, "draining": proc.draining,
                "started_at": proc.started_at, "pid": os.getpid(),
                "transport": dict(proc.transport.stats)}

    def network(self) -> list:
        return [i.to_json() for i in self.proc.netmap]

    def start_flow(self, body: Any, user: Any) -> tuple[int, dict]:
        if not isinstance(body, dict):
            raise RpcError(400, "BadRequest", "the body must be a JSON object")
        unknown = set(body) - {"flow", "args", "client_id", "wait", "count"}
        if unknown:
            raise RpcError(400, "BadRequest", f"unknown fields {sorted(unknown)} (known: flow, "
                                              "args, client_id, wait, count)")
        node = self.node
        # Permission first: a user who may start nothing (or not this class) makes the node
        # look nothing up, let alone import it.
        asked = requested_class_name(body.get("flow"))
        if not may_start_some(user) or (asked is not None and not user.allows(f"start:{asked}")):
            raise RpcError(403, "Forbidden", f"user {clip(user.username)} may not start "
                                             f"{clip(body.get('flow'))}")
        cls = resolve_flow_class(body.get("flow"), node.scheduler.responders.apps)
        if not user.allows(f"start:{qualified_name(cls)}"):
            raise RpcError(403, "Forbidden", f"user {clip(user.username)} may not start "
                                             f"{qualified_name(cls)}")
        if self.proc.draining:
            raise RpcError(503, "Draining", "the node is draining: it starts no new flows")
        client_id, wait, count = body.get("client_id"), body.get("wait"), body.get("count", 1)
        if client_id is not None and (not isinstance(client_id, str) or not 0 < len(client_id) <= 200):
            raise RpcError(400, "BadRequest", "`client_id` must be a string of 1 to 200 characters")
        if not isinstance(count, int) or isinstance(count, bool) or not 1 <= count <= MAX_BATCH:
            raise RpcError(400, "BadRequest", f"`count` must be an integer from 1 to {MAX_BATCH}")
        if count > 1 and (client_id is not None or wait):
            raise RpcError(400, "BadRequest", "`count` cannot be combined with `client_id` or `wait`")
        flows = [build_flow(cls, body.get("args"), lambda name: self.proc.netmap.resolve(name).party)
                 for _ in range(count)]
        if count > 1:
            return 200, {"flow_ids": [h.id for h in node.start_flows(flows)],
                         "flow_class": qualified_name(cls)}
        handle = node.start_flow(flows[0], client_id=client_id)
        out = {"flow_id": handle.id, "flow_class": qualified_name(cls), "client_id": client_id}
        if wait:
            out.update(self.outcome(handle, _seconds(wait, "wait"))[1])
        return 200, out

    def flows(self, status: Optional[str]) -> list:
        wanted = {s.strip().upper() for s in status.split(",")} if status else None
        return [_flow_info(f) for f in self.node.flows()
                if wanted is None or f.status.value in wanted]

    def stream_status(self) -> dict:
        """The first event of ``/progress``: unfinished flows first, at most
        ``stream_status_flows`` of them (``more`` counts the rest), so a stream held open
        by a client that does not read holds a bounded document, not every flow."""
        limit = self.limits.stream_status_flows
        flows = self.node.flows()
        flows.sort(key=lambda f: f.status.finished)
        out = {"flows": [_flow_info(f) for f in flows[:limit]]}
        if len(flows) > limit:
            out["more"] = len(flows) - limit
        return out

    def flow(self, fid: str) -> dict:
        return _flow_info(self.node.flow_info(fid))

    def result(self, fid: str, wait: float) -> tuple[int, dict]:
        return self.outcome(self.node.handle(fid), wait)  # UnknownFlow -> 404

    def outcome(self, handle: FlowHandle, wait: float) -> tuple[int, dict]:
        """The result document of a flow: 200 when it finished, 202 when not (yet)."""
        fid = handle.id
        try:
            if wait <= 0 and not handle.status.finished:
                raise TimeoutError
            value = handle.result(timeout=wait if wait > 0 else 1.0)
        except TimeoutError:
            info = self.flow(fid)
            return 202, {"flow_id": fid, "finished": False, "status": info["status"],
                         "progress_step": info["progress_step"], "error": info["error"]}
        except FlowKilled as exc:
            return 200, {"flow_id": fid, "finished": True, "status": "KILLED", "error": error_json(exc)}
        except Exception as exc:  # noqa: BLE001 - the flow's own failure, reported as data
            return 200, {"flow_id": fid, "finished": True, "status": "FAILED", "error": error_json(exc)}
        return 200, {"flow_id": fid, "finished": True, "status": "COMPLETED", "result": to_json(value)}

    def kill(self, fid: str) -> dict:
        node = self.node
        node.handle(fid)  # UnknownFlow -> 404
        return {"flow_id": fid, "killed": bool(node.kill_flow(fid))}

    def checkpoints(self) -> list:
        return to_json(self.node.checkpoints_dump())

    def vault_states(self, params: dict) -> dict:
        """``GET /vault/states``: a page of the vault, as its ``query_json`` gives it."""
        try:
            return self.vault().query_json(params)
        except FlowError as exc:  # the vault's VaultQueryError: a bad parameter
            raise RpcError(400, "BadQuery", str(exc)) from None

    def vault(self) -> Any:
        """The node's vault service (reached by name: the RPC server imports no ledger)."""
        try:
            return self.node.services.vault
        except AttributeError:
            raise RpcError(404, "NotFound", "this node runs no ledger app: it has no vault") from None

    def draining(self) -> dict:
        node = self.node
        return {"draining": node.draining, "pending_flows_count": node.pending_flows_count}

    def set_draining(self, body: Any) -> dict:
        if not isinstance(body, dict) or not isinstance(body.get("enabled"), bool):
            raise RpcError(400, "BadRequest", 'expected {"enabled": true|false}')
        self.proc.set_draining(body["enabled"])
        return self.draining()

    def shutdown(self) -> dict:
        threading.Timer(0.2, self.proc.request_stop).start()
        return {"stopping": True}


def _seconds(value: Any, what: str) -> float:
    try:
        s = float(value)
    except (TypeError, ValueError):
        raise RpcError(400, "BadRequest", f"`{what}` must be a number of seconds") from None
    if not 0 <= s <= MAX_WAIT_SECONDS:
        raise RpcError(400, "BadRequest", f"`{what}` must be between 0 and {MAX_WAIT_SECONDS:.0f}")
    return s


def _flow_info(f: Any) -> dict:
    out = {"id": f.id, "flow_class": f.flow_class, "status": f.status.value,
           "progress_step": f.progress_step, "suspended_on": f.suspended_on,
           "resident": f.resident, "error": f.error}
    if getattr(f, "worker", None) is not None:   # a clustered node: who runs it
        out["worker"] = f.worker
    return out


class _Server(BoundedHTTPServer):
    rpc: RpcServer


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out in separate writes: with Nagle's algorithm on, the body
    # waits for the client's delayed ACK (40 ms on Linux) on every kept-alive request.
    disable_nagle_algorithm = True
    server: _Server
    server_version = "greenflow-rpc/1"

    # ------------------------------------------------------------------ plumbing
    def setup(self) -> None:
        self.timeout = self.server.limits.request_timeout  # each read and each send
        super().setup()

    def handle_one_request(self) -> None:
        self.server.reading(self.connection)  # from now, the request must arrive in time
        super().handle_one_request()

    def log_message(self, fmt: str, *args: Any) -> None:
        log.debug("RPC %s: %s", self.address_string(), clip(fmt % args, 200))

    def _send_json(self, status: int, doc: Any, headers: Optional[dict] = None) -> None:
        body = json.dumps(doc, indent=None).encode("utf-8") + b"\n"
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _read_body(self) -> bytes:
        limit = self.server.limits.max_body_bytes
        if self.headers.get("Transfer-Encoding") is not None:
            # Not read, so its bytes must not be taken for the next request: close.
            self.close_connection = True
            raise RpcError(411, "LengthRequired", "send the body with a Content-Length "
                                                  "(Transfer-Encoding is not accepted)")
        lengths = self.headers.get_all("Content-Length") or []
        try:
            n = int(lengths[0]) if len(lengths) == 1 else (0 if not lengths else -1)
        except ValueError:
            n = -1
        if n < 0:
            self.close_connection = True
            raise RpcError(400, "BadRequest", "the Content-Length header is malformed")
        if n > limit:
            self.close_connection = True
            raise RpcError(413, "BodyTooLarge", f"the body has {n} bytes; at most {limit} "
                                                "(max_body_bytes)")
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

    def _handle(self, method: str) -> None:
        rpc = self.server.rpc
        try:
            url = urlsplit(self.path)
            parts = [unquote(p) for p in url.path.split("/") if p]
            query = {k: v[-1] for k, v in parse_qs(url.query).items()}
            try:
                raw = self._read_body()
            except (OSError, ValueError):  # timed out, cut short or reset: no answer is owed
                self.close_connection = True
                return
            self.server.busy(self.connection)
            if is_console_path(url.path):
                return self._console(rpc, method, url.path, query, raw)
            try:
                user = rpc.authenticate(self.headers.get("Authorization"), self.client_address[0])
            except LimitExceeded as exc:
                raise RpcError(exc.status, exc.type, exc.message, exc.retry_after) from None
            body = self._parse(raw) if method == "POST" else None
            self._route(rpc, method, parts, query, body, user)
        except RpcError as exc:
            headers = {"WWW-Authenticate": 'Basic realm="greenflow"'} if exc.status == 401 else {}
            if exc.retry_after:
                headers["Retry-After"] = str(max(1, round(exc.retry_after)))
            self._send_json(exc.status, {"error": {"type": exc.type, "message": exc.message}}, headers)
        except UnknownFlow as exc:
            self._send_json(404, {"error": error_json(exc)})
        except NotStartable as exc:
            self._send_json(403, {"error": error_json(exc)})
        except (BrokenPipeError, ConnectionResetError):
            pass
        except TimeoutError as exc:
            self._send_json(504, {"error": {"type": "Timeout", "message": str(exc)}})
        except FlowError as exc:
            self._send_json(503 if "closed" in str(exc) else 500, {"error": error_json(exc)})
        except Exception as exc:  # noqa: BLE001 - a bug: say so, keep serving
            self.server.warn.exception("500", "RPC %s %s failed", method, clip(self.path, 200))
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
            for chunk in body:
                self.wfile.write(chunk)
                self.wfile.flush()
        finally:
            close = getattr(body, "close", None)
            if close is not None:
                close()

    def _need(self, user: Any, permission: str) -> None:
        if not user.allows(permission):
            raise RpcError(403, "Forbidden", f"user {user.username!r} lacks the "
                                             f"{permission!r} permission")

    def _route(self, rpc: RpcServer, method: str, parts: list, query: dict, body: Any,
               user: Any) -> None:
        if parts[:2] != ["api", "v1"]:
            raise RpcError(404, "NotFound", f"no such endpoint {clip(self.path, 200)}; the API is "
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
            return self._send_json(200, {"flows": rpc.flows(query.get("status"))})
        if route == ("POST", ("flows",)):
            code, doc = rpc.start_flow(body, user)
            return self._send_json(code, doc)
        if route == ("GET", ("flows", "*")):
            read()
            return self._send_json(200, rpc.flow(p[1]))
        if route == ("GET", ("flows", "*", "result")):
            read()
            code, doc = rpc.result(p[1], _seconds(query.get("wait", 0), "wait"))
            return self._send_json(code, doc)
        if route == ("GET", ("flows", "*", "progress")):
            read()
            return self._stream(rpc, p[1])
        if route == ("GET", ("progress",)):
            read()
            return self._stream(rpc, None)
        if route in (("POST", ("flows", "*", "kill")), ("DELETE", ("flows", "*"))):
            self._need(user, "kill")
            return self._send_json(200, rpc.kill(p[1]))
        if route == ("GET", ("checkpoints",)):
            read()
            return self._send_json(200, {"checkpoints": rpc.checkpoints()})
        if route == ("GET", ("vault", "*")) and p[1] == "states":
            read()
            return self._send_json(200, rpc.vault_states(query))
        if route == ("GET", ("vault", "*")) and p[1] == "updates":
            read()
            return self._vault_updates(rpc, query)
        if route == ("GET", ("draining",)):
            read()
            return self._send_json(200, rpc.draining())
        if route == ("POST", ("draining",)):
            self._need(user, "admin")
            return self._send_json(200, rpc.set_draining(body))
        if route == ("POST", ("shutdown",)):
            self._need(user, "admin")
            return self._send_json(202, rpc.shutdown())
        raise RpcError(404 if method == "GET" else 405, "NotFound",
                       f"no endpoint {method} {clip(self.path, 200)}; see docs/rpc.md")

    # ------------------------------------------------------------------ progress stream
    def _event(self, kind: str, doc: Any) -> None:
        self.wfile.write(f"event: {kind}\ndata: {json.dumps(doc)}\n\n".encode("utf-8"))
        self.wfile.flush()

    def _stream(self, rpc: RpcServer, fid: Optional[str]) -> None:
        """Server-sent events: ``status`` (now), then ``progress`` per step change and
        ``end`` when a flow finishes (for one flow, the stream then closes). A client
        more than ``stream_buffer`` events behind is dropped (`ProgressHub`), and one
        that accepts nothing for ``request_timeout`` seconds too."""
        node = rpc.node
        if not rpc.open_stream():
            raise RpcError(503, "TooManyStreams", f"{rpc.limits.max_streams} progress streams "
                                                  "are open (max_streams): retry later",
                           retry_after=5)
        sub = rpc.hub.subscribe(fid)
        try:
            if fid is not None:
                node.handle(fid)  # UnknownFlow -> 404 before the stream starts
            self._start_events()
            try:
                self._pump(rpc, node, fid, sub)
            except OSError:  # the client left, or accepted nothing for request_timeout
                pass
        finally:
            rpc.hub.unsubscribe(sub)
            rpc.close_stream()

    def _start_events(self) -> None:
        """Answer 200 with an event stream on a connection that closes when it ends."""
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True

    def _pump(self, rpc: RpcServer, node: Any, fid: Optional[str], sub: _Subscriber) -> None:
        if fid is not None:
            info = rpc.flow(fid)
            self._event("status", info)
            if _finished(info["status"]):
                return self._event("end", rpc.outcome(FlowHandle(node, fid), 0)[1])
        else:
            self._event("status", rpc.stream_status())
        for item in sub.follow(lambda: rpc.stopping):
            if item is None:   # quiet: a keep-alive
                self.wfile.write(b": keepalive\n\n")
                self.wfile.flush()
                continue
            flow_id, step = item
            if step is not None:
                self._event("progress", {"flow_id": flow_id, "step": step})
                continue
            self._event("end", rpc.outcome(FlowHandle(node, flow_id), 30.0)[1])
            if fid is not None:
                return
        if sub.dropped and not rpc.stopping:
            # Tell a client that still reads why its stream ends; never wait on one that does not.
            self.connection.settimeout(0.2)
            self._event("dropped", {"reason": f"more than {rpc.hub.buffer} events behind "
                                              "(stream_buffer)"})


    def _vault_updates(self, rpc: RpcServer, params: dict) -> None:
        """Server-sent events: ``snapshot`` (a page, as ``GET /vault/states`` gives it),
        then an ``update`` (consumed and produced states) per recorded change."""
        if not rpc.open_stream():   # a vault feed is a long-lived stream too (max_streams)
            raise RpcError(503, "TooManyStreams", f"{rpc.limits.max_streams} event streams "
                                                  "are open (max_streams): retry later",
                           retry_after=5)
        try:
            snapshot, feed = rpc.vault().track_json(params)
        except FlowError as exc:
            rpc.close_stream()
            raise RpcError(400, "BadQuery", str(exc)) from None
        try:
            self._start_events()
            self._event("snapshot", snapshot)
            last = time.monotonic()
            while not rpc.stopping:
                update = feed.next(timeout=1.0)
                if update is not None:
                    self._event("update", update)
                    last = time.monotonic()
                elif time.monotonic() - last > KEEPALIVE_SECONDS:
                    self.wfile.write(b": keepalive\n\n")
                    self.wfile.flush()
                    last = time.monotonic()
        except OSError:  # the client left, or accepted nothing for request_timeout
            pass
        finally:
            feed.close()
            rpc.close_stream()


def _finished(status: str) -> bool:
    return status in ("COMPLETED", "FAILED", "KILLED")
