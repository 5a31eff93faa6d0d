"""Chaos: hundreds of concurrent trades on real node processes while nodes are killed (SIGKILL, SIGTERM).

`greenflow run sample.chaos` starts five node processes on loopback (a notary, a bank
and three parties: Alice, Bob and Carol), has the bank issue cash to each party and each
party issue itself commercial papers, then runs ``--trades`` trades among the parties
(the seller sells one paper to the buyer for cash, `samples.trade`'s delivery versus
payment), started in bursts over ``--duration`` seconds. Every ``--kill-every`` seconds
(jittered) it sends a random node, the notary included, SIGKILL and starts it again from
its directory after a short random delay; with ``--freeze-share`` some of those faults
are freezes instead (SIGSTOP, then SIGCONT: a partition as the node's peers see it), and
with ``--term-share`` some of the kills are clean shutdowns (SIGTERM, which must exit 0,
then the same restart). ``--pings N`` adds N ping-pong flows among the parties, started
during the chaos with client ids; each must complete exactly once with the right sum. The
bank also issues more cash during the run. Some trades are priced above the buyer's limit on purpose: they must fail cleanly.

Then the network settles (bounded) and the ledger is checked through every node's RPC
(`LedgerSnapshotFlow`, started like any flow):

\b
- every trade completed exactly once on both sides (in both vaults, the buyer holds
  the paper, the notary consumed it for that transaction) or failed cleanly on both
  sides (the seller still holds the paper, nobody recorded a transaction spending it);
- cash and paper totals are conserved across all vaults (cash: plus what the bank's
  completed issuances added);
- no state is spent twice (the notary's records, the vaults' transactions and consumed
  marks agree; no vault still holds a state the notary saw consumed);
- no flow is left unfinished on any node, and no soft lock is left.

It prints a report with those counts and exits 1, with the details, if any fails.
Everything is bounded in time: the trades, the kills and the settling.
"""
from __future__ import annotations

import json as _json
import math
import random
import signal
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Any, Callable, Optional

import click

from greenflow import FlowLogic, startable
from greenflow.ledger import ContractState

from greenflow.samples._trade_processes import WAIT, _run
from greenflow.storage import is_postgres
from greenflow.samples.trade import DEFAULT_CURRENCY, FACE_VALUE, PRICE_LIMIT, Cash, CommercialPaper, cash_units

APPS = ["samples.trade", "samples.chaos", "samples.ping"]
PING_FLOW = "samples.ping.Ping"
NOTARY, BANK = "Notary", "Bank"
PARTIES = ["Alice", "Bob", "Carol"]
TRADE_FLOW = "samples.trade.SellPaperFlow"
ISSUE_CASH_FLOW = "samples.trade.IssueCashFlow"
SNAPSHOT_FLOW = "samples.chaos.LedgerSnapshotFlow"
UNFINISHED = "RUNNABLE,SUSPENDED,HIBERNATED,HOSPITALIZED"
EXPECTED_REFUSAL = "UnacceptablePrice"


# ============================================================================ on the nodes
def _ref(tx_hex: str, index: int) -> str:
    return f"{tx_hex}:{index}"


def _ref_of_key(key: bytes) -> str:
    return _ref(bytes(key[:32]).hex(), int.from_bytes(bytes(key[32:36]), "big"))


@startable
class LedgerSnapshotFlow(FlowLogic):
    """What this node's ledger records, as plain JSON: its unconsumed states (cash and
    papers), the inputs of every transaction it recorded, its consumed marks, its soft
    locks and, on a notary, the notary's record of consumed states. A query for checks:
    it never suspends, so it reads the store directly (nothing is replayed)."""

    def call(self) -> dict:
        from greenflow.ledger.crypto import SecureHash

        services = self.services
        vault, store = services.vault, services.store
        states = []
        for sar in vault.query(ContractState):
            s, ref = sar.state, _ref(sar.ref.tx_id.hex, sar.ref.index)
            if isinstance(s, Cash):
                states.append({"ref": ref, "type": "Cash", "amount": cash_units(s), "currency": s.currency,
                               "owner": s.owner.name})
            elif isinstance(s, CommercialPaper):
                states.append({"ref": ref, "type": "CommercialPaper", "reference": s.reference,
                               "face_value": s.face_value, "currency": s.currency,
                               "owner": s.owner.name})
            else:
                states.append({"ref": ref, "type": type(s).__qualname__})
        transactions = {}
        for key, _ in store.table_items("vault_txs"):
            stx = vault.transaction(SecureHash(bytes(key)))
            transactions[bytes(key).hex()] = [_ref(r.tx_id.hex, r.index) for r in stx.tx.inputs]
        return {
            "node": self.our_identity.name,
            "states": states,
            "transactions": transactions,
            "consumed": {_ref_of_key(k): bytes(v)[:32].hex()  # the consuming tx (then when)
                         for k, v in store.table_items("vault_consumed")},
            "locks": {_ref(r.tx_id.hex, r.index): fid for r, fid in vault.locks().items()},
            "notary_consumed": ({_ref_of_key(k): bytes(v).hex()
                                 for k, v in store.table_items("notary_consumed")}
                                if services.get("notary_service") is not None else None),
        }


# ============================================================================ the plan
@dataclass
class Trade:
    index: int
    seller: str
    buyer: str
    reference: str
    price: int
    refused: bool  # priced above the buyer's limit: must fail with UnacceptablePrice
    flow_id: Optional[str] = None
    start_attempts: int = 0
    outcome: Optional[dict] = None

    @property
    def client_id(self) -> str:
        return f"chaos-trade-{self.index}"


@dataclass
class Issue:
    index: int
    owner: str
    amount: int
    flow_id: Optional[str] = None
    outcome: Optional[dict] = None

    @property
    def client_id(self) -> str:
        return f"chaos-issue-{self.index}"


def plan_trades(rng: random.Random, count: int, refuse_share: float) -> list[Trade]:
    trades = []
    for i in range(count):
        seller, buyer = rng.sample(PARTIES, 2)
        refused = rng.random() < refuse_share
        price = rng.randint(PRICE_LIMIT + 1, 2 * PRICE_LIMIT) if refused else rng.randint(500, PRICE_LIMIT)
        trades.append(Trade(i, seller, buyer, f"CHAOS-{i + 1:04d}", price, refused))
    return trades


