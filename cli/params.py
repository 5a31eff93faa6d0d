"""Option types shared by the commands.

``click.FloatRange(min=0)`` lets ``nan`` through (every comparison with it is false) and
takes ``inf``: a wait or a timeout of either fails later, as a traceback or a message
about ``nans``, after the command has already acted. `SECONDS` refuses them as a usage
error before anything is done.
"""
from __future__ import annotations

import math
from typing import Any, Optional

import click


class Seconds(click.ParamType):
    """A finite number of seconds, 0 or more."""

    name = "seconds"

    def convert(self, value: Any, param: Optional[click.Parameter], ctx: Optional[click.Context]) -> float:
        try:
            seconds = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number of seconds", param, ctx)
        if not math.isfinite(seconds) or seconds < 0:
            self.fail(f"{value!r} is not a finite number of seconds, 0 or more", param, ctx)
        return seconds


SECONDS = Seconds()


def cannot_write(exc: OSError) -> "click.ClickException":
    """The usage error for a directory the command was told to make or write in and
    cannot (a read-only or pseudo file system, no permission): names the path."""
    from greenflow.cli.errors import UsageProblem

    where = exc.filename or "the directory"
    return UsageProblem(f"cannot create or write {where}: {exc.strerror or exc}")
