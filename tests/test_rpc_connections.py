"""The RPC's connections under a slow client (slowloris): one address that opens many
connections and trickles their request headers must not hold the node's connections,
so a client elsewhere is still served, and the slow ones are closed at the header
deadline rather than after the whole request budget.

Clients that must count as different hosts bind different loopback source addresses
(127.0.0.x), which Linux routes to the same node."""
from __future__ import annotations

import base64
import http.client
import json
import select
import socket
import time

import pytest

from greenflow.network.bootstrap import bootstrap_network
from greenflow.network.node_config import ConfigError, NodeConfig
from greenflow.rpc.limits import RpcLimits
from greenflow.rpc.node_process import NodeProcess

LIMITS = {"max_connections": 24, "max_connections_per_address": 8, "max_streams": 4,
          "header_timeout": 1.5, "request_timeout": 6.0, "log_interval": 5}
SLOW = "127.0.0.1"
OTHER = "127.0.0.2"


def auth(user: str = "admin", password: str = "pw") -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    c = bootstrap_network(str(tmp_path_factory.mktemp("rpcconns")), ["Solo"], base_port=0,
                          apps=["samples.ping"], rpc_password="pw")[0]
    cfg = NodeConfig.load(c.base_dir)
    cfg.rpc = dict(LIMITS)
    cfg.save()
    proc = NodeProcess(c.base_dir, node_options={"sync": False}).start()
    try:
        yield proc, c.rpc_address
    finally:
        proc.stop()


def call(addr: tuple, src: str, timeout: float = 5.0) -> tuple[int, dict]:
    conn = http.client.HTTPConnection(*addr, timeout=timeout, source_address=(src, 0))
    try:
        conn.request("GET", "/api/v1/node", headers={"Authorization": auth()})
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read() or b"{}")
    finally:
        conn.close()


def answer_now(sock: socket.socket, wait: float = 0.5) -> bytes:
    """What the node sends within ``wait`` seconds (b"" if nothing yet)."""
    if not select.select([sock], [], [], wait)[0]:
        return b""
    try:
        return sock.recv(65536) or b"<EOF>"
    except ConnectionResetError:
        return b"<EOF>"


def slow_connections(addr: tuple, src: str, n: int) -> list[socket.socket]:
    """``n`` connections from ``src`` that each start a request and never finish its headers."""
    socks = []
    for _ in range(n):
        s = socket.create_connection(addr, timeout=5, source_address=(src, 0))
        s.sendall(b"GET /api/v1/node HTTP/1.1\r\n")
        socks.append(s)
    return socks


def test_one_slow_address_cannot_hold_every_connection(node):
    _, addr = node
    socks = slow_connections(addr, SLOW, LIMITS["max_connections"])  # all the node takes
    try:
        time.sleep(0.3)  # a refusal is answered at once
        ready = select.select(socks, [], [], 0)[0]
        refused = [answer_now(s, 0) for s in ready]
        # The first max_connections_per_address are served (slowly); the rest refused at once.
        assert len(socks) - len(refused) == LIMITS["max_connections_per_address"], refused
        for data in refused:
            assert data.startswith(b"HTTP/1.1 503 "), data
            assert b"TooManyConnections" in data and b"max_connections_per_address" in data
        # Another address is served while the slow one holds its share.
        status, doc = call(addr, OTHER)
        assert status == 200, doc
    finally:
        for s in socks:
            s.close()
    # Its connections given back, the slow address is served again.
    deadline = time.monotonic() + 5
    while call(addr, SLOW)[0] != 200:
        assert time.monotonic() < deadline
        time.sleep(0.1)


def test_connections_that_trickle_their_headers_are_closed_at_the_header_deadline(node):
    _, addr = node
    t0 = time.monotonic()
    socks = slow_connections(addr, "127.0.0.4", 4)
    closed_at: dict[int, float] = {}
    try:
        # One header line every 0.2 s: each read progresses, the headers never end.
        while len(closed_at) < len(socks) and time.monotonic() - t0 < LIMITS["request_timeout"] + 2:
            for i, s in enumerate(socks):
                if i in closed_at:
                    continue
                try:
                    s.sendall(b"X-Slow: 1\r\n")
                except OSError:
                    closed_at[i] = time.monotonic() - t0
                    continue
                if answer_now(s, 0):
                    closed_at[i] = time.monotonic() - t0
            time.sleep(0.2)
    finally:
        for s in socks:
            s.close()
    assert len(closed_at) == len(socks), "the node kept slow connections open"
    assert LIMITS["header_timeout"] - 0.3 < min(closed_at.values()), closed_at
    late = max(closed_at.values())
    assert late < LIMITS["header_timeout"] + 2.0 < LIMITS["request_timeout"], closed_at


def test_a_body_may_take_longer_than_the_header_deadline(node):
    """The header deadline bounds the headers only: a body sent slowly still has until
    ``request_timeout``."""
    _, addr = node
    body = json.dumps({"flow": "samples.ping.Ping", "args": {"peer": "Solo", "n": 1}}).encode()
    s = socket.create_connection(addr, timeout=10, source_address=("127.0.0.3", 0))
    try:
        s.sendall(b"POST /api/v1/flows HTTP/1.1\r\nHost: x\r\nAuthorization: " + auth().encode()
                  + b"\r\nContent-Length: %d\r\n\r\n" % len(body))
        t0 = time.monotonic()
        for i in range(0, len(body), 8):  # spread over more than header_timeout
            s.sendall(body[i:i + 8])
            time.sleep((LIMITS["header_timeout"] + 1.0) / (len(body) / 8))
        assert time.monotonic() - t0 > LIMITS["header_timeout"]
        data = answer_now(s, 5)
        assert data.startswith(b"HTTP/1.1 200 "), data[:200]
    finally:
        s.close()


def test_the_connection_limits_are_settings_with_defaults():
    limits = RpcLimits()
    assert limits.max_connections_per_address == 32 < limits.max_connections
    assert limits.header_timeout == 10.0 < limits.request_timeout
    limits = RpcLimits.from_config({"max_connections_per_address": 4, "header_timeout": 2.5})
    assert (limits.max_connections_per_address, limits.header_timeout) == (4, 2.5)
    with pytest.raises(ConfigError,
                       match="`max_connections_per_address` must be a positive integer"):
        RpcLimits.from_config({"max_connections_per_address": 0})
    for bad in (-1, float("inf"), float("nan")):   # (TOML writes inf and nan)
        with pytest.raises(ConfigError, match="`header_timeout` must be a positive finite number"):
            RpcLimits.from_config({"header_timeout": bad})