@dataclass
class PingPlan:
    index: int
    src: str
    dst: str
    n: int
    at: float                # seconds from the start of the chaos
    flow_id: Optional[str] = None
    start_attempts: int = 0
    outcome: Optional[dict] = None
    duplicated: bool = False

    @property
    def client_id(self) -> str:
        return f"chaos-ping-{self.index}"


def plan_pings(rng: random.Random, count: int, duration: float) -> list[PingPlan]:
    out = []
    for i in range(count):
        src, dst = rng.sample(PARTIES, 2)
        out.append(PingPlan(i, src, dst, rng.randint(1, 4), rng.uniform(0, duration * 0.9)))
    return sorted(out, key=lambda p: p.at)


def check_pings(pings: list[PingPlan], problems: list[str]) -> dict:
    completed = lost = duplicated = wrong = unfinished = 0
    for p in pings:
        if p.flow_id is None:
            lost += 1
            problems.append(f"ping {p.index} ({p.src} -> {p.dst}) never started")
            continue
        out = p.outcome or {}
        if p.duplicated:
            duplicated += 1
            problems.append(f"ping {p.index}: its client id started a second flow")
        if out.get("status") == "COMPLETED":
            if out.get("result") == p.n * (p.n + 1) // 2:
                completed += 1
            else:
                wrong += 1
                problems.append(f"ping {p.index}: result {out.get('result')!r}, "
                                f"expected {p.n * (p.n + 1) // 2}")
        elif not out.get("finished"):
            unfinished += 1
            problems.append(f"ping {p.index} ({p.flow_id} on {p.src}) did not finish: "
                            f"{out.get('status')}")
        else:
            lost += 1
            problems.append(f"ping {p.index} ({p.flow_id} on {p.src}) ended {out.get('status')}: "
                            f"{out.get('error')}")
    return {"planned": len(pings), "completed": completed, "lost": lost,
            "duplicated": duplicated, "wrong_result": wrong, "not_finished": unfinished}


@dataclass
class Kill:
    node: str
    at: float            # seconds since the chaos began
    down: float          # seconds between SIGKILL and the restart (freeze: SIGSTOP and SIGCONT)
    kind: str = "kill"   # "kill" (SIGKILL, then a restart), "term" (SIGTERM, then a restart)
    #                      or "freeze" (SIGSTOP, then SIGCONT)
    restart_seconds: float = 0.0
    resumed: int = 0     # unfinished flows the node found in its store on restart
    elsewhere: int = 0   # unfinished flows on the nodes still up, just after the kill
    error: Optional[str] = None


# ============================================================================ a clustered party
CLUSTERED = PARTIES[0]


class ClusteredNetwork:
    """The process network with one party (`CLUSTERED`) run as a cluster of worker
    processes on PostgreSQL instead of one node process. A fault aimed at that party
    (SIGKILL, SIGTERM, SIGSTOP) hits one of its workers, chosen at random; its RPC goes
    to a live worker (any of them serves the whole party)."""

    def __init__(self, pn: Any, cluster: Any, rng: random.Random) -> None:
        from greenflow.network.node_config import read_credentials
        self.pn, self.cl, self.rng = pn, cluster, rng
        self.party = CLUSTERED
        self.names = pn.names
        self._credentials = read_credentials(pn.dir(self.party))
        self._victim: Optional[str] = None
        self._frozen: Optional[str] = None   # the worker a freeze stopped, until its SIGCONT
        self.faults: Counter = Counter()   # worker -> faults it took

    def dir(self, name: str) -> str:
        return self.pn.dir(name)

    def live_workers(self) -> list[str]:
        return sorted(w for w, p in self.cl.procs.items() if p.poll() is None)

    def worker_client(self, worker: str, timeout: float = 60.0) -> Any:
        from greenflow.rpc.client import RpcClient
        user, password = self._credentials
        return RpcClient(self.cl.rpc[worker], user, password, timeout=timeout)

    def client(self, name: str, timeout: float = 60.0) -> Any:
        return _ClusterClient(self, timeout) if name == self.party else self.pn.client(name, timeout)

    def _pick(self) -> str:
        live = self.live_workers()
        self._victim = self.rng.choice(live or sorted(self.cl.procs))
        self.faults[self._victim] += 1
        return self._victim

    def kill(self, name: str, sig: int = signal.SIGKILL, wait: float = 30.0) -> int:
        if name != self.party:
            return self.pn.kill(name, sig, wait)
        worker = self._pick()
        proc = self.cl.procs[worker]
        if proc.poll() is None:
            proc.send_signal(sig)
        return proc.wait(wait)

    def start(self, name: str, wait: float = 30.0) -> Any:
        if name != self.party:
            return self.pn.start(name, wait)
        self._victim = None
        # Every worker that is down, not only the last victim: a restart that failed (its
        # database was restarting) is made again by the caller's next attempt, instead of
        # the run going on with a worker fewer.
        dead = [w for w, p in self.cl.procs.items() if p.poll() is not None]
        for worker in dead:
            self.cl.start_worker(worker)
        if dead:
            self.cl.wait_ready(wait)
        return self.client(name)

    def running(self, name: str) -> bool:
        if name != self.party:
            return self.pn.running(name)
        return bool(self.cl.procs) and not any(p.poll() is not None for p in self.cl.procs.values())

    @property
    def procs(self) -> "_FreezeProcs":
        """For a freeze: the party's entry is one worker, the same for SIGSTOP and SIGCONT."""
        return _FreezeProcs(self)

    def wait_ready(self, timeout: float) -> None:
        """Every worker running again and every partition held (a killed worker's leases
        taken over): until then some flows are nobody's to list."""
        for worker, proc in self.cl.procs.items():
            if proc.poll() is not None:
                self.cl.start_worker(worker)
        self.cl.wait_ready(timeout)


class _FreezeProcs:
    """The processes a freeze signals: the clustered party's entry is a worker picked
    (and counted) when its SIGSTOP is sent, and the same one for its SIGCONT; a freeze of
    another node picks none."""

    def __init__(self, net: ClusteredNetwork) -> None:
        self.net = net

    def __getitem__(self, name: str) -> Any:
        net = self.net
        if name != net.party:
            return net.pn.procs[name]
        frozen = net._frozen
        if frozen is None:   # the SIGSTOP
            frozen = net._frozen = net._pick()
            net._victim = None
        else:                # the SIGCONT: the next freeze picks afresh
            net._frozen = None
        return net.cl.procs[frozen]


