"""The console's HTML, rendered on the server from the dicts of `greenflow.console.data`.

Every value shown goes through `e()` (HTML escaping): flow classes, ids, locals and
errors come from flows and peers and are never trusted. Each page has a ``live`` part
that its script reloads as a fragment (``X-Console-Fragment`` header) while the page is
open; filters and buttons sit outside it, so typing is never interrupted.
"""
from __future__ import annotations

import html
import os
import sys
from typing import Any, Iterable, Optional
from urllib.parse import quote, urlencode

from greenflow.console.data import ORDER

UNFINISHED = ("RUNNABLE", "SUSPENDED", "HIBERNATED", "HOSPITALIZED")


def e(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _qs(query: dict, **changes: Any) -> str:
    q = {k: v for k, v in query.items() if v not in (None, "")}
    for k, v in changes.items():
        if v in (None, ""):
            q.pop(k, None)
        else:
            q[k] = v
    return ("?" + urlencode(q)) if q else ""


def badge(status: str) -> str:
    return f'<span class="badge s-{e(status).lower()}">{e(status)}</span>'


def layout(title: str, user: Any, body: str, *, active: str, csrf: str, node_name: str) -> str:
    nav = "".join(
        f'<a href="/console/{p}" class="{"active" if p == active else ""}">{label}</a>'
        for p, label in (("flows", "Flows"), ("vault", "Vault"), ("node", "Node")))
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="csrf-token" content="{e(csrf)}">
<title>{e(title)} · {e(node_name)} · greenflow</title>
<link rel="stylesheet" href="/console/static/console.css">
<script src="/console/static/console.js" defer></script>
</head><body>
<header><span class="brand">greenflow</span><span class="node">{e(node_name)}</span>
<nav>{nav}<a href="/metrics">Metrics</a></nav>
<form method="post" action="/console/logout" class="logout">
<input type="hidden" name="csrf" value="{e(csrf)}">
<span class="user">{e(getattr(user, "username", ""))}</span>
<button type="submit">Log out</button></form>
</header>
<main>{body}</main>
</body></html>"""


def login_page(message: Optional[str], next_path: str) -> str:
    """Served with 401 to every unauthenticated page request (inline style: the static
    files need a login too)."""
    msg = f'<p class="error" id="login-error">{e(message)}</p>' if message else ""
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Log in · greenflow</title>
<style>
body{{font-family:system-ui,sans-serif;background:#f4f6f8;display:flex;justify-content:center;
margin-top:12vh;color:#1d2733}}
form{{background:#fff;padding:2em 2.5em;border-radius:8px;box-shadow:0 1px 4px #0002;min-width:18em}}
h1{{font-size:1.3em;margin-top:0}} label{{display:block;margin:.8em 0 .2em}}
input{{width:100%;padding:.45em;box-sizing:border-box}} button{{margin-top:1.2em;padding:.5em 1.5em}}
.error{{color:#b00020}}
</style></head><body>
<form method="post" action="/console/login" id="login-form">
<h1>greenflow console</h1>{msg}
<input type="hidden" name="next" value="{e(next_path)}">
<label for="username">User</label><input id="username" name="username" autocomplete="username" autofocus>
<label for="password">Password</label><input id="password" name="password" type="password" autocomplete="current-password">
<button type="submit" id="login">Log in</button>
<p><small>The users and passwords of the node's RPC (<code>node.toml</code>).</small></p>
</form></body></html>"""


# ---------------------------------------------------------------------- flows
def flows_page(page: dict, query: dict) -> str:
    status = (query.get("status") or "").upper()
    options = "".join(f'<option value="{s}"{" selected" if s == status else ""}>{s}</option>'
                      for s in [""] + ORDER)
    return f"""<h1>Flows</h1>
<form method="get" action="/console/flows" id="flow-filters" class="filters">
<label>Status <select name="status" id="f-status">{options}</select></label>
<label>Class <input name="flow_class" id="f-class" value="{e(query.get("flow_class"))}" placeholder="e.g. SellerFlow"></label>
<label>Started since <input name="since" id="f-since" value="{e(query.get("since"))}" placeholder="15m, 2h, 2026-01-31"></label>
<label>Id contains <input name="q" id="f-q" value="{e(query.get("q"))}"></label>
<button type="submit" id="f-apply">Filter</button> <a href="/console/flows">Clear</a>
</form>
<div id="live" data-live="2000">{flows_fragment(page, query)}</div>"""


def flows_fragment(page: dict, query: dict) -> str:
    counts = page["counts"]
    chips = "".join(
        f'<a class="chip{" on" if (query.get("status") or "").upper() == s else ""}" '
        f'data-status="{s}" href="/console/flows{e(_qs(query, status=s, page=None))}">'
        f'{badge(s)} <span class="count" id="count-{s}" data-n="{counts.get(s, 0)}">{counts.get(s, 0)}</span></a>'
        for s in ORDER)
    rows = "".join(_flow_row(r) for r in page["flows"]) or \
        '<tr><td colspan="7" class="empty">No flows match.</td></tr>'
    return f"""<div class="chips" id="status-counts">{chips}</div>
<p class="summary">{page["total"]} of {page["all"]} flows match · page {page["page"]} of {page["pages"]}
{f'· <strong>only the newest {page["truncated"]:,} stored unfinished and finished flows are listed</strong>' if page.get("truncated") else ""}</p>
<table id="flow-table"><thead><tr><th>Flow</th><th>Class</th><th>Status</th><th>Step</th>
<th>Waiting for</th><th>Started</th><th>Error</th></tr></thead>
<tbody>{rows}</tbody></table>
{_pager(page["page"], page["pages"], query, "page")}"""


def _flow_row(r: dict) -> str:
    fid = r["id"]
    return (f'<tr data-flow-id="{e(fid)}" data-status="{e(r["status"])}">'
            f'<td><a class="mono" href="/console/flows/{quote(fid)}">{e(fid)}</a></td>'
            f'<td class="cls">{e(_short_class(r["flow_class"]))}</td>'
            f'<td class="status">{badge(r["status"])}</td>'
            f'<td>{e(r["progress_step"])}</td><td>{e(r["suspended_on"])}</td>'
            f'<td class="time">{e(r.get("started") or r.get("finished"))}</td>'
            f'<td class="err" title="{e(r["error"])}">{e(_clip(r["error"], 140))}</td></tr>')


def _clip(text: Optional[str], n: int) -> Optional[str]:
    return text if text is None or len(text) <= n else text[:n - 1] + "…"


def short_path(path: Optional[str]) -> str:
    """A source file as its import path shows it (``samples/trade.py``), not where this
    machine keeps it."""
    if not path:
        return ""
    best = ""
    for entry in sys.path:
        root = os.path.abspath(entry or os.getcwd()) + os.sep
        if path.startswith(root) and len(root) > len(best):
            best = root
    return path[len(best):] if best else os.path.basename(path)


def _short_class(path: Optional[str]) -> str:
    return path or ""


def _pager(page: int, pages: int, query: dict, key: str) -> str:
    if pages <= 1:
        return ""
    prev = (f'<a href="{e(_qs(query, **{key: page - 1}))}" rel="prev">‹ Previous</a>'
            if page > 1 else '<span class="off">‹ Previous</span>')
    nxt = (f'<a href="{e(_qs(query, **{key: page + 1}))}" rel="next">Next ›</a>'
           if page < pages else '<span class="off">Next ›</span>')
    return f'<nav class="pager">{prev} <span>{page} / {pages}</span> {nxt}</nav>'


# ---------------------------------------------------------------------- one flow
def flow_page(d: dict, user: Any) -> str:
    fid = d["id"]
    unfinished = d["status"] in UNFINISHED
    buttons = ""
    if unfinished and user.allows("kill"):
        buttons += (f'<button class="danger" id="kill" data-action="kill" '
                    f'data-confirm="Kill flow {e(fid)}? It unwinds, its peers see it end, and '
                    f'its result becomes FlowKilled. This cannot be undone.">Kill</button>')
    if d["status"] == "HOSPITALIZED" and (user.allows("admin") or user.allows("retry")):
        buttons += (f'<button id="retry" data-action="retry" data-confirm="Retry flow {e(fid)} '
                    f'from its last checkpoint?">Retry</button>')
    events = f' data-events="/console/api/flows/{quote(fid)}/events"' if unfinished else ""
    return f"""<h1>Flow <span class="mono">{e(fid)}</span></h1>
<div class="actions" data-flow-id="{e(fid)}">{buttons}<span id="action-result"></span></div>
<div id="live" data-live="3000" data-flow-id="{e(fid)}"{events}>
{flow_fragment(d)}</div>"""


def flow_fragment(d: dict) -> str:
    parts = [f"""<table class="kv">
<tr><th>Class</th><td class="mono">{e(d["flow_class"])}</td></tr>
<tr><th>Status</th><td id="flow-status" data-status="{e(d["status"])}">{badge(d["status"])}
{'<span class="muted">(in memory)</span>' if d.get("resident") else ""}</td></tr>
<tr><th>Started</th><td>{e(d.get("started") or "")}</td></tr>
{f'<tr><th>Finished</th><td>{e(d.get("finished_at_iso"))}</td></tr>' if d.get("finished_at_iso") else ""}
<tr><th>Waiting for</th><td id="waiting-for">{e(d.get("suspended_on") or "—")}</td></tr>
{f'<tr><th>Error</th><td class="err">{e(d["error"])}</td></tr>' if d.get("error") else ""}
{f'<tr><th>Result</th><td class="mono">{e(d["result"])}</td></tr>' if d.get("result") else ""}
{f'<tr><th>Suspensions</th><td>{e(d.get("suspension_count"))} · journal entries {e(d.get("journal_entries"))}</td></tr>' if "suspension_count" in d else ""}
</table>"""]
    parts.append('<section><h2>Progress</h2>' + _tree(d.get("progress") or [], "progress-tree")
                 + '</section>')
    h = d.get("hospital")
    if h:
        parts.append(f"""<section class="hospital" id="hospital"><h2>Hospital</h2>
<p class="diagnosis">{e(h["diagnosis"])}</p>
<p>{"Automatic retry " + str(h["retries"]) + " due at " + e(h["retry_at"]) if h["automatic"]
    else "Parked for an operator: fix the cause (e.g. deploy compatible code), then Retry; or Kill."}</p>
</section>""")
    sessions = d.get("sessions") or []
    if sessions:
        rows = "".join(
            f'<tr{" class=waiting" if s["waiting"] else ""}><td class="mono">{e(s["id"])}</td>'
            f'<td>{e(s["counterparty"])}</td><td>{e(s["role"])}</td><td>{e(s["protocol"])}</td>'
            f'<td>{e(s["state"])}{" · peer ended" if s["peer_ended"] else ""}</td>'
            f'<td>{e(s["sent"])}</td>'
            f'<td>{e("no more" if s["received"] is None else s["received"])}</td>'
            f'<td>{"← waiting" if s["waiting"] else ""}</td></tr>' for s in sessions)
        parts.append(f"""<section><h2>Sessions</h2><table id="sessions"><thead><tr><th>Session</th>
<th>Counterparty</th><th>Role</th><th>Protocol</th><th>State</th><th>Sent</th><th>Received</th><th></th>
</tr></thead><tbody>{rows}</tbody></table></section>""")
    frames = d.get("frames") or []
    if frames:
        parts.append('<section><h2>Stack</h2><p class="muted">From <code>call()</code> down, '
                     'as captured at the last suspension; secrets redacted.</p><div id="stack">'
                     + "".join(_frame(f, i) for i, f in enumerate(frames)) + "</div></section>")
    journal = d.get("journal") or []
    if journal:
        items = "".join(
            f'<li class="{"suspends" if j["suspends"] else "inline"}{" pending" if j.get("pending") else ""}">'
            f'<span class="idx">{e(j["index"])}</span> <span class="kind">{e(j["kind"])}</span> '
            f'<span class="asked">{e(j["asked"])}</span>'
            + (f' <span class="arrow">→</span> <span class="outcome mono">{e(j["outcome"])}</span>'
               if j["outcome"] is not None else (' <span class="waiting">waiting…</span>'
                                                 if j.get("pending") else ""))
            + (f' <span class="when">until {e(j["when"])}</span>' if j.get("when") else "")
            + (f' <span class="at muted">· recorded {e(j["at"])}</span>' if j.get("at") else "")
            + "</li>" for j in journal)
        parts.append(f'<section><h2>Journal</h2><ol class="timeline" id="journal">{items}</ol>'
                     '</section>')
    return "\n".join(parts)


def _frame(f: dict, i: int) -> str:
    locs = "".join(f'<tr data-local="{e(k)}"><th class="mono">{e(k)}</th><td class="mono">{e(v)}</td></tr>'
                   for k, v in (f.get("locals") or {}).items())
    where = f'{e(short_path(f.get("file")))}:{e(f.get("line"))}'
    return (f'<details class="frame" open><summary><span class="mono fn">{e(f.get("function"))}</span> '
            f'<span class="where" title="{e(f.get("file"))}">{where}</span></summary>'
            f'<table class="locals">{locs or "<tr><td>(no locals)</td></tr>"}</table></details>')


def _tree(nodes: Iterable[dict], ident: Optional[str] = None) -> str:
    items = "".join(f'<li class="step {e(n["state"])}" data-step="{e(n["label"])}">'
                    f'<span class="mark"></span>{e(n["label"])}'
                    + (_tree(n["children"]) if n.get("children") else "") + "</li>"
                    for n in nodes)
    if not items:
        items = '<li class="muted">This flow has no progress tracker.</li>'
    return f'<ul class="tree"{f" id={ident}" if ident else ""}>{items}</ul>'


# ---------------------------------------------------------------------- vault
def vault_page(v: dict, query: dict) -> str:
    return f"""<h1>Vault</h1>
<div id="live" data-live="5000">{vault_fragment(v, query)}</div>"""


def vault_fragment(v: dict, query: dict) -> str:
    if not v["open"]:
        return "<p>This node's apps have no vault.</p>"
    types = "".join(f'<a class="chip{" on" if t["type"] == v["type"] else ""}" '
                    f'href="/console/vault{e(_qs(query, type=t["type"], page=None))}">{e(t["type"])} '
                    f'<span class="count">{t["count"]}</span></a>' for t in v["types"]) \
        or '<p class="muted">No unconsumed states.</p>'
    states = "".join(f'<tr><td class="mono">{e(s["ref"])}</td><td class="mono">{e(s["state"])}</td>'
                     f'<td>{e(s["locked_by"] or "")}</td></tr>' for s in v["states"])
    txs = "".join(f'<tr><td class="mono">{e(t["id"])}</td><td>{e(t.get("inputs"))}</td>'
                  f'<td>{e(t.get("outputs"))} {e(", ".join(t.get("output_types", [])))}</td>'
                  f'<td>{e(", ".join(t.get("commands", [])))}</td><td>{e(t.get("notary"))}</td>'
                  f'<td>{e(t.get("signatures"))}</td></tr>' for t in v["transactions"])
    return f"""<section><h2>Unconsumed states by type</h2><div class="chips" id="state-types">{types}</div>
{f'<table id="states"><thead><tr><th>Ref</th><th>State</th><th>Locked by flow</th></tr></thead><tbody>{states}</tbody></table>' if states else ""}
{_pager(v.get("page", 1), v.get("pages", 1), query, "page")}</section>
<section><h2>Recorded transactions <span class="count">{v["tx_total"]}</span></h2>
<table id="transactions"><thead><tr><th>Id</th><th>Inputs</th><th>Outputs</th><th>Commands</th>
<th>Notary</th><th>Signatures</th></tr></thead><tbody>{txs}</tbody></table>
{_pager(v.get("tx_page", 1), v.get("tx_pages", 1), query, "tx_page")}</section>"""


# ---------------------------------------------------------------------- node
def node_page(n: dict, user: Any, csrf: str) -> str:
    toggle = ""
    if user.allows("admin"):
        toggle = (f'<form method="post" action="/console/node/draining" class="inline">'
                  f'<input type="hidden" name="csrf" value="{e(csrf)}">'
                  f'<input type="hidden" name="enabled" value="{"false" if n["draining"] else "true"}">'
                  f'<button type="submit" id="toggle-draining" data-confirm="'
                  f'{"Stop draining and start new flows again?" if n["draining"] else "Drain the node? It starts no new flows until you turn this off."}">'
                  f'{"Stop draining" if n["draining"] else "Start draining"}</button></form>')
    return f"""<h1>Node</h1><div id="live" data-live="3000">{node_fragment(n)}</div>
<p class="buttons">{toggle}</p>"""


def _bytes(n: Optional[int]) -> str:
    if n is None:
        return "?"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)


