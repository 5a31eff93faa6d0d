"""The checks of `Node`'s options, made before anything of the node is created.

A node takes its options from ``node.toml`` (checked where it is read,
`greenflow.network.node_config`) or from Python. From Python nothing checked them: a
``max_resident="10"`` or ``retention="x"`` was taken, and the node's scheduler then
failed at every round (starts timed out after two minutes, flows never finished); a
string given as ``apps`` was read letter by letter; a node could be named ``""``; an
infinite ``retention`` stopped the node at the first flow's end (no expiry time to
store). Each option is checked here, and the error names it and says what it takes.
"""
from __future__ import annotations

from typing import Any, Iterable, Optional

from greenflow.party import MAX_NAME_BYTES, name_fits
from greenflow.runtime.flow_types import duration


def check(name: Any, apps: Optional[Iterable[str]], flags: dict[str, Any],
          counts: dict[str, Any], seconds: dict[str, Any],
          optional: frozenset = frozenset()) -> Optional[list[str]]:
    """Raise TypeError or ValueError for the first option that is wrong; return ``apps``
    as a list (None stays None). ``flags`` are on/off options, ``counts`` whole numbers
    from 0, ``seconds`` durations; those named in ``optional`` may also be None."""
    if not name_fits(name):
        raise (ValueError if isinstance(name, str) else TypeError)(
            f"a node's name is 1 to {MAX_NAME_BYTES} bytes of text, got {_shown(name)}")
    for option, value in flags.items():
        if not isinstance(value, int):   # (bool is an int; so are 0 and 1)
            raise TypeError(f"{option} takes True or False, got {_shown(value)}")
    for option, value in counts.items():
        if value is None and option in optional:
            continue
        if type(value) is bool or not isinstance(value, int):
            raise TypeError(f"{option} takes a whole number{_or_none(option, optional)}, "
                            f"got {_shown(value)}")
        if value < 0:
            raise ValueError(f"{option} takes a whole number from 0"
                             f"{_or_none(option, optional)}, got {_shown(value)}")
    for option, value in seconds.items():
        if value is None and option in optional:
            continue
        if type(value) is bool or not isinstance(value, (int, float)):
            raise TypeError(f"{option} takes a number of seconds{_or_none(option, optional)}, "
                            f"got {_shown(value)}")
        duration(value, option)
    return _apps(apps)


def _apps(apps: Optional[Iterable[str]]) -> Optional[list[str]]:
    if apps is None:
        return None
    if isinstance(apps, (str, bytes)):
        raise TypeError(f"apps takes a list of module names, not one name: "
                        f"apps=[{apps!r}]")
    try:
        out = list(apps)
    except TypeError:
        raise TypeError(f"apps takes a list of module names, got {_shown(apps)}") from None
    for module in out:
        if not isinstance(module, str) or not module:
            raise TypeError(f"apps takes module names (text), got {_shown(module)}")
    return out


def _or_none(option: str, optional: frozenset) -> str:
    return " or None" if option in optional else ""


def _shown(value: Any) -> str:
    if isinstance(value, int) and value.bit_length() > 200:
        return f"{type(value).__qualname__} of {value.bit_length()} bits"
    text = repr(value) if isinstance(value, (str, int, float, type(None))) else ""
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{type(value).__qualname__} {text}".rstrip()
