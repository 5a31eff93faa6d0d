"""The fields a class's ``__init__`` gives its objects, read from its code.

A flow restored from a checkpoint is not made again by the code running now: its
``__init__`` ran once, under the code it started with, and so did that of every object
its fields hold. A field added to an ``__init__`` since (a parameter, or a plain
``self.attempts = 0``) is missing on such objects, and the first read of it raises
`AttributeError`. The node parks a flow that fails so (`Ending`), and ``greenflow
replay`` reports it beforehand (`greenflow.testing.replay`); both ask this module which
names an ``__init__`` sets.
"""
from __future__ import annotations

import dis
import inspect
from functools import lru_cache
from typing import Any

#: Instructions that put a function's first argument (``self``) on the stack for the
#: ``STORE_ATTR`` that follows (3.13 fuses two loads into one).
_LOADS = frozenset(("LOAD_FAST", "LOAD_FAST_CHECK", "LOAD_FAST_LOAD_FAST", "LOAD_DEREF"))


@lru_cache(maxsize=1024)
def init_fields(cls: type) -> frozenset[str]:
    """Names the ``__init__`` of ``cls`` and of its bases (not `object`'s) take as
    parameters or assign on ``self`` (``self.name = ...``, also in tuple assignments)."""
    names: set[str] = set()
    for klass in cls.__mro__:
        init = vars(klass).get("__init__")
        if init is None or klass is object:
            continue
        names |= _parameters(init) | _assigned_on_self(init)
    return frozenset(names)


def init_parameters(cls: type) -> frozenset[str]:
    """The parameters of ``cls.__init__`` (not ``self``, not ``*args``/``**kwargs``)."""
    init = getattr(cls, "__init__", None)
    return frozenset(_parameters(init)) if init is not None else frozenset()


def _parameters(init: Any) -> set[str]:
    try:
        params = inspect.signature(init).parameters
    except (TypeError, ValueError):
        return set()
    return {n for i, (n, p) in enumerate(params.items())
            if i > 0 and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}


def _assigned_on_self(init: Any) -> set[str]:
    code = getattr(init, "__code__", None)
    if code is None or not code.co_argcount:
        return set()
    me = code.co_varnames[0]
    out: set[str] = set()
    before = None
    for ins in dis.get_instructions(code):
        if ins.opname == "STORE_ATTR" and before is not None and before.opname in _LOADS:
            loaded = before.argval
            if loaded == me or (isinstance(loaded, tuple) and loaded and loaded[-1] == me):
                out.add(ins.argval)
        before = ins
    return out
