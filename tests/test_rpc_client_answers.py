"""`RpcClient` against answers no node gives (a proxy, a wrong port, a hostile server):
each is an `RpcClientError` naming what was wrong, in bounded memory and time."""
from __future__ import annotations

import socket
import threading

import pytest

from greenflow.rpc import client as client_mod
from greenflow.rpc.client import RpcClient, RpcClientError


class Canned:
    """A server that answers every request with the next of ``answers`` (raw bytes, or a
    callable given the connection), recording what it was asked."""

    def __init__(self, answers: list) -> None:
        self.answers, self.asked = list(answers), []
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(10)
        self.url = "http://127.0.0.1:%d" % self.sock.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while self.answers:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                self.asked.append(conn.recv(65536).split(b"\r\n")[0].decode())
                answer = self.answers.pop(0)
                try:
                    answer(conn) if callable(answer) else conn.sendall(answer)
                except OSError:
                    pass

    def close(self) -> None:
        self.sock.close()


def http(status: str, body: bytes, ctype: str = "application/json", extra: str = "") -> bytes:
    return (f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
            f"Connection: close\r\n{extra}\r\n").encode() + body


def refused(call) -> RpcClientError:
    with pytest.raises(RpcClientError) as info:
        call()
    return info.value


@pytest.mark.parametrize("answer, kind", [
    (http("301 Moved Permanently", b"", extra="Location: http://x/\r\n"), "BadAnswer"),
    (http("200 OK", b"<html>proxy</html>", "text/html"), "BadAnswer"),
    (http("200 OK", b"[1, 2]"), "BadAnswer"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 999999999999\r\n\r\n{", "BadAnswer"),
])
def test_an_answer_that_is_no_nodes_json_object_is_refused(answer, kind):
    srv = Canned([answer])
    try:
        assert refused(lambda: RpcClient(srv.url, "u", "p", timeout=10).node_info()).type == kind
    finally:
        srv.close()


def test_an_endless_answer_is_read_only_up_to_the_bound(monkeypatch):
    monkeypatch.setattr(client_mod, "MAX_ANSWER_BYTES", 1 << 20)

    def endless(conn: socket.socket) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        chunk = b"10000\r\n" + b" " * 0x10000 + b"\r\n"
        for _ in range(10_000):   # 640 MiB if it were all read
            conn.sendall(chunk)

    srv = Canned([endless])
    try:
        err = refused(lambda: RpcClient(srv.url, "u", "p", timeout=10).node_info())
        assert err.type == "BadAnswer" and "1,048,576 bytes" in err.message
    finally:
        srv.close()


def test_a_page_cursor_given_twice_stops_the_listing():
    page = http("200 OK", b'{"flows": [{"id": "a"}], "more": true, "next_cursor": "Ua"}')
    srv = Canned([page, page, page])
    try:
        err = refused(lambda: RpcClient(srv.url, "u", "p", timeout=10).flows())
        assert err.type == "BadAnswer" and "twice" in err.message and len(srv.asked) == 2
    finally:
        srv.close()


def test_each_flow_yields_a_page_before_it_asks_for_the_next():
    """`flow list` held every flow of a node (707 MB at a million) before printing the
    first: a page's flows come out before the next page is asked for."""
    first = http("200 OK", b'{"flows": [{"id": "a"}, {"id": "b"}], "more": true, "next_cursor": "Ub"}')
    last = http("200 OK", b'{"flows": [{"id": "c"}], "more": false}')
    srv = Canned([first, last])
    try:
        flows = RpcClient(srv.url, "u", "p", timeout=10).each_flow()
        assert [next(flows)["id"], next(flows)["id"]] == ["a", "b"] and len(srv.asked) == 1
        assert [f["id"] for f in flows] == ["c"] and len(srv.asked) == 2
    finally:
        srv.close()


@pytest.mark.parametrize("body, kind", [
    (b"event: status\ndata: {\"flows\": []}\n\n", "Unreachable"),     # then the connection ends
    (b"event: status\ndata: not json\n\n", "BadAnswer"),
    (b"event: status\ndata: \xff\xfe\n\n", "BadAnswer"),
])
def test_an_event_stream_that_ends_unsaid_or_carries_junk_raises(body, kind):
    srv = Canned([b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\n" + body])
    try:
        events = RpcClient(srv.url, "u", "p", timeout=10).progress(None)
        assert refused(lambda: list(events)).type == kind
    finally:
        srv.close()


def test_a_421_is_followed_only_for_a_kill_or_retry_and_only_to_an_address():
    target = Canned([http("200 OK", b'{"flow_id": "f1", "killed": true}')])
    moved = b'{"error": {"type": "NotHere", "message": "elsewhere", "rpc": "%s"}}' \
        % target.url[7:].encode()
    srv = Canned([http("421 Misdirected Request", moved), http("421 Misdirected Request", moved),
                  http("421 Misdirected Request",
                       b'{"error": {"type": "NotHere", "message": "m", "rpc": "h:99999"}}')])
    try:
        c = RpcClient(srv.url, "u", "p", timeout=10)
        assert c.kill("f1") == {"flow_id": "f1", "killed": True}
        assert target.asked == ["POST /api/v1/flows/f1/kill HTTP/1.1"]
        assert refused(c.node_info).status == 421          # not a kill: not followed
        assert refused(lambda: c.retry("f1")).status == 421   # no address: not followed
    finally:
        srv.close()
        target.close()


@pytest.mark.parametrize("url", ["http://127.0.0.1:abc", "http://127.0.0.1:99999", "http://[::1",
                                 "http://user:secret@h:1", "http://h:1/path", "https://h:1"])
def test_a_url_that_is_no_http_host_port_is_refused_without_echoing_a_password(url):
    err = refused(lambda: RpcClient(url, "u", "p"))
    assert err.type == "BadUrl" and "secret" not in err.message


def test_a_flow_id_is_one_path_segment_and_a_limit_of_zero_is_sent():
    srv = Canned([http("400 Bad Request", b'{"error": {"type": "BadRequest", "message": "x"}}')])
    try:
        c = RpcClient(srv.url, "u", "p", timeout=10)
        with pytest.raises(ValueError):
            c.flow("")
        assert refused(lambda: c.flow_page(limit=0)).status == 400
        assert srv.asked == ["GET /api/v1/flows?limit=0 HTTP/1.1"]
        assert client_mod._fid("a/result") == "a%2Fresult"
    finally:
        srv.close()
