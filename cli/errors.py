"""The errors the command line reports, with their exit codes.

Every expected failure is a `click.ClickException` subclass: click prints
``Error: <message>`` to stderr and exits with the class's ``exit_code``. Anything else
that escapes a command is a bug in greenflow (or in the flow being run) and keeps its
traceback.

| exit code | meaning |
|---|---|
| 0 | success |
| 1 | the flow or sample ran and failed, or a component is missing |
| 2 | the command line is wrong: unknown target, bad ``--arg``, flow not ``@startable``, not a node directory (click's own usage errors use 2 too) |
"""
from __future__ import annotations

from typing import Any

import click


class CliError(click.ClickException):
    """Base of the command line's own errors."""

    exit_code = 1


class UsageProblem(CliError):
    """The command line asks for something that cannot be done as written; fix the
    command and run it again."""

    exit_code = 2


class UnknownTarget(UsageProblem):
    """``greenflow run TARGET`` names no sample, module or flow class that exists."""


class BadFlowArgument(UsageProblem):
    """An ``--arg NAME=VALUE`` is malformed, unknown, missing or of the wrong type."""


class FlowNotStartable(UsageProblem):
    """The flow class is not marked ``@startable`` (the message is `NotStartable`'s)."""


class NotANodeDirectory(UsageProblem):
    """``--node DIR`` does not hold a node (no ``identity.name``)."""


class FlowFailed(CliError):
    """The flow or sample ran and ended with an error, or never finished."""


class ComponentMissing(CliError):
    """A part of greenflow the command needs is not installed (e.g. the benchmarks)."""


def exit_code_of(value: Any) -> int:
    """The exit code for what an entry point returned or put in ``SystemExit``: None is
    0, an int is itself, anything else is printed to stderr and gives 1 (as Python does)."""
    if value is None:
        return 0
    if isinstance(value, int):
        return value
    click.echo(str(value), err=True)
    return 1
