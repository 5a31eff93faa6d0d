"""``greenflow``: the command line's root group.

Each command (or command group) lives in its own module under ``greenflow.cli`` and
exposes it as the module attribute ``command``; `COMMAND_MODULES` lists them. To add
one (``node``, ``flow``, ``network``, ...): write ``cli/<name>.py`` with
``command = click.Group("<name>", ...)`` (or ``@click.group("<name>") def command()``),
and add its module path below: one line. Keep heavy imports inside the command
functions so ``greenflow --help`` stays quick; raise the `greenflow.cli.errors`
classes for expected failures.
"""
from __future__ import annotations

import importlib
import logging
import os
import sys
from typing import Callable

import click

from greenflow import __version__

COMMAND_MODULES = (
    "greenflow.cli.run",          # greenflow run sample.NAME | module:FlowClass
    "greenflow.cli.bench",        # greenflow bench [suite]
    "greenflow.cli.checkpoints",  # greenflow checkpoints dump --node DIR
    "greenflow.cli.replay",       # greenflow replay --node DIR [--apps MOD ...]
    "greenflow.cli.network",      # greenflow network bootstrap
    "greenflow.cli.node",         # greenflow node init|start|status|drain|stop
    "greenflow.cli.flow",         # greenflow flow start|list|watch|result|retry|kill (RPC)
    "greenflow.cli.vault",        # greenflow vault query --node DIR --type module:Class
    "greenflow.cli.cluster",      # greenflow cluster up|status (workers on PostgreSQL)
)

LOG_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is when a record is emitted, so a handler made
    under click's test runner never writes to a stream that runner has closed."""

    @property  # type: ignore[override]
    def stream(self):  # noqa: ANN201
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:  # noqa: ANN001
        pass


def configure_logging(verbose: int) -> Callable[[], None]:
    """Log to stderr: warnings only by default, INFO with -v, DEBUG with -vv. Returns
    the function that puts the root logger back as it was."""
    root = logging.getLogger()
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.WARNING if verbose <= 0 else logging.INFO if verbose == 1
                  else logging.DEBUG)

    def restore() -> None:
        root.removeHandler(handler)
        root.setLevel(old_level)

    return restore


@click.group(name="greenflow", context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="greenflow",
                      message="%(prog)s %(version)s")
@click.option("-v", "--verbose", count=True,
              help="Log to stderr: -v for info, -vv for debug (default: warnings only).")
@click.pass_context
def main(ctx: click.Context, verbose: int) -> None:
    """greenflow: durable multi-party flows in plain sequential Python.

    Flows are ordinary blocking code on greenlets; every suspension is checkpointed to
    LMDB, and a restarted node resumes each flow where it stopped.
    """
    ctx.call_on_close(configure_logging(verbose))
    _import_from_cwd()


def _import_from_cwd() -> None:
    """Make modules in the current directory importable, as ``python -m`` does, so
    ``greenflow run mypkg.flows:MyFlow`` works from the project's directory (an installed
    console script only has its own bin directory on ``sys.path``). Appended, so a local
    file never shadows an installed module."""
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.append(cwd)


def _register(group: click.Group) -> None:
    for module_name in COMMAND_MODULES:
        group.add_command(importlib.import_module(module_name).command)


_register(main)

if __name__ == "__main__":
    main(prog_name="greenflow")
