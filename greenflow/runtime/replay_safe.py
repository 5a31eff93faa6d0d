"""Ordinary Python sources of non-determinism, made replay-safe inside flows.

A flow is restored by running ``call()`` again from the top, so every value it draws
must come back the same on replay. Flow authors write ordinary Python
(``uuid.uuid4()``, ``os.urandom``, ``secrets``, ``random.random()``, ``time.time()``,
``datetime.now()``) and should not have to know that; so while a flow's greenlet runs,
these functions answer from the flow's journal:

* **randomness** (``os.urandom``, ``secrets.*``, ``random.SystemRandom``, ``uuid4``,
  every function of the ``random`` module, ``random.Random()`` with no seed) comes from a per-flow stream keyed by a
  32-byte seed drawn from the OS on first use and kept in the flow's checkpoint header.
  Replaying the same code draws the same values in the same order, so nothing but the
  seed is stored, however many values a flow draws (os.urandom / secrets output is a
  SHAKE-256 stream keyed by the seed: unpredictable to anyone without the node's store,
  which holds the flow's data anyway);
* **clocks** (``time.time``, ``time.time_ns``, ``datetime.now`` / ``utcnow`` /
  ``date.today``, ``uuid1``'s timestamp) are the node's clock (virtual on MockNetwork),
  recorded in one journal entry per stretch of code between two requests, holding every
  reading of that stretch: one small entry, written with the next checkpoint, no commit
  of its own.

Everywhere else (other threads, the scheduler, the node, code outside a flow) the real
functions run: each wrapper first checks whether the current greenlet is a flow's
(`greenlet.getcurrent()` and a type test, ~0.1 us). Inside a flow, code that greenflow
itself runs only on a first run (the live part of ``side_effect`` and service calls,
its logging) also sees the real functions, so replay draws exactly what the first run
drew. ``time.monotonic`` and ``time.perf_counter`` stay real: they measure durations and
mean nothing across a restart.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import logging
import os
import random as _random
import sys
import time as _time
import uuid as _uuid
from typing import TYPE_CHECKING, Any, Callable, Optional

import greenlet

from greenflow.runtime.journal import Entry, Kind, Outcome
from greenflow.runtime.traps import FlowGreenlet

if TYPE_CHECKING:
    from greenflow.runtime.flow_runtime import FlowRuntime

_getcurrent = greenlet.getcurrent
_getframe = sys._getframe


def _original(module: Any, name: str) -> Any:
    fn = getattr(module, name)
    return getattr(fn, "__gf_real__", fn)


#: The real functions, whatever is installed (SystemClock and the runtime use these).
real_time: Callable[[], float] = _original(_time, "time")
real_time_ns: Callable[[], int] = _original(_time, "time_ns")
real_sleep: Callable[[float], None] = _original(_time, "sleep")
#: The functions of ``time`` that read the clock when given no time: in a flow they read
#: the flow's clock (``time.strftime("%Y")`` agreed with ``datetime.now()`` only live).
_CALENDAR = ("localtime", "gmtime", "ctime", "asctime", "strftime")
_REAL_CALENDAR: dict[str, Callable] = {n: _original(_time, n) for n in _CALENDAR}
real_urandom: Callable[[int], bytes] = _original(os, "urandom")
_real_sys_urandom: Callable[[int], bytes] = _original(_random, "_urandom")
_real_uuid1: Callable[..., _uuid.UUID] = _original(_uuid, "uuid1")

CLOCK = Kind.CLOCK   # journal entry kind of the clock readings of one stretch of flow code

# Modules whose own use of the clock is never the flow's: logging stamps every record,
# and a flow's log calls are silenced on replay, so those readings are not journalled.
_PASSTHROUGH_GLOBALS = {id(logging.__dict__)}


def _flow_runtime() -> Optional["FlowRuntime"]:
    """The runtime of the flow running on this greenlet, unless it (or greenflow on its
    behalf) asked for the real functions."""
    g = _getcurrent()
    if type(g) is not FlowGreenlet:
        return None
    rt = g.gf_runtime
    if rt is None or rt.raw:
        return None
    return rt


class FlowEntropy:
    """One run's view of a flow's recorded randomness and clock readings. Rebuilt from
    nothing at every replay from the top (the seed is in the checkpoint header)."""

    __slots__ = ("key", "counter", "rng", "clock_entry", "clock_at", "clock_i", "old_paths")

    def __init__(self, seed: Optional[bytes]) -> None:
        self.key = seed   # None until the flow first draws randomness
        self.counter = 0
        self.rng: Optional[_random.Random] = None
        self.clock_entry: Optional[Entry] = None
        self.clock_at = -1
        self.clock_i = 0
        #: Change ids `versioned` answered False in this run (see `RecordedValues.versioned`).
        self.old_paths: Optional[set[str]] = None

    def bytes(self, n: int) -> bytes:
        n = int(n)
        if n < 0:
            raise ValueError("negative argument not allowed")
        self.counter += 1
        return hashlib.shake_256(self.key + self.counter.to_bytes(8, "big")).digest(n) if n else b""  # type: ignore[operator]

    def random(self) -> _random.Random:
        if self.rng is None:
            self.rng = _random.Random(hashlib.sha256(b"random module:" + self.key).digest())  # type: ignore[operator]
        return self.rng


def run_state(rt: "FlowRuntime") -> FlowEntropy:
    """This run's `FlowEntropy` of ``rt`` (made on first use; none is stored)."""
    st = rt.nd
    if st is None:
        st = rt.nd = FlowEntropy(rt.cp.seed)
    return st


