"""A worker as an operating-system process: ``python -m greenflow.cluster.process``.

What ``greenflow cluster up`` starts, N times, for one party directory: the party's
``node.toml``, ``identity.key`` and network map are shared; each worker has its own name,
log (``DIR/cluster/<name>.log``), pid file and RPC port; all of them listen on the
party's P2P address (``SO_REUSEPORT``: the kernel spreads peers' connections over the
workers of this machine). The store is the PostgreSQL database named by ``--database``
or by ``store`` in ``node.toml``.

SIGTERM/SIGINT stop it cleanly (the round commits, the leases are handed back so the
others take over at once). ``kill -9`` loses nothing: the leases lapse and another
worker replays the partitions' flows from what was committed.
"""
from __future__ import annotations

import argparse
import re
import logging
import os
import signal
import sys
import threading
import time
from typing import Any, Optional

from greenflow.cluster.leases import DEFAULT_LEASE_S, DEFAULT_RENEW_S
from greenflow.cluster.worker import Worker
from greenflow.errors import FlowError
from greenflow.network.network_map import NetworkMap, format_address, parse_address
from greenflow.network.node_config import NodeConfig
from greenflow.rpc.fatal_report import FatalReport
from greenflow.rpc.node_process import own_identity
from greenflow.storage.plain_files import PlainFileHandler

log = logging.getLogger("greenflow.cluster.process")


class WorkerLog(FatalReport, PlainFileHandler):
    """A worker's log (``cluster/NAME.log``); a fatal signal's report goes into it too."""


CLUSTER_DIR = "cluster"


def cluster_dir(node_dir: str) -> str:
    return os.path.join(os.path.abspath(node_dir), CLUSTER_DIR)


#: Where a launcher hands a worker its database URL (a password in it stays off `ps`).
DATABASE_ENV = "GREENFLOW_CLUSTER_DATABASE"


def postgres_url(node_dir: str, database: Optional[str] = None) -> str:
    """The PostgreSQL store a worker of ``node_dir`` uses: ``database``, else the node's
    configured store; `FlowError` when that is not a ``postgresql://`` URL."""
    from greenflow.storage import is_postgres, store_url
    url = database or store_url(node_dir)
    if not is_postgres(url):
        where = "--database is" if database else "node.toml's store is"
        raise FlowError(f"{node_dir}: a cluster worker needs a PostgreSQL store: "
                        f"pass --database postgresql://... or set store in node.toml "
                        f"({where} {url!r})")
    return url


class WorkerProcess:
    """Worker + TCP transport + RPC in this process (what the RPC server calls its
    ``proc``: ``node``, ``config``, ``netmap``, ``transport``, draining, stop)."""

    def __init__(self, node_dir: str, *, name: str, database: Optional[str] = None,
                 rpc_address: Optional[tuple[str, int]] = None, rpc: bool = True,
                 listen: Optional[tuple[str, int]] = None,
                 lease_s: float = DEFAULT_LEASE_S, renew_s: float = DEFAULT_RENEW_S) -> None:
        self.base_dir = os.path.abspath(node_dir)
        self.config = NodeConfig.load(self.base_dir)
        self.netmap = NetworkMap.load(self.config.network_map_path)
        self.url = postgres_url(self.base_dir, database)
        # Checked before anything runs, as a node process does: a worker never makes a key
        # (a new one is an identity no peer knows) and needs the one the map lists.
        self.identity = own_identity(self.config, self.netmap)
        self.name = name
        self.with_rpc = rpc
        self.rpc_address = rpc_address or self.config.rpc_address
        self.lease_s, self.renew_s = lease_s, renew_s
        #: Where this worker accepts peers: the party's P2P address (shared by the workers
        #: of one machine), or this machine's own behind a TCP load balancer.
        self.listen = listen or self.config.p2p_address
        self.worker: Optional[Worker] = None
        self.transport: Any = None
        self.rpc: Any = None
        self.started_at: Optional[float] = None
        self._stop = threading.Event()
        self._draining = False
        self._rpc_started = False   # the first generation is attached by RpcServer.start

    @property
    def node(self) -> Any:
        return self.worker.node if self.worker is not None else None

    @property
    def draining(self) -> bool:
        return self._draining

    def set_draining(self, on: bool) -> None:
        self._draining = bool(on)
        node = self.node
        if node is not None:
            node.set_draining(self._draining)

    def request_stop(self) -> None:
        self._stop.set()

    def start(self) -> "WorkerProcess":
        from greenflow.network.tcp_guard import P2pLimits
        from greenflow.network.tcp_transport import TcpTransport
        from greenflow.rpc.server import RpcServer
        cfg = self.config
        identity = self.identity
        self.transport = TcpTransport(identity, self.netmap, listen=self.listen,
                                      reuse_port=True, limits=P2pLimits.from_config(cfg.p2p))
        self.transport.bind()
        options = cfg.node_options()
        if cfg.notary:
            options["notary"] = True
            if cfg.validating_notary:
                options["validating_notary"] = True
        if self.with_rpc:
            self.rpc = RpcServer(self, self.rpc_address)
        self.worker = Worker(self.base_dir, self.url, name=self.name, party_name=cfg.name,
                             tcp=self.transport, apps=cfg.apps or None, node_options=options,
                             lease_s=self.lease_s, renew_s=self.renew_s,
                             rpc_address=format_address(self.rpc.address) if self.rpc else None,
                             on_generation=self._attach)
        self.worker.start()
        if self.rpc is not None:
            self.rpc.start()
            self._rpc_started = True
        self.started_at = time.time()
        log.info("worker %s of %s is up: p2p %s (shared), rpc %s", self.name, cfg.name,
                 format_address(self.transport.address),
                 format_address(self.rpc.address) if self.rpc else "off")
        return self

    def _attach(self, node: Any) -> None:
        """A new generation's node: the RPC's progress hub and console follow it."""
        if self._draining:
            node.set_draining(True)
        rpc = self.rpc
        if rpc is not None and self._rpc_started:
            node.add_progress_listener(rpc.hub)
            rpc.console.attach(node)

    def run(self) -> None:
        while not self._stop.wait(0.5):
            pass
        self.stop()

    def stop(self) -> None:
        log.info("worker %s: shutting down", self.name)
        rpc, worker = self.rpc, self.worker
        self.rpc = None
        if rpc is not None:
            rpc.stop()
        if worker is not None:
            worker.stop(release=True)
        log.info("worker %s: stopped", self.name)