class _ClusterClient:
    """RPC to a clustered party: each call through a live worker (another one when that
    one is down or switching); checkpoint dumps from every worker, each listing its own
    partitions."""

    def __init__(self, net: ClusteredNetwork, timeout: float) -> None:
        self.net, self.timeout = net, timeout

    def _call(self, call: Callable[[Any], Any]) -> Any:
        from greenflow.rpc.client import RpcClientError
        error: Optional[Exception] = None
        live = self.net.live_workers()
        for worker in self.net.rng.sample(live, len(live)):
            try:
                return call(self.net.worker_client(worker, self.timeout))
            except RpcClientError as exc:
                switching = "owns no partition" in str(exc) or "owns a partition" in str(exc)
                if exc.status not in (0, 503) and not switching:
                    raise
                # A worker starting, or one whose partitions are moving: try another;
                # if none can, the caller retries later (as for a node that is down).
                error = RpcClientError(503, exc.type, exc.message) if switching else exc
        raise error or RpcClientError(0, "NoWorker", f"no worker of {self.net.party} is running")

    def start_flow(self, *args: Any, **kwargs: Any) -> Any:
        return self._call(lambda c: c.start_flow(*args, **kwargs))

    def result(self, *args: Any, **kwargs: Any) -> Any:
        return self._call(lambda c: c.result(*args, **kwargs))

    def flows(self, *args: Any, **kwargs: Any) -> Any:
        return self._call(lambda c: c.flows(*args, **kwargs))

    def checkpoints(self) -> list:
        seen: dict[str, dict] = {}
        for worker in self.net.live_workers():
            try:
                for d in self.net.worker_client(worker, self.timeout).checkpoints():
                    seen.setdefault(d["flow_id"], d)
            except Exception:  # noqa: BLE001 - a worker going down lists nothing
                pass
        return list(seen.values())


class _maybe_cluster:
    """Start the network's node processes; with ``run.cluster`` workers, `CLUSTERED` as a
    cluster (on ``run.database``, else a PostgreSQL started in its directory)."""

    def __init__(self, pn: Any, run: "ChaosRun") -> None:
        self.pn, self.run, self.cl = pn, run, None

    def __enter__(self) -> Any:
        pn, run = self.pn, self.run
        if not run.cluster:
            pn.start_all(wait=60)
            return pn
        from greenflow.cluster.launcher import Cluster
        for name in pn.names:
            if name != CLUSTERED:
                pn.start(name, wait=60)
        run.say(f"{CLUSTERED} runs as a cluster of {run.cluster} workers on PostgreSQL")
        self.cl = Cluster(pn.dir(CLUSTERED), workers=run.cluster, database=run.database,
                          lease_s=3.0, renew_s=0.5, env=pn._env())
        try:
            self.cl.start(wait=90)
        except BaseException:
            self.cl.stop()
            raise
        return ClusteredNetwork(pn, self.cl, random.Random(run.seed + 7))

    def __exit__(self, *exc: Any) -> None:
        if self.cl is not None:
            self.cl.stop()


