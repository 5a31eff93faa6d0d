"""Starting flows from an RPC request: who may start what, which class a request names,
and building the flow from its JSON arguments (`greenflow.rpc.flow_start` does the work,
shared with the command line)."""
from __future__ import annotations

from typing import Any, Callable, Optional

from greenflow.flows.flow_logic import FlowLogic
from greenflow.network.network_map import NetworkMapError
from greenflow.party import Party
from greenflow.rpc.documents import RpcError
from greenflow.rpc.flow_start import (FlowArgumentError, FlowTargetError, bind_arguments, instantiate,
                                      resolve_startable)

MAX_BATCH = 10_000


def may_start_some(user: Any) -> bool:
    """Whether ``user`` may start any flow at all (checked before a class is looked up)."""
    return any(p in ("ALL", "start") or p.startswith("start:") for p in user.permissions)


def resolve_flow_class(path: Any, apps: Optional[list[str]]) -> type:
    """``module.Class`` or ``module:Class`` -> the class, which must be a `FlowLogic` in
    one of the node's apps and ``@startable`` (`greenflow.rpc.flow_start`, shared with the
    command line; nothing outside the apps is imported)."""
    try:
        return resolve_startable(path, apps=apps, node=True)
    except FlowTargetError as exc:
        raise RpcError(400, "UnknownFlowClass", str(exc)) from None


def build_flow(cls: type, args: Any, resolve_party: Callable[[str], Party]) -> FlowLogic:
    """Instantiate ``cls`` from JSON arguments. Each value (JSON, or text as typed on a
    command line) is converted by the constructor's type hints with the CLI's rules
    (`greenflow.rpc.flow_start`): a `Party` parameter takes a party's name."""
    if args is None:
        args = {}
    if not isinstance(args, dict):
        raise RpcError(400, "BadArguments", "`args` must be a JSON object of name: value")
    try:
        bound = bind_arguments(cls, args)
        for name in bound.party_names:
            try:
                resolve_party(name)
            except NetworkMapError as exc:
                raise RpcError(400, "UnknownParty", str(exc)) from None
        return instantiate(cls, bound.resolve(resolve_party))
    except FlowArgumentError as exc:
        raise RpcError(400, "BadArguments", str(exc)) from None
    except RpcError:
        raise
    except Exception as exc:  # noqa: BLE001 - the flow's own validation
        raise RpcError(400, "BadArguments",
                       f"{cls.__qualname__}(...) refused its arguments: {type(exc).__name__}: {exc}") from None

