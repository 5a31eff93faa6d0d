"""Progress trackers: the named steps a flow reports while it runs.

A flow class declares ``progress_tracker = ProgressTracker(STEP_A, STEP_B)`` as a class
attribute; `FlowLogic` gives every instance its own copy (see
`greenflow.flows.flow_logic`), so two concurrent flows never share a current step. A sub-flow's
tracker nests under the step its parent is on: the node shows the whole path
(``"Offering / Collecting signatures"``).
"""
from __future__ import annotations

import copy
from typing import Callable, Optional

from greenflow.flows.context import current_runtime_or_none


#: The longest label a step may have. A step's label is stored with every checkpoint of a
#: flow on it and shown in listings, dumps and progress streams.
MAX_STEP_LABEL = 1_000


class Step:
    """One named step. Steps compare by label."""

    def __init__(self, label: str) -> None:
        if not isinstance(label, str) or not 0 < len(label) <= MAX_STEP_LABEL:
            raise (ValueError if isinstance(label, str) else TypeError)(
                f"a step's label is text of 1 to {MAX_STEP_LABEL:,} characters, got "
                + (f"{len(label):,} characters" if isinstance(label, str)
                   else type(label).__qualname__))
        self.label = label

    def __repr__(self) -> str:
        return f"Step({self.label!r})"

    # By label, not identity: a flow restored from a checkpoint holds unpickled copies
    # of the steps its module defines.
    def __eq__(self, other: object) -> bool:
        return isinstance(other, Step) and other.label == self.label

    def __hash__(self) -> int:
        return hash(self.label)

    def __str__(self) -> str:
        return self.label


class ProgressTracker:
    """The ordered steps of a flow and which one it is on."""

    UNSTARTED = Step("Unstarted")
    DONE = Step("Done")

    def __init__(self, *steps: Step) -> None:
        for step in steps:
            if not isinstance(step, Step):
                raise TypeError(f"ProgressTracker takes Steps (Step(\"Offering\")), not "
                                f"{type(step).__qualname__}")
        self.steps: tuple[Step, ...] = tuple(steps)
        self._current: Step = ProgressTracker.UNSTARTED
        # Set by the runtime while the owning flow runs; never pickled.
        self._listener: Optional[Callable[["ProgressTracker"], None]] = None

    @property
    def current_step(self) -> Step:
        return self._current

    @current_step.setter
    def current_step(self, step: Step) -> None:
        if step is not ProgressTracker.DONE and step is not ProgressTracker.UNSTARTED \
                and not (isinstance(step, Step) and step.label in self._labels()):
            raise ValueError(f"{step!r} is not a step of this tracker {self.steps!r}")
        self._current = step
        listener = self._listener
        if listener is None:
            rt = current_runtime_or_none()
            if rt is not None:
                rt.on_progress(self)
        else:
            listener(self)

    def _labels(self) -> frozenset:
        # Steps compare by label, so membership is a label lookup: one set probe instead
        # of a Python-level Step.__eq__ call per step listed before the one set.
        labels = self.__dict__.get("_step_labels")
        if labels is None:
            labels = self._step_labels = frozenset(s.label for s in self.steps)
        return labels

    @property
    def label(self) -> Optional[str]:
        """The current step's label, or None before the first step."""
        return None if self._current is ProgressTracker.UNSTARTED else self._current.label

    def copy(self) -> "ProgressTracker":
        """A fresh tracker with the same steps (shared Step objects, own position).

        Every flow instance with a tracker gets one (a trade makes ten), so a plain
        tracker is copied by its dict, ~4x cheaper than `copy.copy`; a subclass, which
        may define its own copying, still goes through `copy.copy`."""
        if type(self) is ProgressTracker:
            new = ProgressTracker.__new__(ProgressTracker)
            d = new.__dict__
            d.update(self.__dict__)
        else:
            new = copy.copy(self)
            d = new.__dict__
        d["_current"] = ProgressTracker.UNSTARTED
        d["_listener"] = None
        return new

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_listener"] = None
        state.pop("_step_labels", None)   # derived from steps; not worth storing
        return state

    def __repr__(self) -> str:
        return f"ProgressTracker(current={self.label!r}, steps={[s.label for s in self.steps]})"
