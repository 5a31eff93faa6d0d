"""Which flow class a ``module.path:FlowClass`` (or ``module.Class``) text names, among a
node's apps (or, for ``greenflow run``, anywhere), and whether it may be started from
outside the process. See `greenflow.rpc.flow_start`."""
from __future__ import annotations

import importlib
import importlib.util
import pkgutil
import sys
import types
from typing import Any, Optional, Sequence

from greenflow.errors import FlowError, NotStartable
from greenflow.flows.flow_logic import FlowLogic
from greenflow.flows.registry import SAMPLE_PREFIXES, app_module_name, is_startable, qualified_name, resolve_module

MAX_TARGET_CHARS = 300


class FlowTargetError(ValueError):
    """The ``module:FlowClass`` text names nothing that can be started here."""


# ---------------------------------------------------------------------------- the class

def split_target(target: Any, *, dotted: bool = True) -> tuple[str, str]:
    """``module:Class`` (or, with ``dotted``, ``module.Class``) -> (module, qualname)."""
    if not isinstance(target, str) or not target:
        raise FlowTargetError("the flow must be a class path like samples.ping.Ping")
    if len(target) > MAX_TARGET_CHARS:
        raise FlowTargetError(f"the flow class path is longer than {MAX_TARGET_CHARS} characters")
    module_name, sep, attr = target.partition(":")
    if not sep and dotted:
        module_name, _, attr = target.rpartition(".")
    if not module_name or not attr:
        hint = ""
        head, dot, tail = target.rpartition(".")
        if not dotted and dot and tail[:1].isupper():
            hint = f" (did you mean {head}:{tail}?)"
        form = "module.Class or module:Class" if dotted else "module.path:FlowClass"
        raise FlowTargetError(f"{target!r} is not a class path of the form {form}{hint}")
    return module_name, attr


def available_samples() -> list[str]:
    """Names of the bundled sample modules, sorted. Found by name, without importing
    them or their package: to the resolver the samples are an app like any other, so
    the RPC never imports the tools above it."""
    spec = importlib.util.find_spec("greenflow.samples")
    if spec is None or not spec.submodule_search_locations:
        return []
    return sorted(m.name for m in pkgutil.iter_modules(spec.submodule_search_locations)
                  if not m.name.startswith("_"))


def _check_sample_exists(module_name: str) -> None:
    for prefix in SAMPLE_PREFIXES:
        if module_name.startswith(prefix):
            name = module_name[len(prefix):].split(".")[0]
            if name not in available_samples():
                raise FlowTargetError(f"no sample named {name!r}; available: "
                                      f"{', '.join(available_samples()) or 'none'}")


def in_apps(module_name: str, apps: Optional[Sequence[str]]) -> bool:
    """Whether ``module_name`` (after the sample alias) is one of ``apps`` or inside one."""
    if apps is None:
        return True
    name = app_module_name(module_name)
    return any(name == a or name.startswith(a + ".") for a in apps)


def _app_module(module_name: str, apps: Optional[Sequence[str]]) -> types.ModuleType:
    """The module, for a node: already imported, or a sub-module of an imported app
    package (found on that package's own ``__path__``). Never a fresh top-level import."""
    name = app_module_name(module_name)
    mod = sys.modules.get(name)
    if mod is not None:
        return mod
    parent = name.rpartition(".")[0]
    if apps is None or not parent or not in_apps(parent, apps) \
            or not hasattr(sys.modules.get(parent), "__path__"):
        where = "one of this node's apps" if apps is not None else "a module this node has loaded"
        raise FlowTargetError(f"module {module_name} is not {where}")
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        raise FlowTargetError(f"app module {module_name!r} cannot be imported: {exc}") from None


def resolve_flow_class(target: Any, *, apps: Optional[Sequence[str]] = None,
                       node: bool = False, dotted: bool = True) -> type:
    """The `FlowLogic` class ``target`` names (not yet checked ``@startable``).

    ``node=True`` resolves for a node: only among ``apps`` (module names as the node
    registered them; None: a node without apps, which offers only modules it has already
    loaded), and without importing anything new at the top level. Otherwise the module is
    imported as asked (the command line, on the operator's machine).
    """
    module_name, attr = split_target(target, dotted=dotted)
    _check_sample_exists(module_name)
    if node:
        if not in_apps(module_name, apps):
            raise FlowTargetError(f"{module_name} is not one of this node's apps "
                                  f"({', '.join(apps or [])})")
        module = _app_module(module_name, apps)
    else:
        try:
            module = resolve_module(module_name)
        except FlowError as exc:
            raise FlowTargetError(str(exc)) from None
        except ImportError as exc:
            raise FlowTargetError(f"cannot import module {module_name!r}: {exc}") from None
    obj: Any = module
    for part in attr.split("."):
        obj = getattr(obj, part, None) if not part.startswith("__") else None
        if obj is None:
            raise FlowTargetError(
                f"no flow class {target!r}: module {module.__name__} has no {attr!r}; "
                f"startable flows there: {_names(startable_flows(module))}")
    if not (isinstance(obj, type) and issubclass(obj, FlowLogic)):
        raise FlowTargetError(f"{module.__name__}:{attr} is not a FlowLogic subclass")
    return obj


def check_startable(cls: type) -> None:
    """Raise `NotStartable` unless ``cls`` is marked ``@startable`` (outside the process only @startable flows start)."""
    if not is_startable(cls):
        raise NotStartable(
            f"{qualified_name(cls)} is not @startable: only flow classes marked @startable "
            "may be started from outside the process (CLI, RPC)")


def resolve_startable(target: Any, **kw: Any) -> type:
    """`resolve_flow_class`, then `check_startable`."""
    cls = resolve_flow_class(target, **kw)
    check_startable(cls)
    return cls


def requested_class_name(target: Any) -> Optional[str]:
    """The qualified name ``target`` asks for, before anything is imported (the sample
    alias applied), for permission checks; None if it is not a class path."""
    try:
        module_name, attr = split_target(target)
    except FlowTargetError:
        return None
    return f"{app_module_name(module_name)}.{attr}"


def load_flow_class(target: str) -> type:
    """Import ``module.path:FlowClass`` for the command line (``sample.X:Cls`` means
    ``greenflow.samples.X``)."""
    return resolve_flow_class(target, dotted=False)


def startable_flows(module: types.ModuleType) -> list[type]:
    """The ``@startable`` flow classes defined in ``module``."""
    return [v for v in vars(module).values()
            if isinstance(v, type) and issubclass(v, FlowLogic) and is_startable(v)
            and v.__module__ == module.__name__]


def _names(classes: list[type]) -> str:
    return ", ".join(c.__qualname__ for c in classes) or "none"