def entropy(rt: "FlowRuntime") -> FlowEntropy:
    """The flow's randomness; its seed is drawn on the flow's first draw (a flow that
    never draws stores none) and kept in the checkpoint header from the next commit."""
    st = run_state(rt)
    if st.key is None:
        seed = rt.cp.seed
        if seed is None:
            seed = rt.cp.seed = real_urandom(32)
        st.key = seed
    return st


def clock_reading(rt: "FlowRuntime") -> float:
    """The clock as this stretch of flow code first saw it: read live and recorded, or
    answered from the journal on replay."""
    st = run_state(rt)
    journal = rt.journal
    if st.clock_at == rt.cursor and st.clock_entry is not None:
        values = st.clock_entry.outcome[1]  # type: ignore[index]
        if st.clock_i < len(values):
            v = values[st.clock_i]
        elif rt.cursor >= len(journal) and journal and journal[-1] is st.clock_entry:
            if rt.io_refused is not None:
                return real_time()   # being unwound: nothing is recorded
            rt.check_io_allowed()
            v = rt.sched.clock.now()
            values.append(v)
        else:   # replay reads the clock more often than the first run did: last reading
            v = values[-1]
        st.clock_i += 1
        return v
    if rt.io_refused is not None and rt.cursor >= len(journal):
        return real_time()   # being unwound (killed, hibernated): nothing is recorded
    if rt.cursor < len(journal):
        e = journal[rt.cursor]
        if e.kind != CLOCK:
            rt.diverge_on_clock(e)
        rt.cursor += 1
        st.clock_entry, st.clock_at, st.clock_i = e, rt.cursor, 1
        return e.outcome[1][0]  # type: ignore[index]
    rt.check_io_allowed()
    v = rt.sched.clock.now()
    e = Entry(CLOCK, (), (Outcome.OK, [v]))
    journal.append(e)
    rt.cursor += 1
    st.clock_entry, st.clock_at, st.clock_i = e, rt.cursor, 1
    return v


# ---------------------------------------------------------------------- the wrappers
def _wrap(real: Callable, in_flow: Callable) -> Callable:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            g = _getcurrent()
        except RuntimeError:   # the interpreter is exiting: no flow runs any more
            return real(*args, **kwargs)
        if type(g) is not FlowGreenlet:
            return real(*args, **kwargs)
        rt = g.gf_runtime
        if rt is None or rt.raw:
            return real(*args, **kwargs)
        return in_flow(rt, *args, **kwargs)

    wrapper.__gf_real__ = real  # type: ignore[attr-defined]
    wrapper.__name__ = getattr(real, "__name__", "wrapper")
    wrapper.__qualname__ = getattr(real, "__qualname__", wrapper.__name__)
    wrapper.__doc__ = getattr(real, "__doc__", None)
    return wrapper


def _time_in_flow(rt: "FlowRuntime") -> float:
    if id(_getframe(2).f_globals) in _PASSTHROUGH_GLOBALS:
        return real_time()
    return clock_reading(rt)


def _time_ns_in_flow(rt: "FlowRuntime") -> int:
    if id(_getframe(2).f_globals) in _PASSTHROUGH_GLOBALS:
        return real_time_ns()
    return round(clock_reading(rt) * 1e9)


