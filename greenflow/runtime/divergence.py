"""Words for a `NonDeterminismError`: what diverged, where, and what probably caused it.

A divergence is found on replay, long after the first run, often after an upgrade: the
operator reading it needs the flow, the step, the file and line in the flow's code that
made the request, and, for a payload that differs, the first differing field with both
values (redacted like dumps: deny-listed names and key material never appear), plus a
hint when the values look like a clock reading, a random value or an id. The text goes
into the flow's checkpoint (``FlowInfo.error``, dumps, the CLI), so it is built here
once, on the (rare) divergence path only.
"""
from __future__ import annotations

import dataclasses
import datetime
import os
import re
import sys
import uuid
from types import FrameType
from typing import TYPE_CHECKING, Any, Optional

from greenflow.runtime import snapshots as frames_mod
from greenflow import wire
from greenflow.errors import NonDeterminismError
from greenflow.messages import exception_text
from greenflow.runtime.fingerprint import code_digest
from greenflow.runtime.journal import Entry, Kind, describe
from greenflow.party import Party

if TYPE_CHECKING:
    from greenflow.runtime.flow_runtime import FlowRuntime

_HERE = os.path.dirname(os.path.abspath(__file__))
_PLUMBING = frames_mod._INTERNAL | {os.path.join(_HERE, f) for f in (
    "replay_safe.py", "divergence.py")} | {os.path.join(os.path.dirname(_HERE), "node", "services.py")}
_MAX_DEPTH = 12
_MAX_ITEMS = 2000


def _user_frame() -> Optional[FrameType]:
    """The innermost frame of the flow's own code (the caller of the framework API)."""
    f: Optional[FrameType] = sys._getframe(1)
    while f is not None:
        fn = os.path.abspath(f.f_code.co_filename)
        if fn not in _PLUMBING and "greenlet" not in fn:
            return f
        f = f.f_back
    return None


def location() -> str:
    f = _user_frame()
    if f is None:
        return "an unknown place"
    return f"{f.f_code.co_filename}:{f.f_lineno} in {getattr(f.f_code, 'co_qualname', f.f_code.co_name)}"


def _head(rt: "FlowRuntime", step: int) -> str:
    return (f"flow {rt.cp.flow_class} ({rt.flow_id}) diverged from its journal at step "
            f"{step}")


def _next_request(rt: "FlowRuntime", after: int) -> Optional[Entry]:
    for e in rt.journal[after + 1:]:
        if e.kind != Kind.CLOCK:
            return e
    return None


def explain_request(rt: "FlowRuntime", step: int, recorded: Entry, kind: str, key: tuple,
                    payload: Optional[bytes] = None, waiting: bool = False) -> str:
    """The code asks for ``kind``/``key`` at ``step`` where the journal recorded ``recorded``."""
    verb = "it was waiting to" if waiting else "the journal recorded"
    text = (f"{_head(rt, step)}, at {location()}: {verb} '{recorded.describe()}', the code "
            f"now asks to '{describe(kind, key)}'")
    detail = ""
    if kind == recorded.kind and kind in (Kind.SEND, Kind.RECEIVE, Kind.CLOSE, Kind.INFO) \
            and len(key) > 1 and len(recorded.key) > 1 and key[1] != recorded.key[1]:
        detail = f"the peer changed: recorded {recorded.key[1]}, now {key[1]}"
    elif kind == recorded.kind == Kind.RECEIVE and key[2] != recorded.key[2]:
        detail = f"the expected type changed: recorded {recorded.key[2]}, now {key[2]}"
    elif kind == recorded.kind == Kind.SEND and key[2] != recorded.key[2]:
        detail = _payload_detail(recorded, payload)
    elif kind != recorded.kind or key != recorded.key:
        nxt = _next_request(rt, step)
        if nxt is not None and nxt.matches(kind, key):
            detail = (f"a step is missing: the code skips the recorded step "
                      f"'{recorded.describe()}' and goes on to the one after it (or the "
                      f"steps were reordered, that one moved later)")
        elif kind == Kind.CLOCK:
            detail = ("the code reads the clock here, which the first run did not: a step "
                      "was added or the code changed")
        else:
            detail = ("the code makes a request the journal does not have here: a step was "
                      "added, or this one changed")
    return f"{text}; {detail}" if detail else text


