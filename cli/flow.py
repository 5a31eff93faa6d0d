"""``greenflow flow start|list|watch|result|retry|kill``: operate flows on a running node, over
its RPC (see docs/rpc.md)."""
from __future__ import annotations

import json
import textwrap
from typing import Any, Callable, Optional

import click

from greenflow.cli.errors import CliError, FlowFailed, UsageProblem
from greenflow.cli.params import SECONDS
from greenflow.cli.rpc_target import node_options


@click.group("flow")
def command() -> None:
    """Start and watch flows on a running node (over RPC)."""


def _args(assignments: tuple[str, ...]) -> dict[str, str]:
    from greenflow.cli.errors import BadFlowArgument
    from greenflow.cli.flow_args import FlowArgumentError, parse_assignments

    try:
        return parse_assignments(assignments)
    except FlowArgumentError as exc:
        raise BadFlowArgument(str(exc)) from None


@command.command("start")
@node_options
@click.argument("flow_class")
@click.argument("assignments", nargs=-1, metavar="[NAME=VALUE]...")
@click.option("--client-id", default=None, help="Idempotency key: the same id returns the "
                                                "flow started the first time.")
@click.option("--wait", is_flag=True, help="Show progress live and print the result.")
@click.option("--timeout", default=300.0, show_default=True, type=SECONDS,
              help="With --wait: seconds to wait; a flow still running then is an error "
                   "(exit 1) and goes on (`greenflow flow result --wait` waits again).")
@click.option("--json", "as_json", is_flag=True)
def start(client: Any, flow_class: str, assignments: tuple[str, ...], client_id: Optional[str],
          wait: bool, timeout: float, as_json: bool) -> None:
    """Start FLOW_CLASS (module.Class or module:Class, @startable) with its constructor
    arguments as NAME=VALUE; a party is given by name (peer=Bob). Values are converted
    by the constructor's type hints on the node."""
    args = _args(assignments)
    if wait and not _may_read(client):
        # Following a flow needs `read`; the start's own wait gives its starter the
        # result without it (up to the node's 600 s).
        out = client.start_flow(flow_class, args, client_id=client_id,
                                wait=min(timeout, MAX_START_WAIT))
        if not as_json:
            click.echo(f"started {out['flow_class']} as {out['flow_id']} (its progress is "
                       "not shown: that needs the 'read' permission)", err=True)
        if "finished" not in out:   # a flow another user started with this client id
            raise FlowFailed(f"flow {out['flow_id']} was started before with this client id; "
                             "its result needs the 'read' permission")
        _finish(out, as_json)
        return
    out = client.start_flow(flow_class, args, client_id=client_id)
    fid = out["flow_id"]
    if not wait:
        click.echo(json.dumps(out) if as_json else fid)
        return
    if not as_json:
        click.echo(f"started {out['flow_class']} as {fid}", err=True)
    _finish(_follow(client, fid, timeout, quiet=as_json), as_json)


#: The most a start request may wait for its flow's result (the node's bound).
MAX_START_WAIT = 600.0


def _may_read(client: Any) -> bool:
    """Whether the user may follow flows (the `read` permission)."""
    from greenflow.rpc.client import RpcClientError

    try:
        client.node_info()
    except RpcClientError as exc:
        if exc.status == 403:
            return False
        raise
    return True


def _follow(client: Any, fid: str, timeout: Optional[float], quiet: bool = False) -> dict:
    """Print a flow's progress steps as they happen; return its result document once it
    ends, or after ``timeout`` seconds (then unfinished). The stream is read on a thread:
    the node's keep-alive lines leave it never idle, so the wait is bounded here."""
    import queue
    import threading
    import time

    from greenflow.rpc.client import RpcClientError

    events: queue.Queue = queue.Queue()

    def read() -> None:
        try:
            for item in client.progress(fid, timeout=timeout):
                events.put(item)
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread
            events.put(("error", exc))
        events.put(("closed", None))

    threading.Thread(target=read, name="progress", daemon=True).start()
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        left = None if deadline is None else deadline - time.monotonic()
        if left is not None and left <= 0:
            break
        try:
            event, data = events.get(timeout=left)
        except queue.Empty:
            break
        if event == "status" and not quiet:
            # Where it stands now (a flow asleep for a day showed nothing at all).
            now = data.get("progress_step") or data.get("suspended_on") or data.get("error")
            if now or data.get("status") not in ("RUNNABLE", None):
                click.echo(f"  {data.get('status')}" + (f": {now}" if now else ""), err=True)
        elif event == "progress" and not quiet:
            click.echo(f"  {data['step']}", err=True)
        elif event == "end":
            return data
        elif event == "error":
            if not isinstance(data, RpcClientError) or data.status != 0:
                raise data
            break
        elif event == "closed":
            break
    res = client.result(fid, wait=0)
    if not res.get("finished") and deadline is not None and time.monotonic() >= deadline:
        raise FlowFailed(f"flow {fid} has not finished within {timeout:g} s (status "
                         f"{res.get('status')}); it goes on: `greenflow flow result --wait "
                         f"SECONDS {fid}` waits for it again")
    return res


