"""The console against requests no browser sends: crafted login targets, malformed and
oversized bodies, odd static file names, HEAD. One node in this process, its real RPC
HTTP server, raw sockets where the exact bytes on the wire matter."""
from __future__ import annotations

import base64
import http.client
import logging
import socket
import time
from urllib.parse import quote

import pytest

from greenflow.network.bootstrap import bootstrap_network
from greenflow.rpc.node_process import NodeProcess

PASSWORD = "pw"


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("console-requests"))
    cfg = bootstrap_network(root, ["Solo"], base_port=0, apps=["samples.ping"],
                            rpc_password=PASSWORD)[0]
    proc = NodeProcess(cfg.base_dir, node_options={"sync": False}).start()
    yield proc
    proc.stop()


def exchange(proc: NodeProcess, request: bytes, timeout: float = 10.0) -> bytes:
    """Send one request on a fresh connection and return every byte the node sends
    until it closes (the request asks it to)."""
    s = socket.create_connection(proc.rpc.address, timeout=timeout)
    try:
        s.sendall(request)
        out = b""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            chunk = s.recv(65536)
            if not chunk:
                break
            out += chunk
        return out
    finally:
        s.close()


def post(path: str, body: bytes, extra: bytes = b"") -> bytes:
    return (b"POST " + path.encode() + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
            b"Content-Type: application/x-www-form-urlencoded\r\n" + extra
            + b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)


def login_body(next_path: str) -> bytes:
    return f"username=admin&password={PASSWORD}&next={next_path}".encode()


def head_of(answer: bytes) -> list[bytes]:
    return answer.split(b"\r\n\r\n", 1)[0].split(b"\r\n")


def location(answer: bytes) -> bytes:
    return next(ln for ln in head_of(answer) if ln.lower().startswith(b"location:")).split(b":", 1)[1].strip()


def basic() -> dict:
    return {"Authorization": "Basic " + base64.b64encode(f"admin:{PASSWORD}".encode()).decode()}


# ---------------------------------------------------------------------- login target
@pytest.mark.parametrize("next_path, expected", [
    ("/console/flows%0D%0ASet-Cookie:%20injected=1%0D%0AX-Evil:%20yes", b"/console/flows"),
    ("/console/flows%0ASet-Cookie:%20injected=1", b"/console/flows"),
    ("/console/flows%09x", b"/console/flows"),
    ("https://evil.example/console/", b"/console/flows"),
    ("//evil.example/console/", b"/console/flows"),
    ("/console//evil.example", b"/console/flows"),
    ("/console/..%5C..%5Cevil", b"/console/flows"),
    ("/consoleevil", b"/console/flows"),
    ("/console/vault", b"/console/vault"),
    ("/console/flows?status%3DHOSPITALIZED%26q%3Dab", b"/console/flows?status=HOSPITALIZED&q=ab"),
    (quote("/console/€"), b"/console/%E2%82%AC"),
    (quote("/console/flows?q=a b"), b"/console/flows?q=a%20b"),
], ids=["crlf", "lf", "tab", "scheme", "host", "double-slash", "backslash", "prefix", "plain",
        "query", "non-ascii", "space"])
def test_a_login_follows_only_a_console_path_and_sends_one_clean_answer(node, next_path, expected):
    answer = exchange(node, post("/console/login", login_body(next_path)))
    assert answer.count(b"HTTP/1.1 ") == 1, answer
    assert answer.startswith(b"HTTP/1.1 303 "), answer
    lines = head_of(answer)
    assert location(answer) == expected
    assert not any(ln.lower().startswith((b"x-evil", b"set-cookie: injected")) for ln in lines), lines
    cookies = [ln for ln in lines if ln.lower().startswith(b"set-cookie:")]
    assert len(cookies) == 1 and b"greenflow_console=" in cookies[0], lines
    assert all(32 <= b < 127 for ln in lines for b in ln), lines


# ---------------------------------------------------------------------- bodies
@pytest.mark.parametrize("body, says", [
    # Unclosed: too deep for Python 3.11's parser, merely cut short for 3.13's.
    (b'{"u":' + b"[" * 1100, (b"max_json_depth", b"not JSON")),
    (b'{"username": "admin", "password": [[[[[[[[[[' + b"[" * 100 + b"]" * 110 + b"}", b"max_json_depth"),
    (b'{"username": "admin", "password":', b"not JSON"),
    (b"username=admin&password=\xff\xfe", b"not UTF-8"),
], ids=["deep-unclosed", "deep", "cut", "latin-1"])
def test_a_malformed_login_body_is_400_naming_it_and_logs_nothing(node, caplog, body, says):
    caplog.set_level(logging.INFO, "greenflow")
    answer = exchange(node, post("/console/login", body))
    says = says if isinstance(says, tuple) else (says,)
    assert answer.startswith(b"HTTP/1.1 400 ") and b"BadRequest" in answer \
        and any(s in answer for s in says), answer
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]


