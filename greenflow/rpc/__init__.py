"""A node as an operating-system process serving clients: the RPC server and its limits,
the client, the one resolver from a flow name to a startable class (`flow_start`, used by
the RPC and the CLI alike), metrics, and the node process that wires node, transport and
server together.

Imports everything below it; never the CLI. `RpcClient` and `RpcClientError` are
re-exported here.
"""
from __future__ import annotations

from greenflow.rpc.client import RpcClient, RpcClientError

__all__ = ["RpcClient", "RpcClientError"]