def check_narrowed(rt: "FlowRuntime", tname: str, payload: Any) -> None:
    """A replayed receive whose type changed since the first run took ``payload``
    (`FlowRuntime._replay_next` lets a changed type through) that the new type refuses:
    the new code would not have taken it, so the flow diverged (parked for the
    operator) rather than failed with ReceiveTypeError."""
    e = rt.journal[rt.cursor - 1] if rt.cursor > 0 else None
    if e is not None and e.kind == Kind.RECEIVE and e.key[2] != tname and e.outcome is not None:
        rt._diverge(explain_request(rt, rt.cursor - 1, e, Kind.RECEIVE, e.key[:2] + (tname,))
                    + f", and the payload received then (of class {type(payload).__qualname__})"
                    " is not one")


def explain_session(rt: "FlowRuntime", n: int, recorded: Party, now: Party) -> str:
    return (f"{_head(rt, rt.cursor)}, at {location()}: session {n} was opened to "
            f"{recorded.name}, the code now opens it to {now.name}; the peer changed: "
            f"recorded {recorded.name}, now {now.name}")


def explain_end(rt: "FlowRuntime", exc: Optional[BaseException]) -> str:
    """The flow returned or raised before reaching its pending request."""
    rest = [e for e in rt.journal[rt.cursor:] if e.kind != Kind.CLOCK]
    pending = rt.journal[-1]
    where = _pending_location(rt)
    if exc is None:
        code = getattr(type(rt.logic).call, "__code__", None)
        at = f" ({code.co_filename}:{code.co_firstlineno})" if code is not None else ""
        how = f"call() of {type(rt.logic).__qualname__}{at} returned"
    else:
        tb = exc.__traceback__
        last = None
        while tb is not None:
            if os.path.abspath(tb.tb_frame.f_code.co_filename) not in _PLUMBING:
                last = tb
            tb = tb.tb_next
        at = f" at {last.tb_frame.f_code.co_filename}:{last.tb_lineno}" if last else ""
        how = f"it raised {type(exc).__name__}: {exception_text(exc)}{at}"
    return (f"{_head(rt, rt.cursor)}: {how} with {len(rest)} recorded step(s) still to "
            f"come, up to its pending request '{pending.describe()}'{where}; a step is "
            f"missing: the code skips the recorded step '{rest[0].describe() if rest else pending.describe()}'")


def code_change(flow_class: str, fingerprint: Optional[dict], logic: Any) -> str:
    """`` (the code of X changed since this checkpoint was written)`` when the checkpoint's
    code ``fingerprint`` records another digest for ``flow_class`` than the class of
    ``logic`` has now, or for a sub-flow class on its stack than that class (looked up
    among the modules already imported) has now, else ``""``: after an upgrade, the
    likely cause of a divergence."""
    changed = []
    for name, stored in (fingerprint or {}).items():
        cls = type(logic) if name == flow_class else _loaded_class(name)
        if stored and cls is not None and stored != code_digest(cls):
            changed.append(name)
    if not changed:
        return ""
    return f" (the code of {', '.join(changed)} changed since this checkpoint was written)"


def _loaded_class(name: str) -> Optional[type]:
    """The class ``module.Qual.Name`` if its module is imported (none is imported here)."""
    module, _, qual = name.rpartition(".")
    while module and module not in sys.modules:   # a nested class: Outer.Inner
        module, _, head = module.rpartition(".")
        qual = f"{head}.{qual}"
    obj: Any = sys.modules.get(module)
    for part in qual.split("."):
        obj = getattr(obj, part, None)
    return obj if isinstance(obj, type) else None


def parked_reason(diverged: str, code_changed: str = "") -> str:
    """Why a diverged flow is parked (``FlowInfo.error``, dumps, the replay check):
    ``diverged`` as an `explain_*` function worded it, then `code_change`'s note."""
    return f"{NonDeterminismError.__name__}: {diverged}{code_changed}"


