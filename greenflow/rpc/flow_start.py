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

A value is converted with the type hint of the constructor parameter it is given for:

| hint | text accepted |
|---|---|
| ``str``, none, ``Any`` | the text as it is (no hint but a default: the default's type) |
| ``int``, ``float``, ``Decimal`` | a number |
| ``bool`` | true/false, yes/no, on/off, 1/0 |
| an ``Enum`` | a member's name or value |
| ``Party`` | a node name, e.g. ``Bob``; the caller maps names to parties |
| ``list``/``tuple``/``set`` (of X) | JSON (``[1, 2]``) or comma-separated (``Bob,Carol``) |
| ``dict`` | a JSON object |
| ``Optional[X]`` / ``X | None`` | ``null`` or ``none`` for None, else as X |
| a class with a ``parse_arg`` classmethod | what it parses, e.g. ``Amount``: ``1500.00 GBP`` |
"""
from __future__ import annotations

import enum
import importlib
import importlib.util
import inspect
import json
import pkgutil
import sys
import types
import typing
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any, Callable, Iterable, Optional, Sequence, Union

from greenflow.errors import FlowError, NotStartable
from greenflow.flows.flow_logic import FlowLogic
from greenflow.party import Party
from greenflow.flows.registry import SAMPLE_PREFIXES, app_module_name, is_startable, qualified_name, resolve_module

_EMPTY = inspect.Parameter.empty
_TRUE = {"true", "yes", "on", "1", "y"}
_FALSE = {"false", "no", "off", "0", "n"}
_NONE = {"null", "none"}
MAX_TARGET_CHARS = 300


class FlowTargetError(ValueError):
    """The ``module:FlowClass`` text names nothing that can be started here."""


class FlowArgumentError(ValueError):
    """A ``NAME=VALUE`` argument is malformed, unknown, missing or of the wrong type."""


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


# ---------------------------------------------------------------------------- parameters

@dataclass(frozen=True)
class FlowParam:
    """One constructor parameter of a flow class, with its resolved type hint."""

    name: str
    hint: Any
    default: Any

    @property
    def required(self) -> bool:
        return self.default is _EMPTY

    @property
    def type_name(self) -> str:
        return type_name(self.hint)

    def describe(self) -> str:
        text = f"{self.name}: {self.type_name}"
        return text if self.required else f"{text} = {self.default!r}"


def flow_params(cls: type) -> tuple[list[FlowParam], bool]:
    """The named parameters of ``cls(...)``, and whether it also takes ``**kwargs``."""
    sig = inspect.signature(cls)
    init = getattr(cls, "__init__", None)
    try:
        hints = typing.get_type_hints(init) if init is not None else {}
    except Exception:  # an unresolvable forward reference: fall back per parameter
        hints = {}
    params, var_kw = [], False
    for p in sig.parameters.values():
        if p.kind is p.VAR_KEYWORD:
            var_kw = True
        elif p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY):
            hint = hints.get(p.name, p.annotation)
            if isinstance(hint, str):
                hint = _BY_NAME.get(hint.rsplit(".", 1)[-1], Any)
            if hint is _EMPTY and p.default is not _EMPTY and p.default is not None:
                hint = type(p.default) if type(p.default) in (int, float, bool, str) else Any
            params.append(FlowParam(p.name, hint, p.default))
    return params, var_kw


_BY_NAME = {"int": int, "float": float, "bool": bool, "str": str, "Party": Party,
            "Decimal": Decimal}


def type_name(hint: Any) -> str:
    if hint is _EMPTY or hint is Any:
        return "str"
    if isinstance(hint, type) and not typing.get_args(hint):
        return hint.__name__
    return str(hint).replace("typing.", "").replace("greenflow.party.", "")


def signature_text(cls: type) -> str:
    params, var_kw = flow_params(cls)
    parts = [p.describe() for p in params] + (["**kwargs"] if var_kw else [])
    return f"{cls.__qualname__}({', '.join(parts)})"


# ---------------------------------------------------------------------------- values

def parse_assignments(items: Iterable[str]) -> dict[str, str]:
    """``["n=4", "peer=Bob"]`` -> ``{"n": "4", "peer": "Bob"}``; each name at most once."""
    out: dict[str, str] = {}
    for item in items:
        name, sep, value = item.partition("=")
        name = name.strip()
        if not sep or not name:
            raise FlowArgumentError(f"argument {item!r} is not of the form NAME=VALUE")
        if name in out:
            raise FlowArgumentError(f"argument {name!r} is given twice")
        out[name] = value
    return out


@dataclass(frozen=True)
class PartyRef:
    """A party named on the command line, before the caller maps it to a `Party`."""

    name: str


@dataclass
class BoundArguments:
    """Converted constructor arguments; parties still as `PartyRef` until `resolve`."""

    cls: type
    values: dict[str, Any]

    @property
    def party_names(self) -> list[str]:
        """Every party named, in order of appearance, once each."""
        seen: dict[str, None] = {}
        _walk(self.values, lambda ref: seen.setdefault(ref.name, None))
        return list(seen)

    def resolve(self, party_for: Callable[[str], Party]) -> dict[str, Any]:
        """The keyword arguments for ``cls(**kwargs)``, with each `PartyRef` replaced by
        ``party_for(name)``."""
        return _walk(self.values, lambda ref: party_for(ref.name))


def _walk(value: Any, fn: Callable[[PartyRef], Any]) -> Any:
    if isinstance(value, PartyRef):
        return fn(value)
    if isinstance(value, dict):
        return {k: _walk(v, fn) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return type(value)(_walk(v, fn) for v in value)
    return value


def bind_arguments(cls: type, raw: dict[str, str]) -> BoundArguments:
    """Check names against ``cls``'s constructor and convert each value by its type hint."""
    params, var_kw = flow_params(cls)
    by_name = {p.name: p for p in params}
    values: dict[str, Any] = {}
    for name, text in raw.items():
        p = by_name.get(name)
        if p is None and not var_kw:
            known = ", ".join(q.describe() for q in params) or "no arguments"
            raise FlowArgumentError(f"unknown argument {name!r}: {cls.__qualname__} takes {known}")
        hint = p.hint if p is not None else Any
        try:
            values[name] = convert(text, hint)
        except (ValueError, TypeError) as exc:
            raise FlowArgumentError(f"bad argument {name}={text!r} for {cls.__qualname__}: "
                                    f"expected {type_name(hint)} ({exc})") from exc
    missing = [p for p in params if p.required and p.name not in values]
    if missing:
        raise FlowArgumentError(f"missing argument: {cls.__qualname__} needs "
                                + ", ".join(f"{p.name}=<{p.type_name}>" for p in missing))
    return BoundArguments(cls, values)


def convert(value: Any, hint: Any) -> Any:
    """Convert command-line text (or a value parsed from JSON) to the type ``hint``."""
    if hint is _EMPTY or hint is Any or hint is object:
        return value
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Union or (hasattr(types, "UnionType") and origin is types.UnionType):
        return _convert_union(value, args)
    if hint is type(None):
        if value is None or (isinstance(value, str) and value.strip().lower() in _NONE):
            return None
        raise ValueError("only null is accepted")
    if origin is typing.Literal:
        for choice in args:
            if str(choice) == str(value):
                return choice
        raise ValueError(f"one of {', '.join(map(str, args))}")
    if isinstance(hint, type):
        if issubclass(hint, Party):
            if not isinstance(value, str) or not value.strip():
                raise ValueError("a node name such as Bob")
            return PartyRef(value.strip())
        if issubclass(hint, bool):
            return _convert_bool(value)
        if issubclass(hint, enum.Enum):
            return _convert_enum(value, hint)
        if hint in (int, float, Decimal, str):
            return _convert_scalar(value, hint)
    container = origin or hint
    parse = getattr(container, "parse_arg", None) if isinstance(container, type) else None
    if parse is not None:  # a type that reads itself from text, e.g. Amount ("1500.00 GBP")
        if isinstance(value, container):
            return value
        if not isinstance(value, str):
            raise ValueError(f"text such as {getattr(container, 'ARG_EXAMPLE', '...')}")
        return parse(value)
    if container in (list, tuple, set, frozenset):
        return _convert_sequence(value, container, args)
    if container is dict:
        return _convert_dict(value, args)
    raise TypeError(f"a {type_name(hint)} cannot be given as text")


def _convert_union(value: Any, args: tuple) -> Any:
    if type(None) in args and (value is None or
                               (isinstance(value, str) and value.strip().lower() in _NONE)):
        return None
    errors = []
    for member in args:
        if member is type(None):
            continue
        try:
            return convert(value, member)
        except (ValueError, TypeError) as exc:
            errors.append(str(exc))
    raise ValueError("; ".join(errors))


def _convert_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        low = value.strip().lower()
        if low in _TRUE:
            return True
        if low in _FALSE:
            return False
    raise ValueError("true or false")


def _convert_enum(value: Any, hint: type[enum.Enum]) -> enum.Enum:
    for member in hint:
        if str(value) in (member.name, str(member.value)) or \
                (isinstance(value, str) and value.lower() == member.name.lower()):
            return member
    raise ValueError("one of " + ", ".join(m.name for m in hint))


def _convert_scalar(value: Any, hint: type) -> Any:
    if hint is str:
        if isinstance(value, str):
            return value
        raise ValueError(f"got {type(value).__name__}")
    if isinstance(value, bool):
        raise ValueError("got a bool")
    if hint is int:
        if isinstance(value, int):
            return value
        if isinstance(value, str):
            try:
                return int(value.strip())
            except ValueError:
                raise ValueError("a whole number") from None
        raise ValueError(f"got {type(value).__name__}")
    if not isinstance(value, (int, float, str)):
        raise ValueError(f"got {type(value).__name__}")
    try:
        return Decimal(str(value).strip()) if hint is Decimal else float(value)
    except (ValueError, InvalidOperation):
        raise ValueError("a number") from None


def _convert_sequence(value: Any, container: type, args: tuple) -> Any:
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            value = json.loads(text)
        else:
            value = [v.strip() for v in text.split(",")] if text else []
    if not isinstance(value, list):
        raise ValueError("a JSON list or comma-separated values")
    if container is tuple and args and not (len(args) == 2 and args[1] is Ellipsis):
        if len(value) != len(args):
            raise ValueError(f"{len(args)} items, got {len(value)}")
        return tuple(convert(v, t) for v, t in zip(value, args))
    elem = args[0] if args else Any
    return container(convert(v, elem) for v in value)


def _convert_dict(value: Any, args: tuple) -> dict:
    if isinstance(value, str):
        value = json.loads(value)
    if not isinstance(value, dict):
        raise ValueError("a JSON object")
    key_t, val_t = args if len(args) == 2 else (Any, Any)
    return {convert(k, key_t): convert(v, val_t) for k, v in value.items()}


def instantiate(cls: type, kwargs: dict[str, Any]) -> FlowLogic:
    """``cls(**kwargs)``, with a constructor's own refusal reported as an argument error."""
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise FlowArgumentError(f"{cls.__qualname__}(...) refused its arguments: {exc}") from exc


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