def _calendar_in_flow(name: str) -> Callable:
    real, real_localtime = _REAL_CALENDAR[name], _REAL_CALENDAR["localtime"]
    if name in ("asctime", "strftime"):   # (a struct_time argument, or the local time now)
        def in_flow(rt: "FlowRuntime", *args: Any) -> Any:
            want = 0 if name == "asctime" else 1
            if len(args) > want:
                return real(*args)
            return real(*args, real_localtime(clock_reading(rt)))
    else:
        def in_flow(rt: "FlowRuntime", secs: Any = None) -> Any:
            return real(clock_reading(rt) if secs is None else secs)
    return in_flow


#: The code locations whose ``time.sleep`` in a flow was reported (once each).
_SLEEPS_SEEN: set[tuple[str, int]] = set()


def _sleep_in_flow(rt: "FlowRuntime", seconds: float) -> None:
    """``time.sleep`` in flow code blocks the node's one scheduler thread, and with it
    every flow of the node, for as long as it sleeps. It still sleeps (turning it into a
    suspension could suspend a library holding a lock), but says so once per place, with
    what to write instead. A flow replayed after a restart does not sleep again: nothing
    of the first run's waiting can be seen in what it replays."""
    if rt.replaying:
        return
    if seconds and len(_SLEEPS_SEEN) < 1000:
        f = _getframe(2)
        where = (f.f_code.co_filename, f.f_lineno)
        if where not in _SLEEPS_SEEN:
            _SLEEPS_SEEN.add(where)
            logging.getLogger("greenflow.flow").warning(
                "flow %s (%s) called time.sleep(%s) at %s:%d: that blocks every flow of this "
                "node while it sleeps; use self.sleep(seconds) (a durable timer that "
                "suspends only this flow) or self.run_external for blocking work",
                rt.flow_id, rt.cp.flow_class, seconds, where[0], where[1])
    real_sleep(seconds)


def _urandom_in_flow(rt: "FlowRuntime", n: int) -> bytes:
    return entropy(rt).bytes(n)


def _uuid1_in_flow(rt: "FlowRuntime", node: Optional[int] = None,
                   clock_seq: Optional[int] = None) -> _uuid.UUID:
    """A time-based UUID from the flow's clock and randomness. The node field is random
    (multicast bit set, as RFC 4122 allows) rather than this machine's address, so the
    same id comes back when the flow is replayed on another machine."""
    st = entropy(rt)
    timestamp = round(clock_reading(rt) * 1e7) + 0x01B21DD213814000
    rnd = int.from_bytes(st.bytes(8), "big")
    if clock_seq is None:
        clock_seq = rnd & 0x3FFF
    if node is None:
        node = ((rnd >> 14) & 0xFFFFFFFFFFFF) | 0x010000000000
    time_low = timestamp & 0xFFFFFFFF
    time_mid = (timestamp >> 32) & 0xFFFF
    time_hi_version = (timestamp >> 48) & 0x0FFF
    return _uuid.UUID(fields=(time_low, time_mid, time_hi_version,
                              (clock_seq >> 8) & 0x3F, clock_seq & 0xFF, node), version=1)


def _random_method(name: str) -> Callable:
    def in_flow(rt: "FlowRuntime", *args: Any, **kwargs: Any) -> Any:
        return getattr(entropy(rt).random(), name)(*args, **kwargs)
    return in_flow


_RANDOM_FUNCTIONS = (
    "random", "uniform", "triangular", "randint", "choice", "randrange", "sample",
    "shuffle", "choices", "normalvariate", "lognormvariate", "expovariate",
    "vonmisesvariate", "gammavariate", "gauss", "betavariate", "paretovariate",
    "weibullvariate", "getrandbits", "randbytes", "seed", "getstate", "setstate",
    "binomialvariate")

_FROMTS = _dt.datetime.__dict__["fromtimestamp"]
_installed = False
#: Whether datetime.now()/utcnow() are replay-safe in flows on this interpreter.
datetime_handled = False


