"""trade: delivery-versus-payment trades per second on MockNetwork (target: 1,000/s).

A trade is the one `greenflow run sample.trade` runs (`samples/trade.py`): the seller
offers a commercial paper, the buyer resolves its history, selects and locks cash,
builds and signs the transaction, collects the seller's signature (the seller resolves
the cash's history and checks it is paid), the notary checks for a double spend and
signs, and both vaults record the transaction. Per trade: 3 Ed25519 signatures, 8
signature checks (each signature by each other party once), 4 contract verifications
(each party each transaction once: the paper's issuance and the trade on the buyer, the
cash's issuance and the trade on the seller), 6 transaction ids (one per copy received
or built), 3 flows and 10 frames between 3 nodes: the offer with the paper's history
(sent unasked: the buyer never held the paper), the transaction with the coins' history
(sent unasked too), the seller's end of that exchange and its signature, the notary's
request and answer, the notarised transaction and the seller's end.

Each measurement runs in its own fresh process: a MockNetwork (notary, bank, seller,
buyer), then waves of C concurrent trades. Before each wave, untimed, the bank issues C
coins to the buyer and the seller issues itself C papers; the timed part is one
``start_flows`` of C `SellerFlow` and ``run_network()`` until every trade has settled.
Latency is from that start to the seller's flow end.

Where the time goes, measured in the same runs by wrapping the functions that do it (a
few hundred nanoseconds per call, no profiler): Ed25519 signing and verification (the
PyNaCl bindings), contract verification (`WireTransaction.verify`, contracts and input
resolution), and hashing transactions into their ids (`WireTransaction.id`: the
canonical encoding walk and SHA-256). ``--profile`` adds cProfile's top functions.
"""
from __future__ import annotations

import gc
import shutil
import time
from typing import Any, Optional

from greenflow.benchmarks.common import SuiteResult, Table, percentile, ratio, run_worker, scratch_dir

NAME = "trade"
TARGET = 1_000  # trades/s, the trade target


