"""What a node's RPC makes of each part of a request: idempotency keys under concurrent
retries, every field checked before a flow starts, text that no encoder can write, and
malformed HTTP answered as JSON. Against node processes run in this process."""
from __future__ import annotations

import base64
import http.client
import json
import socket
import threading

import pytest

from greenflow.network.bootstrap import bootstrap_network
from greenflow.network.node_config import NodeConfig, RpcUser, hash_password

APPS = ["samples.ping", "procflows"]
PING = {"flow": "samples.ping.Ping", "args": {"peer": "Bob", "n": 1}}


def auth(user: str = "admin", password: str = "pw", scheme: str = "Basic") -> str:
    return f"{scheme} " + base64.b64encode(f"{user}:{password}".encode()).decode()


class Net:
    def __init__(self, root: str) -> None:
        from greenflow.rpc.node_process import NodeProcess
        self.configs = {c.name: c for c in bootstrap_network(root, ["Alice", "Bob"], base_port=0,
                                                             apps=APPS, rpc_password="pw")}
        cfg = NodeConfig.load(self.configs["Alice"].base_dir)
        cfg.rpc_users += [RpcUser("starter", hash_password("spw"), ["start"])]
        cfg.save()
        self.procs = {name: NodeProcess(c.base_dir, node_options={"sync": False}).start()
                      for name, c in self.configs.items()}
        self.addr = self.configs["Alice"].rpc_address

    def call(self, method: str, path: str, body: object = None, *, authz: str = auth(),
             headers: dict | None = None) -> tuple[int, dict]:
        conn = http.client.HTTPConnection(*self.addr, timeout=30)
        try:
            data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
            conn.request(method, "/api/v1" + path, body=data,
                         headers={"Authorization": authz, **(headers or {})})
            resp = conn.getresponse()
            raw = resp.read()
            return resp.status, (json.loads(raw) if raw else {})
        finally:
            conn.close()

    def raw(self, request: bytes) -> tuple[int, str, dict]:
        """Send bytes as they are; the status, Content-Type and JSON body of the answer."""
        with socket.create_connection(self.addr, timeout=10) as s:
            s.sendall(request)
            data = b""
            while b"\r\n\r\n" not in data or len(data.partition(b"\r\n\r\n")[2]) < _length(data):
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        fields = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
        return int(lines[0].split()[1]), fields.get("Content-Type", ""), json.loads(body)

    def flow_ids(self) -> set:
        return {f["id"] for f in self.call("GET", "/flows")[1]["flows"]}

    def close(self) -> None:
        for p in self.procs.values():
            if p.node is not None:
                p.stop()


def _length(data: bytes) -> int:
    for line in data.partition(b"\r\n\r\n")[0].split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return int(line.split(b":")[1])
    return 0


@pytest.fixture(scope="module")
def net(tmp_path_factory):
    n = Net(str(tmp_path_factory.mktemp("rpcrequests")))
    n.call("GET", "/node", authz=auth("starter", "spw"))  # logins checked once, before any race
    yield n
    n.close()


# ------------------------------------------------------------------------- client ids
def test_concurrent_starts_with_one_client_id_start_one_flow(net):
    before = net.flow_ids()
    for attempt in range(3):
        go = threading.Barrier(20)
        answers: list = []

        def start() -> None:
            go.wait()
            answers.append(net.call("POST", "/flows", {**PING, "client_id": f"race-{attempt}"}))

        threads = [threading.Thread(target=start) for _ in range(20)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert [status for status, _ in answers] == [200] * 20
        assert len({doc["flow_id"] for _, doc in answers}) == 1
    assert len(net.flow_ids() - before) == 3