def _pending_location(rt: "FlowRuntime") -> str:
    """Where the pending request was made on the first run, from the stored snapshot."""
    store = getattr(rt.sched, "store", None)
    if store is None:
        return ""
    try:
        snap = store.snapshot(rt.flow_id)
    except Exception:  # noqa: BLE001 - a diagnostic only
        return ""
    if not snap:
        return ""
    fr = frames_mod.public(snap[-1:])[0]   # a location, or a frame with its locals
    return f" (made at {fr.get('file')}:{fr.get('line')} in {fr.get('function')})"


# ---------------------------------------------------------------------- payloads
def reordered_only(recorded: bytes, payload: bytes) -> bool:
    """Whether a replayed send's payload differs from the recorded one only in the order
    of its maps' entries: the same values, keys in another order. A dict built by
    iterating a set of strings comes out in another order in every process (the hash
    seed), and a replay in a new process must not park the flow for it. The recorded
    bytes must encode again as they were, so a class whose fields changed since (equal
    values, other bytes) is still told apart (`_payload_detail`)."""
    try:
        old = wire.decode(recorded)
        if wire.encode(old) != recorded:
            return False
        return wire.canonical_encode(old) == wire.canonical_encode(wire.decode(payload))
    except Exception:  # noqa: BLE001 - undecodable now: not the same payload, explained later
        return False


def _payload_detail(recorded: Entry, payload: Optional[bytes]) -> str:
    old = recorded.sent
    if not isinstance(old, bytes) or payload is None:
        return ("the payload differs (the recorded one was too large to keep, so only its "
                "digest is known)")
    try:
        a, b = wire.decode(old), wire.decode(payload)
    except Exception as exc:  # noqa: BLE001 - a class no longer decodable, say
        return f"the payload differs (the recorded one cannot be decoded now: {exc})"
    diff = first_difference(a, b)
    if diff is None:
        # Equal once decoded, yet other bytes: a class of it encodes other fields now (one
        # added with a default reads back with that default from the recorded bytes).
        return ("the payload encodes differently, with equal values: a class in it "
                f"({_type_name(b)}, or one it holds) has other fields than when the flow sent "
                "it, or it holds a set that an earlier greenflow sent unordered; a payload "
                "class that changes its fields needs the node drained before the upgrade "
                "(docs: Upgrading flow code)")
    path, x, y = diff
    name = _last_name(path)
    shown_x, shown_y = _show(name, x, path), _show(name, y, path)
    text = f"the payload differs at {path}: recorded {shown_x}, now {shown_y}"
    if x is MISSING:
        hint = (f"{name} is a field its class gained since the flow sent it: a payload class "
                "that gains a field changes every payload of it already sent, so drain the "
                "node before such an upgrade (docs: Upgrading flow code)")
    else:
        hint = hint_for(x, y)
        if not hint and type(x) is not type(y) and y is not MISSING:
            hint = (f"the recorded value's class is {_type_name(x)}, the code now sends "
                    f"{_type_name(y)}")
    return f"{text}. {hint}" if hint else text


def _type_name(value: Any) -> str:
    t = type(value)
    return f"{t.__module__}.{t.__qualname__}"


def _last_name(path: str) -> str:
    m = re.findall(r"[A-Za-z_][A-Za-z0-9_]*|\[[^\]]*\]", path)
    return m[-1].strip("[]'\"") if m else path


def _show(name: str, value: Any, path: str) -> str:
    if any(frames_mod.denied_name(part) for part in re.findall(r"[A-Za-z_][A-Za-z0-9_]*", path)):
        return "<redacted>"
    return frames_mod.short_repr(name, value)


class _Missing:
    """A field a decoded object does not have (its class gained it since it was sent)."""

    def __repr__(self) -> str:
        return "<missing>"


MISSING = _Missing()


def _fields(obj: Any) -> Optional[dict]:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        own = getattr(obj, "__dict__", None)
        if isinstance(own, dict):   # not the class's default for a field the object lacks
            return {f.name: own.get(f.name, MISSING) for f in dataclasses.fields(obj)}
        return {f.name: getattr(obj, f.name, MISSING) for f in dataclasses.fields(obj)}
    d = getattr(obj, "__dict__", None)
    if isinstance(d, dict):
        return d
    slots = [s for k in type(obj).__mro__ for s in getattr(k, "__slots__", ())]
    if slots:
        return {s: getattr(obj, s, None) for s in slots if isinstance(s, str)}
    return None


