"""``greenflow replay --node DIR [--apps MOD ...]``: will the installed code still replay
the node's unfinished flows?

Run it before starting a node on upgraded code (or in CI against a recorded node
directory). Every unfinished checkpoint is replayed read-only against the code importable
now; the report gives each flow's outcome, and a divergence is explained as a
`NonDeterminismError` would be (step, file and line, the differing field). Exit code 0
when every flow replays, 1 when any diverges or cannot be replayed, 2 for a directory
that is not a node's. Safe beside a running node: nothing is written.
"""
from __future__ import annotations

import click

from greenflow.cli.errors import CliError, UsageProblem
from greenflow.cli.local_node import reading


class ReplayDiverged(CliError):
    exit_code = 1


@click.command("replay")
@click.option("--node", "node_dir", required=True, type=click.Path(file_okay=False),
              help="The node's directory (holds identity.name and store/). Read-only.")
@click.option("--apps", "apps", multiple=True,
              help="Module defining the node's flows (repeat, or separate with commas); "
                   "default: the apps of the node's node.toml.")
def command(node_dir: str, apps: tuple[str, ...]) -> None:
    """Replay every unfinished checkpoint of a node against the installed code."""
    from greenflow.errors import FlowError, StoreError
    from greenflow.network.node_config import ConfigError
    from greenflow.testing.replay import replay_node

    names = [n.strip() for a in apps for n in a.split(",") if n.strip()] or None
    with reading(node_dir):
        try:
            report = replay_node(node_dir, names)
        except ConfigError as exc:
            raise UsageProblem(str(exc)) from None
        except StoreError:
            raise
        except FlowError as exc:
            raise CliError(str(exc)) from None
    click.echo(report.text())
    if not report.ok:
        raise ReplayDiverged(f"{len(report.diverged)} of {len(report.flows)} unfinished "
                             "flows do not replay on the installed code")
