"""Flows for the console tests (tests/test_console.py): the node processes import this
module as an app (the tests put tests/ on their PYTHONPATH)."""
from __future__ import annotations

import os

from greenflow import FlowLogic, ProgressTracker, Step, startable

PACKING = Step("Packing the parcel")
WAITING = Step("Waiting for the courier")
SHIPPING = Step("Shipping")
ONE, TWO, THREE = Step("Step one"), Step("Step two"), Step("Step three")


@startable
class Napper(FlowLogic):
    """Sleeps a long while holding a named local, for the stack view."""

    progress_tracker = ProgressTracker(PACKING, WAITING, SHIPPING)

    def __init__(self, parcel: str = "blue box", seconds: float = 600.0) -> None:
        self.parcel, self.seconds = parcel, seconds

    def call(self) -> str:
        self.progress_tracker.current_step = PACKING
        parcel_label = f"parcel:{self.parcel}"
        api_token = "s3cr3t-token-value"  # redacted in the stack view
        self.progress_tracker.current_step = WAITING
        self.sleep(self.seconds)
        self.progress_tracker.current_step = SHIPPING
        return parcel_label + str(len(api_token))


@startable
class Stepper(FlowLogic):
    """Walks through three steps with a durable pause between them."""

    progress_tracker = ProgressTracker(ONE, TWO, THREE)

    def __init__(self, pause: float = 2.0) -> None:
        self.pause = pause

    def call(self) -> int:
        for step in (ONE, TWO, THREE):
            self.progress_tracker.current_step = step
            self.sleep(self.pause)
        return 3


@startable
class Fickle(FlowLogic):
    """Asks for something else once ``marker`` exists: replayed after that (a restart),
    it no longer matches its journal and the hospital parks it (NonDeterminismError),
    as after deploying incompatible code."""

    def __init__(self, marker: str, seconds: float = 2.0) -> None:
        self.marker, self.seconds = marker, seconds

    def call(self) -> str:
        if os.path.exists(self.marker):
            self.sleep(0.01)
        self.sleep(self.seconds)
        return "done"
