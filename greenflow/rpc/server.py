"""The node's RPC: JSON over HTTP, so ``curl`` and any HTTP client work. See docs/rpc.md.

Every request needs HTTP basic authentication against a user of ``node.toml``, whose
password is stored as a PyNaCl ``pwhash`` (Argon2id) hash. Checking that hash costs about
0.1 s and 64 MB by design, so `greenflow.rpc.limits.LoginGuard` remembers successful
checks (keyed by a SHA-256, never the password), runs one at a time and backs off
clients that keep failing. The server, its worker pool and its limits are in
`greenflow.rpc.limits`; the HTTP side (routing) in `greenflow.rpc.http_handler`, event
streams in `greenflow.rpc.streams` and `greenflow.rpc.progress_hub`, the JSON documents in
`greenflow.rpc.documents`.

Requests run on the server's own threads; they reach flows only through the `Node` API
(which hands work to the scheduler thread), never by touching flow state themselves.
"""
from __future__ import annotations

import os
import threading
import time
from contextlib import contextmanager
from typing import Any, Iterator, Optional

from greenflow.console import ConsoleApp
from greenflow.errors import FlowError, FlowKilled, NodeClosed, StoreError, UnknownFlow
from greenflow.flows.registry import qualified_name
from greenflow.network.network_map import format_address
from greenflow.node.flow_listing import (CHECKPOINTS_LIMIT, DEFAULT_LIMIT, MAX_CHECKPOINTS_LIMIT,
                                         MAX_LIMIT)
from greenflow.node.node import FlowHandle
from greenflow.node.results import unpack_result
from greenflow.rpc.documents import (MAX_WAIT_SECONDS, REPR_LIMIT, RpcError,  # noqa: F401
                                     count, error_json, flow_json, seconds, shown,
                                     to_json)
from greenflow.rpc.flow_requests import (MAX_BATCH, build_flow, may_start_some,  # noqa: F401
                                         resolve_flow_class)
from greenflow.rpc.flow_start import requested_class_name
from greenflow.rpc.http_handler import API, RpcHandler, RpcHttpServer  # noqa: F401
from greenflow.rpc.limits import LoginGuard, RpcLimits
from greenflow.rpc.log_limits import clip
from greenflow.rpc.progress_hub import KEEPALIVE_SECONDS, ProgressHub  # noqa: F401
from greenflow.status import FlowStatus

MAX_BODY_BYTES = RpcLimits.max_body_bytes
KNOWN_STATUSES = frozenset(s.value for s in FlowStatus)
#: Flow listings (and dumps) served at once; `LISTING_WAIT` seconds for a turn.
LISTINGS = 2
LISTING_WAIT = 10.0


#: A wait for a flow's result looks up this often whether the RPC is stopping.
WAIT_SLICE = 0.5


def _settled(rpc: "RpcServer", handle: FlowHandle, fid: str, wait: float,
             deadline: float) -> Optional[dict]:
    """The record of the flow's end, or None when it has not ended by ``deadline``.

    Only the flow's own end is reported as FAILED: a node object that closed during the
    wait (a clustered worker's partitions changing hands) or a store that failed says
    nothing of it. The wait goes on through the node serving now, or the client is told
    503, nothing known (it was told FAILED for a flow that then completed, and a client
    that retried a payment paid twice)."""
    while True:
        try:
            if wait <= 0 and not handle.status.finished:
                return None
            left = deadline - time.monotonic()
            return handle.node.results.settled(
                fid, min(left, WAIT_SLICE) if wait > 0 and left > 0 else 1.0)
        except TimeoutError:
            if rpc.stopping:
                raise RpcError(503, "ShuttingDown", f"the node is shutting down; flow {fid} "
                               "had not finished: ask again once it is back",
                               retry_after=1) from None
            if time.monotonic() >= deadline:
                return None
        except (NodeClosed, StoreError) as exc:
            node = rpc.node   # 503 Unavailable when no node serves just now
            if node is handle.node or time.monotonic() >= deadline:
                raise RpcError(503, "Unavailable", f"the outcome of flow {fid} cannot be "
                               f"read just now ({exc}); nothing is known of it: ask again",
                               retry_after=1) from None
            handle = node.handle(fid)


