"""Bundled samples: ``greenflow run sample.NAME`` runs ``greenflow.samples.NAME``.

A sample is one module here (installed as ``greenflow.samples.NAME``) holding its flows
and an entry point for the command line. The convention:

``run_sample(data_dir: str, **options) -> int | None``  (required)
    Runs the sample and prints what it shows; returns the exit code (None means 0).
    ``data_dir`` is an existing, empty-or-reused directory for the nodes' stores: a
    fresh temporary one, deleted afterwards, unless the user gave ``--data-dir DIR``.
    Build the network under it (``MockNetwork(data_dir)``, or node processes for a
    multi-process mode). Report expected failures by raising ``click.ClickException``
    (message and exit code of your choice) or by letting a ``FlowError`` escape, which
    ``greenflow run`` prints as ``Error: ...`` with exit code 1. Anything else escapes
    with its traceback, as a bug should.

``SAMPLE_OPTIONS: list[click.Parameter]``  (optional)
    The sample's own options, as click objects::

        SAMPLE_OPTIONS = [
            click.Option(["--trades"], type=click.IntRange(min=1), default=1, show_default=True,
                         help="Run N trades concurrently."),
            click.Option(["--crash"], is_flag=True, help="Power-cut the buyer mid-trade."),
        ]

    ``greenflow run sample.NAME --trades 200 --crash`` parses everything after the
    target with these options (click's usual errors for unknown or bad ones, exit 2)
    and calls ``run_sample(data_dir, trades=200, crash=True)``;
    ``greenflow run sample.NAME --help`` lists them under the module's docstring.
    The names ``--data-dir``, ``--arg`` and ``--help``/``-h`` belong to ``greenflow run``
    itself and are never passed on. Options go after the target.

``run_sample(data_dir: str, argv: list[str])``  (alternative to SAMPLE_OPTIONS)
    A sample that parses its own options (argparse, or a click command of its own)
    names its second parameter ``argv``: it gets the raw arguments after the target,
    ``--help`` included. A ``SystemExit`` it raises becomes the exit code.

A sample with neither takes no options; extra arguments are then an error.

Keep the flows of a sample usable without the command line: tests and users import
them directly, and every ``@startable`` flow can also be started on its own with
``greenflow run greenflow.samples.NAME:FlowClass --arg k=v``.
"""
from __future__ import annotations

from greenflow.rpc.flow_start import available_samples

__all__ = ["available_samples"]
