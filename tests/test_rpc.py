"""The node's JSON-over-HTTP RPC, against node processes run in this process
(`NodeProcess`: transport, scheduler and RPC server, without the signal handling)."""
from __future__ import annotations

import base64
import http.client
import json
import threading
import time

import pytest

from greenflow.network.bootstrap import bootstrap_network
from greenflow.network.node_config import NodeConfig, RpcUser, hash_password
from greenflow.rpc.node_process import NodeProcess
from greenflow.rpc.client import RpcClient, RpcClientError

APPS = ["samples.ping", "procflows"]


class Nodes:
    def __init__(self, root: str) -> None:
        self.configs = {c.name: c for c in bootstrap_network(root, ["Alice", "Bob"], base_port=0,
                                                             apps=APPS, rpc_password="pw")}
        cfg = NodeConfig.load(self.configs["Alice"].base_dir)
        cfg.rpc_users.append(RpcUser("reader", hash_password("rpw"), ["read"]))
        cfg.rpc_users.append(RpcUser("pinger", hash_password("ppw"), ["start:samples.ping.Ping"]))
        cfg.save()
        self.procs = {name: NodeProcess(c.base_dir, node_options={"sync": False}).start()
                      for name, c in self.configs.items()}

    def client(self, name: str = "Alice", user: str = "admin", password: str = "pw") -> RpcClient:
        return RpcClient.for_node(self.configs[name].base_dir, user, password)

    def close(self) -> None:
        for p in self.procs.values():
            if p.node is not None:
                p.stop()


@pytest.fixture(scope="module")
def nodes(tmp_path_factory):
    n = Nodes(str(tmp_path_factory.mktemp("rpc")))
    yield n
    n.close()


@pytest.fixture
def alice(nodes) -> RpcClient:
    return nodes.client()


def error_of(call) -> RpcClientError:
    with pytest.raises(RpcClientError) as info:
        call()
    return info.value


# ------------------------------------------------------------------------- starting flows
def test_start_a_flow_and_wait_for_its_result(alice):
    out = alice.start_flow("samples.ping.Ping", {"peer": "Bob", "n": 3}, wait=30)
    assert out["status"] == "COMPLETED" and out["result"] == 6
    assert out["flow_class"] == "greenflow.samples.ping.Ping"


def test_arguments_typed_as_text_are_converted_by_the_constructors_hints(alice):
    out = alice.start_flow("samples.ping:Ping", {"peer": "bob", "n": "4"}, wait=30)
    assert out["result"] == 10


def test_client_id_makes_a_start_idempotent(alice):
    first = alice.start_flow("samples.ping.Ping", {"peer": "Bob", "n": 1}, client_id="order-7")
    again = alice.start_flow("samples.ping.Ping", {"peer": "Bob", "n": 1}, client_id="order-7")
    assert first["flow_id"] == again["flow_id"]
    assert alice.result(first["flow_id"], wait=30)["result"] == 1
    assert [f["id"] for f in alice.flows()].count(first["flow_id"]) == 1


def test_a_client_id_is_bounded_in_bytes_since_the_store_keys_by_it(alice):
    err = error_of(lambda: alice.start_flow("samples.ping.Ping", {"peer": "Bob", "n": 1},
                                            client_id="\u00e9" * 101))
    assert (err.status, err.type) == (400, "BadRequest") and "200 bytes" in str(err)


def test_count_starts_many_flows_in_one_call(alice):
    out = alice.start_flow("samples.ping.Ping", {"peer": "Bob", "n": 2}, count=25)
    assert len(set(out["flow_ids"])) == 25
    assert {alice.result(f, wait=30)["result"] for f in out["flow_ids"]} == {3}
    err = error_of(lambda: alice.start_flow("samples.ping.Ping", {"peer": "Bob"}, count=2,
                                            client_id="x"))
    assert (err.status, err.type) == (400, "BadRequest")


def test_a_failing_flow_reports_its_error_as_data(alice):
    out = alice.start_flow("procflows.Fails", {"why": "no stock"}, wait=30)
    assert out["finished"] and out["status"] == "FAILED"
    assert out["error"] == {"type": "ValueError", "message": "no stock"}


def test_result_of_an_unfinished_flow_is_202_until_it_ends(alice):
    fid = alice.start_flow("procflows.Sleeper", {"seconds": 0.6})["flow_id"]
    status, doc = alice.request("GET", f"/flows/{fid}/result?wait=0.05")
    assert status == 202 and doc["finished"] is False and doc["status"] in ("SUSPENDED", "RUNNABLE")
    assert alice.result(fid, wait=30)["result"] == "woke"


