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
        parts.append(f"#### `{path}`\n\n```\n{text.rstrip()}\n```\n")
    for name in SAMPLES:   # their options are the samples' own (SAMPLE_OPTIONS)
        parts.append(f"#### `greenflow run sample.{name}`\n\n```\n{_sample_help(name).rstrip()}\n```\n")
    return "\n".join(parts)


#: The bundled samples, whose options `greenflow run sample.NAME --help` shows.
SAMPLES = ("ping", "trade", "chaos")


def _sample_help(name: str) -> str:
    from click.testing import CliRunner

    from greenflow.cli.main import main
    out = CliRunner().invoke(main, ["run", f"sample.{name}", "--help"], terminal_width=WIDTH)
    if out.exit_code != 0:
        raise SystemExit(f"greenflow run sample.{name} --help failed: {out.output}")
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