def _finish(res: dict, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(res))
    elif res.get("finished") and res.get("status") == "COMPLETED":
        click.echo(json.dumps(res.get("result")))
    if not res.get("finished"):
        raise FlowFailed(f"flow {res.get('flow_id')} has not finished (status {res.get('status')})")
    if res.get("status") != "COMPLETED":
        err = res.get("error") or {}
        raise FlowFailed(f"flow {res.get('flow_id')} {res.get('status')}: "
                         f"{err.get('type', '')}: {err.get('message', '')}")


def _statuses(value: Optional[str]) -> Optional[str]:
    """A status no flow can have would list nothing, as if the node had no such flow."""
    if value is None:
        return None
    from greenflow.status import FlowStatus

    known = [s.name for s in FlowStatus]
    wanted = [w.strip().upper() for w in value.split(",") if w.strip()]
    unknown = [w for w in wanted if w not in known]
    if unknown or not wanted:
        raise click.BadParameter(f"unknown status {', '.join(unknown) or repr(value)}; "
                                 f"the statuses are {', '.join(known)}")
    return ",".join(wanted)


@command.command("list")
@node_options
@click.option("--status", default=None, callback=lambda ctx, param, value: _statuses(value),
              help="Only these statuses (comma-separated), e.g. SUSPENDED,HOSPITALIZED.")
@click.option("--limit", default=None, type=click.IntRange(1),
              help="One page of at most this many flows (the node's maximum: 1000), and "
                   "the --cursor of the next. Without it (or --cursor), every flow, read a "
                   "page at a time.")
@click.option("--cursor", default=None, help="Go on from a page's cursor.")
@click.option("--json", "as_json", is_flag=True)
def list_(client: Any, status: Optional[str], limit: Optional[int], cursor: Optional[str],
          as_json: bool) -> None:
    """List unfinished and recently finished flows (unfinished first, newest first). Every
    flow is printed as its page arrives."""
    page = None
    if limit is not None or cursor is not None:
        page = client.flow_page(status, limit=limit, cursor=cursor)
        flows = iter(page["flows"])
        if as_json:
            click.echo(json.dumps(page, indent=2))
            return
    else:
        flows = client.each_flow(status)
        if as_json:   # the JSON of the whole list, written a flow at a time
            first = True
            for f in flows:
                text = textwrap.indent(json.dumps(f, indent=2), "  ")
                click.echo(("[\n" if first else ",\n") + text, nl=False)
                first = False
            click.echo("[]" if first else "\n]")
            return
    shown = 0
    for f in flows:
        shown += 1
        # A parked flow's reason first: what it waited on before it was parked is stale.
        extra = (f.get("error") if f.get("status") == "HOSPITALIZED" else None) \
            or f.get("suspended_on") or f.get("progress_step") or f.get("error") or ""
        extra = extra.splitlines()[0] if extra else ""
        extra = extra if len(extra) <= 200 else extra[:197] + "..."   # all of it: --json
        worker = f"  [{f['worker']}]" if f.get("worker") else ""   # a clustered node
        click.echo(f"{f['id']}  {f['status']:<12} {f['flow_class']}{worker}  {extra}".rstrip())
    if not shown:
        click.echo("no flows")
    if page is not None and page.get("next_cursor"):
        click.echo(f"more: --cursor {page['next_cursor']}")


@command.command("result")
@node_options
@click.argument("flow_id")
@click.option("--wait", "wait", default=0.0, show_default=True, type=SECONDS,
              help="Seconds to wait for it to finish.")
@click.option("--json", "as_json", is_flag=True)
def result(client: Any, flow_id: str, wait: float, as_json: bool) -> None:
    """Print a flow's result (exit 1 if it failed, was killed or has not finished)."""
    _finish(client.result(flow_id, wait=wait), as_json)


