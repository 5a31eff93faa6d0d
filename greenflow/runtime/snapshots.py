"""Diagnostic snapshots of a suspended flow's stack: where it waits, with its locals.

Each commit records where every suspended flow stands (`locations`); its locals are
captured when it leaves memory, when a dump asks, or at every suspension if the node is
told so (`greenflow.statemachine.stacks`), so a dump shows where every flow stands and
with what, also for flows on disk and not yet replayed. Values are kept as a bounded ``repr`` plus, where small enough, a pickled
copy. Builtin scalars and small builtin containers of them are shown by ``repr``
(bounded); any other object by its type alone (``<module.Class object>``): no user
``__repr__`` runs at a capture (it may be slow, do I/O or show secrets). Anything whose
name is on the deny-list, or that is key material, is redacted: a local by its name or
type, and inside dicts, lists, tuples and sets by key name or type too, at any depth
shown. Apps add their own names and types with `register_sensitive` (or the node option
``sensitive_names``).
"""
from __future__ import annotations

import datetime
import decimal
import enum
import itertools
import os
import re
import reprlib
import threading
import uuid
from inspect import CO_OPTIMIZED
from types import FrameType
from typing import Any, Iterable, Optional

import greenlet

from greenflow import serialization
from greenflow.messages import exception_text

#: A name is sensitive when it contains one of these (any case): ``db_password``,
#: ``apiKey``, ``auth_header``, ``CLIENT_SECRET``, ``credentials`` ...
DENY_LIST = ("password", "passwd", "passphrase", "secret", "private", "key", "token", "seed",
             "credential", "auth", "cookie", "conn_str", "connstr", "connection_string",
             "signature")
#: ... or when one of its words (split at ``_``, ``-``, ``.``, digits and camelCase) is one
#: of these short ones, which as substrings would catch too much (``pw`` in ``upward``).
DENY_WORDS = ("pw", "pwd", "pass", "pin", "otp", "dsn", "cvv", "sig", "salt", "nonce")
REDACTED = "<redacted>"
MAX_FRAMES = 32
MAX_LOCALS = 40
MAX_REPR = 200

_HERE = os.path.dirname(os.path.abspath(__file__))
# Runtime modules whose frames are plumbing, not the flow's own code.
_GREENFLOW = os.path.dirname(_HERE)
_INTERNAL = {os.path.join(_GREENFLOW, *f.split("/")) for f in (
    "runtime/traps.py", "runtime/flow_runtime.py", "runtime/conversation.py",
    "runtime/recorded.py", "flows/session.py", "flows/flow_logic.py", "flows/progress.py")}
_GREENLET_DIR = os.path.join(os.path.dirname(os.path.abspath(greenlet.__file__)), "")

_repr = reprlib.Repr()
_repr.maxstring = 120
_repr.maxother = 120
_repr.maxlist = _repr.maxtuple = _repr.maxdict = _repr.maxset = 8
_repr.maxlevel = 3


_KEY_TYPES: dict[type, bool] = {}
_APP_TYPES: tuple[type, ...] = ()
_APP_NAMES: tuple[str, ...] = ()
_REGISTER_LOCK = threading.Lock()


