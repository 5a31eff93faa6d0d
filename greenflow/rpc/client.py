"""A small client of a node's JSON-over-HTTP RPC (docs/rpc.md), used by the operator CLI,
the process tests and the benchmark. Standard library only.

``RpcClient.for_node("nodes/Alice")`` reads the RPC address from the node directory's
``node.toml`` and the credentials from its ``rpc-credentials`` file (or from
``GREENFLOW_RPC_USER`` / ``GREENFLOW_RPC_PASSWORD``); ``RpcClient.for_node("http://host:port")``
needs the credentials given.
"""
from __future__ import annotations

import base64
import copy
import http.client
import json
import os
import re
import threading
from typing import Any, Iterator, Optional
from urllib.parse import quote, urlencode, urlsplit

from greenflow.errors import FlowError
from greenflow.network.network_map import format_address, parse_address
from greenflow.runtime.flow_types import duration

API = "/api/v1"
#: The largest answer read (a result document of a flow with a big result): anything
#: larger is refused unread, whoever sends it.
MAX_ANSWER_BYTES = 256 << 20
#: The longest line of an event stream, and the most data one event may carry.
MAX_EVENT_BYTES = 16 << 20
#: The shortest read timeout of an event stream: a quiet stream gets a keep-alive every
#: 15 s, and a shorter timeout took such a healthy stream for a dead node.
MIN_STREAM_TIMEOUT = 20.0
#: The requests a clustered worker's 421 NotHere is followed for: a kill or a retry.
_FOLLOWED = re.compile(r"(POST /flows/[^/?]+/(kill|retry)|DELETE /flows/[^/?]+)\Z")


class RpcClientError(FlowError):
    """The node answered with an error (``status`` is the HTTP status, ``type`` the
    error's type, e.g. ``NotStartable``), or could not be reached (``status`` 0)."""

    def __init__(self, status: int, type_: str, message: str) -> None:
        super().__init__(message)
        self.status, self.type, self.message = status, type_, message

    def __str__(self) -> str:
        return f"{self.type}: {self.message}" if self.type else self.message