@command.command("watch")
@node_options
@click.argument("flow_id", required=False)
def watch(client: Any, flow_id: Optional[str]) -> None:
    """Show progress live: of one flow until it ends (exit 1 if it failed or was killed,
    as `result`), or of every flow until Ctrl-C."""
    if flow_id is not None:
        res = _follow(client, flow_id, timeout=None)  # type: ignore[arg-type]
        if res.get("status") == "COMPLETED":
            click.echo(f"{flow_id} COMPLETED: {json.dumps(res.get('result'))}")
            return
        err = res.get("error") or {}
        raise FlowFailed(f"flow {flow_id} {res.get('status')}: {err.get('type', '')}: "
                         f"{err.get('message', '')}")
    for event, data in client.progress(None):
        if event == "status":
            for f in data["flows"]:
                if f["status"] not in ("COMPLETED", "FAILED", "KILLED"):
                    click.echo(f"{f['id']}  {f['status']}  {f.get('progress_step') or ''}".rstrip())
            if data.get("more"):   # the stream's first event holds one page
                click.echo(f"(the node lists more flows than the first {len(data['flows'])} "
                           "looked at here, finished ones among them, which are not shown: "
                           "`greenflow flow list` lists them all; every flow's progress "
                           "follows here)")
        elif event == "progress":
            click.echo(f"{data['flow_id']}  {data['step']}")
        elif event == "end":
            click.echo(f"{data['flow_id']}  {data['status']}")


@command.command("retry")
@node_options
@click.argument("flow_ids", nargs=-1)
@click.option("--all-hospitalized", is_flag=True,
              help="Every HOSPITALIZED flow of the node, instead of named ones.")
def retry(client: Any, flow_ids: tuple[str, ...], all_hospitalized: bool) -> None:
    """Run HOSPITALIZED flows again from their last checkpoints (after fixing what parked
    them, e.g. deploying code their journals replay with). Exit 1 if any was not
    retried."""
    ids = _chosen(client, flow_ids, "HOSPITALIZED" if all_hospitalized else None, "retry")
    missed = _each(ids, client.retry, lambda fid, out: (
        f"{fid} retried" if out["retried"] else
        f"{fid} was not retried: it is not HOSPITALIZED (see `greenflow flow list`)",
        out["retried"]))
    if missed:
        raise CliError(f"{missed} of {len(ids)} flows were not retried" if len(ids) > 1 else
                       f"{ids[0]} was not retried: it is not HOSPITALIZED (see "
                       "`greenflow flow list`)")


@command.command("kill")
@node_options
@click.argument("flow_ids", nargs=-1)
@click.option("--status", default=None, callback=lambda ctx, param, value: _statuses(value),
              help="Kill every unfinished flow of these statuses (comma-separated, e.g. "
                   "HOSPITALIZED), instead of named ones; needs --yes.")
@click.option("--yes", is_flag=True, help="Yes, kill every flow --status selects.")
def kill(client: Any, flow_ids: tuple[str, ...], status: Optional[str], yes: bool) -> None:
    """Kill flows: each unwinds, its peers see UnexpectedFlowEnd."""
    if status is not None and not yes:
        raise UsageProblem("--status kills every flow of those statuses: add --yes to do so")
    ids = _chosen(client, flow_ids, status, "kill")
    _each(ids, client.kill, lambda fid, out: (
        f"{fid} {'killed' if out['killed'] else 'not killed (already finished)'}", True))


def _chosen(client: Any, flow_ids: tuple[str, ...], status: Optional[str], verb: str) -> list[str]:
    """The flows named, or every unfinished one of ``status`` (read a page at a time)."""
    if bool(flow_ids) == (status is not None):
        raise UsageProblem(f"name the flows to {verb}, or select them by status (not both)")
    if status is None:
        return list(flow_ids)
    finished = {"COMPLETED", "FAILED", "KILLED"}
    return [f["id"] for f in client.each_flow(status) if f["status"] not in finished]


def _each(ids: list[str], call: Callable[[str], dict],
          said: Callable[[str, dict], tuple[str, bool]]) -> int:
    """``call`` each flow (four at a time: a node answers each in a few ms, a command
    line in a quarter of a second), printing a line per flow; how many were not done."""
    from concurrent.futures import ThreadPoolExecutor

    from greenflow.rpc.client import RpcClientError
    if len(ids) == 1:   # one flow: its error is the command's (exit code and all)
        text, done = said(ids[0], call(ids[0]))
        if done:   # (not done: the caller's error says it, once, on stderr)
            click.echo(text)
        return int(not done)

    def one(fid: str) -> Any:
        try:
            return call(fid)
        except RpcClientError as exc:   # e.g. a flow that ended meanwhile: go on
            return exc
    missed = 0
    with ThreadPoolExecutor(4) as pool:
        for fid, out in zip(ids, pool.map(one, ids)):
            if isinstance(out, RpcClientError):
                text, done = f"{fid}: {out.type}: {out.message}", False
            else:
                text, done = said(fid, out)
            missed += not done
            click.echo(text)
    if len(ids) > 1:
        click.echo(f"{len(ids) - missed} of {len(ids)} done", err=True)
    return missed