# ------------------------------------------------------------------------- bad calls
@pytest.mark.parametrize("flow, args, status, kind, text", [
    ("procflows.NotForRpc", {}, 403, "NotStartable", "procflows.NotForRpc is not @startable"),
    ("samples.ping.Pong", {}, 403, "NotStartable", "Pong is not @startable"),
    ("samples.ping.Ping", {"peer": "Bob", "n": "many"}, 400, "BadArguments", "bad argument n='many'"),
    # (checked by the flow: the command line's bound alone let a start over RPC run for ever)
    ("samples.ping.Ping", {"peer": "Bob", "n": 10 ** 50}, 400, "BadArguments",
     "n is a whole number from 0 to 100,000, not a number of 167 bits"),
    ("samples.ping.Ping", {"n": 3}, 400, "BadArguments", "missing argument: Ping needs peer=<Party>"),
    ("samples.ping.Ping", {"peer": "Bob", "m": 3}, 400, "BadArguments", "unknown argument 'm'"),
    ("samples.ping.Ping", {"peer": "Zed"}, 400, "UnknownParty", "no party 'Zed' on the network map"),
    ("samples.ping.Pang", {}, 400, "UnknownFlowClass", "no flow class 'samples.ping.Pang'"),
    ("os.path.join", {}, 400, "UnknownFlowClass", "os.path is not one of this node's apps"),
    ("Ping", {}, 400, "UnknownFlowClass", "not a class path"),
])
def test_bad_starts_get_clear_errors(alice, flow, args, status, kind, text):
    err = error_of(lambda: alice.start_flow(flow, args))
    assert (err.status, err.type) == (status, kind)
    assert text in err.message


def test_unknown_flow_ids_are_404(alice):
    for call in (lambda: alice.result("nope"), lambda: alice.kill("nope"),
                 lambda: alice.flow("nope"), lambda: list(alice.progress("nope", timeout=10))):
        err = error_of(call)
        assert (err.status, err.type) == (404, "UnknownFlow")
        assert "no flow 'nope' on node Alice" in err.message


def test_wrong_password_and_no_credentials_are_401(nodes):
    err = error_of(lambda: nodes.client(password="guess").flows())
    assert (err.status, err.type, err.message) == (401, "Unauthorized", "wrong username or password")
    err = error_of(lambda: nodes.client(user="mallory").flows())
    assert err.status == 401
    host, port = nodes.configs["Alice"].rpc_address
    conn = http.client.HTTPConnection(host, port, timeout=10)
    conn.request("GET", "/api/v1/flows")
    resp = conn.getresponse()
    assert resp.status == 401 and resp.getheader("WWW-Authenticate") == 'Basic realm="greenflow"'
    assert json.loads(resp.read())["error"]["type"] == "Unauthorized"


def test_a_read_only_user_cannot_start_or_kill(nodes):
    reader = nodes.client(user="reader", password="rpw")
    assert isinstance(reader.flows(), list)
    err = error_of(lambda: reader.start_flow("samples.ping.Ping", {"peer": "Bob"}))
    assert (err.status, err.type) == (403, "Forbidden")
    assert error_of(lambda: reader.set_draining(True)).status == 403


def test_a_start_permission_names_a_bundled_sample_as_requests_do(nodes):
    """`start:samples.ping.Ping` (the documented short name) matched no request: a
    request's `samples.X` is the bundled greenflow.samples.X, the permission's was not."""
    pinger = nodes.client(user="pinger", password="ppw")
    started = pinger.start_flow("samples.ping.Ping", {"peer": "Bob", "n": 1}, wait=30)
    assert started["status"] == "COMPLETED", started
    err = error_of(lambda: pinger.start_flow("procflows.Sleeper", {}))
    assert (err.status, err.type) == (403, "Forbidden")


def test_malformed_requests_are_400(nodes, alice):
    host, port = nodes.configs["Alice"].rpc_address
    auth = "Basic " + base64.b64encode(b"admin:pw").decode()
    for body in (b"{not json", b"[1, 2]", b'{"flow": "samples.ping.Ping", "colour": 1}'):
        conn = http.client.HTTPConnection(host, port, timeout=10)
        conn.request("POST", "/api/v1/flows", body=body, headers={"Authorization": auth})
        resp = conn.getresponse()
        assert resp.status == 400, body
        assert json.loads(resp.read())["error"]["type"] == "BadRequest"
    assert error_of(lambda: alice.request("GET", "/nowhere")).status == 404
    assert error_of(lambda: alice.request("GET", "/flows/x/result?wait=-1")).status == 400
    err = error_of(lambda: alice.request("GET", "/flows/x/result?wait=NaN"))   # said "between"
    assert err.status == 400 and "`wait` must be a number of seconds from 0 to 600, got 'NaN'" \
        in err.message, err.message