class RpcClient:
    def __init__(self, url: str, username: str, password: str, *, timeout: float = 60.0) -> None:
        try:
            u = urlsplit(url if "://" in url else "http://" + url)
            port = u.port or 80   # (a port that is no number or out of range: ValueError)
        except ValueError:
            u, port = None, 0
        if u is None or u.scheme != "http" or not u.hostname or u.username is not None \
                or u.path not in ("", "/") or u.query or u.fragment:
            shown_url = re.sub(r"//[^/@]*@", "//...@", str(url))   # never echo a password
            raise RpcClientError(0, "BadUrl", f"{shown_url!r:.200} is not an http://host:port "
                                 "address (credentials go in --user/--password, not the URL)")
        self.host, self.port = u.hostname, port
        self.url = f"http://{self.host}:{self.port}"
        self.timeout = timeout
        token = base64.b64encode(f"{username}:{password}".encode()).decode()
        self._headers = {"Authorization": f"Basic {token}", "Accept": "application/json"}
        self._local = threading.local()

    @classmethod
    def for_node(cls, node: str, username: Optional[str] = None, password: Optional[str] = None,
                 **kw: Any) -> "RpcClient":
        """``node`` is a node directory or an ``http://host:port`` URL."""
        username = username or os.environ.get("GREENFLOW_RPC_USER")
        password = password or os.environ.get("GREENFLOW_RPC_PASSWORD")
        if "://" in node:
            url = node
        else:
            from greenflow.network.network_map import format_address
            from greenflow.network.node_config import NodeConfig, read_credentials
            cfg = NodeConfig.load(node)
            if cfg.rpc_address[1] == 0:   # the node takes any free port: known to it alone
                raise RpcClientError(
                    0, "NoAddress", f"{os.path.join(node, 'node.toml')} gives rpc_address port "
                    f"0 (any free port), so the port the node took is in its log only "
                    f"({os.path.join(node, 'node.log')}: '... is up: p2p ..., rpc HOST:PORT'): reach it with --node "
                    "http://HOST:PORT, or give rpc_address a fixed port")
            url = "http://" + format_address(cfg.rpc_address)
            if username is None or password is None:
                cred = read_credentials(node)
                if cred is not None:
                    username = username or cred[0]
                    password = password or cred[1]
        if username is None or password is None:
            from greenflow.network.node_config import CREDENTIALS_FILE
            where = node if "://" in node else \
                f"{node} (no {os.path.join(node, CREDENTIALS_FILE)})"
            raise RpcClientError(0, "NoCredentials", f"no RPC credentials for {where}: pass "
                                 "--user/--password or set GREENFLOW_RPC_USER and "
                                 "GREENFLOW_RPC_PASSWORD")
        return cls(url, username, password, **kw)

    # ------------------------------------------------------------------ transport
    def _conn(self, timeout: Optional[float]) -> http.client.HTTPConnection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = http.client.HTTPConnection(self.host, self.port,
                                                                 timeout=self.timeout)
        conn.timeout = timeout if timeout is not None else self.timeout
        if conn.sock is not None:
            conn.sock.settimeout(conn.timeout)
        return conn

    def request(self, method: str, path: str, body: Any = None,
                timeout: Optional[float] = None, redirected: bool = False) -> tuple[int, Any]:
        """One call; returns ``(status, document)`` for 2xx, raises `RpcClientError`
        otherwise, also for an answer that is no JSON object or is larger than
        `MAX_ANSWER_BYTES`. A clustered worker's ``421 NotHere`` to a kill or retry is
        followed once to the worker it names."""
        data = None if body is None else json.dumps(body).encode()
        headers = dict(self._headers)
        if data is not None:
            headers["Content-Type"] = "application/json"
        for attempt in (0, 1):
            conn = self._conn(timeout)
            resp = None
            try:
                conn.request(method, API + path, body=data, headers=headers)
                resp = conn.getresponse()
                if resp.length is None:   # chunked, or up to the connection's close
                    raw = resp.read(MAX_ANSWER_BYTES + 1)
                elif resp.length <= MAX_ANSWER_BYTES:
                    raw = resp.read()   # (a short one: IncompleteRead, the node died)
                if resp.length is not None and resp.length > MAX_ANSWER_BYTES \
                        or len(raw) > MAX_ANSWER_BYTES:
                    conn.close()
                    raise RpcClientError(resp.status, "BadAnswer", f"{self.url} answered more "
                                         f"than {MAX_ANSWER_BYTES:,} bytes; not read")
                break
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError) as exc:
                conn.close()   # a kept-alive connection the server closed: retry once
                if attempt or resp is not None:  # it began to answer: the request ran, never send it twice
                    raise RpcClientError(0, "Unreachable", f"{self.url}: {exc}") from None
            except (OSError, http.client.HTTPException) as exc:
                conn.close()   # e.g. IncompleteRead: the node died in the middle of its answer
                raise RpcClientError(0, "Unreachable", f"cannot reach the node's RPC at "
                                     f"{self.url}: {exc}") from None
        try:
            doc = json.loads(raw) if raw else None
        except ValueError:
            doc = None
        if resp.status >= 400:
            err = doc.get("error") if isinstance(doc, dict) else None
            if resp.status == 421 and isinstance(err, dict) and not redirected \
                    and _FOLLOWED.match(f"{method} {path}"):
                there = self._at(err.get("rpc"))
                if there is not None:
                    # A clustered worker that does not run the flow named the one that
                    # does (nothing was done): the same request, once, there.
                    return there.request(method, path, body, timeout, redirected=True)
            if isinstance(err, dict):
                raise RpcClientError(resp.status, _cut(err.get("type", ""), 100),
                                     _cut(err.get("message", ""), 2000))
            raise RpcClientError(resp.status, "HTTPError", f"HTTP {resp.status}: {raw[:200]!r}")
        if resp.status >= 300 or not isinstance(doc, dict):
            raise RpcClientError(resp.status, "BadAnswer", f"{self.url} answered HTTP "
                                 f"{resp.status} with {raw[:100]!r}: not a node's JSON answer")
        return resp.status, doc

    def _at(self, address: Any) -> Optional["RpcClient"]:
        """This client, at the RPC address a clustered worker named (None: no address)."""
        if not isinstance(address, str):
            return None
        try:
            host, port = parse_address(address)
        except Exception:  # noqa: BLE001 - not an address: the 421 itself is raised
            return None
        there = copy.copy(self)
        there.host, there.port = host, port
        there.url, there._local = f"http://{format_address((host, port))}", threading.local()
        return there

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    # ------------------------------------------------------------------ operations
    def node_info(self) -> dict:
        return self.request("GET", "/node")[1]

    def network(self) -> list:
        nodes = self.request("GET", "/network")[1].get("nodes")
        if not isinstance(nodes, list):
            raise RpcClientError(0, "BadAnswer", f"{self.url} answered /network without nodes")
        return nodes

    def start_flow(self, flow: str, args: Optional[dict] = None, *, client_id: Optional[str] = None,
                   wait: Optional[float] = None, count: int = 1) -> dict:
        """Start a flow (``count`` > 1: that many, one commit, ``{"flow_ids": [...]}``)."""
        body: dict = {"flow": flow, "args": args or {}}
        if client_id is not None:
            body["client_id"] = client_id
        wait = _wait(wait)
        if wait:
            body["wait"] = wait
        if count != 1:
            body["count"] = count
        return self.request("POST", "/flows", body,
                            timeout=None if not wait else wait + self.timeout)[1]

    def flows(self, status: Optional[str] = None) -> list:
        """Every flow (of ``status``, comma-separated names), read a page at a time."""
        return list(self.each_flow(status))

    def each_flow(self, status: Optional[str] = None) -> Iterator[dict]:
        """`flows`, each yielded as its page arrives: a caller printing a million flows
        holds one page, not all of them."""
        return _pages(self.url, lambda cursor: self.flow_page(status, cursor=cursor), "flows")

    def flow_page(self, status: Optional[str] = None, limit: Optional[int] = None,
                  cursor: Optional[str] = None) -> dict:
        """One page: ``{"flows", "more", "next_cursor"}`` (pass ``next_cursor`` on)."""
        q = {k: v for k, v in (("status", status), ("limit", limit), ("cursor", cursor))
             if v is not None}
        return self.request("GET", "/flows" + (f"?{urlencode(q)}" if q else ""))[1]

    def flow(self, flow_id: str) -> dict:
        return self.request("GET", f"/flows/{_fid(flow_id)}")[1]

    def result(self, flow_id: str, wait: float = 0.0) -> dict:
        """``{"finished": bool, "status", "result" | "error"}``; waits up to ``wait`` s."""
        wait = _wait(wait) or 0.0
        return self.request("GET", f"/flows/{_fid(flow_id)}/result?wait={wait}",
                            timeout=wait + self.timeout)[1]

    def kill(self, flow_id: str) -> dict:
        return self.request("POST", f"/flows/{_fid(flow_id)}/kill")[1]

    def retry(self, flow_id: str) -> dict:
        """Run a HOSPITALIZED flow again from its last checkpoint (``{"retried": bool}``)."""
        return self.request("POST", f"/flows/{_fid(flow_id)}/retry")[1]

    def checkpoints(self) -> list:
        """Every unfinished flow's dump entry, read a page at a time."""
        return list(_pages(self.url, lambda cursor: self.checkpoints_page(cursor=cursor),
                           "checkpoints"))

    def checkpoints_page(self, limit: Optional[int] = None, cursor: Optional[str] = None) -> dict:
        """One page: ``{"checkpoints", "more", "next_cursor"}``."""
        q = {k: v for k, v in (("limit", limit), ("cursor", cursor)) if v is not None}
        return self.request("GET", "/checkpoints" + (f"?{urlencode(q)}" if q else ""))[1]

    def draining(self) -> dict:
        return self.request("GET", "/draining")[1]

    def set_draining(self, enabled: bool) -> dict:
        return self.request("POST", "/draining", {"enabled": bool(enabled)})[1]

    def shutdown(self) -> dict:
        return self.request("POST", "/shutdown")[1]

    def vault_query(self, **params: Any) -> dict:
        """``GET /vault/states``: a page of the node's vault (parameters as in docs/ledger.md:
        ``type``, ``status``, ``linear_id``, ``external_id``, ``page``, ``page_size``,
        ``cursor``, ``sort``, ``desc``)."""
        return self.request("GET", "/vault/states?" + urlencode(params))[1]

    def vault_updates(self, timeout: Optional[float] = None, **params: Any) -> Iterator[tuple[str, Any]]:
        """``GET /vault/updates`` as ``(event, data)``: ``snapshot`` first, then an
        ``update`` per change to the states the parameters select; runs until closed.
        ``timeout``: seconds without a byte from the node before the stream counts as
        dead (`RpcClientError` Unreachable); at least `MIN_STREAM_TIMEOUT`, since a
        quiet, healthy stream sends only a keep-alive every 15 s."""
        return self._events(API + "/vault/updates?" + urlencode(params), timeout)

    def _events(self, path: str, timeout: Optional[float],
                until: Optional[str] = None) -> Iterator[tuple[str, Any]]:
        """The stream's events. It ends after a ``dropped`` event (the node let it go) or
        the ``until`` event; a connection that ends otherwise (the node died) raises
        `RpcClientError` Unreachable, as does an answer that is no event stream."""
        if timeout is not None:
            timeout = max(timeout, MIN_STREAM_TIMEOUT)
        conn = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        try:
            conn.request("GET", path, headers=self._headers)
            resp = conn.getresponse()
            if resp.status >= 300:
                raw = resp.read(MAX_EVENT_BYTES)
                try:
                    err = json.loads(raw)["error"]
                    if not isinstance(err, dict):
                        raise TypeError
                except (ValueError, KeyError, TypeError):
                    err = {"type": "HTTPError", "message": raw[:200].decode(errors="replace")}
                raise RpcClientError(resp.status, _cut(err.get("type", ""), 100),
                                     _cut(err.get("message", ""), 2000))
            if not (resp.getheader("Content-Type") or "").startswith("text/event-stream"):
                raise RpcClientError(resp.status, "BadAnswer", f"{self.url} answered "
                                     f"{path} with no event stream")
            event, data, size = "message", [], 0
            while True:
                line = resp.readline(MAX_EVENT_BYTES + 1)
                if not line:
                    raise RpcClientError(0, "Unreachable", f"the event stream from {self.url} "
                                         "ended before the node said why (did it stop?)")
                size += len(line)
                if len(line) > MAX_EVENT_BYTES or size > MAX_EVENT_BYTES:
                    raise RpcClientError(0, "BadAnswer", f"an event from {self.url} is larger "
                                         f"than {MAX_EVENT_BYTES:,} bytes")
                text = line.decode("utf-8").rstrip("\r\n")
                if not text:
                    if data:
                        yield event, json.loads("\n".join(data))
                        if event == "dropped" or event == until:
                            return
                    event, data, size = "message", [], 0
                elif text.startswith(":"):   # a comment (keep-alive)
                    size = 0 if not data else size
                elif text.startswith("event:"):
                    event = text[6:].strip()
                elif text.startswith("data:"):
                    data.append(text[5:].lstrip())
        except (OSError, http.client.HTTPException) as exc:
            raise RpcClientError(0, "Unreachable", f"event stream from {self.url}: {exc}") from None
        except ValueError as exc:   # no UTF-8, no JSON: not what a node sends
            raise RpcClientError(0, "BadAnswer", f"event stream from {self.url}: "
                                 f"{type(exc).__name__}: {_cut(exc, 200)}") from None
        finally:
            conn.close()

    def progress(self, flow_id: Optional[str] = None, timeout: Optional[float] = None,
                 steps: bool = True) -> Iterator[tuple[str, Any]]:
        """Server-sent events as ``(event, data)``: ``status`` first, then ``progress``
        and ``end``. For one flow the iteration ends after its ``end``. ``steps=False``
        leaves out the ``progress`` events: a client that only waits for flows to end
        spares the node working out every step of every flow for it. ``timeout`` as for
        `vault_updates`."""
        path = API + (f"/flows/{_fid(flow_id)}/progress" if flow_id is not None else "/progress")
        return self._events(path if steps else path + "?steps=0", timeout,
                            until="end" if flow_id is not None else None)


