"""The journal: what a flow asked the runtime for, and what came back.

A checkpoint does not hold the greenlet's stack (it cannot be pickled). It holds the
flow object as it was at start plus this journal; restoring a flow is re-running
``call()`` from the top and answering each request from the journal, with no I/O,
until the *pending* entry (the one the flow was waiting on at its last commit). From
there the flow is live again.

Each entry has a ``kind`` and a ``key`` that are compared on replay: a difference means
the code now asks for something else than it did, which is a `NonDeterminismError`.
Outcomes that are errors (a peer's exception, an ended session, a timeout) are recorded
like payloads, so ``try/except`` paths replay the same way.
"""
from __future__ import annotations

from typing import Optional



class Kind:
    """The kinds of journal entry, named once. Plain strings, as stored: a store written
    by any version reads back the same, and comparing kinds stays a string compare."""

    __slots__ = ()
    RECEIVE = "receive"
    SEND = "send"
    CLOSE = "close"
    INFO = "info"              # counterparty_flow_info
    SLEEP = "sleep"
    NOW = "now"                # FlowLogic.now()
    CLOCK = "clock"            # the clock readings of one stretch of flow code
    SIDE_EFFECT = "side_effect"
    EXTERNAL = "external"
    SERVICE = "service"        # a @journaled service call
    VERSIONED = "versioned"
    RANDOM = "random"
    UUID = "uuid"


class Outcome:
    """Tags of an entry's outcome, its first item (``("data", payload, seq)``,
    ``("timeout",)``...), named once. Stored as these strings, like the kinds."""

    __slots__ = ()
    OK = "ok"
    DATA = "data"          # (DATA, payload, seq): what a receive got
    STORED = "stored"      # (STORED, seq): a large payload kept aside (storage.payloads)
    TIMEOUT = "timeout"
    END = "end"            # (END, why): the session ended
    ERROR = "error"        # (ERROR, class, message, error id): the peer flow failed
    REJECT = "reject"      # (REJECT, reason): the peer refused the session
    EXC = "exc"            # (EXC, exception): a side effect or external call raised


#: The outcome of a request that answers nothing but "done" (a send, a sleep): one
#: shared tuple, so a resident flow's journal holds no container per entry for it.
OK = (Outcome.OK,)
TIMEOUT = (Outcome.TIMEOUT,)


# Entry kinds that suspend the flow (the others are recorded inline).
SUSPENDING = frozenset({Kind.RECEIVE, Kind.SLEEP, Kind.EXTERNAL, Kind.INFO})


class Entry:
    """One journal record. ``outcome`` is None while the entry is pending."""

    # ``sent``: a send's encoded payload (when small), kept so that a replay sending
    # something else can name the field that changed. A slot rather than part of the
    # outcome: the outcome stays the shared constant ("ok",), so a resident flow's
    # journal holds no extra container per send for the cyclic collector to scan.
    __slots__ = ("kind", "key", "outcome", "deadline", "sent")

    def __init__(self, kind: str, key: tuple, outcome: Optional[tuple] = None,
                 deadline: Optional[float] = None, sent: Optional[bytes] = None) -> None:
        self.kind = kind
        self.key = key
        self.outcome = outcome
        self.deadline = deadline
        self.sent = sent

    def __getstate__(self) -> tuple:
        if self.sent is None:
            return (self.kind, self.key, self.outcome, self.deadline)
        return (self.kind, self.key, self.outcome, self.deadline, self.sent)

    def __setstate__(self, state: tuple) -> None:
        if len(state) == 4:
            self.kind, self.key, self.outcome, self.deadline = state
            self.sent = None
        else:
            self.kind, self.key, self.outcome, self.deadline, self.sent = state

    def __repr__(self) -> str:
        return f"Entry({self.describe()}, outcome={self.outcome!r})"

    def matches(self, kind: str, key: tuple) -> bool:
        return self.kind == kind and self.key == key

    def describe(self) -> str:
        return describe(self.kind, self.key)


def describe(kind: str, key: tuple) -> str:
    """Human words for a request, used in NonDeterminismError messages and dumps."""
    if kind == Kind.RECEIVE:
        sid, peer, type_name = key
        return f"receive {type_name} from {peer}"
    if kind == Kind.SEND:
        sid, peer, dg = key
        return f"send to {peer} (payload digest {dg.hex()[:12]})"
    if kind == Kind.CLOSE:
        return f"close session with {key[1]}"
    if kind == Kind.INFO:
        return f"counterparty_flow_info of {key[1]}"
    if kind == Kind.SLEEP:
        return f"sleep {key[0]}s"
    if kind == Kind.CLOCK:
        return "read the clock (time.time, datetime.now ...)"
    if kind in (Kind.SIDE_EFFECT, Kind.EXTERNAL, Kind.SERVICE):
        return f"{kind} {key[0]}"
    if kind == Kind.VERSIONED and key:
        return f"versioned({key[0]!r})"
    return kind
