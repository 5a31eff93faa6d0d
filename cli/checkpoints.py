"""``greenflow checkpoints dump --node DIR [--json]``: where every unfinished flow waits.

The local variant reads the node's store read-only in this process: nothing is
recovered, replayed or written, so it is safe beside a running node; entries are written
as they are read. `format_dump` renders any list of ``Node.checkpoints_dump()`` entries,
so an RPC variant only has to fetch them.
"""
from __future__ import annotations

import json
import textwrap
from typing import Any, Optional

import click

from greenflow.cli.local_node import reading


@click.group("checkpoints")
def command() -> None:
    """Inspect the checkpoints of a node's unfinished flows."""


@command.command("dump")
@click.option("--node", "node_dir", required=True, type=click.Path(file_okay=False),
              help="The node's directory (holds identity.name and store/). Read-only: "
                   "the node may be running.")
@click.option("--json", "as_json", is_flag=True, help="Print the entries as JSON.")
def dump(node_dir: str, as_json: bool) -> None:
    """Print each unfinished flow: status, what it waits on, its sessions, and its stack
    from call() down to the suspension, with each frame's locals. Entries are printed as
    they are read (a node of a million flows is not held in memory)."""
    from greenflow.node.flow_views import dump_entries
    from greenflow.storage import open_store

    with reading(node_dir) as name:
        store = open_store(node_dir, readonly=True)
        try:
            if as_json:   # the JSON of a list, written an entry at a time
                first = True
                for entry in dump_entries(store, None):
                    text = textwrap.indent(json.dumps(entry, indent=2, default=str), "  ")
                    click.echo(("[\n" if first else ",\n") + text, nl=False)
                    first = False
                click.echo("[]" if first else "\n]")
                return
            count = store.flow_count()
            if not count:
                click.echo(f"{name}: no unfinished flows")
                return
            click.echo(_header(name, count, offline=True))
            for entry in dump_entries(store, None):
                click.echo("\n" + "\n".join(_entry_lines(entry)))
        finally:
            store.close()


def format_dump(node: str, entries: list[dict]) -> str:
    """Readable text for ``checkpoints_dump()`` entries."""
    if not entries:
        return f"{node}: no unfinished flows"
    lines = [_header(node, len(entries), any(e.get("resident", False) is None for e in entries))]
    for e in entries:
        lines += [""] + _entry_lines(e)
    return "\n".join(lines)


def _header(node: str, count: int, offline: bool) -> str:
    text = f"{node}: {count} unfinished flow{'s' if count != 1 else ''}"
    if offline:   # (read from the store: whether a running node holds them is not there)
        text += (", read from the store: a waiting flow shows as stored, SUSPENDED (a "
                 "running node lists those it does not hold in memory as HIBERNATED)")
    return text


def _entry_lines(e: dict) -> list[str]:
    lines = [f"flow {e.get('flow_id')}  {e.get('flow_class')}  {e.get('status')}"]
    _field(lines, "waiting on", e.get("suspended_on"))
    _field(lines, "progress", e.get("progress_step"))
    _field(lines, "error", e.get("error"))
    _field(lines, "suspensions", e.get("suspension_count"))
    sessions = e.get("sessions") or []
    if sessions:
        lines.append("  sessions:")
        for s in sessions:
            lines.append(f"    {s.get('counterparty')}  {s.get('role')}  {s.get('state')}  "
                         f"sent {s.get('sent')}  received {s.get('received')}  "
                         f"({s.get('protocol')}, session {s.get('id')})")
    frames = e.get("frames") or []
    lines.append("  stack (outermost first):" if frames else "  stack: not captured")
    for fr in frames:
        lines.append(f"    {fr.get('function')}  {fr.get('file')}:{fr.get('line')}")
        for k, v in (fr.get("locals") or {}).items():
            lines.append(f"        {k} = {v}")
    return lines


def _field(lines: list[str], label: str, value: Optional[Any]) -> None:
    if value is not None:
        lines.append(f"  {label + ':':<13}{value}")
