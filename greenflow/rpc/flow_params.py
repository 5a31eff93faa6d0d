"""A flow class's constructor parameters, and binding ``NAME=VALUE`` arguments to them
(converted by `greenflow.rpc.flow_values`, parties left as names until the caller maps
them)."""
from __future__ import annotations

import inspect
import typing
import weakref
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Callable, Iterable

from greenflow.flows.flow_logic import FlowLogic
from greenflow.party import Party
from greenflow.rpc.flow_values import (_EMPTY, FlowArgumentError, PartyRef, convert, shown,
                                       type_name)

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


def flow_params(cls: type) -> tuple[tuple[FlowParam, ...], bool]:
    """The named parameters of ``cls(...)``, and whether it also takes ``**kwargs``.

    Worked out once per class: resolving the type hints cost more than the rest of
    starting a flow over RPC."""
    try:
        return _PARAMS[cls]
    except (KeyError, TypeError):   # TypeError: a class that cannot be weakly referenced
        pass
    found = _flow_params(cls)
    try:
        _PARAMS[cls] = found
    except TypeError:
        pass
    return found


_PARAMS: "weakref.WeakKeyDictionary[type, tuple[tuple[FlowParam, ...], bool]]" = \
    weakref.WeakKeyDictionary()


def _flow_params(cls: type) -> tuple[tuple[FlowParam, ...], bool]:
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
    return tuple(params), var_kw


_BY_NAME = {"int": int, "float": float, "bool": bool, "str": str, "Party": Party,
            "Decimal": Decimal}


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
            raise FlowArgumentError(f"unknown argument {shown(name)!r}: {cls.__qualname__} takes "
                                    f"{known}")
        hint = p.hint if p is not None else Any
        try:
            values[name] = convert(text, hint)
        except (ValueError, TypeError) as exc:
            raise FlowArgumentError(f"bad argument {shown(name)}={shown(repr(text))} for {cls.__qualname__}: "
                                    f"expected {type_name(hint)} ({exc})") from exc
    missing = [p for p in params if p.required and p.name not in values]
    if missing:
        raise FlowArgumentError(f"missing argument: {cls.__qualname__} needs "
                                + ", ".join(f"{p.name}=<{p.type_name}>" for p in missing))
    return BoundArguments(cls, values)


def instantiate(cls: type, kwargs: dict[str, Any]) -> FlowLogic:
    """``cls(**kwargs)``, with a constructor's own refusal reported as an argument error."""
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise FlowArgumentError(f"{cls.__qualname__}(...) refused its arguments: {exc}") from exc