def node_fragment(n: dict) -> str:
    peers = "".join(
        f'<tr data-peer="{e(p["name"])}"><td>{e(p["name"])}{" (notary)" if p["notary"] else ""}</td>'
        f'<td class="mono">{e(p["address"])}</td>'
        f'<td>{_up(p["link_up"]) if p["seen"] else _idle("not dialled yet")}</td>'
        f'<td>{_up(p["inbound_up"]) if p["inbound_up"] else _idle("not connected")}</td>'
        f'<td>{e(p["frames_out"])}</td><td>{e(p["frames_in"])}</td><td>{e(p["unacked"])}</td></tr>'
        for p in n["peers"]) or '<tr><td colspan="7" class="empty">No other parties on the network map.</td></tr>'
    return f"""<table class="kv" id="node-info">
<tr><th>Name</th><td>{e(n["name"])}</td></tr>
<tr><th>Public key</th><td class="mono">{e(n["public_key"])}</td></tr>
<tr><th>Apps</th><td>{e(", ".join(n["apps"] or []) or "(all imported)")}</td></tr>
<tr><th>Started</th><td>{e(n["started"])} · pid {e(n["pid"])}</td></tr>
<tr><th>Draining</th><td id="draining">{"on" if n["draining"] else "off"}</td></tr>
<tr><th>Store</th><td id="store-size">{_bytes(n["store_bytes"])} in use · file {_bytes(n["store_file_bytes"])}</td></tr>
<tr><th>Flows</th><td><span id="resident">{n["resident"]}</span> resident ·
<span id="hibernated">{n["hibernated"]}</span> hibernated (or hospitalized) · {n["unfinished"]} unfinished ·
{n["flows_started"]} started since the node opened · {n["commits"]} commits</td></tr>
</table>
<h2>Peers</h2>
<table id="peers"><thead><tr><th>Party</th><th>Address</th><th>Our link</th><th>Their link</th>
<th>Frames sent</th><th>Frames received</th><th>Unacknowledged</th></tr></thead><tbody>{peers}</tbody></table>"""


def _idle(text: str) -> str:
    return f'<span class="badge idle">{e(text)}</span>'


def _up(up: bool) -> str:
    return '<span class="badge up">up</span>' if up else '<span class="badge down">down</span>'
