"""Code fingerprints: which code wrote a checkpoint.

Every checkpoint records a digest of the bytecode of the flow classes on its stack, so
that after an upgrade a flow whose replay diverges can be reported as "the code of X
changed since this checkpoint was written" instead of a bare mismatch. A changed
fingerprint alone parks nothing: a flow whose replay agrees with its journal resumes.
"""
from __future__ import annotations

import hashlib
from types import CodeType
from typing import TYPE_CHECKING

from greenflow.flows.registry import qualified_name

if TYPE_CHECKING:
    from greenflow.runtime.flow_runtime import FlowRuntime


_FINGERPRINTS: dict[tuple, dict] = {}


def fingerprint(rt: FlowRuntime) -> dict:
    """Code digests of the flow classes on the stack (top flow at least). One shared
    dict per stack shape: a million resident flows of one class hold one copy."""
    classes = (type(rt.logic),) + tuple(type(f) for f in rt.subflows)
    fp = _FINGERPRINTS.get(classes)
    if fp is None:
        fp = _FINGERPRINTS[classes] = {qualified_name(c): code_digest(c) for c in classes}
    return fp


_WITH: dict[tuple[int, type], tuple[dict, dict]] = {}


def with_class(fp: dict, cls: type) -> dict:
    """``fp`` with the digest of ``cls`` added (a sub-flow the flow runs live): ``fp``
    itself when it has that class already. Shared like `fingerprint`'s dicts: one per
    (dict, class), the cache emptied when it grows past 10,000 (dicts read back from
    stored checkpoints are one per flow)."""
    key = (id(fp), cls)
    hit = _WITH.get(key)
    if hit is not None and hit[0] is fp:
        return hit[1]
    name = qualified_name(cls)
    out = fp if name in fp else {**fp, name: code_digest(cls)}
    if len(_WITH) >= 10_000:
        _WITH.clear()
    _WITH[key] = (fp, out)
    return out


_DIGESTS: dict[type, str] = {}


def code_digest(cls: type) -> str:
    """Digest of the methods' bytecode and constants of ``cls`` and its user-defined bases."""
    d = _DIGESTS.get(cls)
    if d is None:
        h = hashlib.blake2b(digest_size=8)
        for klass in cls.__mro__:
            if klass.__module__.startswith("greenflow.") and not klass.__module__.startswith("greenflow.samples"):
                continue
            for name in sorted(vars(klass)):
                fn = vars(klass)[name]
                code = getattr(getattr(fn, "__func__", fn), "__code__", None)
                if code is not None:
                    h.update(name.encode())
                    _feed(h, code)
        d = _DIGESTS[cls] = h.hexdigest()
    return d


def _feed(h: "hashlib._Hash", code: CodeType) -> None:
    """Bytecode, constants and the names the code reads (globals and attributes: sending
    ``PRICE2`` instead of ``PRICE`` changes no bytecode), the same in every process:
    nested code objects (lambdas, comprehensions) are digested rather than repr'd (their
    repr holds an address), and sets rather than repr'd in hash order (which
    PYTHONHASHSEED changes)."""
    h.update(code.co_code)
    h.update("\0".join(code.co_names).encode())
    for c in code.co_consts:
        if isinstance(c, CodeType):
            _feed(h, c)
        elif isinstance(c, frozenset):
            h.update(repr(sorted(map(repr, c))).encode())
        else:
            h.update(repr(c).encode())
        h.update(b"\0")