class RpcServer:
    """Serves the RPC of one `greenflow.rpc.node_process.NodeProcess`."""

    def __init__(self, proc: Any, address: tuple[str, int],
                 limits: Optional[RpcLimits] = None) -> None:
        self.proc = proc
        self.limits = limits or RpcLimits.from_config(getattr(proc.config, "rpc", None))
        self.hub = ProgressHub(self.limits.stream_buffer, self.limits.log_interval)
        self.logins = LoginGuard(self.limits, proc.config.user, self._any_hash)
        self._streams = threading.BoundedSemaphore(self.limits.max_streams)
        self._streams_lock = threading.Lock()
        self._listings = threading.BoundedSemaphore(LISTINGS)
        try:
            self.httpd = RpcHttpServer(address, RpcHandler, self.limits)
        except OSError as exc:   # the address, as the P2P side names its own
            raise OSError(exc.errno, f"cannot listen for RPC clients on "
                          f"{format_address(address)}: {exc.strerror}") from None
        self.httpd.rpc = self
        self.httpd.warners += [self.logins.warn, self.hub._warn]
        self.httpd.backoff = self.logins.backoff
        self._thread: Optional[threading.Thread] = None
        self.stopping = False
        #: Event streams open now (their connections stay busy until they end).
        self.streams_open = 0
        self.console = ConsoleApp(self)  # /console... and /metrics (see RpcHandler._console)
        self.httpd.warners.append(self.console.warn)

    @property
    def address(self) -> tuple[str, int]:
        return self.httpd.server_address[:2]  # type: ignore[return-value]

    @property
    def node(self) -> Any:
        node = self.proc.node
        if self.stopping:
            raise RpcError(503, "ShuttingDown", "the node is shutting down")
        if node is None:   # a clustered worker between two generations of its partitions
            raise RpcError(503, "Unavailable", "the node is not serving just now (a clustered "
                           "worker whose partitions are changing hands, or whose database it "
                           "cannot reach); nothing was done: try again", retry_after=1)
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
        # Requests being worked on are let answer first, for up to a second: a wait for a
        # result answers 503 ShuttingDown within a slice of its wait, a start that the
        # store refused says so (an open long-poll, and a batch start on a full disk, got
        # an empty reply when their connection was closed under them).
        end = time.monotonic() + 2 * WAIT_SLICE
        while self.httpd.busy_count() > self.streams_open and time.monotonic() < end:
            time.sleep(0.02)
        self.httpd.close_connections()

    # ------------------------------------------------------------------ auth
    def _any_hash(self) -> Optional[str]:
        users = self.proc.config.rpc_users
        return users[0].password_hash if users else None

    def open_stream(self) -> bool:
        """Take one of the ``max_streams`` slots for a long-lived event stream (RPC
        progress or the console's); False when all are taken. `close_stream` gives it back."""
        with self._streams_lock:
            took = self._streams.acquire(blocking=False)
            self.streams_open += took
        return took

    def close_stream(self) -> None:
        with self._streams_lock:
            self._streams.release()
            self.streams_open -= 1

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
        client_id, wait, count = body.get("client_id"), body.get("wait"), body.get("count", 1)
        if client_id is not None and (not isinstance(client_id, str) or not client_id
                                      or len(client_id.encode("utf-8", "replace")) > 200):
            raise RpcError(400, "BadRequest", "`client_id` must be a string of 1 to 200 bytes (UTF-8)")
        if not isinstance(count, int) or isinstance(count, bool) or not 1 <= count <= MAX_BATCH:
            raise RpcError(400, "BadRequest", f"`count` must be an integer from 1 to {MAX_BATCH}")
        # Every field is checked before anything starts: a start is durable once made.
        wait = 0.0 if wait is None else seconds(wait, "wait")
        if count > 1 and (client_id is not None or wait):
            raise RpcError(400, "BadRequest", "`count` cannot be combined with `client_id` or `wait`")
        flows = [build_flow(cls, body.get("args"), lambda name: self.proc.netmap.resolve(name).party)
                 for _ in range(count)]
        if self.proc.draining:
            raise RpcError(503, "Draining", "the node is draining: it starts no new flows")
        name = qualified_name(cls)
        if count > 1:
            return 200, {"flow_ids": [h.id for h in node.start_flows(flows)], "flow_class": name}
        handle = node.start_flow(flows[0], client_id=client_id)
        if handle.earlier:   # the client id was taken: by a flow of this class?
            try:
                started = node.flow_info(handle.id).flow_class
            except (UnknownFlow, TimeoutError, FlowError):
                # Not to be found here now (a clustered worker's partitions moving): the
                # start stands, as it did before this check; a retry checks again.
                started = name
            if started != name:
                raise RpcError(409, "Conflict", f"client_id {shown(client_id)!r} names flow "
                                                f"{handle.id} of class {started}, not {name}")
        out = {"flow_id": handle.id, "flow_class": name, "client_id": client_id}
        # A client id found taken may be another user's flow: its result goes only to
        # users who may read any flow's.
        if wait and (not handle.earlier or user.allows("read")):
            out.update(self.outcome(handle, wait)[1])
        return 200, out

    def flows(self, status: Optional[str], limit: Any = None, cursor: Optional[str] = None) -> dict:
        """``GET /flows``: a page of at most ``limit`` flows (`Node.flow_page`), ``more``
        and the ``next_cursor`` to go on from."""
        wanted = {s.strip().upper() for s in status.split(",")} if status else None
        unknown = sorted(wanted - KNOWN_STATUSES) if wanted else None
        if unknown:   # a typo would otherwise look like "no such flows"
            raise RpcError(400, "BadRequest", f"unknown status {shown(', '.join(unknown))} "
                                              f"(known: {', '.join(s.value for s in FlowStatus)})")
        n = count(limit, "limit", DEFAULT_LIMIT, MAX_LIMIT)
        statuses = [FlowStatus(s) for s in wanted] if wanted else None
        with self._listing():
            page = self.node.flow_page(statuses, n, cursor)
        return {"flows": [flow_json(f) for f in page.flows], "more": page.more,
                "next_cursor": page.next_cursor}

    def stream_status(self) -> dict:
        """The first event of ``/progress``: the first page of the flow list (unfinished
        flows first), at most ``stream_status_flows`` of them, so a stream held open by a
        client that does not read holds a bounded document, and opening one reads a
        bounded part of the store."""
        with self._listing():
            page = self.node.flow_page(None, self.limits.stream_status_flows)
        out: dict = {"flows": [flow_json(f) for f in page.flows]}
        if page.more:
            out["more"] = True
            out["next_cursor"] = page.next_cursor
        return out

    @contextmanager
    def _listing(self) -> Iterator[None]:
        """One of `LISTINGS` listings at a time: each reads the store on its request's
        thread, and many at once would share the interpreter with the scheduler, so
        slow every flow; the others wait their turn (``503 Busy`` after `LISTING_WAIT`)."""
        if not self._listings.acquire(timeout=LISTING_WAIT):
            raise RpcError(503, "Busy", "too many flow listings at once: retry later",
                           retry_after=1)
        try:
            yield
        finally:
            self._listings.release()

    def flow(self, fid: str) -> dict:
        return flow_json(self.node.flow_info(fid))

    def result(self, fid: str, wait: float) -> tuple[int, dict]:
        return self.outcome(self.node.handle(fid), wait)  # UnknownFlow -> 404

    def outcome(self, handle: FlowHandle, wait: float) -> tuple[int, dict]:
        """The result document of a flow: 200 when it finished, 202 when not (yet);
        503 when no node can say (`_settled`)."""
        fid = handle.id
        deadline = time.monotonic() + max(wait, 0.0)
        rec = _settled(self, handle, fid, wait, deadline)
        if rec is None:
            info = self.flow(fid)
            return 202, {"flow_id": fid, "finished": False, "status": info["status"],
                         "progress_step": info["progress_step"], "error": info["error"]}
        try:
            value = unpack_result(fid, rec)
        except FlowKilled as exc:
            return 200, {"flow_id": fid, "finished": True, "status": "KILLED", "error": error_json(exc)}
        except Exception as exc:  # noqa: BLE001 - the flow's own failure, reported as data
            return 200, {"flow_id": fid, "finished": True, "status": "FAILED", "error": error_json(exc)}
        return 200, {"flow_id": fid, "finished": True, "status": "COMPLETED", "result": to_json(value)}

    def act(self, fid: str, action: str) -> dict:
        """``POST /flows/{id}/kill`` (``killed`` false: it had finished) and ``.../retry``
        (a HOSPITALIZED flow runs again from its last checkpoint, `Node.retry_flow`;
        ``retried`` false: it was not parked)."""
        node = self.node
        node.handle(fid)  # UnknownFlow -> 404
        if action == "kill":
            return {"flow_id": fid, "killed": bool(node.kill_flow(fid))}
        return {"flow_id": fid, "retried": bool(node.retry_flow(fid))}

    def checkpoints(self, limit: Any = None, cursor: Optional[str] = None) -> dict:
        """``GET /checkpoints``: a page of the dump (`Node.checkpoints_page`)."""
        n = count(limit, "limit", CHECKPOINTS_LIMIT, MAX_CHECKPOINTS_LIMIT)
        with self._listing():
            rows, nxt = self.node.checkpoints_page(n, cursor)
        return {"checkpoints": to_json(rows), "more": nxt is not None, "next_cursor": nxt}

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
        if not isinstance(body, dict) or not isinstance(body.get("enabled"), bool) \
                or set(body) != {"enabled"}:
            raise RpcError(400, "BadRequest", 'expected {"enabled": true|false}')
        self.proc.set_draining(body["enabled"])
        return self.draining()

    def shutdown(self) -> dict:
        threading.Timer(0.2, self.proc.request_stop).start()
        return {"stopping": True}