def test_a_console_body_over_16_kib_is_refused_unread(node):
    s = socket.create_connection(node.rpc.address, timeout=10)
    try:  # the node answers before the body is sent: it reads none of it
        s.sendall(b"POST /console/login HTTP/1.1\r\nHost: x\r\nContent-Length: 1048576\r\n\r\n")
        s.settimeout(5)
        answer = b""
        while True:   # the node closes the connection after its answer
            chunk = s.recv(65536)
            if not chunk:
                break
            answer += chunk
    finally:
        s.close()
    assert answer.startswith(b"HTTP/1.1 413 ") and b"16384" in answer, answer
    small = login_body("/console/vault") + b"&pad=" + b"x" * 15_000
    assert location(exchange(node, post("/console/login", small))) == b"/console/vault"


def test_a_failing_console_request_is_logged_once_per_interval(node, caplog, monkeypatch):
    from greenflow.console import data

    def broken(*args):
        raise RuntimeError("the overview broke")

    monkeypatch.setattr(data, "node_overview", broken)
    caplog.set_level(logging.INFO, "greenflow")
    conn = http.client.HTTPConnection(*node.rpc.address, timeout=10)
    try:
        for _ in range(200):  # one keep-alive connection, as a flood would
            conn.request("GET", "/console/api/node", headers=basic())
            resp = conn.getresponse()
            assert resp.status == 500 and b"the overview broke" in resp.read()
    finally:
        conn.close()
    failed = [r for r in caplog.records if "failed" in r.getMessage()]
    assert len(failed) == 1 and failed[0].exc_info, [r.getMessage() for r in failed]


# ---------------------------------------------------------------------- static files
@pytest.mark.parametrize("name", ["x.css%00.js", "console.css%00", "%00", "..%2Fpages.py",
                                  "..%2F..%2F__init__.py", "nope.css", ".hidden.css"])
def test_a_static_file_that_does_not_ship_is_404_whatever_its_name(node, caplog, name):
    caplog.set_level(logging.INFO, "greenflow")
    conn = http.client.HTTPConnection(*node.rpc.address, timeout=10)
    try:
        conn.request("GET", "/console/static/" + name, headers=basic())
        resp = conn.getresponse()
        body = resp.read()
    finally:
        conn.close()
    assert resp.status == 404 and b"NotFound" in body, body
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    conn = http.client.HTTPConnection(*node.rpc.address, timeout=10)
    try:
        conn.request("GET", "/console/static/console.css", headers=basic())
        resp = conn.getresponse()
        assert resp.status == 200 and resp.getheader("Content-Type").startswith("text/css")
        resp.read()
    finally:
        conn.close()


