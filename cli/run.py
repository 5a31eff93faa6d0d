"""``greenflow run TARGET``: a bundled sample, or one flow on an in-process network.

``sample.NAME`` calls ``greenflow.samples.NAME.run_sample`` (the convention is in
``greenflow.samples``' docstring); the sample's own options follow the target.

``module.path:FlowClass`` builds a `MockNetwork` with a node ``Alice`` that starts the
flow, a notary named ``Notary`` (for ledger flows), plus one node per party named in an
``--arg`` (``--arg peer=Bob``), delivers
messages until the flow ends, and prints its result. Time is the network's virtual
clock: when nothing else moves, it jumps to the next timer, so flows that ``sleep`` or
wait with a timeout finish at once.
"""
from __future__ import annotations

import contextlib
import inspect
import logging
import os
import sys
import tempfile
from typing import Any, Iterator, Optional

import click

from greenflow.cli.params import cannot_write

from greenflow.cli.errors import (BadFlowArgument, FlowFailed, FlowNotStartable, UnknownTarget,
                     UsageProblem, exit_code_of)
from greenflow.messages import MAX_ERROR_TEXT, exception_text

log = logging.getLogger("greenflow.cli")

STARTER = "Alice"
SAMPLE_PREFIXES = ("sample.", "samples.")
MAX_ROUNDS = 100_000  # network rounds (each to quiescence, then a clock jump) before giving up