def register_sensitive(names: Iterable[str] = (), types: Iterable[type] = ()) -> None:
    """Redact more in checkpoint dumps, for this process: locals and dict keys whose name
    contains one of ``names`` (any case), and values that are instances of ``types`` (and
    their subclasses), wherever they sit. Call it where the app's flows are defined, so
    every node and tool that loads them redacts the same; ``Node.open(...,
    sensitive_names=[...])`` and ``sensitive_names`` in ``node.toml`` add names too.

    A value captured before its name or type was registered is redacted when a dump
    shows it, unless it was stored as a repr (values that are not plain builtins)."""
    global _APP_NAMES, _APP_TYPES
    # One name read letter by letter would redact every local with an "a" in its name.
    for what, given in (("names", names), ("types", types)):
        if isinstance(given, (str, bytes, type)):
            raise TypeError(f"register_sensitive({what}=...) takes a list, not one: "
                            f"{what}=[{given!r}]")
    new_names = tuple(names)
    for n in new_names:
        if not isinstance(n, str):
            raise TypeError(f"register_sensitive(names=...) takes names (text), not {n!r}")
    new_names = tuple(n.lower() for n in new_names if n)
    new_types = tuple(types)
    for t in new_types:
        if not isinstance(t, type):
            raise TypeError(f"register_sensitive(types=...) takes classes, not {t!r}")
    with _REGISTER_LOCK:
        _APP_NAMES = tuple(dict.fromkeys(_APP_NAMES + new_names))
        _APP_TYPES = tuple(dict.fromkeys(_APP_TYPES + new_types))
        _KEY_TYPES.clear()
        _DENIED.clear()


def _redacted_type(value: Any) -> bool:
    """Key material or an app's sensitive type, by type (cached per type)."""
    t = type(value)
    v = _KEY_TYPES.get(t)
    if v is None:
        mod, name = t.__module__ or "", t.__name__
        v = ((mod.startswith("nacl.") and name in ("SigningKey", "PrivateKey"))
             or name == "KeyPair" or (bool(_APP_TYPES) and issubclass(t, _APP_TYPES)))
        if len(_KEY_TYPES) < 10_000:
            _KEY_TYPES[t] = v
    return v


_DENIED: dict[str, bool] = {}
_WORDS = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+")


def denied_name(name: str) -> bool:
    """Whether a local's (or a dict key's) name is on the deny-list (cached: names repeat
    at every suspension)."""
    v = _DENIED.get(name)
    if v is None:
        lname = name.lower()
        v = (any(word in lname for word in DENY_LIST)
             or any(word in lname for word in _APP_NAMES)
             or any(w.lower() in DENY_WORDS for w in _WORDS.findall(name)))
        if len(_DENIED) < 100_000 and len(name) <= 200:   # (a peer's dict keys: any size)
            _DENIED[name] = v
    return v


class _Redacted:
    __slots__ = ()

    def __repr__(self) -> str:
        return REDACTED


_REDACTED = _Redacted()
_CONTAINERS = (dict, list, tuple, set, frozenset)


def _view(value: Any, depth: int) -> Any:
    """What a repr of ``value`` may show: builtin containers copied (only as many items as
    the repr shows, so this costs no more than the repr), with the values of sensitive
    keys and sensitive values replaced by ``<redacted>``."""
    if _redacted_type(value):
        return _REDACTED
    t = type(value)
    if t not in _CONTAINERS or depth <= 0:
        return value
    head = itertools.islice(value.items() if t is dict else value, _repr.maxdict + 1)
    if t is dict:
        return {k: _REDACTED if isinstance(k, str) and denied_name(k) else _view(v, depth - 1)
                for k, v in head}
    items = [_view(v, depth - 1) for v in head]
    if t is list:
        return items
    try:
        return t(items)
    except TypeError:  # a member became unhashable (cannot happen for tuples)
        return tuple(items)


def short_repr(name: str, value: Any) -> str:
    if denied_name(name) or _redacted_type(value):
        return REDACTED
    try:
        text = _repr.repr(_view(value, _repr.maxlevel))
    except Exception as exc:  # a user __repr__ that fails must not fail the flow
        text = f"<{type(value).__qualname__}: repr failed: {type(exc).__name__}>"
    return text if len(text) <= MAX_REPR else text[:MAX_REPR - 3] + "..."


_SCALARS = (type(None), bool, int, float, complex, str, bytes, uuid.UUID, datetime.datetime,
            datetime.date, datetime.timedelta, decimal.Decimal, enum.Enum)


