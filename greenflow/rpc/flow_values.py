"""Converting an argument's text (or a value parsed from JSON) to the type hint of the
constructor parameter it is given for:

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
import inspect
import json
import types
import typing
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any, Union

from greenflow.party import Party

_EMPTY = inspect.Parameter.empty
_TRUE = {"true", "yes", "on", "1", "y"}
_FALSE = {"false", "no", "off", "0", "n"}
_NONE = {"null", "none"}


class FlowArgumentError(ValueError):
    """A ``NAME=VALUE`` argument is malformed, unknown, missing or of the wrong type."""


@dataclass(frozen=True)
class PartyRef:
    """A party named on the command line, before the caller maps it to a `Party`."""

    name: str


def type_name(hint: Any) -> str:
    if hint is _EMPTY or hint is Any:
        return "str"
    if isinstance(hint, type) and not typing.get_args(hint):
        return hint.__name__
    return str(hint).replace("typing.", "").replace("greenflow.party.", "")


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
            value = _json(text)
        else:
            value = [v.strip() for v in text.split(",")] if text else []
    if not isinstance(value, list):
        raise ValueError("a JSON list or comma-separated values")
    if container is tuple and args and not (len(args) == 2 and args[1] is Ellipsis):
        if len(value) != len(args):
            raise ValueError(f"{len(args)} items, got {len(value)}")
        return tuple(_item(f"item {i} {shown(repr(v), 40)}", v, t)
                     for i, (v, t) in enumerate(zip(value, args)))
    elem = args[0] if args else Any
    return container(_item(f"item {i} {shown(repr(v), 40)}", v, elem) for i, v in enumerate(value))


def _convert_dict(value: Any, args: tuple) -> dict:
    if isinstance(value, str):
        value = _json(value)
    if not isinstance(value, dict):
        raise ValueError("a JSON object")
    key_t, val_t = args if len(args) == 2 else (Any, Any)
    return {_item(f"key {shown(repr(k), 40)}", k, key_t):
            _item(f"the value of {shown(repr(k), 40)}", v, val_t) for k, v in value.items()}


def _item(where: str, value: Any, hint: Any) -> Any:
    """One member of a list, tuple or dict: a refusal says which (`expected list[int]
    (a whole number)` of ``[1, "x"]`` did not say the list was fine and ``"x"`` not)."""
    try:
        return convert(value, hint)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{where}: {exc}") from None


def _json(text: str) -> Any:
    """A JSON value given as text (a command line's ``--arg``), as a `ValueError` when it
    is no JSON or nests deeper than the parser's recursion allows."""
    try:
        return json.loads(text)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None


def shown(value: Any, limit: int = 100) -> str:
    """A client's value as an error message quotes it: at most ``limit`` characters, so
    an answer never echoes a huge input back in full."""
    text = value if isinstance(value, str) else repr(value)
    text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text if len(text) <= limit else text[:limit] + "..."
