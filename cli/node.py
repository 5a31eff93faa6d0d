"""``greenflow node ...``: make a node directory, run a node process, operate it."""
from __future__ import annotations

import json
import os
import time

import click

from greenflow.cli.errors import CliError, UsageProblem
from greenflow.cli.network import split_names
from greenflow.cli.params import SECONDS, cannot_write
from greenflow.cli.rpc_target import node_options


@click.group("node")
def command() -> None:
    """Create, run and operate node processes."""


@command.command("init")
@click.option("--dir", "base_dir", required=True, type=click.Path(file_okay=False),
              help="The node directory to create.")
@click.option("--name", required=True, help="The node's party name, e.g. Alice or O=Alice,L=London,C=GB.")
@click.option("--p2p-address", default="127.0.0.1:10000", show_default=True)
@click.option("--rpc-address", default="127.0.0.1:10001", show_default=True)
@click.option("--apps", default="samples.ping", show_default=True,
              help="Comma-separated app modules the node loads.")
@click.option("--notary", is_flag=True, help="Make this node a notary.")
@click.option("--validating", is_flag=True,
              help="With --notary: a validating notary (verifies each transaction and its history).")
@click.option("--rpc-user", default="admin", show_default=True)
@click.option("--rpc-password", default=None, help="Default: a random one, left in DIR/rpc-credentials.")
def init(base_dir: str, name: str, p2p_address: str, rpc_address: str, apps: str,
         notary: bool, validating: bool, rpc_user: str, rpc_password: str | None) -> None:
    """Create one node directory: key pair, node.toml, and a network map naming only
    this node (replace it with the network's map)."""
    from greenflow.network.bootstrap import init_node
    from greenflow.network.network_map import NetworkMapError, parse_address

    try:
        cfg = init_node(base_dir, name, p2p_address=parse_address(p2p_address),
                        rpc_address=parse_address(rpc_address),
                        apps=split_names(apps), notary=notary,
                        rpc_user=rpc_user, rpc_password=rpc_password,
                        validating_notary=validating)
    except NetworkMapError as exc:
        raise UsageProblem(str(exc)) from None
    except OSError as exc:
        raise cannot_write(exc) from None
    click.echo(f"{cfg.name}: {cfg.base_dir} (public key {_key(cfg)})")


def _key(cfg) -> str:  # noqa: ANN001
    from greenflow.node.identity import NodeIdentity
    return NodeIdentity.load_or_create(cfg.base_dir, cfg.name).party.owning_key.hex()


@command.command("start")
@click.option("--dir", "base_dir", required=True, type=click.Path(file_okay=False, exists=True),
              help="The node directory.")
@click.option("--log-level", default="INFO", show_default=True,
              type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False))
@click.option("--new-store", is_flag=True,
              help="If the node's store is missing or empty, start with a new, empty one "
                   "(the node forgets every flow it had). Without it such a node refuses to start.")
def start(base_dir: str, log_level: str, new_store: bool) -> None:
    """Run the node in the foreground (logs to DIR/node.log and stderr). SIGTERM or
    Ctrl-C stops it cleanly; unfinished flows resume at the next start.

    Exit status: 0 stopped cleanly, 1 could not start, 2 bad configuration, 3 store
    refused (missing, damaged), 4 the store failed while running (e.g. disk full)."""
    from greenflow.node.hash_seed import run_with_party_seed
    from greenflow.rpc.node_process import serve

    run_with_party_seed(base_dir)   # its sets iterate alike at every start (replay)
    code = serve(base_dir, log_level=log_level, new_store=new_store)
    if code:
        raise SystemExit(code)


@command.command("status")
@node_options
@click.option("--json", "as_json", is_flag=True)
def status(client, as_json: bool) -> None:  # noqa: ANN001
    """Show a running node's identity, addresses, draining state and transport counters."""
    info = client.node_info()
    drain = client.draining()
    info.update(drain)
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    click.echo(f"{info['name']}  pid {info['pid']}  p2p {info['p2p_address']}  rpc {info['rpc_address']}")
    click.echo(f"apps: {', '.join(info['apps'])}   draining: {info['draining']}   "
               f"unfinished flows: {info['pending_flows_count']}")
    click.echo("transport: " + ", ".join(f"{k} {v}" for k, v in info["transport"].items()))


@command.command("drain")
@node_options
@click.argument("state", type=click.Choice(["on", "off"]))
def drain(client, state: str) -> None:  # noqa: ANN001
    """Turn draining on (no new flows or inbound sessions) or off."""
    out = client.set_draining(state == "on")
    click.echo(f"draining {'on' if out['draining'] else 'off'}; "
               f"{out['pending_flows_count']} unfinished flows")


@command.command("stop")
@node_options
@click.option("--timeout", default=30.0, show_default=True, type=SECONDS,
              help="Seconds to wait for it to stop.")
def stop(client, timeout: float) -> None:  # noqa: ANN001
    """Shut a running node down cleanly. Given the node's directory, it returns once the
    process has exited (a `node start` right after it finds the directory free)."""
    from greenflow.rpc.client import RpcClientError

    target = click.get_current_context().params.get("node") or ""
    pid_file = os.path.join(target, "node.pid") if os.path.isdir(target) else None
    name = client.node_info()["name"]
    client.shutdown()
    deadline = time.monotonic() + timeout
    answering = True
    while time.monotonic() < deadline:
        if answering:
            try:
                client.node_info()
            except RpcClientError as exc:
                if exc.status not in (0, 503):
                    raise
                answering = False
        if not answering and (pid_file is None or _exited(pid_file)):
            click.echo(f"{name} stopped")
            return
        time.sleep(0.2)
    raise CliError(f"{name} did not stop within {timeout}s")


def _exited(pid_file: str) -> bool:
    """Whether the process that held ``node.pid`` (under an exclusive flock) is gone:
    a shared lock is granted only then. Nothing is written to the file."""
    import fcntl
    try:
        fd = os.open(pid_file, os.O_RDONLY)
    except FileNotFoundError:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    finally:
        os.close(fd)
