"""Starting a flow from outside the process: which class a text names, and its arguments.

The one place where ``module.path:FlowClass`` (or ``module.Class``) text becomes a flow
class, for the command line (``greenflow run``) and the node's RPC alike, so both accept
the same names (the ``sample.``/``samples.`` alias included), refuse with the same
messages and raise the same `NotStartable`.

A node resolves only among its registered apps and never imports a top-level module on a
client's behalf: the module must be an app or a sub-module of an app package (imported
from that package's own path), so nothing a client names is ever looked up in the
working directory. ``greenflow run`` on the operator's own machine imports what it is
told to.


The parts: `greenflow.rpc.flow_class` (the class), `greenflow.rpc.flow_params` (its
parameters and binding arguments), `greenflow.rpc.flow_values` (converting values).
"""
from __future__ import annotations

from typing import Callable, Iterable

from greenflow.flows.flow_logic import FlowLogic
from greenflow.party import Party
from greenflow.rpc.flow_class import (MAX_TARGET_CHARS, FlowTargetError,  # noqa: F401
                                      available_samples, check_startable, in_apps,
                                      load_flow_class, requested_class_name,
                                      resolve_flow_class, resolve_startable, split_target,
                                      startable_flows)
from greenflow.rpc.flow_params import (BoundArguments, FlowParam, bind_arguments,  # noqa: F401
                                       flow_params, instantiate, parse_assignments,
                                       signature_text, type_name)
from greenflow.rpc.flow_values import FlowArgumentError, PartyRef, convert  # noqa: F401


def build_flow(target: str, assignments: Iterable[str],
               party_for: Callable[[str], Party]) -> FlowLogic:
    """Everything at once, for callers that already know every party: load and check
    the class, convert the arguments, map names with ``party_for``, construct."""
    cls = load_flow_class(target)
    check_startable(cls)
    bound = bind_arguments(cls, parse_assignments(assignments))
    return instantiate(cls, bound.resolve(party_for))


__all__ = ["BoundArguments", "FlowArgumentError", "FlowParam", "FlowTargetError", "PartyRef",
           "bind_arguments", "build_flow", "check_startable", "convert", "flow_params",
           "in_apps", "instantiate", "load_flow_class", "parse_assignments",
           "requested_class_name", "resolve_flow_class", "resolve_startable",
           "signature_text", "split_target", "startable_flows", "type_name"]