# ---------------------------------------------------------------------- HEAD
def test_head_on_a_console_page_answers_its_headers_without_a_body(node):
    def raw(method: str, path: str, authz: bool = True) -> bytes:
        extra = f"Authorization: {basic()['Authorization']}\r\n" if authz else ""
        return exchange(node, f"{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                              f"{extra}\r\n".encode())

    for path in ("/console/flows", "/console/node", "/console/api/flows", "/console/static/console.js",
                 "/metrics"):
        got, want = raw("HEAD", path), raw("GET", path)
        head, _, body = got.partition(b"\r\n\r\n")
        assert got.startswith(b"HTTP/1.1 200 ") and body == b"", (path, got[:300])
        length = int(next(ln for ln in head.split(b"\r\n") if ln.lower().startswith(b"content-length:"))
                     .split(b":")[1])
        assert length > 0
        ctype = lambda a: next(ln for ln in head_of(a) if ln.lower().startswith(b"content-type:"))  # noqa: E731
        assert ctype(got) == ctype(want), path
    for path, status in (("/console/flows", b"401"), ("/console/api/flows/nope", b"404"),
                         ("/console/api/flows/nope/events", b"404"), ("/console/", b"303")):
        got = raw("HEAD", path, authz=status != b"401")
        assert got.startswith(b"HTTP/1.1 " + status) and got.partition(b"\r\n\r\n")[2] == b"", got
    assert raw("HEAD", "/api/v1/node").startswith(b"HTTP/1.1 405 ")  # the JSON API takes no HEAD


def test_a_flows_words_are_shown_escaped_on_every_page(tmp_path):
    """A flow's step, locals and error (a peer's FlowException message among them) are
    text: every page and live fragment shows them escaped, never as markup."""
    import json
    import re
    from procflows import MARKUP
    cfg = bootstrap_network(str(tmp_path), ["Solo"], base_port=0, apps=["procflows"],
                            rpc_password=PASSWORD)[0]
    proc = NodeProcess(cfg.base_dir, node_options={"sync": False}).start()
    try:
        def get(path: str, **headers: str) -> tuple[int, str]:
            conn = http.client.HTTPConnection(*proc.rpc.address, timeout=30)
            try:
                conn.request("GET", path, headers={**basic(), **headers})
                r = conn.getresponse()
                return r.status, r.read().decode()
            finally:
                conn.close()

        def start(fail: bool) -> str:
            conn = http.client.HTTPConnection(*proc.rpc.address, timeout=30)
            try:
                conn.request("POST", "/api/v1/flows", body=json.dumps(
                    {"flow": "procflows.Markup", "args": {"fail": fail}, "wait": 5}).encode(),
                    headers=basic())
                return json.loads(conn.getresponse().read())["flow_id"]
            finally:
                conn.close()

        failed, waiting = start(True), start(False)
        pages = ["/console/flows", f"/console/flows/{failed}", f"/console/flows/{waiting}",
                 "/console/flows?q=" + quote(MARKUP)]
        shown = 0
        for path in pages:
            for headers in ({}, {"X-Console-Fragment": "live"}):
                status, body = get(path, **headers)
                assert status == 200, (path, body[:200])
                assert not re.search(r"<script>alert|<img src=x", body), path
                shown += "&lt;script&gt;alert(1)&lt;/script&gt;" in body
        assert shown >= 6   # the words are there, as text
    finally:
        proc.stop()


def solo_node(tmp_path, **rpc_settings: int) -> NodeProcess:
    """A node of its own (the module's shares its settings), with ``[rpc]`` settings."""
    from greenflow.network.node_config import NodeConfig
    cfg = bootstrap_network(str(tmp_path), ["Solo"], base_port=0, apps=["samples.ping"],
                            rpc_password=PASSWORD)[0]
    conf = NodeConfig.load(cfg.base_dir)
    conf.rpc.update(rpc_settings)
    conf.save()
    return NodeProcess(cfg.base_dir, node_options={"sync": False}).start()


def test_console_event_streams_past_max_streams_are_refused_and_heads_hold_no_slot(tmp_path):
    """Past `max_streams` a console stream answered 200 with one error event and closed,
    and a browser's EventSource reconnected for ever; it is a 503 now, as the RPC's own
    streams are. A HEAD of the stream path (headers only) holds no slot."""
    from flowlib import Sleeper
    proc = solo_node(tmp_path, max_streams=2)
    held = []
    try:
        fid = proc.node.start_flow(Sleeper(600)).id
        path = f"/console/api/flows/{fid}/events"
        ask = (f"GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: {basic()['Authorization']}\r\n"
               "X-Greenflow-Console: 1\r\n\r\n").encode()
        for _ in range(4):
            got = exchange(proc, ask.replace(b"GET ", b"HEAD ", 1).replace(
                b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n"))
            assert got.startswith(b"HTTP/1.1 200 "), got[:200]
        for _ in range(2):
            s = socket.create_connection(proc.rpc.address, timeout=10)
            s.sendall(ask)
            assert s.recv(65536).startswith(b"HTTP/1.1 200 ")
            held.append(s)
        third = exchange(proc, ask.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n"), 5)
        assert third.startswith(b"HTTP/1.1 503 ") and b"TooManyStreams" in third, third[:300]
    finally:
        for s in held:
            s.close()
        proc.stop()


def test_a_console_stream_that_falls_behind_is_told_it_was_dropped(tmp_path):
    """It ended after its last progress event with nothing said (the RPC's streams say
    `dropped`), so the page stopped following without a word."""
    from procflows import Stepper
    proc = solo_node(tmp_path, stream_buffer=20)
    try:
        h = proc.node.start_flow(Stepper(3000))
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 2048)   # fills at once
        s.connect(proc.rpc.address)
        s.sendall(f"GET /console/api/flows/{h.id}/events HTTP/1.1\r\nHost: x\r\nAuthorization: "
                  f"{basic()['Authorization']}\r\nX-Greenflow-Console: 1\r\n\r\n".encode())
        hub = proc.rpc.hub
        deadline = time.monotonic() + 60
        while hub.dropped == 0:
            assert time.monotonic() < deadline, "the stream that did not read was never dropped"
            time.sleep(0.05)
        out = b""
        s.settimeout(20)
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            out += chunk
        s.close()
        assert b"event: dropped" in out and b"events behind" in out, out[-500:]
    finally:
        proc.stop()


def test_a_flow_list_costly_to_read_is_shared_for_longer(node, monkeypatch):
    """Every open flows page reloads the list every two seconds: on a node holding a
    million flows a read cost 0.5-1.8 s of CPU, so one open tab kept the node busy."""
    from greenflow.console import data
    real, reads = data.all_flows, []

    def costly(n, *args):
        reads.append(time.monotonic())
        end = time.thread_time() + 0.1   # CPU, as reading and decoding rows is
        while time.thread_time() < end:
            pass
        return real(n, *args)

    monkeypatch.setattr(data, "all_flows", costly)
    conn = http.client.HTTPConnection(*node.rpc.address, timeout=10)
    try:
        def flows() -> None:
            conn.request("GET", "/console/api/flows", headers=basic())
            resp = conn.getresponse()
            assert resp.status == 200, resp.read()
            resp.read()
        flows()
        time.sleep(0.6)   # past the half second a cheap list is kept
        flows()
        assert len(reads) == 1   # kept ten times its cost: about a second
        time.sleep(1.5)
        flows()
        assert len(reads) == 2
    finally:
        conn.close()
