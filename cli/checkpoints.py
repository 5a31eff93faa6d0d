"""``greenflow checkpoints dump --node DIR [--json]``: where every unfinished flow waits.

The local variant reads the node's store read-only in this process: nothing is
recovered, replayed or written, so it is safe beside a running node. `format_dump` renders any list of ``Node.checkpoints_dump()`` entries,
so an RPC variant only has to fetch them.
"""
from __future__ import annotations

import json
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
    from call() down to the suspension, with each frame's locals."""
    name, entries = dump_local(node_dir)
    if as_json:
        click.echo(json.dumps(entries, indent=2, default=str))
    else:
        click.echo(format_dump(name, entries))


def dump_local(node_dir: str) -> tuple[str, list[dict]]:
    """Read the node stored in ``node_dir`` without starting it: its name and dump.
    Read-only (LMDB readers never block the writer), so a running node is fine."""
    from greenflow.node import read_checkpoints

    with reading(node_dir) as name:
        return name, read_checkpoints(node_dir)


def format_dump(node: str, entries: list[dict]) -> str:
    """Readable text for ``checkpoints_dump()`` entries."""
    if not entries:
        return f"{node}: no unfinished flows"
    plural = "s" if len(entries) != 1 else ""
    lines = [f"{node}: {len(entries)} unfinished flow{plural}"]
    for e in entries:
        lines += ["", f"flow {e.get('flow_id')}  {e.get('flow_class')}  {e.get('status')}"]
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
    return "\n".join(lines)


def _field(lines: list[str], label: str, value: Optional[Any]) -> None:
    if value is not None:
        lines.append(f"  {label + ':':<13}{value}")