@click.command("run", add_help_option=False,
               context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.argument("target", required=False)
@click.option("--arg", "assignments", multiple=True, metavar="NAME=VALUE",
              help="A constructor argument of the flow (module:FlowClass only); repeat for "
                   "each. A Party is given by node name and that node is created.")
@click.option("--data-dir", type=click.Path(file_okay=False),
              help="Keep the nodes' stores here (default: a temporary directory, deleted "
                   "afterwards).")
@click.option("-h", "--help", "show_help", is_flag=True,
              help="Show this message and exit; after TARGET, the sample's options or the "
                   "flow's arguments.")
@click.pass_context
def command(ctx: click.Context, target: Optional[str], assignments: tuple[str, ...],
            data_dir: Optional[str], show_help: bool) -> None:
    """Run a sample, or start one flow on an in-process network.

    TARGET is sample.NAME (a bundled sample; its own options follow it, e.g.
    `greenflow run sample.ping -n 5`) or module.path:FlowClass (a @startable flow,
    started on node Alice, with a notary named Notary; its result is printed). Exit
    code 0 on success, 1 when the flow fails, 2 for a bad command line.
    """
    if target is None or target.startswith("-"):
        if show_help:
            click.echo(ctx.get_help())
            ctx.exit(0)
        if target is not None:
            raise UsageProblem(f"TARGET must come before other options, got {target!r}")
        raise click.UsageError("Missing argument 'TARGET' (sample.NAME or module.path:FlowClass)",
                               ctx)
    if target.startswith(SAMPLE_PREFIXES) and ":" not in target:
        if assignments:
            raise UsageProblem(f"--arg is for module:FlowClass targets; see "
                               f"'greenflow run {target} --help' for the sample's options")
        _run_sample(ctx, target.split(".", 1)[1], list(ctx.args), data_dir, show_help)
    else:
        if ctx.args:
            raise UsageProblem(f"unexpected arguments {' '.join(ctx.args)!r}: "
                               "give flow arguments as --arg NAME=VALUE")
        _run_flow(ctx, target, assignments, data_dir, show_help)


@contextlib.contextmanager
def data_directory(data_dir: Optional[str]) -> Iterator[str]:
    """``data_dir`` (created if needed and kept), or a temporary directory removed after."""
    if data_dir is not None:
        if not data_dir.strip():
            raise UsageProblem("--data-dir is empty: give a directory (or leave the option "
                               "out for a temporary one)")
        try:
            os.makedirs(data_dir, exist_ok=True)
        except OSError as exc:
            raise cannot_write(exc) from None
        if not os.access(data_dir, os.W_OK | os.X_OK):   # there already, but not writable
            raise cannot_write(PermissionError(13, "Permission denied", data_dir))
        yield os.path.abspath(data_dir)
        return
    with tempfile.TemporaryDirectory(prefix="greenflow-", ignore_cleanup_errors=True) as tmp:
        yield tmp


@contextlib.contextmanager
def _store_hint(directory: str) -> Iterator[None]:
    """A damaged or missing store of a node of the run, with the advice `greenflow run`
    can follow (a node's says --new-store, an option of `node start` only)."""
    from greenflow.errors import StoreCorrupt, StoreMissing
    from greenflow.storage.store_guard import MISSING_HINT, RESTORE_HINT
    try:
        yield
    except (StoreCorrupt, StoreMissing) as exc:
        text = exception_text(exc, MAX_ERROR_TEXT)
        for hint in (RESTORE_HINT, MISSING_HINT):
            text = text.replace(hint, "")
        raise FlowFailed(
            f"{text.rstrip('; :')}: restore {directory} from a backup, or run in another "
            f"--data-dir (or remove {directory}: what its earlier runs left is then "
            "forgotten)") from None


# ------------------------------------------------------------------------------ samples

def _import_sample(name: str) -> Any:
    import importlib

    from greenflow.samples import available_samples

    module_name = f"greenflow.samples.{name}"
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name not in (module_name, "greenflow.samples"):
            raise  # the sample exists but needs something missing: show it as is
        hint = ""
        if "." in name:   # samples.ping.Ping: a flow class written as flow start takes it
            module, _, cls = name.rpartition(".")
            hint = (f"; to start a flow class write it module:Class, e.g. 'greenflow run "
                    f"samples.{module}:{cls}'")
        raise UnknownTarget(f"no sample named {name!r}; available: "
                            f"{', '.join(available_samples()) or 'none'}{hint}") from None


def _run_sample(ctx: click.Context, name: str, extra: list[str], data_dir: Optional[str],
                show_help: bool) -> None:
    from greenflow.errors import FlowError, StoreCorrupt, StoreMissing

    module = _import_sample(name)
    entry = getattr(module, "run_sample", None)
    if not callable(entry):
        raise UnknownTarget(
            f"{module.__name__} has no run_sample(data_dir, ...) entry point; start one of "
            f"its flows with 'greenflow run {module.__name__}:FlowClass --arg NAME=VALUE'")
    help_text = inspect.cleandoc(module.__doc__ or f"The {name} sample.")
    options: dict[str, Any]
    if "argv" in inspect.signature(entry).parameters:
        options = {"argv": extra + (["--help"] if show_help else [])}
    else:
        params = list(getattr(module, "SAMPLE_OPTIONS", None) or [])
        sample_cmd = click.Command(f"sample.{name}", params=params, help=help_text)
        args = extra + (["--help"] if show_help else [])
        # Parses like any click command: --help prints and exits 0, bad options exit 2.
        with sample_cmd.make_context(f"{ctx.command_path} sample.{name}", args,
                                     help_option_names=ctx.help_option_names) as sub:
            options = dict(sub.params)
    with data_directory(data_dir) as directory, _store_hint(directory):
        try:
            code = entry(directory, **options)
        except SystemExit as exc:
            code = exc.code
        except (StoreCorrupt, StoreMissing):
            raise   # told by `_store_hint`, with what to do about it here
        except FlowError as exc:  # anything else is a bug and keeps its traceback
            raise FlowFailed(f"sample.{name} failed: {type(exc).__name__}: "
                             f"{exception_text(exc, MAX_ERROR_TEXT)}") from exc
        except OSError as exc:   # a node directory it cannot make or write in
            if exc.filename is None:
                raise
            raise cannot_write(exc) from None

    code = exit_code_of(code)
    if code:
        ctx.exit(code)


# ------------------------------------------------------------------------------ flows

def _run_flow(ctx: click.Context, target: str, assignments: tuple[str, ...],
              data_dir: Optional[str], show_help: bool) -> None:
    from greenflow.errors import NotStartable

    from greenflow.cli import flow_args

    try:
        cls = flow_args.load_flow_class(target)
    except flow_args.FlowTargetError as exc:
        raise UnknownTarget(str(exc)) from None
    if show_help:
        click.echo(_flow_help(ctx, target, cls))
        ctx.exit(0)
    try:
        flow_args.check_startable(cls)
    except NotStartable as exc:
        raise FlowNotStartable(str(exc)) from None
    try:
        bound = flow_args.bind_arguments(cls, flow_args.parse_assignments(assignments))
    except flow_args.FlowArgumentError as exc:
        raise BadFlowArgument(f"{exc} (see 'greenflow run {target} --help')") from None

    from greenflow.testing import MockNetwork

    with data_directory(data_dir) as directory, _store_hint(directory), \
            MockNetwork(directory) as net:
        alice = net.create_node(STARTER)
        net.notary   # a ledger flow finds it (identity_service.notaries(), --arg notary=Notary)

        def party_for(name: str) -> Any:
            known = {mn.name: mn for mn in net.nodes}
            return (known.get(name) or net.create_node(name)).party

        try:
            flow = flow_args.instantiate(cls, bound.resolve(party_for))
        except flow_args.FlowArgumentError as exc:
            raise BadFlowArgument(str(exc)) from None
        handle = alice.start_flow(flow)
        log.info("started %s on %s as flow %s", target, STARTER, handle.id)
        _drive(net, alice, handle, keep_hint=data_dir is None)
        try:
            result = handle.result()
        except Exception as exc:
            log.debug("flow %s failed", handle.id, exc_info=True)
            raise FlowFailed(f"{cls.__qualname__} failed: {type(exc).__name__}: "
                             f"{exception_text(exc, MAX_ERROR_TEXT)}") from None
    click.echo(result if isinstance(result, str) else _shown(result))


def _shown(value: object) -> str:
    """``repr(value)``, or what stopped it (a user ``__repr__`` that raises; an int too
    long for Python to write in decimal)."""
    limit = sys.get_int_max_str_digits()
    if isinstance(value, int):   # all its digits: it is the answer asked for
        sys.set_int_max_str_digits(0)
    try:
        return repr(value)
    except Exception as exc:  # noqa: BLE001 - user code
        return f"<{type(value).__qualname__}: repr() raised {type(exc).__name__}>"
    finally:
        sys.set_int_max_str_digits(limit)


def _drive(net: Any, starter: Any, handle: Any, keep_hint: bool) -> None:
    """Run the network until the flow ends, jumping the virtual clock to the next timer
    whenever nothing else moves."""
    for _ in range(MAX_ROUNDS):
        net.run_network()
        if handle.status.finished:
            return
        deadlines = [d for d in (mn.node.scheduler.next_deadline() for mn in net.nodes)
                     if d is not None]
        if not deadlines:
            break
        net.advance_clock(max(0.0, min(deadlines) - net.clock.now()))
    info = next((f for f in starter.node.flows() if f.id == handle.id), None)
    where = f"status {info.status}" if info else "unknown status"
    if info and info.suspended_on:
        where += f", waiting on {info.suspended_on}"
    if info and info.error:
        where += f": {info.error}"
    hint = ("; run again with --data-dir DIR to keep the nodes, then "
            f"'greenflow checkpoints dump --node DIR/{STARTER}'") if keep_hint else ""
    raise FlowFailed(f"flow {handle.id} did not finish ({where}){hint}")


def _flow_help(ctx: click.Context, target: str, cls: type) -> str:
    from greenflow.flows.registry import is_startable

    from greenflow.cli import flow_args

    params, var_kw = flow_args.flow_params(cls)
    fmt = click.HelpFormatter()
    fmt.write_usage(f"{ctx.command_path} {target}", "[--arg NAME=VALUE]... [--data-dir DIR]")
    doc = inspect.getdoc(cls)
    if doc and doc != inspect.getdoc(cls.__mro__[1]):
        fmt.write_paragraph()
        with fmt.indentation():
            fmt.write_text(doc.replace("``", "`"))
    if not is_startable(cls):
        fmt.write_paragraph()
        with fmt.indentation():
            fmt.write_text("Not @startable: cannot be started from the command line.")
    rows = []
    for p in params:
        what = p.type_name + (" (required)" if p.required else f" (default {p.default!r})")
        if p.type_name == "Party":
            what += "; a node name, created on the network"
        rows.append((p.name, what))
    if var_kw:
        rows.append(("...", "any other NAME=VALUE, passed as text"))
    with fmt.section("Flow arguments (--arg NAME=VALUE)"):
        fmt.write_dl(rows) if rows else fmt.write_text("none")
    return fmt.getvalue().rstrip("\n")
