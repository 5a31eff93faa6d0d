"""How the ledger's objects are kept in a node's own storage: the names of the modules
their classes live in, then their wire encoding.

The vault stores transactions and states this way, and a `SignedTransaction` pickles
this way too (a flow's result, a flow's fields at a checkpoint). The wire encoding is
~2x faster to make than a pickle of the same transaction and is made once per
transaction object (it is frozen), so a transaction the vault has recorded costs
nothing more when the flow that recorded it returns it.

The module names come first so that a process reading the store (a node that reopens,
an offline dump) imports the classes before decoding: these are our own records, so the
modules are trusted, unlike a class name a peer sends, which is never imported.
"""
from __future__ import annotations

import importlib
from typing import Any, Iterable

from greenflow import wire

__all__ = ["module_prefix", "unpack"]

# The prefix per tuple of the classes that decide it (a vault holds few kinds of state
# and command): worked out once, not once per record.
_PREFIXES: dict[tuple, bytes] = {}


def module_prefix(classes: tuple) -> bytes:
    """The prefix naming the modules of ``classes`` (``None`` entries are ignored)."""
    prefix = _PREFIXES.get(classes)
    if prefix is None:
        prefix = _prefix(c.__module__ for c in classes if c is not None)
        if len(_PREFIXES) < 10_000:
            _PREFIXES[classes] = prefix
    return prefix


def _prefix(modules: Iterable[str]) -> bytes:
    return ",".join(sorted({m for m in modules if m != "builtins"})).encode() + b"\0"


def unpack(raw: bytes) -> Any:
    """The object `module_prefix` + its wire encoding stood for."""
    modules, _, body = bytes(raw).partition(b"\0")
    for name in filter(None, modules.decode().split(",")):
        importlib.import_module(name)
    return wire.decode(body)