# ------------------------------------------------------------------------- operations
def test_progress_streams_every_step_and_the_end(alice):
    fid = alice.start_flow("procflows.Relay", {"peer": "Bob", "rounds": 2, "delay": 0.3})["flow_id"]
    events = list(alice.progress(fid, timeout=30))
    assert events[0][0] == "status" and events[0][1]["id"] == fid
    steps = [d["step"] for e, d in events if e == "progress"]
    assert steps[-1] == "Adding up" and "Waiting for the answer" in steps + [events[0][1]["progress_step"]]
    assert events[-1] == ("end", {"flow_id": fid, "finished": True, "status": "COMPLETED", "result": 3})


def test_a_stream_of_ends_only_carries_no_steps(alice):
    fid = alice.start_flow("procflows.Relay", {"peer": "Bob", "rounds": 2, "delay": 0.3})["flow_id"]
    events = list(alice.progress(fid, timeout=30, steps=False))
    assert [e for e, _ in events] == ["status", "end"]
    assert events[-1][1]["result"] == 3
    # The node's stream of every flow, ends only: this flow's end and no step of it.
    stream = alice.progress(None, timeout=30, steps=False)
    assert next(stream)[0] == "status"
    fid = alice.start_flow("procflows.Relay", {"peer": "Bob", "rounds": 2, "delay": 0.3})["flow_id"]
    seen = []
    for event, data in stream:
        seen.append(event)
        if event == "end" and data["flow_id"] == fid:
            break
    stream.close()
    assert "progress" not in seen
    err = error_of(lambda: alice.request("GET", "/progress?steps=maybe"))
    assert (err.status, err.type) == (400, "BadRequest") and "steps" in err.message


def test_kill_and_checkpoint_dump(alice):
    fid = alice.start_flow("procflows.Sleeper", {"seconds": 300})["flow_id"]
    deadline = time.monotonic() + 10
    while alice.flow(fid)["status"] not in ("SUSPENDED", "HIBERNATED"):
        assert time.monotonic() < deadline
        time.sleep(0.02)
    dump = {e["flow_id"]: e for e in alice.checkpoints()}
    entry = dump[fid]
    assert entry["flow_class"] == "procflows.Sleeper" and "sleep" in entry["suspended_on"]
    assert any(fr["function"] == "Sleeper.call" for fr in entry["frames"])
    assert alice.kill(fid) == {"flow_id": fid, "killed": True}
    res = alice.result(fid, wait=10)
    assert res["status"] == "KILLED" and res["error"]["type"] == "FlowKilled"
    assert alice.kill(fid)["killed"] is False


def test_draining_refuses_new_flows_until_turned_off(alice):
    assert alice.set_draining(True)["draining"] is True
    try:
        err = error_of(lambda: alice.start_flow("samples.ping.Ping", {"peer": "Bob"}))
        assert (err.status, err.type) == (503, "Draining")
        assert alice.draining()["draining"] is True
        assert isinstance(alice.draining()["pending_flows_count"], int)
    finally:
        assert alice.set_draining(False)["draining"] is False
    assert alice.start_flow("samples.ping.Ping", {"peer": "Bob", "n": 2}, wait=30)["result"] == 3


def test_a_draining_node_holds_a_peers_new_session_until_draining_ends(nodes, alice):
    bob = nodes.client("Bob")
    bob.set_draining(True)
    try:
        fid = alice.start_flow("samples.ping.Ping", {"peer": "Bob", "n": 2})["flow_id"]
        status, doc = alice.request("GET", f"/flows/{fid}/result?wait=0.5")
        assert status == 202 and doc["status"] == "SUSPENDED"
        assert not [f for f in bob.flows("SUSPENDED,RUNNABLE") if f["flow_class"].endswith("Pong")]
    finally:
        bob.set_draining(False)
    assert alice.result(fid, wait=30)["result"] == 3


def test_node_info_and_network(alice):
    info = alice.node_info()
    assert info["name"] == "Alice" and info["apps"] == APPS and len(info["public_key"]) == 64
    assert sorted(n["name"] for n in alice.network()) == ["Alice", "Bob"]


