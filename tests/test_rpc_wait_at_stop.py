"""A request waiting for a flow's result while its node stops is answered 503
ShuttingDown (it got an empty reply: its connection was closed under it)."""
from __future__ import annotations

import threading
import time

from test_rpc_requests import Net


def test_a_wait_for_a_result_is_answered_when_the_node_stops(tmp_path) -> None:
    net = Net(str(tmp_path))
    try:
        code, doc = net.call("POST", "/flows", {"flow": "procflows.Sleeper",
                                                "args": {"seconds": 600}})
        assert code == 200, doc
        fid = doc["flow_id"]
        answer: dict = {}

        def wait() -> None:
            answer["got"] = net.call("GET", f"/flows/{fid}/result?wait=60")

        t = threading.Thread(target=wait)
        t.start()
        time.sleep(0.5)   # the wait is under way
        t0 = time.monotonic()
        net.procs["Alice"].stop()
        t.join(30)
        assert not t.is_alive()
        code, doc = answer["got"]
        assert code == 503 and doc["error"]["type"] == "ShuttingDown", (code, doc)
        assert time.monotonic() - t0 < 10
    finally:
        net.close()
