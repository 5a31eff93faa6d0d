"""`greenflow run sample.trade --processes`: the same trade on real node processes.

Four node processes (`greenflow.testing.node_processes.ProcessNetwork`: a notary, a bank,
a seller and a buyer) on loopback TCP, each with its own LMDB store under the data
directory, driven over their RPC: the same flows as in process, started with
`SellPaperFlow` and friends (arguments a command line can give). Progress comes from
each node's progress stream. ``--crash`` sends the buyer SIGKILL while it collects the
seller's signature and starts it again from its directory.
"""
from __future__ import annotations

import threading
import time
from typing import Any, Callable

import click

from greenflow.samples.trade import (FACE_VALUE, PRICE_LIMIT, BuyerFlow, _Display,
                    announce_network, announce_trades, cash_per_trade, make_summary,
                    settlement_problems)

APP = "samples.trade"
NOTARY, BANK, SELLER, BUYER = "Notary", "Bank", "Seller", "Buyer"
WAIT = 120.0  # seconds for any one flow


def run_on_processes(data_dir: str, trades: int, price: int, crash: bool,
                     say: Callable[[str], None], quiet: bool) -> dict:
    from greenflow.testing.node_processes import ProcessNetwork

    say("Starting node processes (TCP on loopback, RPC) ...")
    with ProcessNetwork(data_dir, [BANK, SELLER, BUYER], notary=NOTARY, apps=[APP]) as pn:
        pn.start_all(wait=60)
        announce_network(say, NOTARY, BANK, SELLER, BUYER)
        bank, seller, buyer = pn.client(BANK), pn.client(SELLER), pn.client(BUYER)
        _run(buyer, "SetPriceLimitFlow", {"amount": PRICE_LIMIT})
        _run_many(bank, "IssueCashFlow", {"amount": cash_per_trade(price), "owner": BUYER,
                                          "notary": NOTARY}, trades)
        _run_many(seller, "IssuePaperFlow", {"reference": None, "face_value": FACE_VALUE,
                                             "notary": NOTARY}, trades)
        # The bank's flows end once they have sent the cash; the buyer records it when its
        # side has run, which may be a moment later: count only once it has.
        _wait_for_cash(buyer, trades * cash_per_trade(price))
        before = {"seller": _run(seller, "HoldingsFlow", {}), "buyer": _run(buyer, "HoldingsFlow", {})}
        announce_trades(say, SELLER, BUYER, before, trades, price)

        display = _Display(trades, quiet=quiet)
        watchers = [_Watcher(pn, SELLER, display), _Watcher(pn, BUYER, display)]
        crash_info = None
        t0 = time.perf_counter()
        started = seller.start_flow(f"{APP}.SellPaperFlow", {"buyer": BUYER, "price": price},
                                    count=trades)
        ids = started.get("flow_ids") or [started["flow_id"]]
        display.seller_flows.update(ids)
        if crash:
            crash_info = _crash_buyer(pn, display, watchers)
        outcomes = [seller.result(fid, wait=WAIT) for fid in ids]
        elapsed = time.perf_counter() - t0
        deadline = time.monotonic() + 5  # let the buyer's last steps reach the screen
        while display.ended.get(BUYER, 0) < trades and time.monotonic() < deadline:
            time.sleep(0.01)
        for w in watchers:
            w.stop()
        display.close()
        failed = [o for o in outcomes if o.get("status") != "COMPLETED"]
        if failed:
            error = failed[0].get("error") or {}
            raise click.ClickException(f"{len(failed)} of {trades} trade(s) failed: "
                                       f"{error.get('type', failed[0].get('status'))}: {error.get('message', '')}")
        after = {"seller": _run(seller, "HoldingsFlow", {}), "buyer": _run(buyer, "HoldingsFlow", {})}
        problems = settlement_problems(before, after, trades, BUYER)
        left = sum(len(pn.client(n).checkpoints()) for n in (SELLER, BUYER, NOTARY))
        if left:
            problems.append(f"{left} flow checkpoint(s) left unfinished")
        if problems:
            raise click.ClickException("the trade did not settle cleanly: " + "; ".join(problems))
        return make_summary(trades, [o["result"] for o in outcomes], NOTARY, elapsed, crash_info,
                            (SELLER, BUYER), before, after)