def test_shutdown_stops_the_node_process(tmp_path):
    c = bootstrap_network(str(tmp_path), ["Solo"], base_port=0, rpc_password="pw")[0]
    proc = NodeProcess(c.base_dir, node_options={"sync": False}).start()
    runner = threading.Thread(target=proc.run)
    runner.start()
    client = RpcClient.for_node(c.base_dir)
    assert client.shutdown() == {"stopping": True}
    runner.join(20)
    assert not runner.is_alive() and proc.node is None
    assert error_of(client.node_info).status == 0


@pytest.mark.parametrize("reset", [False, True], ids=["closed", "reset"])
def test_a_node_dying_in_the_middle_of_its_answer_is_unreachable_and_not_asked_twice(reset):
    """Found by sample.chaos: a node killed between the headers and the body of its answer
    made `RpcClient` raise http.client.IncompleteRead; and a request the node had begun to
    answer (so had carried out) must not be sent again."""
    import socket
    import struct

    srv = socket.create_server(("127.0.0.1", 0))
    srv.settimeout(2)
    requests = []

    def serve() -> None:
        while True:
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            requests.append(conn.recv(65536))
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                         b"Content-Length: 135\r\n\r\n{\"flow_id\"")
            # Let the client read the headers first: a reset discards data the client has
            # not read yet, and then nothing tells it the node had begun to answer.
            time.sleep(0.3)
            if reset:  # SIGKILL-like: the kernel resets the connection
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            conn.close()

    server = threading.Thread(target=serve, daemon=True)
    server.start()
    client = RpcClient(f"http://127.0.0.1:{srv.getsockname()[1]}", "admin", "pw", timeout=5)
    try:
        err = error_of(lambda: client.start_flow("samples.ping.Ping", {"peer": "Bob", "n": 1}))
    finally:
        srv.close()
        server.join(5)
    assert err.status == 0 and err.type == "Unreachable"
    assert len(requests) == 1


def test_the_command_line_lists_flows_a_page_at_a_time(nodes, alice):
    from click.testing import CliRunner

    from greenflow.cli.main import main
    ids = alice.start_flow("samples.ping.Ping", {"peer": "Bob", "n": 1}, count=5)["flow_ids"]
    for fid in ids:
        alice.result(fid, wait=30)
    node = nodes.configs["Alice"].base_dir
    run = lambda *a: CliRunner().invoke(main, ["flow", "list", "--node", node, *a])  # noqa: E731
    first = run("--limit", "2", "--status", "COMPLETED")
    assert first.exit_code == 0, first.output
    lines = first.output.splitlines()
    assert len(lines) == 3 and lines[-1].startswith("more: --cursor ")
    cursor = lines[-1].split()[-1]
    page = json.loads(run("--limit", "2", "--cursor", cursor, "--status", "COMPLETED",
                          "--json").output)
    assert len(page["flows"]) == 2 and page["more"] is True
    assert not {f["id"] for f in page["flows"]} & {ln.split()[0] for ln in lines[:2]}
    everything = json.loads(run("--json").output)   # no --limit: every flow, page by page
    assert set(ids) <= {f["id"] for f in everything}


@pytest.mark.parametrize("wait, error", [(float("inf"), ValueError), (float("nan"), ValueError),
                                         (-1, ValueError), ("5", TypeError)])
def test_the_client_refuses_a_wait_no_node_takes_before_it_sends_anything(wait, error):
    """An infinite wait overflowed the socket's timeout (OverflowError: timestamp out of
    range), NaN was sent on as "wait=nan"."""
    from greenflow.rpc import RpcClient
    client = RpcClient("http://127.0.0.1:9", "user", "password", timeout=1)
    for call in (lambda: client.result("some-flow", wait=wait),
                 lambda: client.start_flow("samples.ping.Ping", wait=wait)):
        with pytest.raises(error, match=r"^wait takes a "):
            call()


def test_a_worker_between_generations_answers_unavailable_not_shutting_down():
    """A clustered worker whose partitions were changing hands (or whose database was
    down) told clients "the node is shutting down", which it was not."""
    from types import SimpleNamespace

    from greenflow.rpc.documents import RpcError
    from greenflow.rpc.server import RpcServer
    proc = SimpleNamespace(node=None, config=SimpleNamespace(rpc=None, user=lambda name: None))
    srv = RpcServer(proc, ("127.0.0.1", 0))
    try:
        with pytest.raises(RpcError) as info:
            srv.node
        assert (info.value.status, info.value.type, info.value.retry_after) == (503, "Unavailable", 1)
        assert "nothing was done: try again" in info.value.message
        srv.stopping = True
        with pytest.raises(RpcError, match="shutting down"):
            srv.node
    finally:
        srv.httpd.server_close()