def install() -> None:
    """Install the wrappers process-wide (idempotent). Called when the flow runtime is
    imported, i.e. before any flow can run."""
    global _installed
    if _installed:
        return
    _installed = True
    _time.time = _wrap(real_time, _time_in_flow)
    _time.time_ns = _wrap(real_time_ns, _time_ns_in_flow)
    _time.sleep = _wrap(real_sleep, _sleep_in_flow)
    for name in _CALENDAR:
        setattr(_time, name, _wrap(_REAL_CALENDAR[name], _calendar_in_flow(name)))
    os.urandom = _wrap(real_urandom, _urandom_in_flow)
    # SystemRandom (and so secrets.*) reads the OS through random._urandom.
    _random._urandom = _wrap(_real_sys_urandom, _urandom_in_flow)  # type: ignore[attr-defined]
    _uuid.uuid1 = _wrap(_real_uuid1, _uuid1_in_flow)
    # random.Random() and random.seed() with no seed read the OS in C, past os.urandom.
    real_seed = _random.Random.seed

    def seed(self: _random.Random, a: Any = None, version: int = 2) -> None:
        if a is None and not isinstance(self, _random.SystemRandom):
            rt = _flow_runtime()
            if rt is not None:
                a = int.from_bytes(entropy(rt).bytes(32), "big")
        real_seed(self, a, version)

    seed.__gf_real__ = real_seed  # type: ignore[attr-defined]
    seed.__doc__ = real_seed.__doc__
    _random.Random.seed = seed  # type: ignore[method-assign]
    for name in _RANDOM_FUNCTIONS:
        real = getattr(_random, name, None)
        if real is not None and not hasattr(real, "__gf_real__"):
            setattr(_random, name, _wrap(real, _random_method(name)))
    _install_datetime()
    _rebind_imported()


# Modules that hold the real functions on purpose.
_KEEP_REAL = frozenset({__name__, "greenflow.runtime.clock"})


def _rebind_imported() -> None:
    """Modules imported before this one may hold the real functions under their own
    names (``from time import time``, ``from os import urandom``, ``from random import
    randint``: PEP 8 puts such imports before greenflow's). Point those names at the
    wrappers, which behave exactly as before outside flows. Modules imported later get
    the wrappers anyway."""
    swap: dict[int, tuple[Any, Any]] = {}
    for module, names in ((_time, ("time", "time_ns", "sleep", *_CALENDAR)), (os, ("urandom",)),
                          (_uuid, ("uuid1",)), (_random, _RANDOM_FUNCTIONS)):
        for name in names:
            w = getattr(module, name, None)
            real = getattr(w, "__gf_real__", None)
            if real is not None:
                swap[id(real)] = (real, w)
    for mod in list(sys.modules.values()):
        d = getattr(mod, "__dict__", None)
        if not isinstance(d, dict) or mod is _random or d.get("__name__") in _KEEP_REAL:
            continue
        for k, v in list(d.items()):
            hit = swap.get(id(v))
            if hit is not None and hit[0] is v:
                d[k] = hit[1]


def _install_datetime() -> None:
    """``datetime.now()`` and ``utcnow()`` read the OS clock in C, past ``time.time``, and
    ``datetime`` is a built-in type whose attributes cannot be assigned. Its method table
    is replaced in place instead: the class stays the very same object, and code outside
    flows gets the original method's result through one extra Python call (~0.1 us).
    ``date.today()`` already goes through ``time.time``. Where this cannot be done (not
    CPython), the methods stay as they are; docs/replay.md says to use ``self.now()``."""
    global datetime_handled
    try:
        import ctypes
        import gc
        cls = _dt.datetime
        d = gc.get_referents(cls.__dict__)[0]
        if not isinstance(d, dict):
            return
        real_now, real_utcnow = d["now"], d["utcnow"]
        if getattr(real_now, "__gf_real__", None) is not None:
            datetime_handled = True
            return

        def now(klass: type, tz: Any = None) -> Any:
            rt = _flow_runtime()
            if rt is None:
                return real_now.__get__(None, klass)(tz)
            return _FROMTS.__get__(None, klass)(clock_reading(rt), tz)

        def utcnow(klass: type) -> Any:
            rt = _flow_runtime()
            if rt is None:
                return real_utcnow.__get__(None, klass)()
            # fromtimestamp in UTC, made naive: what utcfromtimestamp gives, without its
            # deprecation warning on Python 3.12+.
            return _FROMTS.__get__(None, klass)(clock_reading(rt), _dt.timezone.utc).replace(tzinfo=None)

        now.__doc__ = real_now.__doc__
        utcnow.__doc__ = real_utcnow.__doc__
        new_now, new_utcnow = classmethod(now), classmethod(utcnow)
        new_now.__gf_real__ = real_now  # type: ignore[attr-defined]
        new_utcnow.__gf_real__ = real_utcnow  # type: ignore[attr-defined]
        d["now"], d["utcnow"] = new_now, new_utcnow
        ctypes.pythonapi.PyType_Modified(ctypes.py_object(cls))
        datetime_handled = True
    except Exception:  # noqa: BLE001 - not CPython, or a layout this code does not know
        datetime_handled = False
