"""Reaching a running node over RPC from the command line: the ``--node`` option shared
by ``greenflow flow ...`` and ``greenflow node status|stop|drain``.

``--node`` is a node directory (the RPC address comes from its ``node.toml``, the
credentials from its ``rpc-credentials`` file) or an ``http://host:port`` URL (give
``--user``/``--password`` or set ``GREENFLOW_RPC_USER``/``GREENFLOW_RPC_PASSWORD``).
RPC errors become the command line's errors with their exit codes.
"""
from __future__ import annotations

import functools
from typing import Any, Callable

import click

from greenflow.cli.errors import BadFlowArgument, CliError, FlowNotStartable, NotANodeDirectory, UsageProblem


def node_options(fn: Callable) -> Callable:
    """Adds ``--node``, ``--user``, ``--password``; passes ``client`` instead."""
    @click.option("--node", "node", required=True, metavar="DIR|URL",
                  help="The node's directory, or its RPC URL (http://host:port).")
    @click.option("--user", default=None, envvar="GREENFLOW_RPC_USER",
                  help="RPC user (default: from DIR/rpc-credentials).")
    @click.option("--password", default=None, envvar="GREENFLOW_RPC_PASSWORD",
                  help="RPC password (default: from DIR/rpc-credentials).")
    @functools.wraps(fn)
    def wrapper(node: str, user: str | None, password: str | None, **kw: Any) -> Any:
        with rpc_errors(node):
            return fn(client=connect(node, user, password), **kw)
    return wrapper


def connect(node: str, user: str | None = None, password: str | None = None) -> Any:
    from greenflow.network.node_config import ConfigError
    from greenflow.rpc.client import RpcClient, RpcClientError

    try:
        return RpcClient.for_node(node, user, password)
    except ConfigError as exc:
        raise NotANodeDirectory(str(exc)) from None
    except RpcClientError as exc:
        if exc.type != "BadUrl":   # (NoCredentials, NoAddress: said by rpc_errors)
            raise
        raise UsageProblem(f"--node is not a usable RPC URL: {exc.message}") from None
    except ValueError as exc:
        raise UsageProblem(f"--node {node!r} is not a usable RPC URL: {exc}") from None


class rpc_errors:  # noqa: N801 - used as a context manager
    """Turns `RpcClientError` into the CLI's errors (exit 2 for a wrong request or no
    credentials, 1 for an unreachable or failing node)."""

    def __init__(self, node: str) -> None:
        self.node = node

    def __enter__(self) -> None:
        return None

    def __exit__(self, typ: Any, exc: Any, tb: Any) -> bool:
        from greenflow.rpc.client import RpcClientError

        if not isinstance(exc, RpcClientError):
            return False
        if exc.type in ("NoCredentials", "NoAddress"):   # the command line lacks them: not the node
            raise UsageProblem(exc.message) from None
        if exc.status == 0:
            raise CliError(f"{exc.message}{_not_running_hint(self.node)}") from None
        if exc.type == "NotStartable":
            raise FlowNotStartable(exc.message) from None
        if exc.type in ("BadArguments", "UnknownParty"):
            raise BadFlowArgument(exc.message) from None
        if exc.status in (400, 401, 403, 404, 405, 413):
            raise UsageProblem(str(exc)) from None
        raise CliError(str(exc)) from None


def _not_running_hint(node: str) -> str:
    """What to check when a node directory's RPC address does not answer: a clustered
    party's directory answers on its first worker's address only."""
    import os
    if "://" in node:
        return ""
    if os.path.exists(os.path.join(node, "cluster", "database")):
        return (f" (a clustered party: that is its first worker's address; see `greenflow "
                f"cluster status --dir {node}` for the live workers and their RPC addresses, "
                f"and reach one with --node http://HOST:PORT)")
    return f" (is it running? greenflow node start --dir {node})"
