"""The RPC's long-lived answers: server-sent event streams of flow progress and of vault
updates, each holding one of the server's ``max_streams`` slots while it runs."""
from __future__ import annotations

import json
import select
import socket
import time
from http.server import BaseHTTPRequestHandler
from typing import TYPE_CHECKING, Any, Optional

from greenflow.errors import FlowError
from greenflow.node.node import FlowHandle
from greenflow.rpc.documents import RpcError, finished
from greenflow.rpc.progress_hub import KEEPALIVE_SECONDS, Subscriber

if TYPE_CHECKING:
    from greenflow.rpc.server import RpcServer


class ClientWatch:
    """Whether a stream's client has closed its end, looked at most every `EVERY` seconds
    (a zero-wait poll of the socket). A stream learnt it only at its next write (a
    keep-alive every 15 s), and until then held a connection slot: a client that opened
    and closed streams in a loop locked its own address out for half a minute."""

    EVERY = 0.5

    def __init__(self, handler: BaseHTTPRequestHandler) -> None:
        self.sock = handler.connection
        self.next = 0.0

    def left(self) -> bool:
        now = time.monotonic()
        if now < self.next:
            return False
        self.next = now + self.EVERY
        try:
            poll = select.poll()   # (not select(): no bound on the descriptor's number)
            poll.register(self.sock, select.POLLIN)
            # A client sends nothing on a stream: readable means it closed (or reset) it.
            return bool(poll.poll(0)) and self.sock.recv(1, socket.MSG_PEEK) == b""
        except OSError:   # reset: gone too
            return True


def event(handler: BaseHTTPRequestHandler, kind: str, doc: Any) -> None:
    handler.wfile.write(_event_bytes(kind, doc))
    handler.wfile.flush()


def _event_bytes(kind: str, doc: Any) -> bytes:
    return f"event: {kind}\ndata: {json.dumps(doc)}\n\n".encode("utf-8")


#: Events written to a stream in one send at most: a burst of flows ending costs one
#: system call per burst instead of one per flow, and a slow client still gets them soon.
_BATCH = 64


def progress_stream(handler: BaseHTTPRequestHandler, rpc: RpcServer, fid: Optional[str],
                    steps: bool = True) -> None:
    """Server-sent events: ``status`` (now), then ``progress`` per step change (unless
    ``steps`` is false: a client that waits for flows to end) and ``end`` when a flow
    finishes (for one flow, the stream then closes). A client more than
    ``stream_buffer`` events behind is dropped (`ProgressHub`), and one that accepts
    nothing for ``request_timeout`` seconds too."""
    node = rpc.node
    if not rpc.open_stream():
        raise RpcError(503, "TooManyStreams", f"{rpc.limits.max_streams} progress streams "
                                              "are open (max_streams): retry later",
                       retry_after=5)
    sub = rpc.hub.subscribe(fid, steps)
    try:
        if fid is not None:
            node.handle(fid)  # UnknownFlow -> 404 before the stream starts
        # Before the answer starts: a listing that waited too long for its turn is a
        # plain 503, not an error written into an event stream.
        status = rpc.flow(fid) if fid is not None else rpc.stream_status()
        start_events(handler)
        try:
            _pump(handler, rpc, node, fid, sub, status)
        except OSError:  # the client left, or accepted nothing for request_timeout
            pass
        except RpcError as exc:   # an outcome not to be read now (a worker's generation
            # replaced): the stream ends as a dropped one does; the client asks again
            handler.connection.settimeout(0.2)
            try:
                event(handler, "dropped", {"reason": exc.message})
            except OSError:
                pass
    finally:
        rpc.hub.unsubscribe(sub)
        rpc.close_stream()


def start_events(handler: BaseHTTPRequestHandler) -> None:
    """Answer 200 with an event stream on a connection that closes when it ends."""
    handler.send_response(200)
    handler.send_header("Content-Type", "text/event-stream")
    handler.send_header("Cache-Control", "no-cache")
    handler.send_header("Connection", "close")
    handler.end_headers()
    handler.close_connection = True


def _pump(handler: BaseHTTPRequestHandler, rpc: RpcServer, node: Any, fid: Optional[str],
          sub: Subscriber, status: dict) -> None:
    event(handler, "status", status)
    if fid is not None and finished(status["status"]):
        return event(handler, "end", rpc.outcome(FlowHandle(node, fid), 0)[1])
    out: list[bytes] = []

    def send() -> None:
        handler.wfile.write(b"".join(out))
        handler.wfile.flush()
        out.clear()

    watch = ClientWatch(handler)
    for item in sub.follow(lambda: rpc.stopping or watch.left()):
        if item is None:   # quiet: a keep-alive
            handler.wfile.write(b": keepalive\n\n")
            handler.wfile.flush()
            continue
        flow_id, step = item
        if step is not None:
            out.append(_event_bytes("progress", {"flow_id": flow_id, "step": step}))
        else:
            out.append(_event_bytes("end", rpc.outcome(FlowHandle(node, flow_id), 30.0)[1]))
            if fid is not None:
                return send()
        if len(out) >= _BATCH or sub.queue.empty():   # nothing more waiting: send now
            send()
    if out and not sub.dropped:   # the server stops with events of this stream not yet sent
        send()
    if sub.dropped and not rpc.stopping:
        # Tell a client that still reads why its stream ends; never wait on one that does not.
        handler.connection.settimeout(0.2)
        event(handler, "dropped", {"reason": f"more than {rpc.hub.buffer} events behind "
                                             "(stream_buffer)"})


def vault_updates(handler: BaseHTTPRequestHandler, rpc: RpcServer, params: dict) -> None:
    """Server-sent events: ``snapshot`` (a page, as ``GET /vault/states`` gives it),
    then an ``update`` (consumed and produced states) per recorded change; ``dropped``
    (and the stream ends) when the vault ends the feed because it fell behind."""
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
        start_events(handler)
        event(handler, "snapshot", snapshot)
        last = time.monotonic()
        watch = ClientWatch(handler)
        while not rpc.stopping and not watch.left():
            update = feed.next(timeout=1.0)
            if update is not None:
                event(handler, "update", update)
                last = time.monotonic()
            elif feed.closed:
                if feed.dropped:
                    event(handler, "dropped", {"reason": feed.dropped})
                break
            elif time.monotonic() - last > KEEPALIVE_SECONDS:
                handler.wfile.write(b": keepalive\n\n")
                handler.wfile.flush()
                last = time.monotonic()
    except OSError:  # the client left, or accepted nothing for request_timeout
        pass
    finally:
        feed.close()
        rpc.close_stream()