def _pages(url: str, page: Any, key: str) -> Iterator[Any]:
    """The items of every page ``page(cursor)`` answers, as each page arrives; a page
    without its list, or a cursor given twice, is a `BadAnswer`."""
    cursor = None
    seen: set = set()
    while True:
        doc = page(cursor)
        items = doc.get(key)
        if not isinstance(items, list):
            raise RpcClientError(0, "BadAnswer", f"{url} answered a page without "
                                 f"its {key!r} list")
        yield from items
        cursor = doc.get("next_cursor")
        if not cursor:
            return
        if cursor in seen:   # a node never does this; an answer that does is not read on
            raise RpcClientError(0, "BadAnswer", f"{url} gave the page cursor "
                                 f"{_cut(cursor, 40)!r} twice")
        seen.add(cursor)


def _fid(flow_id: Any) -> str:
    """A flow id as a path segment: a `/` in it would reach another endpoint, an empty one
    the listing."""
    if not isinstance(flow_id, str) or not flow_id:
        raise ValueError(f"a flow id is a non-empty str, got {flow_id!r:.60}")
    return quote(flow_id, safe="")


def _cut(value: Any, limit: int) -> str:
    """A value an answer carried, as text of bounded length."""
    text = value if isinstance(value, str) else str(value)
    return text if len(text) <= limit else text[:limit] + f"...(+{len(text) - limit} chars)"


def _wait(wait: Any) -> Optional[float]:
    """A ``wait`` the node takes: None, or a number of seconds from 0 up to a century
    (`greenflow.runtime.flow_types.duration`; an infinite one overflowed the socket's
    timeout before anything was sent; the node caps waits)."""
    if wait is None:
        return None
    if type(wait) is bool or not isinstance(wait, (int, float)):   # (float() takes "5")
        raise TypeError(f"wait takes a number of seconds, got {type(wait).__qualname__}")
    return duration(wait, "wait")