# ============================================================================ the run
class ChaosRun:
    """One run (the options are `SAMPLE_OPTIONS`'); ``run()`` returns the report."""

    def __init__(self, data_dir: str, *, seed: int, duration: float = 60.0, trades: int = 300,
                 kill_every: float = 3.0, max_down: float = 1.5, at_once: int = 1,
                 settle: float = 180.0, refuse_share: float = 0.1, freeze_share: float = 0.0,
                 term_share: float = 0.0, pings: int = 0, cluster: int = 0,
                 database: Optional[str] = None,
                 say: Callable[[str], None] = lambda _: None) -> None:
        self.data_dir = data_dir
        self.duration, self.kill_every, self.seed = duration, kill_every, seed
        self.max_down, self.settle, self.say = max_down, settle, say
        self.freeze_share = freeze_share
        self.term_share = term_share
        self.cluster, self.database = cluster, database
        self.pings = plan_pings(random.Random(seed + 6), pings, duration)
        self.at_once = max(1, min(at_once, 2 + len(PARTIES)))
        self.trades = plan_trades(random.Random(seed), trades, refuse_share)
        self.issues: list[Issue] = []
        self.kills: list[Kill] = []
        self.problems: list[str] = []
        self.pn: Any = None
        self._stop = threading.Event()
        self._down: set[str] = set()
        self.kill_times = self._plan_kills()

    # ------------------------------------------------------------------ driving
    def run(self) -> dict:
        from greenflow.testing.node_processes import ProcessNetwork

        self.say(f"Starting 5 node processes ({NOTARY}, {BANK}, {', '.join(PARTIES)}) on loopback ...")
        with ProcessNetwork(self.data_dir, [BANK, *PARTIES], notary=NOTARY, apps=APPS) as pn, \
                _maybe_cluster(pn, self) as net:
            self.pn = pn = net
            self._issue()
            before = self._snapshots()
            self.say(f"Trading: {len(self.trades)} trades among {', '.join(PARTIES)} over "
                     f"{self.duration:g} s; {'SIGKILL' if not self.term_share else f'SIGKILL or SIGTERM ({self.term_share:.0%} SIGTERM)'} of {self.at_once} random node(s) every "
                     f"~{self.kill_every:g} s (seed {self.seed})")
            t0 = time.monotonic()
            monkey = threading.Thread(target=self._guarded_monkey, args=(t0,), name="chaos-monkey",
                                      daemon=True)
            monkey.start()
            pinger = threading.Thread(target=self._drive_pings, args=(t0,), name="chaos-pings",
                                      daemon=True)
            pinger.start()
            try:
                self._drive(t0)
            finally:
                self._stop.set()
                monkey.join(120)
                pinger.join(120)
            chaos_seconds = time.monotonic() - t0
            self.say(f"Chaos over after {chaos_seconds:.1f} s ({len(self.kills)} faults); settling "
                     f"(at most {self.settle:g} s) ...")
            t1 = time.monotonic()
            stuck = self._settle(t1 + self.settle)
            settle_seconds = time.monotonic() - t1
            restarted = self._probe_client_ids()
            self._check_pings(t1 + self.settle)
            after = self._snapshots()
            flows = {name: pn.client(name).flows() for name in pn.names}
            report = self._report(before, after, flows, stuck, chaos_seconds, settle_seconds)
            report["trades"]["duplicated"] += restarted
            return report

    def _issue(self) -> None:
        """Price limits, one paper per trade at its seller, and cash for every buyer: one
        coin of the highest acceptable price per purchase, and a few more."""
        pn = self.pn
        for party in PARTIES:
            _run(pn.client(party), "SetPriceLimitFlow", {"amount": PRICE_LIMIT})
        ids = []
        for t in self.trades:
            out = pn.client(t.seller).start_flow("samples.trade.IssuePaperFlow",
                                                 {"reference": t.reference, "face_value": FACE_VALUE,
                                                  "notary": NOTARY}, client_id=f"chaos-paper-{t.index}")
            ids.append((t.seller, out["flow_id"]))
        bank = pn.client(BANK)
        buys = Counter(t.buyer for t in self.trades if not t.refused)
        for party in PARTIES:
            coins = buys[party] + 3
            ids.append((BANK, bank.start_flow(ISSUE_CASH_FLOW, {
                "amount": coins * PRICE_LIMIT, "owner": party, "notary": NOTARY, "coins": coins},
                client_id=f"chaos-cash-{party}")["flow_id"]))
        for name, fid in ids:
            out = pn.client(name).result(fid, wait=WAIT)
            if out.get("status") != "COMPLETED":
                raise click.ClickException(f"issuance on {name} did not complete: {out}")
        self.say(f"Issued: {len(self.trades)} papers to their sellers, cash to {', '.join(PARTIES)} "
                 f"(their limit: {PRICE_LIMIT:,} {DEFAULT_CURRENCY})")

    def _drive(self, t0: float) -> None:
        """Start the trades in bursts: most of them a moment before a kill (so that it
        lands in the middle of trades), the rest at random times. A seller that is down
        gets its trades later, with the same client id. Now and then the bank issues cash."""
        rng = random.Random(self.seed + 1)
        kills = self.kill_times
        n = len(self.trades)
        background = max(1, len(kills) // 3)
        times = sorted([k - rng.uniform(0.0, 0.08) for k in kills]
                       + [rng.uniform(0, self.duration * 0.85) for _ in range(background)])
        cuts = sorted(rng.randint(0, n) for _ in range(len(times) - 1))
        groups = [self.trades[a:b] for a, b in zip([0, *cuts], [*cuts, n])]
        pending: list[Trade] = []
        for when, group in zip(times, groups):
            self._sleep_until(t0 + max(0.0, when), pending)
            pending.extend(group)
            if rng.random() < 0.25:
                self.issues.append(Issue(len(self.issues), rng.choice(PARTIES), rng.randint(100, 5_000)))
            self._start_pending(pending)
        self._sleep_until(t0 + self.duration, pending)

    def _sleep_until(self, when: float, pending: list[Trade]) -> None:
        while time.monotonic() < when:
            time.sleep(min(0.1, max(0.0, when - time.monotonic())))
            if pending or any(i.flow_id is None for i in self.issues):
                self._start_pending(pending)

    def _start_pending(self, pending: list[Trade]) -> None:
        from greenflow.rpc.client import RpcClientError

        for t in list(pending):
            if t.seller in self._down:
                continue
            t.start_attempts += 1
            try:
                t.flow_id = self._start_trade(t)
            except RpcClientError as exc:  # down or going down: again later, same client id
                if exc.status not in (0, 503) and t.start_attempts == 1:
                    self.problems.append(f"trade {t.index}: starting it on {t.seller} failed: {exc}")
                continue
            pending.remove(t)
        for issue in self.issues:
            if issue.flow_id is None and BANK not in self._down:
                try:
                    issue.flow_id = self.pn.client(BANK).start_flow(
                        ISSUE_CASH_FLOW, {"amount": issue.amount, "owner": issue.owner, "notary": NOTARY},
                        client_id=issue.client_id)["flow_id"]
                except RpcClientError as exc:
                    if exc.status not in (0, 503):
                        self.problems.append(f"cash issuance {issue.index} on {BANK} failed to start: {exc}")
                        issue.flow_id = ""  # not retried

    def _drive_pings(self, t0: float) -> None:
        """Start each ping at its time (a node that is down: again later, same client id)."""
        from greenflow.rpc.client import RpcClientError

        for p in self.pings:
            while p.flow_id is None and not self._stop.is_set():
                if self._stop.wait(max(0.0, t0 + p.at - time.monotonic())):
                    return
                if p.src in self._down:
                    time.sleep(0.1)
                    continue
                p.start_attempts += 1
                try:
                    p.flow_id = self._start_ping(p)
                except RpcClientError as exc:
                    if exc.status not in (0, 503) and p.start_attempts == 1:
                        self.problems.append(f"ping {p.index}: starting it on {p.src} failed: {exc}")
                    time.sleep(0.1)
                except Exception as exc:  # noqa: BLE001 - the driver must go on
                    self.problems.append(f"ping {p.index}: {type(exc).__name__}: {exc}")
                    return

    def _start_ping(self, p: "PingPlan") -> str:
        return self.pn.client(p.src).start_flow(PING_FLOW, {"peer": p.dst, "n": p.n},
                                                client_id=p.client_id)["flow_id"]

    def _check_pings(self, deadline: float) -> None:
        """Every ping started (late ones now), completed once, with the right sum; the
        same client id gives back the same flow."""
        from greenflow.rpc.client import RpcClientError

        for p in self.pings:
            while p.flow_id is None and time.monotonic() < deadline:
                try:
                    p.flow_id = self._start_ping(p)
                except RpcClientError:
                    time.sleep(0.2)
            if p.flow_id is None:
                continue
            try:
                p.outcome = self.pn.client(p.src).result(
                    p.flow_id, wait=min(30.0, max(1.0, deadline - time.monotonic())))
                if self._start_ping(p) != p.flow_id:
                    p.duplicated = True
            except RpcClientError as exc:
                p.outcome = {"status": f"unknown ({exc})"}

    def _start_trade(self, t: Trade) -> str:
        return self.pn.client(t.seller).start_flow(
            TRADE_FLOW, {"buyer": t.buyer, "price": t.price, "reference": t.reference},
            client_id=t.client_id)["flow_id"]

    def _probe_client_ids(self) -> int:
        """Start every trade again with its client id, as a client unsure whether its
        first start went through would (the nodes were killed since): each must answer
        with the flow it started the first time. Returns how many did not."""
        from greenflow.rpc.client import RpcClientError

        wrong = 0
        for t in self.trades:
            if t.flow_id:
                try:
                    again = self._start_trade(t)
                except RpcClientError as exc:
                    again = f"an error: {exc}"
                if again != t.flow_id:
                    wrong += 1
                    self.problems.append(f"trade {t.index}: starting it again with client id "
                                         f"{t.client_id} gave {again}, not its flow {t.flow_id}")
        return wrong

    def _plan_kills(self) -> list[float]:
        """When to kill (seconds from the start): every ~kill_every s, jittered."""
        rng = random.Random(self.seed + 2)
        times, t = [], self.kill_every * rng.uniform(0.5, 1.0)
        while t < self.duration:
            times.append(round(t, 3))
            t += self.kill_every * rng.uniform(0.6, 1.4)
        return times

    def _guarded_monkey(self, t0: float) -> None:
        try:
            self._monkey(t0)
        except Exception as exc:  # noqa: BLE001 - a bug here must fail the run, not end the kills quietly
            self.problems.append(f"the kills stopped early: {type(exc).__name__}: {exc}")

    def _monkey(self, t0: float) -> None:
        """At each kill time, SIGKILL ``at_once`` random nodes and restart them after a
        random 0..max_down seconds (a kill that falls due while the last ones are still
        coming back waits for them)."""
        rng = random.Random(self.seed + 3)
        kinds = random.Random(self.seed + 4)   # separate: freezes leave the kill plan as it was
        terms = random.Random(self.seed + 5)   # and so do clean shutdowns
        workers = random.Random(self.seed + 8)
        pn = self.pn
        for when in self.kill_times:
            if self._stop.wait(max(0.0, t0 + when - time.monotonic())):
                return
            victims = rng.sample(pn.names, self.at_once)
            if self.cluster and CLUSTERED not in victims and workers.random() < 0.5:
                victims[0] = CLUSTERED   # half the faults hit a worker of the cluster
            down = rng.uniform(0.0, self.max_down)
            if kinds.random() < self.freeze_share:
                self._freeze(victims, round(time.monotonic() - t0, 2), down)
                continue
            term = terms.random() < self.term_share
            kills = [Kill(v, round(time.monotonic() - t0, 2), round(down, 2),
                          kind="term" if term else "kill") for v in victims]
            self._down.update(victims)
            for kill in kills:
                code = pn.kill(kill.node, signal.SIGTERM if term else signal.SIGKILL, wait=60)
                if term and code != 0:
                    kill.error = f"SIGTERM: exit status {code}"
            waiting = self._unfinished_elsewhere(victims)
            for kill in kills:
                kill.elsewhere = waiting
            time.sleep(max(0.0, kills[0].at + down - (time.monotonic() - t0)))
            r0 = time.monotonic()
            for kill in kills:
                error = kill.error
                self._restart(kill)
                kill.error = error or kill.error
                kill.restart_seconds = round(time.monotonic() - r0, 2)
                self._down.discard(kill.node)
                self.kills.append(kill)
                self.say(f"  ⚡ {kill.at:5.1f} s  {'SIGTERM' if kill.kind == 'term' else 'SIGKILL'} "
                         f"{kill.node:<6} ({kill.elsewhere:3} flows in "
                         f"flight elsewhere)  down {down:.2f} s, back in {kill.restart_seconds:.2f} s, "
                         f"{kill.resumed} unfinished flow(s) resumed"
                         + (f"  [{kill.error}]" if kill.error else ""))

    def _freeze(self, victims: list[str], at: float, down: float) -> None:
        """SIGSTOP the victims for ``down`` seconds, then SIGCONT: to their peers a frozen
        node is a network partition (connections open, nothing read, nothing
        acknowledged); to itself, nothing happened but a jump of the clock."""
        frozen = [Kill(v, at, round(down, 2), kind="freeze") for v in victims]
        self._down.update(victims)
        try:
            for f in frozen:
                self.pn.procs[f.node].send_signal(signal.SIGSTOP)
            waiting = self._unfinished_elsewhere(victims)
            time.sleep(down)
        finally:
            for f in frozen:
                try:
                    self.pn.procs[f.node].send_signal(signal.SIGCONT)
                except (OSError, KeyError) as exc:
                    f.error = f"SIGCONT failed: {exc}"
        for f in frozen:
            f.elsewhere = waiting
            self._down.discard(f.node)
            self.kills.append(f)
            self.say(f"  ❄ {f.at:5.1f} s  SIGSTOP {f.node:<6} ({f.elsewhere:3} flows in flight "
                     f"elsewhere)  frozen {down:.2f} s, then SIGCONT")

    def _unfinished_elsewhere(self, victims: list[str]) -> int:
        from greenflow.rpc.client import RpcClientError

        n = 0
        for name in self.pn.names:
            if name not in victims:
                try:
                    n += len(self.pn.client(name).flows(status=UNFINISHED))
                except RpcClientError:
                    pass
        return n

    def _restart(self, kill: Kill) -> None:
        pn = self.pn
        for attempt in range(3):
            try:
                kill.resumed = len(pn.start(kill.node, wait=60).flows(status=UNFINISHED))
                kill.error = None
                return
            except Exception as exc:  # noqa: BLE001 - recorded; a node that cannot restart fails the run
                kill.error = f"restart attempt {attempt + 1}: {type(exc).__name__}: {exc}"
                if pn.running(kill.node):
                    return
                time.sleep(1.0)

    # ------------------------------------------------------------------ settling
    def _settle(self, deadline: float) -> list[dict]:
        """Every node up, every trade started and finished, no unfinished flow anywhere
        (or the deadline): returns the flows still unfinished, from the checkpoint dumps."""
        from greenflow.rpc.client import RpcClientError

        pn = self.pn
        if isinstance(pn, ClusteredNetwork):
            pn.wait_ready(max(1.0, deadline - time.monotonic()))
        for name in pn.names:
            if not pn.running(name):
                self.problems.append(f"{name} was not running after the chaos; starting it")
                pn.start(name, wait=60)
        pending = [t for t in self.trades if t.flow_id is None]
        while (pending or any(i.flow_id is None for i in self.issues)) and time.monotonic() < deadline:
            self._start_pending(pending)
            if pending:
                time.sleep(0.2)
        for item, node in [*((t, t.seller) for t in self.trades), *((i, BANK) for i in self.issues)]:
            while item.flow_id and item.outcome is None:
                wait = min(30.0, max(0.0, deadline - time.monotonic()))  # past it: one look each
                try:
                    out = pn.client(node).result(item.flow_id, wait=wait)
                except RpcClientError:
                    out = {}
                    time.sleep(0.2 if wait else 0)
                if out.get("finished"):
                    item.outcome = out
                elif not wait:
                    break
        while True:
            unfinished = {name: pn.client(name).flows(status=UNFINISHED) for name in pn.names}
            dumps = {name: pn.client(name).checkpoints() for name in pn.names}
            if not any(unfinished.values()) and not any(dumps.values()) or time.monotonic() >= deadline:
                break
            time.sleep(0.25)
        stuck = []
        for name in pn.names:
            infos = {f["id"]: f for f in unfinished[name]}
            for d in dumps[name]:
                f = infos.pop(d["flow_id"], {})
                stuck.append({"node": name, "flow_id": d["flow_id"], "flow_class": d["flow_class"],
                              "status": d["status"], "progress_step": d["progress_step"],
                              "suspended_on": d["suspended_on"], "error": f.get("error"),
                              "suspension_count": d.get("suspension_count")})
            for f in infos.values():  # listed as unfinished, yet without a checkpoint
                stuck.append({"node": name, "flow_id": f["id"], "flow_class": f["flow_class"],
                              "status": f["status"], "progress_step": f["progress_step"],
                              "suspended_on": f["suspended_on"], "error": f["error"],
                              "suspension_count": None})
        return stuck

    def _snapshots(self) -> dict:
        return {name: self._snapshot(name) for name in self.pn.names}

    def _snapshot(self, name: str) -> dict:
        out = self.pn.client(name).start_flow(SNAPSHOT_FLOW, {}, wait=WAIT)
        if out.get("status") != "COMPLETED":
            raise click.ClickException(f"LedgerSnapshotFlow on {name} did not complete: {out}")
        return out["result"]

    # ------------------------------------------------------------------ checking
    def _report(self, before: dict, after: dict, flows: dict, stuck: list[dict],
                chaos_seconds: float, settle_seconds: float) -> dict:
        problems = list(self.problems)
        for k in self.kills:
            if k.error:
                problems.append(f"{k.node} ({dict(kill='killed', term='stopped').get(k.kind, 'frozen')} at {k.at} s) "
                                f"did not come back cleanly: {k.error}")
        if stuck:
            problems.append(f"{len(stuck)} flow(s) unfinished after settling, e.g. "
                            + "; ".join(f"{s['node']} {s['flow_class'].rsplit('.', 1)[-1]} {s['flow_id']} "
                                        f"{s['status']} at {s['progress_step']!r} waiting on "
                                        f"{s['suspended_on']}" for s in stuck[:5]))
        check = check_ledger(self.trades, self.issues, before, after, flows, problems)
        per_node = Counter(k.node for k in self.kills if k.kind == "kill")
        terms = Counter(k.node for k in self.kills if k.kind == "term")
        freezes = Counter(k.node for k in self.kills if k.kind == "freeze")
        pings = check_pings(self.pings, problems)
        return {
            "ok": not problems,
            "seed": self.seed,
            "nodes": [NOTARY, BANK, *PARTIES],
            "duration_seconds": round(chaos_seconds, 1),
            "settle_seconds": round(settle_seconds, 1),
            "kills": sum(per_node.values()),
            "kills_per_node": {n: per_node.get(n, 0) for n in [NOTARY, BANK, *PARTIES]},
            "terms": sum(terms.values()),
            "terms_per_node": {n: terms.get(n, 0) for n in [NOTARY, BANK, *PARTIES]},
            "pings": pings,
            "freezes": sum(freezes.values()),
            "freezes_per_node": {n: freezes.get(n, 0) for n in [NOTARY, BANK, *PARTIES]},
            "flows_resumed_after_kills": sum(k.resumed for k in self.kills),
            "flows_in_flight_elsewhere_at_kills": sum({k.at: k.elsewhere for k in self.kills}.values()),
            "kill_log": [vars(k) for k in self.kills],
            **check,
            "stuck": len(stuck),
            "stuck_flows": stuck[:50],
            **({"cluster": {"party": CLUSTERED, "workers": self.cluster,
                            "faults_per_worker": dict(sorted(self.pn.faults.items()))}}
               if isinstance(self.pn, ClusteredNetwork) else {}),
            "problems": problems,
        }


def _totals(snaps: dict) -> dict:
    cash: dict[str, int] = defaultdict(int)
    papers, face = 0, 0
    for snap in snaps.values():
        for s in snap["states"]:
            if s["type"] == "Cash":
                cash[s["currency"]] += s["amount"]
            elif s["type"] == "CommercialPaper":
                papers += 1
                face += s["face_value"]
    return {"cash": dict(cash), "papers": papers, "paper_face_value": face}


def check_ledger(trades: list[Trade], issues: list[Issue], before: dict, after: dict,
                 flows: dict, problems: list[str]) -> dict:
    """The invariants over the trades' outcomes and every node's ledger after the run;
    appends what fails to ``problems`` and returns the counts."""
    notary = after[NOTARY]["notary_consumed"] or {}
    # Who holds each paper now, and where each paper started.
    holders: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for name, snap in after.items():
        for s in snap["states"]:
            if s["type"] == "CommercialPaper":
                holders[s["reference"]].append((name, s["ref"]))
    issued_ref = {s["reference"]: s["ref"] for snap in before.values() for s in snap["states"]
                  if s["type"] == "CommercialPaper"}
    # Which recorded transactions spend each state, across all vaults.
    spenders: dict[str, set[str]] = defaultdict(set)
    recorded_by: dict[str, set[str]] = defaultdict(set)
    for name, snap in after.items():
        for tx, inputs in snap["transactions"].items():
            recorded_by[tx].add(name)
            for ref in inputs:
                spenders[ref].add(tx)

    completed = failed_clean = lost = duplicated = not_finished = 0
    per_trade: list[str] = []  # reported after the problems of the whole ledger
    failures: Counter = Counter()
    for t in trades:
        where = f"trade {t.index} ({t.seller} sells {t.reference} to {t.buyer} for {t.price:,})"
        held = holders.get(t.reference, [])
        if len(held) > 1:
            duplicated += 1
            per_trade.append(f"{where}: the paper is held {len(held)} times: {held}")
        origin = issued_ref.get(t.reference)
        out = t.outcome
        if out is None:
            not_finished += 1
            per_trade.append(f"{where}: " + ("never started" if t.flow_id is None
                                           else f"flow {t.flow_id} did not finish"))
            continue
        if out["status"] == "COMPLETED":
            tx = out["result"]
            bad = []
            if [h[0] for h in held] != [t.buyer]:
                bad.append(f"the paper is held by {[h[0] for h in held]}, not by {t.buyer} alone")
            for side in (t.seller, t.buyer):
                if side not in recorded_by.get(tx, ()):
                    bad.append(f"{side} did not record transaction {tx}")
            if notary.get(origin) != tx:
                bad.append(f"the notary has the paper consumed by {notary.get(origin)}, not {tx}")
            if t.refused:
                bad.append(f"it completed at a price above {t.buyer}'s limit")
            if bad:
                lost += 1
                per_trade.append(f"{where}: completed as {tx}, but " + "; ".join(bad))
            else:
                completed += 1
        else:
            error = out.get("error") or {}
            failures[error.get("type", out["status"])] += 1
            bad = []
            if held != [(t.seller, origin)]:
                bad.append(f"the paper is held by {held}, not unspent by {t.seller}")
            if spenders.get(origin):
                bad.append(f"transaction(s) {sorted(spenders[origin])} spend the paper")
            if origin in notary:
                bad.append(f"the notary has the paper consumed by {notary[origin]}")
            if bad:
                lost += 1
                per_trade.append(f"{where}: {out['status']} ({error.get('type')}: {error.get('message')}), "
                                "but " + "; ".join(bad))
            else:
                failed_clean += 1
                if not t.refused or error.get("type") != EXPECTED_REFUSAL:
                    per_trade.append(f"{where}: failed cleanly, but unexpectedly: {error.get('type')}: "
                                    f"{error.get('message')}")

    # Each side ran its flow once per trade: the sellers' and buyers' flows, by status.
    for cls, role in (("SellPaperFlow", "seller"), ("BuyerFlow", "buyer")):
        for name in PARTIES:
            mine = [t for t in trades if getattr(t, role) == name and t.flow_id]
            seen = Counter(f["status"] for f in flows.get(name, []) if f["flow_class"].endswith("." + cls))
            want = Counter(t.outcome["status"] if t.outcome else "unfinished" for t in mine)
            extra = sum(seen.values()) - len(mine)
            if extra > 0:
                duplicated += extra
                problems.append(f"{name} ran {cls} {sum(seen.values())} times ({dict(seen)}) for "
                                f"{len(mine)} trades ({dict(want)})")
            elif all(t.outcome for t in mine) and seen != want:
                problems.append(f"{name} ran {cls} {dict(seen)}; its trades ended {dict(want)}")

    issuing = Counter(f["status"] for f in flows.get(BANK, []) if f["flow_class"].endswith(".IssueCashFlow"))
    started = len(PARTIES) + sum(bool(i.flow_id) for i in issues)  # the first cash, then the run's
    if sum(issuing.values()) != started:
        duplicated += max(0, sum(issuing.values()) - started)
        problems.append(f"{BANK} ran IssueCashFlow {dict(issuing)}; {started} issuances were started")

    # No state spent twice, and every vault agrees with the notary.
    double_spends = 0
    for ref, txs in spenders.items():
        if len(txs) > 1:
            double_spends += 1
            problems.append(f"state {ref} is spent by {len(txs)} transactions: {sorted(txs)}")
        for tx in txs:
            if notary.get(ref) != tx:
                problems.append(f"transaction {tx} (recorded by {sorted(recorded_by[tx])}) spends {ref}, "
                                f"which the notary has consumed by {notary.get(ref)}")
    for ref, tx in notary.items():
        if tx not in recorded_by:
            problems.append(f"the notary consumed {ref} for transaction {tx}, which no vault recorded")
    for name, snap in after.items():
        for ref, tx in snap["consumed"].items():
            if notary.get(ref) != tx:
                problems.append(f"{name} marks {ref} consumed by {tx}; the notary says {notary.get(ref)}")
        for s in snap["states"]:
            if s["ref"] in notary:
                problems.append(f"{name} still holds {s['ref']} ({s['type']}), which the notary has "
                                f"consumed by {notary[s['ref']]}")
        if snap["locks"]:
            problems.append(f"{name} still holds {len(snap['locks'])} soft lock(s): "
                            f"{list(snap['locks'].items())[:5]}")

    # Totals: papers conserved, cash conserved plus the issuances that completed.
    total_before, total_after = _totals(before), _totals(after)
    issued = defaultdict(int)
    for i in issues:
        if i.outcome is not None and i.outcome["status"] == "COMPLETED":
            issued[DEFAULT_CURRENCY] += i.amount
        elif i.flow_id and i.outcome is None:
            problems.append(f"cash issuance {i.index} (flow {i.flow_id}) did not finish")
    expected_cash = {c: total_before["cash"].get(c, 0) + issued.get(c, 0)
                     for c in set(total_before["cash"]) | set(issued)}
    if total_after["cash"] != expected_cash:
        problems.append(f"cash is not conserved: {total_before['cash']} before, plus {dict(issued)} "
                        f"issued during the run, but {total_after['cash']} after")
    for k in ("papers", "paper_face_value"):
        if total_after[k] != total_before[k]:
            problems.append(f"{k} not conserved: {total_before[k]} before, {total_after[k]} after")
    problems.extend(per_trade)

    return {
        "trades": {"planned": len(trades), "started": sum(t.flow_id is not None for t in trades),
                   "completed": completed, "failed_cleanly": failed_clean,
                   "failure_reasons": dict(failures), "lost": lost, "duplicated": duplicated,
                   "not_finished": not_finished,
                   "start_retries": sum(max(0, t.start_attempts - 1) for t in trades)},
        "issuances_during_run": {"started": sum(bool(i.flow_id) for i in issues),
                                 "completed": sum(1 for i in issues if i.outcome
                                                  and i.outcome["status"] == "COMPLETED"),
                                 "amount": dict(issued)},
        "double_spends": double_spends,
        "transactions_notarised": len(set(notary.values())),
        "totals": {"before": total_before, "after": total_after, "issued_during_run": dict(issued)},
    }


# ============================================================================ the command line
class _Finite(click.FloatRange):
    """A `click.FloatRange` that refuses nan and inf: it lets them through (every
    comparison with nan is false), and a run of ``--duration inf`` planned kills for ever
    while one of ``--kill-every nan`` killed nothing and reported success."""

    def convert(self, value: Any, param: Any, ctx: Any) -> Any:
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return number


SAMPLE_OPTIONS = [
    click.Option(["--duration"], type=_Finite(min=1), default=60.0, show_default=True,
                 help="Seconds of chaos: trades start and nodes are killed during this time."),
    click.Option(["--trades"], type=click.IntRange(min=1, max=5_000), default=300, show_default=True,
                 help="Trades to run among the three parties."),
    click.Option(["--kill-every"], type=_Finite(min=0.2), default=3.0, show_default=True,
                 help="Mean seconds between two kills (SIGKILL of a random node)."),
    click.Option(["--max-down"], type=_Finite(min=0), default=1.5, show_default=True,
                 help="A killed node restarts after a random 0..N seconds."),
    click.Option(["--at-once"], type=click.IntRange(min=1, max=5), default=1, show_default=True,
                 help="Nodes killed together at each kill (distinct, chosen at random)."),
    click.Option(["--freeze-share"], type=_Finite(min=0, max=1), default=0.0,
                 show_default=True,
                 help="Share of the faults that freeze the node instead (SIGSTOP for the same "
                      "0..--max-down seconds, then SIGCONT): a network partition as its peers "
                      "see it."),
    click.Option(["--term-share"], type=_Finite(min=0, max=1), default=0.0,
                 show_default=True,
                 help="Share of the kills that are clean shutdowns instead (SIGTERM, which must "
                      "exit 0, then the same restart)."),
    click.Option(["--pings"], type=click.IntRange(min=0, max=100_000), default=0, show_default=True,
                 help="Ping-pong flows among the parties, started during the chaos; each must "
                      "complete exactly once with the right sum."),
    click.Option(["--settle"], type=_Finite(min=1), default=180.0, show_default=True,
                 help="Seconds the network gets to finish every flow after the chaos."),
    click.Option(["--refuse-share"], type=_Finite(min=0, max=1), default=0.1, show_default=True,
                 help="Share of trades priced above the buyer's limit (they must fail cleanly)."),
    click.Option(["--cluster"], type=click.IntRange(min=0, max=8), default=0, show_default=True,
                 help=f"Run {CLUSTERED} as a cluster of N worker processes on PostgreSQL "
                      "(pip install '.[cluster]' in greenflow's checkout); its faults hit one random worker."),
    click.Option(["--database"], default=None,
                 help="With --cluster: the PostgreSQL URL to use (default: a server started "
                      "in the party's directory)."),
    click.Option(["--seed"], type=int, default=None,
                 help="Seed of the plan and the kills (default: random)."),
    click.Option(["--json", "as_json"], is_flag=True, help="Print the report as JSON only."),
]


def run_chaos(data_dir: str, *, seed: Optional[int] = None, **options: Any) -> dict:
    """Run the chaos test under ``data_dir`` and return its report (``report["ok"]``);
    ``options`` as `ChaosRun` takes them (``say``: where progress lines go)."""
    if seed is None:
        seed = random.SystemRandom().randrange(1 << 30)
    return ChaosRun(data_dir, seed=seed, **options).run()


def run_sample(data_dir: str, as_json: bool = False, **options: Any) -> int:
    database = options.get("database")
    if database and not options.get("cluster"):
        raise click.UsageError("--database is the clustered party's database: it needs "
                               "--cluster N")
    if database and not is_postgres(database):
        raise click.UsageError(f"--database is a postgresql://... URL, not {database!r:.80}")
    report = run_chaos(data_dir, say=(lambda _: None) if as_json else click.echo, **options)
    click.echo(_json.dumps(report, indent=2) if as_json else format_report(report))
    return 0 if report["ok"] else 1


def format_report(r: dict) -> str:
    t, tot, iss = r["trades"], r["totals"], r["issuances_during_run"]
    kills = ", ".join(f"{n} {c}" for n, c in r["kills_per_node"].items())

    def cash(d: dict) -> str:
        return ", ".join(f"{v:,} {c}" for c, v in sorted(d.items())) or "0"

    def papers(d: dict) -> str:
        return f"{d['papers']} ({d['paper_face_value']:,} face)"

    reasons = ", ".join(f"{k} {v}" for k, v in sorted(t["failure_reasons"].items())) or "none"
    lines = [
        "",
        f"Chaos report (seed {r['seed']}): {r['duration_seconds']} s of chaos on {len(r['nodes'])} "
        f"node processes, settled in {r['settle_seconds']} s",
        f"  kills           {r['kills']} SIGKILLs ({kills})",
        *([f"  cluster         {r['cluster']['party']} on {r['cluster']['workers']} workers; faults "
           "per worker: " + (", ".join(f"{w} {c}" for w, c in r["cluster"]["faults_per_worker"].items())
                             or "none")] if r.get("cluster") else []),
        *([f"  clean stops     {r['terms']} SIGTERMs, each restarted ("
           + ", ".join(f"{n} {c}" for n, c in r["terms_per_node"].items()) + ")"]
          if r.get("terms") else []),
        *([f"  pings           {r['pings']['completed']} of {r['pings']['planned']} completed exactly "
           f"once with the right sum; lost {r['pings']['lost']}, duplicated "
           f"{r['pings']['duplicated']}, wrong {r['pings']['wrong_result']}, unfinished "
           f"{r['pings']['not_finished']}"] if r.get("pings", {}).get("planned") else []),
        *([f"  freezes         {r['freezes']} SIGSTOP/SIGCONT ("
           + ", ".join(f"{n} {c}" for n, c in r["freezes_per_node"].items()) + ")"]
          if r.get("freezes") else []),
        f"  hit             {r['flows_resumed_after_kills']} unfinished flows resumed from checkpoints at "
        f"the restarts; {r['flows_in_flight_elsewhere_at_kills']} in flight on the other nodes at the kills",
        f"  trades started  {t['started']} of {t['planned']} ({t['start_retries']} start retries "
        "while the seller was down)",
        f"  completed       {t['completed']} exactly once: in both vaults, notarised once",
        f"  failed cleanly  {t['failed_cleanly']} ({reasons}): nothing recorded anywhere",
        f"  lost            {t['lost']}",
        f"  duplicated      {t['duplicated']}",
        f"  stuck           {r['stuck']} unfinished flows on any node after settling ("
        f"{t['not_finished']} trades without an outcome)",
        f"  double spends   {r['double_spends']} ({r['transactions_notarised']} transactions notarised)",
        f"  cash            before {cash(tot['before']['cash'])} + issued during the run "
        f"{cash(iss['amount'])} ({iss['completed']} issuances), after {cash(tot['after']['cash'])}",
        f"  papers          before {papers(tot['before'])}, after {papers(tot['after'])}",
    ]
    if r["ok"]:
        lines.append("All invariants hold.")
    else:
        lines.append(f"FAILED: {len(r['problems'])} problem(s):")
        lines.extend(f"  - {p}" for p in r["problems"][:60])
        if len(r["problems"]) > 60:
            lines.append(f"  ... and {len(r['problems']) - 60} more (--json lists them all)")
    return "\n".join(lines)