# ====================================================================== instrumentation
class _Timers:
    """Wall time and calls inside a few functions, by wrapping them in this process."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.calls: dict[str, int] = {}

    def wrap(self, owner: Any, attr: str, label: str) -> None:
        fn = getattr(owner, attr)
        clock = time.perf_counter
        seconds, calls = self.seconds, self.calls
        seconds[label] = 0.0
        calls[label] = 0

        def timed(*args: Any, **kwargs: Any) -> Any:
            t0 = clock()
            try:
                return fn(*args, **kwargs)
            finally:
                seconds[label] += clock() - t0
                calls[label] += 1

        setattr(owner, attr, timed)

    def snapshot(self) -> tuple[dict[str, float], dict[str, int]]:
        return dict(self.seconds), dict(self.calls)


def _instrument() -> _Timers:
    import nacl.bindings

    from greenflow.ledger import transactions

    timers = _Timers()
    timers.wrap(nacl.bindings, "crypto_sign", "signing")
    timers.wrap(nacl.bindings, "crypto_sign_open", "signature_checks")
    timers.wrap(transactions.WireTransaction, "verify", "contracts")
    prop = transactions.WireTransaction.__dict__["id"]  # a cached_property: wrap its function
    holder = type("Holder", (), {"func": staticmethod(prop.func)})
    timers.wrap(holder, "func", "tx_id_hashing")
    prop.func = holder.func
    return timers


# ====================================================================== the worker
def w_trade(concurrency: int, budget: float, sync: bool = True, capture_frames: bool = True,
            min_waves: int = 2, profile: bool = False) -> dict:
    """Waves of ``concurrency`` trades on a MockNetwork until ``budget`` seconds of trading."""
    from greenflow.samples.trade import PRICE, SellerFlow, TradeNetwork, prepare_trades

    from greenflow.benchmarks.common import child_progress

    timers = _instrument()
    base = scratch_dir("trade")
    try:
        tn = TradeNetwork.create(base, sync=sync, capture_frames=capture_frames)
        clock = time.perf_counter
        ends: dict[str, float] = {}
        # Ends only: a progress listener would make the seller's node work out every step
        # of every flow (it does so only for listeners), which the measurement needs not.
        tn.seller.node.scheduler.add_flow_end_listener(lambda fid: ends.__setitem__(fid, clock()))

        spent: dict[str, float] = {k: 0.0 for k in timers.seconds}
        calls: dict[str, int] = {k: 0 for k in timers.calls}
        totals = {"frames": 0, "commits": 0}

        cpu_spent = [0.0]

        def wave(n: int, prof: Any = None) -> tuple[list[float], float]:
            papers = prepare_trades(tn, n)  # untimed
            ends.clear()
            s0, c0 = timers.snapshot()
            d0, commits0 = tn.net.delivered, _commits(tn)
            if prof is not None:
                prof.enable()
            t0, cpu0 = clock(), time.process_time()
            handles = tn.seller.node.start_flows([SellerFlow(tn.buyer.party, p, PRICE) for p in papers])
            tn.net.run_network()
            elapsed = clock() - t0
            cpu_spent[0] += time.process_time() - cpu0
            if prof is not None:
                prof.disable()
            s1, c1 = timers.snapshot()
            for k in spent:
                spent[k] += s1[k] - s0[k]
                calls[k] += c1[k] - c0[k]
            totals["frames"] += tn.net.delivered - d0
            totals["commits"] += _commits(tn) - commits0
            for h in handles:
                h.result()  # a failed trade fails the measurement
            return [ends[h.id] - t0 for h in handles], elapsed

        wave(min(concurrency, 10))  # warm-up: imports, code paths, LMDB maps
        for k in spent:
            spent[k], calls[k] = 0.0, 0
        totals.update(frames=0, commits=0)
        cpu_spent[0] = 0.0
        prof = None
        if profile:
            import cProfile
            prof = cProfile.Profile()
        lat: list[float] = []
        trades = waves = 0
        elapsed = 0.0
        gc.collect()
        while True:
            wave_lat, wave_s = wave(concurrency, prof)
            lat.extend(wave_lat)
            trades += concurrency
            waves += 1
            elapsed += wave_s
            child_progress(f"{trades:,} trades, {trades / elapsed:,.0f}/s")
            if elapsed >= budget and waves >= min_waves:
                break
        out: dict[str, Any] = {
            "trades": trades, "waves": waves, "seconds": elapsed, "trades_per_s": trades / elapsed,
            "p50_ms": percentile(lat, 50) * 1e3, "p99_ms": percentile(lat, 99) * 1e3,
            "cpu_us_per_trade": cpu_spent[0] / trades * 1e6,
            "frames_per_trade": totals["frames"] / trades,
            "commits_per_trade": totals["commits"] / trades,
            "time_s": spent, "calls_per_trade": {k: v / trades for k, v in calls.items()},
            "share_pct": {k: 100.0 * v / elapsed for k, v in spent.items()},
        }
        if prof is not None:
            from greenflow.benchmarks.throughput import _top_functions
            out["profile"] = _top_functions(prof, 20)
        tn.close()
        return out
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _commits(tn: Any) -> int:
    return sum(node.node.store.commits for node in (tn.notary, tn.bank, tn.seller, tn.buyer))


TASKS = {"trade_mock": w_trade}


# ====================================================================== the suite
VARIANTS = (  # key, label, params
    ("durable", "sync on, frame capture on (defaults)", {}),
    ("nosync", "sync off", {"sync": False}),
    ("noframes", "sync on, frame capture off", {"capture_frames": False}),
)
SHARES = (("signing", "sign %"), ("signature_checks", "sig check %"), ("contracts", "contracts %"),
          ("tx_id_hashing", "tx id hash %"))


def run(ctx: Any) -> SuiteResult:
    quick = ctx.quick
    concs = [1, 10] if quick else [1, 10, 100]
    budget = 0.3 if quick else 3.0
    variants = VARIANTS[:1] if quick else VARIANTS
    steps = [(f"{key}@{c}", f"{label} c={c}", {"concurrency": c, "budget": budget,
                                                  "min_waves": 1 if quick else 2, **params})
             for key, label, params in variants for c in concs]
    if ctx.profile:
        steps.append(("profile", "profile c=100", {"concurrency": 100, "budget": budget,
                                                   "profile": True}))
    prog = ctx.progress(NAME, len(steps))
    raw: dict[str, dict] = {}
    for key, label, params in steps:
        prog.step(label)
        raw[key] = run_worker("trade_mock", params, on_line=prog.detail)
        prog.finish_step()
    prog.close()

    figures: dict[str, Any] = {key: {str(c): raw[f"{key}@{c}"] for c in concs}
                               for key, _l, _p in variants}
    if "profile" in raw:
        figures["profile"] = raw["profile"]
    tbl = Table("Trades per second on MockNetwork (delivery versus payment, sample.trade; 4 nodes "
                "in one process on one thread)",
                ["variant", "concurrency", "trades/s", "p50 ms", "p99 ms", "CPU us/trade",
                 *(h for _k, h in SHARES), "frames/trade"])
    ratios: dict[str, Optional[float]] = {}
    best = 0.0
    for key, label, _p in variants:
        for c in concs:
            d = figures[key][str(c)]
            if "error" in d:
                tbl.add(label, c, *([None] * (5 + len(SHARES))))
                tbl.notes.append(f"{label} c={c}: {d['error'].splitlines()[0][:200]}")
                continue
            best = max(best, d["trades_per_s"])
            tbl.add(label, c, d["trades_per_s"], d["p50_ms"], d["p99_ms"], d.get("cpu_us_per_trade"),
                    *(d["share_pct"][k] for k, _h in SHARES), d["frames_per_trade"])
    durable = figures["durable"]
    top = durable[str(concs[-1])]
    if "error" not in top:
        calls = top["calls_per_trade"]
        tbl.notes.append(f"per trade: {calls['signing']:.1f} signatures, {calls['signature_checks']:.1f} "
                         f"signature checks, {calls['contracts']:.1f} contract verifications, "
                         f"{calls['tx_id_hashing']:.1f} transaction ids hashed, "
                         f"{top['commits_per_trade']:.2f} store commits")
        crypto = top["share_pct"]["signing"] + top["share_pct"]["signature_checks"]
        verification = crypto + top["share_pct"]["contracts"]
        figures["crypto_share_pct"] = crypto
        figures["signing_and_verification_share_pct"] = verification
        tbl.notes.append(f"signing and verification (Ed25519 + contracts) take {verification:.0f}% "
                         f"of a trade at c={concs[-1]}; the rest is the flow runtime (checkpoints, "
                         "frame capture, the wire encoding) and the ledger's bookkeeping")
        # The ledger floor: the time inside the trade's signatures, signature checks,
        # contract checks and transaction ids in this run, with the runtime counted as free.
        floor_us = sum(top["time_s"][k] for k, _h in SHARES) / top["trades"] * 1e6
        figures["ledger_floor_us_per_trade"] = floor_us
        ratios["ledger_floor/target"] = ratio(1e6 / floor_us, TARGET)
        tbl.notes.append(f"ledger floor: those four alone take {floor_us:,.0f} us per trade "
                         f"here, so MockNetwork's one thread could not pass {1e6 / floor_us:,.0f} "
                         "trades/s even if flows, checkpoints, messages and the vault cost nothing")
        cpu = top.get("cpu_us_per_trade")
        if cpu:
            rest = cpu - floor_us
            figures["rest_us_per_trade"] = rest
            tbl.notes.append(f"the rest: {rest:,.0f} us of CPU per trade ({rest / top['frames_per_trade']:,.0f} "
                             f"us per frame over {top['frames_per_trade']:.1f} frames): the flow runtime "
                             "(starts, suspensions, checkpoints, frames, acks), the wire encoding and "
                             "the vault")
    tbl.notes.append(f"target: {TARGET:,} trades/s. Published for comparison: open-source "
                     "Corda 4, 68 issuance transactions/s on 32 cores; Corda Enterprise, 617 "
                     "issue-and-pay/s on 24 cores")
    ratios["best/target"] = ratio(best, TARGET)
    for c in concs:
        a, b = durable[str(c)], figures.get("nosync", {}).get(str(c))
        if b is not None and "error" not in a and "error" not in b:
            ratios[f"sync off/on@c={c}"] = ratio(b["trades_per_s"], a["trades_per_s"])
        f = figures.get("noframes", {}).get(str(c))
        if f is not None and "error" not in a and "error" not in f:
            ratios[f"frame capture off/on@c={c}"] = ratio(f["trades_per_s"], a["trades_per_s"])
    tables = [tbl]
    if "profile" in figures and "error" not in figures["profile"]:
        t2 = Table("cProfile, c=100, sync on: top functions by own time",
                   ["function", "file", "calls", "own s", "own %"])
        for row in figures["profile"]["profile"]:
            t2.add(row["function"], f"{row['file']}:{row['line']}", row["calls"], row["tottime_s"],
                   row["tottime_pct"])
        tables.append(t2)
    params = {"concurrencies": concs, "budget_s": budget, "variants": [k for k, _l, _p in variants]}
    return SuiteResult(NAME, params, figures, ratios, tables)
