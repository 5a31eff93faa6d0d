"""Class decorators that declare how flows meet, and the registry of responders.

``@initiating_flow`` names the protocol a flow speaks (its qualified class name) and its
version; ``@initiated_by(Initiator)`` says which class answers it on the peer;
``@startable`` allows starting the flow from outside the process (RPC, CLI).
"""
from __future__ import annotations

import importlib
import logging
import sys
from typing import Any, Callable, Iterable, Optional, TypeVar, overload

from greenflow.errors import FlowError

log = logging.getLogger("greenflow.registry")

T = TypeVar("T", bound=type)

# initiating protocol name -> responder classes (in registration order).
_RESPONDERS: dict[str, list[type]] = {}


#: The highest version an initiating flow may give (it travels in every initiation).
MAX_VERSION = 2**31 - 1


def _flow_class(cls: Any, decorator: str) -> None:
    from greenflow.flows.flow_logic import FlowLogic
    if not (isinstance(cls, type) and issubclass(cls, FlowLogic)):
        raise TypeError(f"{decorator} applies to FlowLogic subclasses, not "
                        f"{cls.__qualname__ if isinstance(cls, type) else repr(cls)[:60]}")


def qualified_name(cls: type) -> str:
    # Interned: millions of checkpoints in memory name a handful of classes.
    return sys.intern(f"{cls.__module__}.{cls.__qualname__}")


@overload
def initiating_flow(cls: T) -> T: ...
@overload
def initiating_flow(*, version: int = 1) -> Callable[[T], T]: ...


def initiating_flow(cls: Any = None, *, version: int = 1) -> Any:
    """Mark a flow class as one that opens sessions under its own name.

    Inherited: an undecorated subclass initiates under its nearest decorated ancestor's
    name and version, so that ancestor's responder answers it.
    """

    def mark(c: T) -> T:
        _flow_class(c, "@initiating_flow")
        if type(version) is not int or not 1 <= version <= MAX_VERSION:
            raise ValueError(f"@initiating_flow version must be an int from 1 to {MAX_VERSION}, "
                             f"got {version!r}")
        c._gf_initiating = (qualified_name(c), version)  # type: ignore[attr-defined]
        return c

    if cls is not None:
        return mark(cls)
    return mark


def initiated_by(initiator: type) -> Callable[[T], T]:
    """Register the decorated class as the responder to ``initiator``'s sessions."""
    info = getattr(initiator, "_gf_initiating", None)
    if info is None:
        raise FlowError(
            f"@initiated_by({qualified_name(initiator)}): that class is not marked "
            "@initiating_flow (nor is any of its ancestors)")

    def mark(c: T) -> T:
        _flow_class(c, f"@initiated_by({qualified_name(initiator)})")
        c._gf_initiated_by = info[0]  # type: ignore[attr-defined]
        lst = _RESPONDERS.setdefault(info[0], [])
        name = qualified_name(c)
        lst[:] = [r for r in lst if qualified_name(r) != name]  # re-import replaces
        lst.append(c)
        return c

    return mark


def startable(cls: T) -> T:
    """Allow RPC and the CLI to start this flow class."""
    _flow_class(cls, "@startable")
    cls._gf_startable = True  # type: ignore[attr-defined]
    return cls


def is_startable(cls: type) -> bool:
    return bool(cls.__dict__.get("_gf_startable", False))


def initiating_info(cls: type) -> Optional[tuple[str, int]]:
    """(protocol name, version) a flow of this class initiates under, or None."""
    return getattr(cls, "_gf_initiating", None)


def app_name_of(cls: type) -> str:
    """The app a class belongs to: its top-level module (after ``greenflow.samples``).

    Interned: every session of every resident flow keeps it, so they share one string.
    """
    mod = cls.__module__
    name = mod.split(".")[2] if mod.startswith("greenflow.samples.") else mod.split(".")[0]
    return sys.intern(name)


SAMPLE_PREFIXES = ("sample.", "samples.")


def app_module_name(name: str) -> str:
    """The module an app name means: ``sample.X`` and ``samples.X`` are the bundled
    ``greenflow.samples.X`` and nothing else (never a ``samples`` package that happens to
    be importable, e.g. from the working directory)."""
    for prefix in SAMPLE_PREFIXES:
        if name.startswith(prefix):
            return "greenflow.samples." + name[len(prefix):]
    return name


def resolve_module(name: str) -> Any:
    """Import an app module by name (`app_module_name`: the sample alias applied)."""
    target = app_module_name(name)
    try:
        return importlib.import_module(target)
    except ModuleNotFoundError as exc:
        if exc.name and not target.startswith(exc.name) and exc.name not in target:
            # The module exists but one of its own imports is missing.
            raise FlowError(f"app module {name!r} cannot be imported: it imports "
                            f"{exc.name!r}, which is not installed") from exc
        raise FlowError(f"app module {name!r} cannot be imported: {exc}") from None
    except (Exception, SystemExit) as exc:   # its own code failed while it was imported
        tb = exc.__traceback__
        while tb is not None and tb.tb_next is not None:
            tb = tb.tb_next
        where = f" at {tb.tb_frame.f_code.co_filename}:{tb.tb_lineno}" if tb is not None else ""
        raise FlowError(f"app module {name!r} failed while it was imported{where}: "
                        f"{type(exc).__name__}: {str(exc)[:500]}") from exc


class ResponderTable:
    """Which responder a node starts for each initiating protocol.

    A node opened with ``apps`` answers only with responders defined in those modules
    (or their sub-modules); without ``apps`` it answers with every registered responder.
    """

    def __init__(self, apps: Optional[Iterable[str]] = None) -> None:
        self.apps: Optional[list[str]] = None
        if apps is not None:
            self.apps = [resolve_module(a).__name__ for a in apps]

    def responder_for(self, protocol: str) -> Optional[type]:
        candidates = _RESPONDERS.get(protocol, [])
        if self.apps is not None:
            candidates = [c for c in candidates
                          if any(c.__module__ == a or c.__module__.startswith(a + ".")
                                 for a in self.apps)]
        return candidates[-1] if candidates else None