def _run(client: Any, flow: str, args: dict) -> Any:
    out = client.start_flow(f"{APP}.{flow}", args, wait=WAIT)
    return _value(flow, out)


def _wait_for_cash(buyer: Any, amount: int) -> None:
    deadline = time.monotonic() + WAIT
    while True:
        held = sum(_run(buyer, "HoldingsFlow", {})["cash"].values())
        if held >= amount:
            return
        if time.monotonic() > deadline:
            raise click.ClickException(f"the buyer holds {held} of the {amount} issued to it "
                                       f"after {WAIT:.0f}s")
        time.sleep(0.05)


def _run_many(client: Any, flow: str, args: dict, count: int) -> list:
    if count == 1:
        return [_run(client, flow, args)]
    ids = client.start_flow(f"{APP}.{flow}", args, count=count)["flow_ids"]
    return [_value(flow, client.result(fid, wait=WAIT)) for fid in ids]


def _value(flow: str, outcome: dict) -> Any:
    if outcome.get("status") != "COMPLETED":
        error = outcome.get("error") or {}
        raise click.ClickException(f"{flow} did not complete ({outcome.get('status')}): "
                                   f"{error.get('type', '')}: {error.get('message', '')}")
    return outcome["result"]


class _Watcher:
    """Follows one node's progress stream on a thread and shows it."""

    def __init__(self, pn: Any, name: str, display: _Display) -> None:
        self.client = pn.client(name)
        self.name = name
        self.display = display
        self.stopped = False
        self.ready = threading.Event()  # the stream is open: no step will be missed
        self.thread = threading.Thread(target=self._follow, name=f"progress-{name}", daemon=True)
        self.thread.start()
        self.ready.wait(10)

    def _follow(self) -> None:
        try:
            for event, doc in self.client.progress(timeout=WAIT):
                self.ready.set()
                if self.stopped:
                    return
                if event == "progress":
                    self.display.show(self.name, doc["flow_id"], doc["step"])
                elif event == "end":
                    error = (doc.get("error") or {})
                    self.display.show(self.name, doc["flow_id"], None,
                                      (doc.get("status"), f"{error.get('type')}: {error.get('message')}"))
        except Exception:  # noqa: BLE001 - the node went away (a power cut): nothing to show
            self.ready.set()

    def stop(self) -> None:
        self.stopped = True


def _crash_buyer(pn: Any, display: _Display, watchers: list) -> dict:
    mark = BuyerFlow.COLLECTING.label
    deadline = time.monotonic() + WAIT
    while not (display.buyer_step or "").startswith(mark):
        if display.failures:   # (the trade was refused, say: waiting on would be for nothing)
            raise click.ClickException(f"--crash: the trade ended before the buyer reached "
                                       f"'{mark}'; nothing to crash: {display.failures[0]}")
        if time.monotonic() > deadline:
            raise click.ClickException(f"--crash: the buyer never reached '{mark}'")
        time.sleep(0.001)
    step = display.buyer_step
    pn.kill(BUYER)  # SIGKILL: no shutdown, nothing flushed
    display.note(f"  ⚡ power cut: {BUYER} killed (SIGKILL) at '{step}'; starting it again from its "
                 "directory")
    # What the power cut left on disk, read before the node starts again (once it runs,
    # the resumed flow may finish before anyone could count it).
    from greenflow.node import read_checkpoints
    unfinished = read_checkpoints(pn.dir(BUYER))
    pn.start(BUYER, wait=60)
    watchers.append(_Watcher(pn, BUYER, display))
    display.note(f"  ↻ {BUYER} restarted: {len(unfinished)} flow(s) unfinished, resuming from their "
                 "checkpoints")
    return {"node": BUYER, "at_step": step, "flows_resumed": len(unfinished), "signal": "SIGKILL"}

