"""The command-line reference (docs/reference/cli.md), generated from the commands' own
``--help`` texts.

``python -m greenflow.cli.reference`` prints it as Markdown;
``python -m greenflow.cli.reference --update docs/reference/cli.md`` replaces the text
between the ``<!-- cli-reference:start -->`` and ``<!-- cli-reference:end -->`` markers.
"""
from __future__ import annotations

import sys
from typing import Iterator, Optional

import click

START = "<!-- cli-reference:start -->"
END = "<!-- cli-reference:end -->"
WIDTH = 88


def _walk(cmd: click.Command, ctx: click.Context) -> Iterator[tuple[str, str]]:
    yield ctx.command_path, cmd.get_help(ctx)
    if isinstance(cmd, click.Group):
        for name in cmd.list_commands(ctx):
            sub = cmd.get_command(ctx, name)
            if sub is not None and not sub.hidden:
                yield from _walk(sub, _context(sub, name, ctx))


def _context(cmd: click.Command, name: str, parent: Optional[click.Context]) -> click.Context:
    # make_context applies the command's context_settings (e.g. -h as help); resilient
    # parsing tolerates the missing required arguments.
    return cmd.make_context(name, [], parent=parent, resilient_parsing=True,
                            terminal_width=WIDTH, max_content_width=WIDTH)


def reference() -> str:
    from greenflow.cli.main import main

    parts = []
    for path, text in _walk(main, _context(main, "greenflow", None)):
        if path in PASSED_ON:   # its options are parsed by what it runs: ask that
            text = _help_of(PASSED_ON[path])
        parts.append(f"#### `{path}`\n\n```\n{text.rstrip()}\n```\n")
    for name in SAMPLES:   # their options are the samples' own (SAMPLE_OPTIONS)
        text = _help_of(["run", f"sample.{name}", "--help"])
        parts.append(f"#### `greenflow run sample.{name}`\n\n```\n{text.rstrip()}\n```\n")
    return "\n".join(parts)


#: The bundled samples, whose options `greenflow run sample.NAME --help` shows.
SAMPLES = ("ping", "trade", "chaos")
#: Commands that pass their arguments on (the benchmark suite's own parser).
PASSED_ON = {"greenflow bench": ["bench", "--help"]}


def _help_of(args: list[str]) -> str:
    from click.testing import CliRunner

    from greenflow.cli.main import main
    # (COLUMNS: the width argparse wraps to, for a command that passes its arguments on)
    out = CliRunner(env={"COLUMNS": str(WIDTH)}).invoke(main, args, terminal_width=WIDTH)
    if out.exit_code != 0:
        raise SystemExit(f"greenflow {' '.join(args)} failed: {out.output}")
    return out.output


def update(path: str) -> None:
    with open(path, encoding="utf-8") as fh:
        text = fh.read()
    head, sep, rest = text.partition(START)
    _, sep2, tail = rest.partition(END)
    if not sep or not sep2:
        raise SystemExit(f"{path}: markers {START} ... {END} not found")
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(f"{head}{START}\n{reference()}{END}{tail}")


def main(argv: Optional[list[str]] = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["--update"] and len(args) == 2:
        update(args[1])
    elif not args:
        sys.stdout.write(reference())
    else:
        raise SystemExit("usage: python -m greenflow.cli.reference [--update docs/reference/cli.md]")


if __name__ == "__main__":
    main()
