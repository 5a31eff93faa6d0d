"""``greenflow vault query --node DIR --type module:Class [...]``: a node's states.

Reads the node's store read-only in this process (as ``checkpoints dump`` does), through
the vault's indexes: safe beside a running node, and a query by type or linear id reads
only the states it names. Over RPC the same query is ``GET /api/v1/vault/states``.
"""
from __future__ import annotations

import json
from typing import Any, Optional

import click

from greenflow.cli.errors import UsageProblem


@click.group("vault")
def command() -> None:
    """Query a node's vault (its ledger states)."""


@command.command("query")
@click.option("--node", "node_dir", required=True, type=click.Path(file_okay=False),
              help="The node's directory (holds store/). Read-only: the node may be running.")
@click.option("--type", "type_path", default="ContractState", show_default=True,
              help="State class as module:Class (subclasses included).")
@click.option("--status", type=click.Choice(["unconsumed", "consumed", "all"], case_sensitive=False),
              default="unconsumed", show_default=True)
@click.option("--linear-id", "linear_ids", multiple=True, help="A linear id (repeatable).")
@click.option("--external-id", "external_ids", multiple=True, help="An external id (repeatable).")
@click.option("--page", "page_number", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--page-size", type=click.IntRange(min=1, max=10_000), default=200, show_default=True)
@click.option("--cursor", default=None, help="A previous page's next_cursor.")
@click.option("--sort", "sort_key", default="recorded_time", show_default=True,
              help="recorded_time, consumed_time, state_ref or a state attribute path.")
@click.option("--desc", is_flag=True, help="Sort descending.")
@click.option("--json", "as_json", is_flag=True, help="Print the page as JSON.")
def query(node_dir: str, type_path: str, status: str, linear_ids: tuple, external_ids: tuple,
          page_number: int, page_size: int, cursor: Optional[str], sort_key: str, desc: bool,
          as_json: bool) -> None:
    """List the states of a node's vault that match, a page at a time."""
    from greenflow.ledger.vault_query import (PageSpecification, QueryCriteria, Sort, VaultQueryError,
                                              page_json, read_vault, state_class)

    from greenflow.cli.local_node import reading

    with reading(node_dir) as name:
        try:
            known = _known_types(node_dir)
            criteria = QueryCriteria(state_class(type_path, known), status,
                                     linear_ids=list(linear_ids) or None,
                                     external_ids=list(external_ids) or None)
            page = read_vault(node_dir, criteria,
                              PageSpecification(page_number, page_size, cursor),
                              Sort(sort_key, desc))
        except VaultQueryError as exc:
            raise UsageProblem(str(exc)) from None
    doc = page_json(page)
    if as_json:
        click.echo(json.dumps({"node": name, **doc}, indent=2, default=str))
        return
    click.echo(format_page(name, doc))


def _known_types(node_dir: str) -> list[str]:
    import os

    from greenflow.ledger.vault_query import IndexReader
    from greenflow.storage import open_store

    store = open_store(os.path.abspath(node_dir), readonly=True)
    try:
        return IndexReader(store).type_names()   # none recorded: an empty table
    finally:
        store.close()


def format_page(node: str, doc: dict) -> str:
    states = doc["states"]
    first = (doc["page_number"] - 1) * doc["page_size"] + 1 if states else 0
    lines = [f"{node}: {len(states)} of {doc['total']} state(s)"
             + (f" (from #{first})" if doc["page_number"] > 1 else "")]
    for s in states:
        lines.append(f"  {s['ref']}  {s['status'].lower():<10} {s['type']}  recorded {s['recorded_time']}")
        if s.get("text"):
            lines.append(f"      {s['text']}")
        else:
            fields = {k: v for k, v in (s["state"] or {}).items() if k != "__type__"}
            lines.append("      " + ", ".join(f"{k}={_short(v)}" for k, v in fields.items()))
    if doc.get("next_cursor"):
        lines.append(f"  more: --cursor {doc['next_cursor']}")
    return "\n".join(lines)


def _short(value: Any) -> str:
    if isinstance(value, dict):
        inner = {k: v for k, v in value.items() if k != "__type__"}
        return "{" + ", ".join(f"{k}={_short(v)}" for k, v in inner.items()) + "}"
    text = str(value)
    return text if len(text) <= 80 else text[:77] + "..."
