"""``greenflow bench [SUITE] [...]``: the benchmark suite, ``greenflow.benchmarks``.

Everything after ``bench`` (``--help`` too) goes unchanged to
``greenflow.benchmarks.__main__.main(argv)``, which the benchmarks own; its return value
(or ``SystemExit``) is the exit code. ``python -m greenflow.benchmarks`` is the same.
"""
from __future__ import annotations

from typing import Any

import click

from greenflow.cli.errors import ComponentMissing, exit_code_of

BENCH_MODULE = "greenflow.benchmarks.__main__"


@click.command("bench", add_help_option=False,
               context_settings={"ignore_unknown_options": True, "help_option_names": []})
@click.argument("argv", nargs=-1, type=click.UNPROCESSED)
@click.pass_context
def command(ctx: click.Context, argv: tuple[str, ...]) -> None:
    """Run the benchmark suite (its --help lists the suites)."""
    entry = _load_main()
    try:
        code = entry(list(argv), prog=ctx.command_path)
    except SystemExit as exc:  # argparse's --help and usage errors
        code = exc.code
    ctx.exit(exit_code_of(code))


def _load_main() -> Any:
    import importlib

    try:
        module = importlib.import_module(BENCH_MODULE)
    except ModuleNotFoundError as exc:
        if exc.name not in (BENCH_MODULE, "greenflow.benchmarks"):
            raise  # the suite exists but needs something missing: show it as is
        raise ComponentMissing(f"the benchmark suite is not available: no module {BENCH_MODULE} "
                               "(benchmarks/__main__.py with main(argv))") from None
    entry = getattr(module, "main", None)
    if not callable(entry):
        raise ComponentMissing(f"{BENCH_MODULE} has no main(argv) function")
    return entry