def _plain(v: Any, depth: int) -> Optional[bool]:
    """Cheap to snapshot: builtin scalars, small builtin containers of them, and the
    framework's own small types (Party, FlowSession). None: plain, but holding something
    sensitive (a key on the deny-list, a sensitive type), so never stored as a value."""
    if isinstance(v, _SCALARS):
        if _APP_TYPES and _redacted_type(v):
            return None
        return not isinstance(v, (str, bytes)) or len(v) <= 4096
    t = type(v)
    if t in _SMALL_TYPES:
        return True
    if t in (list, tuple, set, frozenset) and depth > 0 and len(v) <= 32:
        out: Optional[bool] = True
        for x in v:
            p = _plain(x, depth - 1)
            if p is False:
                return False
            if p is None:
                out = None
        return out
    if t is dict and depth > 0 and len(v) <= 32:
        out = True
        for a, b in v.items():
            pa, pb = _plain(a, depth - 1), _plain(b, depth - 1)
            if pa is False or pb is False:
                return False
            if pa is None or pb is None or (type(a) is str and denied_name(a)):
                out = None
        return out
    return False


def _small_types() -> set:
    from greenflow.party import Party
    from greenflow.flows.session import FlowSession
    return {Party, FlowSession}


_SMALL_TYPES = _small_types()
_internal_cache: dict[str, bool] = {}


def _is_internal(filename: str) -> bool:
    v = _internal_cache.get(filename)
    if v is None:
        path = os.path.abspath(filename)
        # The greenlet package by its location: a user's own directory may well have
        # "greenlet" in its name, and its frames must still show.
        v = _internal_cache[filename] = (path in _INTERNAL or path.startswith(_GREENLET_DIR))
    return v


def capture(top: Optional[FrameType], keep_values: bool = True,
            stop_code: Any = None) -> list[dict]:
    """Frames from the flow's ``call()`` down to its suspension point (outermost first).

    Cheap at suspension time: each frame's locals are pickled in one C-pickle call (what
    pickle refuses gets a bounded repr instead); reprs of the pickled values are made
    only when someone reads the dump (`public`).
    """
    frames: list[dict] = []
    f = top
    while f is not None and len(frames) < MAX_FRAMES * 4:
        code = f.f_code
        fn = code.co_filename
        if not _is_internal(fn):
            reprs: dict[str, str] = {}
            keep: dict[str, Any] = {}
            f_locals = f.f_locals
            items = list(f_locals.items())[:MAX_LOCALS]
            # Up to 3.12, reading a function frame's f_locals leaves a snapshot dict on the
            # suspended frame for as long as it lives; empty it so a resident flow does not
            # hold its locals twice. (The frame's real locals are untouched: a tracer
            # refreshes the dict before use.) From 3.13 (PEP 667) f_locals is a fresh
            # write-through FrameLocalsProxy, nothing is cached and it has no clear().
            # A module/class/exec frame's f_locals is its real namespace: never cleared.
            if type(f_locals) is dict and code.co_flags & CO_OPTIMIZED:
                f_locals.clear()
            for k, v in items:
                if denied_name(k) or _redacted_type(v):
                    reprs[k] = REDACTED
                elif k == "self":   # the flow object: stored already as the start object
                    reprs[k] = f"<{type(v).__module__}.{type(v).__qualname__} object>"
                elif keep_values and (plain := _plain(v, 2)):
                    keep[k] = v
                elif keep_values and plain is None:
                    reprs[k] = short_repr(k, v)    # builtins only: no user __repr__ runs
                elif keep_values and isinstance(v, (str, bytes)):
                    reprs[k] = short_repr(k, v)    # a long string: reprlib truncates cheaply
                elif keep_values:
                    # Anything else is named by its type only: no user __repr__ and no
                    # pickling of large objects at every suspension.
                    reprs[k] = f"<{type(v).__module__}.{type(v).__qualname__} object>"
                else:
                    reprs[k] = short_repr(k, v)
            blob = None
            if keep:
                blob = serialization.try_pickle(keep, limit=16384)
                if blob is None:  # one value spoils the batch: take them one by one
                    ok = {}
                    for k, v in keep.items():
                        if serialization.try_pickle(v, limit=2048) is not None:
                            ok[k] = v
                        else:
                            reprs[k] = short_repr(k, v)
                    blob = serialization.try_pickle(ok, limit=16384) if ok else None
            frames.append({"function": getattr(code, "co_qualname", code.co_name),
                           "file": fn, "line": f.f_lineno, "reprs": reprs, "values": blob})
        if code is stop_code:   # the flow's own call(): nothing above it is the flow's
            break
        if code.co_name == "_main" and fn.endswith("flow_runtime.py") and _is_internal(fn):
            break
        f = f.f_back   # (materialises that frame's object for as long as it runs)
    frames.reverse()
    return frames[-MAX_FRAMES:]