def test_a_hospitalized_flow_is_retried_over_rpc_and_the_command_line(tmp_path, monkeypatch):
    """Retry existed on Node and in the console only: an operator of a node process had
    no command for it, and no RPC call."""
    import procflows
    from click.testing import CliRunner

    from greenflow.cli.main import main as cli
    [cfg] = bootstrap_network(str(tmp_path), ["Solo"], base_port=0, apps=APPS, rpc_password="pw")
    proc = NodeProcess(cfg.base_dir, node_options={"sync": False, "max_retries": 0}).start()
    try:
        client = RpcClient.for_node(cfg.base_dir, "admin", "pw")
        monkeypatch.setattr(procflows, "SERVICE_DOWN", True)
        ids = [client.start_flow("procflows.ServiceDown", {})["flow_id"] for _ in range(2)]
        end = time.monotonic() + 30
        while time.monotonic() < end and any(client.flow(i)["status"] != "HOSPITALIZED" for i in ids):
            time.sleep(0.05)
        assert [client.flow(i)["status"] for i in ids] == ["HOSPITALIZED"] * 2
        monkeypatch.setattr(procflows, "SERVICE_DOWN", False)   # the service is back
        assert client.retry(ids[0]) == {"flow_id": ids[0], "retried": True}
        out = CliRunner().invoke(cli, ["flow", "retry", "--node", cfg.base_dir, "--user", "admin",
                                       "--password", "pw", ids[1]])
        assert out.exit_code == 0 and f"{ids[1]} retried" in out.output, out.output
        assert [client.result(i, wait=30)["result"] for i in ids] == ["served"] * 2
        again = CliRunner().invoke(cli, ["flow", "retry", "--node", cfg.base_dir, "--user", "admin",
                                         "--password", "pw", ids[0]])
        assert again.exit_code == 1 and "it is not HOSPITALIZED" in again.output, again.output
        assert again.output.count("it is not HOSPITALIZED") == 1, again.output   # said once
    finally:
        proc.stop()


def test_many_flows_are_retried_or_killed_by_one_command(tmp_path, monkeypatch):
    """An operator with thousands of parked or stuck flows had only `flow retry ID` and
    `flow kill ID`, one process each (~0.3 s per flow: a day for 400,000)."""
    import procflows
    from click.testing import CliRunner

    from greenflow.cli.main import main as cli
    [cfg] = bootstrap_network(str(tmp_path), ["Solo"], base_port=0, apps=APPS, rpc_password="pw")
    proc = NodeProcess(cfg.base_dir, node_options={"sync": False, "max_retries": 0}).start()
    node = ["--node", cfg.base_dir, "--user", "admin", "--password", "pw"]
    try:
        client = RpcClient.for_node(cfg.base_dir, "admin", "pw")
        monkeypatch.setattr(procflows, "SERVICE_DOWN", True)
        parked = [client.start_flow("procflows.ServiceDown", {})["flow_id"] for _ in range(3)]
        end = time.monotonic() + 30
        while time.monotonic() < end and any(client.flow(i)["status"] != "HOSPITALIZED"
                                             for i in parked):
            time.sleep(0.05)
        monkeypatch.setattr(procflows, "SERVICE_DOWN", False)
        out = CliRunner().invoke(cli, ["flow", "retry", *node, "--all-hospitalized"])
        assert out.exit_code == 0, out.output
        assert all(f"{i} retried" in out.output for i in parked) and "3 of 3 done" in out.output
        assert [client.result(i, wait=30)["result"] for i in parked] == ["served"] * 3
        asleep = [client.start_flow("procflows.Sleeper", {"seconds": 300})["flow_id"]
                  for _ in range(3)]
        out = CliRunner().invoke(cli, ["flow", "kill", *node, "--status", "SUSPENDED"])
        assert out.exit_code == 2 and "--yes" in out.output, out.output
        out = CliRunner().invoke(cli, ["flow", "kill", *node, "--status", "SUSPENDED,HIBERNATED",
                                       "--yes"])
        assert out.exit_code == 0 and all(f"{i} killed" in out.output for i in asleep), out.output
        assert {client.flow(i)["status"] for i in asleep} == {"KILLED"}
        out = CliRunner().invoke(cli, ["flow", "kill", *node, *asleep[:2]])   # named ones
        assert out.exit_code == 0 and out.output.count("not killed (already finished)") == 2
    finally:
        proc.stop()
