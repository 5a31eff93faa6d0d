"""The command reference in the documentation is what the commands' help prints: a new
command or option shows up there, or this fails with the command that updates it."""
from __future__ import annotations

import os

from greenflow.cli.reference import END, START, reference

DOC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                   "docs", "reference", "cli.md")


def test_the_command_reference_is_what_the_help_prints():
    with open(DOC, encoding="utf-8") as fh:
        text = fh.read()
    shown = text[text.index(START) + len(START):text.index(END)]
    assert shown.strip() == reference().strip(), (
        "docs/reference/cli.md is stale: run python -m greenflow.cli.reference "
        "--update docs/reference/cli.md")
