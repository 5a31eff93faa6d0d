"""A durable sleep survives a restart under the real clock (regression: deadlines read
back from timer keys are rounded to microseconds and were never seen as due)."""
from __future__ import annotations

import time

from greenflow import Node

import procflows


def test_a_durable_sleep_wakes_after_a_restart_with_the_system_clock(tmp_path):
    node = Node.open(str(tmp_path), "Solo", apps=["procflows"], sync=False)
    fid = node.start_flow(procflows.Sleeper(0.5)).id
    time.sleep(0.1)
    node.close()
    node = Node.open(str(tmp_path), "Solo", apps=["procflows"], sync=False)
    try:
        assert node.handle(fid).result(timeout=10) == "woke"
    finally:
        node.close()