def locations(top: Optional[FrameType], stop_code: Any = None) -> tuple:
    """Where the flow stands, without its locals: ``(function, file, line)`` per frame of
    its own code, outermost first. What a commit records: a few tuples of strings the
    code objects hold already, no reprs and no pickling of values."""
    out = []
    f = top
    while f is not None and len(out) < MAX_FRAMES * 4:
        code = f.f_code
        fn = code.co_filename
        if not _is_internal(fn):
            out.append((getattr(code, "co_qualname", code.co_name), fn, f.f_lineno))
        if code is stop_code:
            break
        if code.co_name == "_main" and fn.endswith("flow_runtime.py") and _is_internal(fn):
            break
        f = f.f_back
    out.reverse()
    return tuple(out[-MAX_FRAMES:])


def of_flow(rt: Any, keep_locals: bool = True) -> Optional[Any]:
    """A suspended resident flow's snapshot (`capture`), or only its `locations`."""
    g = rt.greenlet
    if g is None or rt.pending is None:
        return None
    top = rt.user_frame or g.gr_frame
    stop = getattr(getattr(type(rt.logic), "call", None), "__code__", None)
    return capture(top, stop_code=stop) if keep_locals else locations(top, stop)


def at_failure(exc: BaseException, logic: Any) -> Optional[list[dict]]:
    """The stack where a flow failed with ``exc`` (from the flow's ``call()`` down to the
    raise, with locals), read from its traceback: the flow's greenlet is gone by then,
    and the frames of its traceback keep their locals. None when the traceback does not
    pass through the flow's code."""
    stop = getattr(getattr(type(logic), "call", None), "__code__", None)
    chain = []
    tb = exc.__traceback__
    while tb is not None and len(chain) < MAX_FRAMES * 8:
        chain.append(tb.tb_frame)
        tb = tb.tb_next
    starts = [i for i, f in enumerate(chain) if f.f_code is stop]
    if not starts:
        return None
    frames: list[dict] = []
    for f in chain[starts[-1]:]:
        frames += capture(f, stop_code=f.f_code)   # (a finished frame: that frame alone)
    return frames[:MAX_FRAMES] if frames else None


def has_locals(snap: Any) -> bool:
    """False for a snapshot of `locations` only (a tuple of tuples)."""
    return not isinstance(snap, tuple)


def public(frames: Optional[list[dict]]) -> list[dict]:
    """The JSON-ready view of a snapshot: function, file, line and locals as short reprs."""
    out = []
    for fr in frames or []:
        if isinstance(fr, tuple):   # a location only
            out.append({"function": fr[0], "file": fr[1], "line": fr[2], "locals": {}})
            continue
        locs: dict[str, str] = {}
        blob = fr.get("values")
        if blob is not None:
            try:
                for k, v in serialization.loads(blob).items():
                    locs[k] = short_repr(k, v)
            except Exception as exc:  # e.g. a class no longer importable here
                locs["<locals>"] = (f"<unreadable here: {type(exc).__name__}: "
                                    f"{exception_text(exc)}>")
        locs.update(fr.get("reprs", {}))
        if "locals" in fr:  # older snapshots kept reprs only
            locs.update(fr["locals"])
        out.append({"function": fr.get("function"), "file": fr.get("file"),
                    "line": fr.get("line"), "locals": locs})
    return out