def _worker_name(text: str) -> str:
    """A worker name that is also a safe file name (its log and pid file are named by
    it): ``../../x`` wrote the log outside the cluster directory, ``""`` wrote ``.log``."""
    if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}", text):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a worker name: letters, digits, '-', '_' and '.', 1 to 64 "
            "of them, not starting with '.' or '-'")
    return text


def main(argv: Optional[list[str]] = None) -> int:
    # A stop asked for while the worker is still being made (a supervisor's SIGTERM right
    # after a restart) is kept and honoured once there is a worker to stop: a clean exit,
    # not death by the signal.
    stopping: list = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda s, f: stopping.append(s))
    ap = argparse.ArgumentParser(prog="python -m greenflow.cluster.process")
    ap.add_argument("--dir", required=True, help="the party's node directory")
    ap.add_argument("--name", required=True, type=_worker_name,
                    help="this worker's name (unique in the party): letters, digits, '-', "
                         "'_' and '.', at most 64, not starting with '.'; its log is "
                         "DIR/cluster/NAME.log")
    ap.add_argument("--database", default=os.environ.get(DATABASE_ENV),
                    help=f"postgresql://... (default: ${DATABASE_ENV}, else node.toml's store; "
                         "the variable keeps a password off the command line, which any user "
                         "of the machine can read)")
    ap.add_argument("--rpc-address", default=None, help="host:port, or 'off'")
    ap.add_argument("--listen", default=None,
                    help="host:port for peers (default: the party's p2p_address)")
    ap.add_argument("--lease", type=float, default=DEFAULT_LEASE_S)
    ap.add_argument("--renew", type=float, default=DEFAULT_RENEW_S)
    ap.add_argument("--log-level", default=os.environ.get("GREENFLOW_LOG_LEVEL", "INFO"))
    args = ap.parse_args(argv)
    from greenflow.node.hash_seed import run_with_party_seed
    run_with_party_seed(args.dir)   # every worker of the party hashes alike
    from greenflow.node.gc_tuning import tune
    tune()
    d = cluster_dir(args.dir)
    os.makedirs(d, exist_ok=True)
    logging.getLogger().setLevel(getattr(logging, args.log_level.upper(), logging.INFO))
    fmt = logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    try:
        fh = WorkerLog(os.path.join(d, f"{args.name}.log"), encoding="utf-8")
    except OSError as exc:
        print(f"worker {args.name}: cannot write its log: {exc}", file=sys.stderr)
        return 1
    fh.setFormatter(fmt)
    logging.getLogger().addHandler(fh)
    rpc_addr = None
    with_rpc = args.rpc_address != "off"
    if with_rpc and args.rpc_address:
        rpc_addr = parse_address(args.rpc_address)
    try:
        proc = WorkerProcess(args.dir, name=args.name, database=args.database,
                             rpc_address=rpc_addr, rpc=with_rpc, lease_s=args.lease,
                             listen=parse_address(args.listen) if args.listen else None,
                             renew_s=args.renew)
    except Exception as exc:
        print(f"greenflow cluster worker: {exc}", file=sys.stderr)
        return 2
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda s, f: proc.request_stop())
    if stopping:
        log.info("worker %s: asked to stop while starting; not started", args.name)
        return 0
    try:
        proc.start()
    except Exception as exc:
        log.error("worker %s cannot start: %s", args.name, exc)
        print(f"greenflow cluster worker {args.name} cannot start: {exc}", file=sys.stderr)
        return 1
    with open(os.path.join(d, f"{args.name}.pid"), "w") as fh2:
        fh2.write(str(os.getpid()))
    proc.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
