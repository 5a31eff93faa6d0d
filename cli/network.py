"""``greenflow network ...``: set up a network of node directories."""
from __future__ import annotations

import os

import click

from greenflow.network.bootstrap import DEFAULT_APPS, bootstrap_network
from greenflow.cli.params import cannot_write
from greenflow.network.network_map import NetworkMapError, format_address

from greenflow.cli.errors import UsageProblem


def split_names(text: str, option: str = "--apps") -> list[str]:
    """Names separated by commas, or by semicolons when there is one: X.500 names
    (``O=Alice,L=London,C=GB``) hold commas of their own."""
    sep = ";" if ";" in text else ","
    names = [n.strip() for n in text.split(sep)]
    if any(not n for n in names):
        raise UsageProblem(f"{option} {text!r} has an empty name")
    if sep == "," and "=" in text:   # one X.500 name, unless an attribute comes twice
        keys = [n.split("=", 1)[0].strip().upper() for n in names]
        if len(set(keys)) < len(keys):
            raise UsageProblem(f"{option} {text!r}: X.500 names (O=...,L=...,C=...) hold "
                               "commas; separate such names with ';'")
        return [text.strip()]
    return names


@click.group("network")
def command() -> None:
    """Create and inspect networks of node processes."""


@command.command("bootstrap")
@click.option("--dir", "root", required=True, type=click.Path(file_okay=False),
              help="Folder to create the node directories in.")
@click.option("--nodes", required=True,
              help="Comma-separated party names, e.g. Alice,Bob (X.500 names, which hold "
                   "commas, separated by ';').")
@click.option("--notary", default=None, help="Name of a notary node to add.")
@click.option("--validating-notary", is_flag=True,
              help="Make the notary a validating one: it verifies each transaction and its "
                   "history before it signs (default: non-validating).")
@click.option("--base-port", default=10000, show_default=True, type=click.IntRange(0, 65000),
              help="First port; node i gets P2P base+2i and RPC base+2i+1 (0: free ports).")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Host name or address the nodes listen on and peers dial.")
@click.option("--apps", default=",".join(DEFAULT_APPS), show_default=True,
              help="Comma-separated app modules every node loads.")
@click.option("--rpc-user", default="admin", show_default=True)
@click.option("--rpc-password", default=None,
              help="RPC password for every node (default: a random one per node, left "
                   "in DIR/<node>/rpc-credentials for the local CLI).")
def bootstrap(root: str, nodes: str, notary: str | None, validating_notary: bool, base_port: int,
              host: str, apps: str, rpc_user: str, rpc_password: str | None) -> None:
    """Create one directory per node (key pair, node.toml, network map)."""
    if not host.strip():
        raise UsageProblem("--host is empty: give the host name or address peers dial")
    try:
        configs = bootstrap_network(root, split_names(nodes, "--nodes"), notary=notary, base_port=base_port,
                                    host=host, apps=split_names(apps), rpc_user=rpc_user,
                                    rpc_password=rpc_password,
                                    validating_notary=validating_notary)
    except NetworkMapError as exc:
        raise UsageProblem(str(exc)) from None
    except OSError as exc:
        raise cannot_write(exc) from None
    for c in configs:
        role = (" (validating notary)" if c.validating_notary else " (notary)") if c.notary else ""
        click.echo(f"{c.name}{role}: {os.path.relpath(c.base_dir)}  "
                   f"p2p {format_address(c.p2p_address)}  rpc {format_address(c.rpc_address)}")
    click.echo("start each with: greenflow node start --dir DIR (one of the directories above)")
