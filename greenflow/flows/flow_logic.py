"""`FlowLogic`: the base class of every flow.

A flow is ordinary blocking Python: ``call()`` and anything it calls may suspend, with
no ``async`` and no decorators on helpers. A `FlowLogic` instance is pickled with the
flow's checkpoint, so it must not hold node references: every member below reaches
the node through the runtime of the flow currently running.
"""
from __future__ import annotations

import logging
import random as _random
import uuid as _uuid
from datetime import datetime
from typing import Any, Callable, Generic, Iterable, Optional, TypeVar

from greenflow.party import Party
from greenflow.flows.progress import ProgressTracker
from greenflow.flows.session import FlowSession
from greenflow.flows.context import current_runtime

R = TypeVar("R")


class _TrackerSlot:
    """Gives every flow instance its own copy of the class's progress tracker, even
    when the user's ``__init__`` never calls ``super().__init__()``."""

    def __init__(self, template: Optional[ProgressTracker]) -> None:
        self.template = template

    def __get__(self, obj: Any, owner: type) -> Optional[ProgressTracker]:
        if obj is None:
            return self.template
        d = obj.__dict__
        if "_gf_tracker" not in d:
            d["_gf_tracker"] = self.template.copy() if self.template is not None else None
        return d["_gf_tracker"]

    def __set__(self, obj: Any, value: Optional[ProgressTracker]) -> None:
        obj.__dict__["_gf_tracker"] = value


class FlowLogic(Generic[R]):
    """Subclass and implement `call`; see the flows reference in docs/ for every member."""

    progress_tracker: Optional[ProgressTracker] = _TrackerSlot(None)  # type: ignore[assignment]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        tracker = cls.__dict__.get("progress_tracker")
        if isinstance(tracker, ProgressTracker) or (tracker is None and "progress_tracker" in cls.__dict__):
            cls.progress_tracker = _TrackerSlot(tracker)  # type: ignore[assignment]
        elif "progress_tracker" in cls.__dict__ and not hasattr(type(tracker), "__get__"):
            # (a property or other descriptor is the class's own way; anything else was
            # silently no tracker at all)
            raise TypeError(f"{cls.__qualname__}.progress_tracker is a ProgressTracker(...) "
                            f"or None, not {type(tracker).__qualname__}")

    def call(self) -> R:
        """The flow body; its return value is the flow's result."""
        raise NotImplementedError(f"{type(self).__qualname__} must implement call()")

    # -------------------------------------------------------------- sessions
    def initiate_flow(self, party: Party) -> FlowSession:
        """Open a (lazy) session to ``party``; its responder is the one registered for the
        nearest ``@initiating_flow`` class on the current sub-flow stack."""
        return current_runtime("initiate_flow").new_session(party)

    def receive_all(self, expected_type: Any, sessions: Iterable[FlowSession]) -> list[Any]:
        """Receive one message of ``expected_type`` from each session, in order."""
        rt = current_runtime("receive_all")
        out = []
        for s in list(sessions):   # a loop, not a comprehension: keeps the caller 3 frames up
            out.append(rt.receive(s, expected_type, None))
        return out

    def send_all(self, payload: Any, sessions: Iterable[FlowSession]) -> None:
        rt = current_runtime("send_all")
        for s in list(sessions):
            rt.send(s, payload)

    def sub_flow(self, flow: "FlowLogic[Any]") -> Any:
        """Run ``flow`` inline in this flow and return its result."""
        return current_runtime("sub_flow").sub_flow(flow)

    # -------------------------------------------------------------- durable time and values
    def sleep(self, seconds: float) -> None:
        """Durable timer: survives restarts and wakes at the original deadline."""
        current_runtime("sleep").sleep(seconds)

    def now(self) -> datetime:
        """The current UTC time, recorded once and replayed."""
        return current_runtime("now").now()

    def random(self) -> _random.Random:
        """A `random.Random` seeded once and replayed, so flow code stays deterministic."""
        return current_runtime("random").random()

    def uuid(self) -> _uuid.UUID:
        return current_runtime("uuid").uuid()

    def side_effect(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run ``fn`` inline and record its result (or exception) with the next checkpoint;
        after a restart the recorded result is replayed. A crash before that commit runs
        it again: at-least-once."""
        return current_runtime("side_effect").side_effect(fn, *args)

    def versioned(self, change_id: str) -> bool:
        """Branch safely between old and new code (like Temporal's ``patched``):
        ``if self.versioned("fee-v2"): new() else: old()``. Flows checkpointed before the
        change replay the old branch; new runs, and their replays, take the new one."""
        return current_runtime("versioned").versioned(change_id)

    def run_external(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run slow or blocking I/O on a worker thread while the flow is suspended."""
        return current_runtime("run_external").run_external(fn, *args)

    # -------------------------------------------------------------- context
    @property
    def our_identity(self) -> Party:
        return current_runtime("our_identity").sched.identity

    @property
    def run_id(self) -> str:
        return current_runtime("run_id").flow_id

    @property
    def services(self) -> Any:
        return current_runtime("services").sched.services

    @property
    def logger(self) -> logging.LoggerAdapter:
        return current_runtime("logger").logger
