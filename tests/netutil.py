"""Helpers for the MockNetwork flow tests: start, run, find flows and their outcomes."""
from __future__ import annotations

from typing import Any

import pytest

from greenflow import FlowHandle, FlowInfo, FlowLogic, FlowStatus


def pair(net) -> tuple:
    return net.create_node("Alice"), net.create_node("Bob")


def run(net, node, flow: FlowLogic) -> FlowHandle:
    """Start ``flow`` on ``node`` and run the network until nothing moves."""
    handle = node.start_flow(flow)
    net.run_network()
    return handle


def only_flow(node, class_name: str) -> FlowInfo:
    """The one flow on ``node`` whose class is named ``class_name`` (any module)."""
    found = [f for f in node.flows() if f.flow_class.rpartition(".")[2] == class_name]
    assert len(found) == 1, node.flows()
    return found[0]


def result_of(node, class_name: str) -> Any:
    return node.handle(only_flow(node, class_name).id).result()


def error_of(handle: FlowHandle) -> BaseException:
    with pytest.raises(BaseException) as info:
        handle.result()
    return info.value


def assert_all_finished(*nodes) -> None:
    """No checkpoint left and every flow COMPLETED on each node."""
    for node in nodes:
        assert node.checkpoints_dump() == []
        infos = node.flows()
        assert infos and all(f.status == FlowStatus.COMPLETED for f in infos), infos