def first_difference(a: Any, b: Any, path: str = "payload",
                     depth: int = 0) -> Optional[tuple[str, Any, Any]]:
    """The path of the first field where ``a`` and ``b`` differ, and both values there."""
    if type(a) is not type(b):
        return (path, a, b)
    if depth >= _MAX_DEPTH:
        return None if _equal(a, b) else (path, a, b)
    if isinstance(a, dict):
        for k in list(a)[:_MAX_ITEMS]:
            if k not in b:
                return (f"{path}[{k!r}]", a[k], "<missing>")
            d = first_difference(a[k], b[k], f"{path}[{k!r}]", depth + 1)
            if d is not None:
                return d
        for k in b:
            if k not in a:
                return (f"{path}[{k!r}]", "<missing>", b[k])
        return None
    if isinstance(a, (list, tuple)):
        for i, (x, y) in enumerate(zip(a[:_MAX_ITEMS], b[:_MAX_ITEMS])):
            d = first_difference(x, y, f"{path}[{i}]", depth + 1)
            if d is not None:
                return d
        if len(a) != len(b):
            return (f"len({path})", len(a), len(b))
        return None
    if isinstance(a, (str, bytes, int, float, complex, bool, type(None), uuid.UUID,
                      datetime.date, datetime.time, datetime.timedelta)):
        return None if _equal(a, b) else (path, a, b)
    fa, fb = _fields(a), _fields(b)
    if fa is not None and fb is not None:
        d = first_difference(fa, fb, path, depth)
        if d is not None:
            p, x, y = d
            return (re.sub(r"^(" + re.escape(path) + r")\['([^']*)'\]", r"\1.\2", p), x, y)
        return None
    return None if _equal(a, b) else (path, a, b)


def _equal(a: Any, b: Any) -> bool:
    try:
        return bool(a == b)
    except Exception:  # noqa: BLE001
        return False


# ---------------------------------------------------------------------- hints
_UUID_RE = re.compile(r"^[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?"
                      r"[0-9a-fA-F]{12}$")
_HEX_RE = re.compile(r"^[0-9a-fA-F]{16,}$")


def _looks_like_id(v: Any) -> bool:
    if isinstance(v, uuid.UUID):
        return True
    if isinstance(v, str):
        return bool(_UUID_RE.match(v) or _HEX_RE.match(v))
    return False


def _looks_like_clock(v: Any) -> bool:
    if isinstance(v, (datetime.datetime, datetime.date)):
        return True
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        for scale in (1, 1e3, 1e6, 1e9):   # seconds, ms, us, ns since the epoch
            if 9.0e8 * scale <= v <= 4.2e9 * scale:
                return True
    return False


def _looks_random(v: Any) -> bool:
    if isinstance(v, float):
        return 0.0 <= v < 1.0
    if isinstance(v, bytes):
        return len(v) >= 8
    return False


def hint_for(a: Any, b: Any) -> str:
    """Why two values a replay produced differently may differ."""
    if _looks_like_id(a) and _looks_like_id(b):
        return ("Hint: these look like ids made afresh on replay. uuid.uuid4(), uuid1(), "
                "os.urandom and secrets replay by themselves inside a flow; an id from "
                "elsewhere (another library's generator, a C extension, a value made "
                "outside the flow) does not: make it with self.uuid() or pass it in")
    if _looks_like_clock(a) and _looks_like_clock(b):
        return ("Hint: these look like clock readings. time.time(), time.time_ns() and "
                "datetime.now() replay by themselves inside a flow; other clocks "
                "(time.monotonic, a library's own clock) do not: use self.now()")
    if _looks_random(a) and _looks_random(b):
        return ("Hint: these look like random values. The random module, os.urandom and "
                "secrets replay by themselves inside a flow; another generator (numpy, a "
                "generator seeded outside the flow) does not: use self.random() or "
                "self.side_effect()")
    return ""
