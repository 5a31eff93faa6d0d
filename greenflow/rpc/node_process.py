"""A node as an operating-system process: ``greenflow node start --dir DIR``.

One process serves one node directory: the scheduler thread (`greenflow.node.node.Node`), the
P2P transport thread (`greenflow.network.tcp_transport`) and the RPC server's threads
(`greenflow.rpc.server`). It logs to ``DIR/node.log`` (rotated by size, ``[logging]`` in
``node.toml``) and to stderr. SIGTERM and
SIGINT (Ctrl-C) stop it cleanly: RPC stops taking requests, the scheduler finishes its
round and commits, the transport closes. ``kill -9`` loses nothing either: every state a
peer or an RPC client has seen was committed first, the outbox is re-sent at the next
start and every unfinished flow resumes.

``DIR/node.pid`` holds the running process's id under an exclusive ``flock``; the store
holds its own lock too (``store/greenflow.lock``), so neither a deleted ``node.pid`` nor a
second node directory whose ``store/`` links to this one lets two processes share a store.

At start the store must be there (``node init`` made it) and sound (see
`greenflow.storage.store_guard`), unless ``--new-store`` allows a new, empty one. Exit statuses
(`EXIT_*`): 0 stopped cleanly; 1 could not start (port taken, directory or store in use,
app missing); 2 bad configuration; 3 store refused at start (missing, damaged, newer
format); 4 the store failed while running (disk full, I/O error): nothing uncommitted
was shown to anyone, restart once the cause is fixed.
"""
from __future__ import annotations

import argparse
import inspect
import logging
import logging.handlers
import os
import signal
import sys
import threading
import time
from typing import Any, Optional

import lmdb

from greenflow.storage import is_lmdb, open_store, store_guard, store_url
from greenflow.storage.plain_files import PlainOpen
from greenflow.rpc.fatal_report import FatalReport
from greenflow.errors import FlowError, StoreError, StoreLocked, StoreRefused
from greenflow.node.identity import KEY_FILE, NodeIdentity, key_path
from greenflow.network.network_map import NetworkMap, format_address
from greenflow.node.node import Node
from greenflow.network.node_config import ConfigError, NodeConfig
from greenflow.network.tcp_guard import P2pLimits

log = logging.getLogger("greenflow.node_process")

PID_FILE = "node.pid"
LOG_FILE = "node.log"
LOG_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
LOG_MAX_BYTES = 10 << 20   # node.log rotates at this size ...
LOG_BACKUPS = 5            # ... keeping this many old files (node.log.1 ...)

EXIT_OK = 0
EXIT_START_FAILED = 1
EXIT_CONFIG = 2
EXIT_STORE_REFUSED = 3
EXIT_STORE_FAILED = 4


class AlreadyRunning(RuntimeError):
    """Another process already serves this node directory."""


class _PidLock:
    def __init__(self, base_dir: str) -> None:
        self.path = os.path.join(base_dir, PID_FILE)
        fd, holder = store_guard.take_lock(self.path)
        if fd is None:
            raise AlreadyRunning(f"{base_dir} is already served by process {holder}")
        self.fd = fd

    def release(self) -> None:
        store_guard.release_lock(self.fd)


def log_rotation(config: Optional[NodeConfig]) -> tuple[int, int]:
    """(max_bytes, backup_count) of ``node.log`` from the ``[logging]`` table of
    ``node.toml``, else the defaults."""
    table = dict(getattr(config, "logging", None) or {})
    unknown = set(table) - {"max_bytes", "backup_count"}
    if unknown:
        raise ValueError(f"node.toml [logging]: unknown option(s) {sorted(unknown)} "
                         "(known: max_bytes, backup_count)")
    max_bytes, backups = table.get("max_bytes", LOG_MAX_BYTES), table.get("backup_count", LOG_BACKUPS)
    if not isinstance(max_bytes, int) or max_bytes < 4096:
        raise ValueError(f"node.toml [logging]: `max_bytes` must be an integer of at least 4096, "
                         f"found {max_bytes!r}")
    if not isinstance(backups, int) or backups < 1:
        raise ValueError(f"node.toml [logging]: `backup_count` must be a positive integer, "
                         f"found {backups!r}")
    return max_bytes, backups


class _LogFile(FatalReport, PlainOpen, logging.handlers.RotatingFileHandler):
    """``node.log``. A line it cannot write (a full disk) is said once, in one line naming
    the file, instead of logging's traceback on stderr, which would bury the node's own
    message; every line still goes to stderr. A fatal signal's report goes into it too
    (`FatalReport`)."""

    failed = False

    def handleError(self, record: logging.LogRecord) -> None:
        if not self.failed:
            self.failed = True
            exc = sys.exc_info()[1]
            why = getattr(exc, "strerror", None) or exc
            print(f"greenflow node: cannot write {self.baseFilename}: {why}", file=sys.stderr)


def setup_logging(base_dir: str, level: str = "INFO", stderr: bool = True, *,
                  max_bytes: int = LOG_MAX_BYTES, backup_count: int = LOG_BACKUPS) -> None:
    """Log to ``base_dir/node.log`` (rotated by size: a node's log never holds more than
    about ``max_bytes * (backup_count + 1)`` bytes, whatever clients make it say) and to
    stderr."""
    root = logging.getLogger()
    root.setLevel(getattr(logging, level.upper(), logging.INFO))
    fmt = logging.Formatter(LOG_FORMAT)
    fh = _LogFile(os.path.join(base_dir, LOG_FILE), encoding="utf-8",
                  maxBytes=max_bytes, backupCount=backup_count)
    fh.setFormatter(fmt)
    root.addHandler(fh)
    has_stderr = any(not isinstance(h, logging.FileHandler) and isinstance(h, logging.StreamHandler)
                     for h in root.handlers)  # e.g. the CLI's own: do not print lines twice
    if stderr and not has_stderr:
        sh = logging.StreamHandler(sys.stderr)
        sh.setFormatter(fmt)
        root.addHandler(sh)


def own_identity(config: NodeConfig, netmap: NetworkMap) -> NodeIdentity:
    """The node's identity, checked against the network map before anything starts: a
    node process never makes a key (a new one would be an identity no peer knows, and
    would hide the lost one for good), and a key the map does not list is refused by
    every peer, so both are configuration errors naming the file to fix."""
    identity = NodeIdentity.load(config.base_dir, config.name)
    me = netmap.get(config.name)
    if me is None:
        raise ConfigError(f"the network map {config.network_map_path} does not list "
                          f"{config.name}: copy the network's map there (one that lists "
                          "this node, as `greenflow network bootstrap` writes it)")
    if me.party.owning_key != identity.party.owning_key:
        raise ConfigError(f"{key_path(config.base_dir)} does not hold the key the network "
                          f"map {config.network_map_path} lists for {config.name}: restore "
                          f"this node's {KEY_FILE} from a backup of this node directory")
    return identity


class NodeProcess:
    """Node + transport + RPC for one node directory, in this process.

    ``start()`` brings everything up (raising if the ports are taken or the directory is
    served already); ``run()`` blocks until ``request_stop()`` (signals, the RPC
    ``shutdown`` operation) and then stops cleanly.
    """

    def __init__(self, base_dir: str, *, rpc: bool = True, node_options: Optional[dict] = None,
                 new_store: bool = False) -> None:
        self.base_dir = os.path.abspath(base_dir)
        self.config = NodeConfig.load(self.base_dir)
        from greenflow.rpc.limits import RpcLimits
        self.rpc_limits = RpcLimits.from_config(self.config.rpc)  # a bad [rpc] fails here
        self.p2p_limits = P2pLimits.from_config(self.config.p2p)  # and a bad [p2p]
        self.log_rotation = log_rotation(self.config)
        self.netmap = NetworkMap.load(self.config.network_map_path)
        self.identity = own_identity(self.config, self.netmap)
        self.with_rpc = rpc
        self.node_options = dict(node_options or {})
        self.node: Optional[Node] = None
        self.transport: Any = None
        self.rpc: Any = None
        self.started_at: Optional[float] = None
        self._stop = threading.Event()
        self._lock: Optional[_PidLock] = None
        #: Allow a missing or empty store to be created afresh (``--new-store``).
        self.new_store = new_store
        #: Why ``run()`` ended other than by a stop request (the scheduler's commit error).
        self.fatal: Optional[BaseException] = None

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> "NodeProcess":
        from greenflow.rpc.server import RpcServer
        from greenflow.network.tcp_transport import TcpTransport

        cfg = self.config
        self._lock = _PidLock(self.base_dir)
        store_dir = os.path.join(self.base_dir, "store")
        try:
            # The store first: a refusal names the store, not a port the other process holds.
            if not is_lmdb(store_url(self.base_dir)):
                # Another store checks itself at open; missing is refused unless --new-store.
                open_store(self.base_dir, create=self.new_store).close()
            elif not store_guard.present(store_dir):
                if not self.new_store or (os.path.lexists(store_dir)
                                          and not os.path.isdir(store_dir)):
                    raise store_guard.missing(store_dir)   # (says what a file there is)
                log.warning("%s: starting with a new, empty store at %s (--new-store)",
                            cfg.name, store_dir)
            else:   # in use? (the store takes its lock for good when the node opens it)
                lock = store_guard.StoreLock(store_dir)
                try:
                    store_guard.check_file(store_dir)
                    store_guard.check_in_child(store_dir)
                finally:
                    lock.release()
            self.transport = TcpTransport(self.identity, self.netmap, listen=cfg.p2p_address,
                                          limits=self.p2p_limits)
            self.transport.bind()
            if self.with_rpc:
                self.rpc = RpcServer(self, cfg.rpc_address, self.rpc_limits)  # binds now: fail before opening
            options = {**cfg.node_options(), **self.node_options}
            if cfg.notary and "notary" in inspect.signature(Node.__init__).parameters:
                options["notary"] = True
                if cfg.validating_notary:
                    options["validating_notary"] = True
            try:
                self.node = Node(self.base_dir, cfg.name, apps=cfg.apps or None,
                                 transport=self.transport, **options)
            except StoreError:
                raise
            except (lmdb.Error, UnicodeDecodeError) as exc:   # garbage the checks missed
                raise store_guard.corrupt(store_dir, exc) from exc
            self.transport.start()
            if self.rpc is not None:
                self.rpc.start()
        except BaseException:
            self._teardown()
            raise
        self.started_at = time.time()
        log.info("%s is up: p2p %s, rpc %s, apps %s, %d parties on the network map",
                 cfg.name, format_address(self.transport.address),
                 format_address(self.rpc.address) if self.rpc else "off",
                 ", ".join(cfg.apps) or "(all imported)", len(self.netmap))
        if self.rpc is not None and not cfg.rpc_users:
            log.warning("%s: node.toml lists no [[rpc_users]]: every RPC and console login is "
                        "refused (add one with `greenflow node init`'s format)", cfg.name)
        return self

    def request_stop(self) -> None:
        """Ask ``run()`` to stop (any thread, signal handlers too)."""
        self._stop.set()

    def run(self) -> None:
        """Serve until stopped by a signal or ``request_stop()``, then stop cleanly."""
        installed = []
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                installed.append((sig, signal.signal(sig, lambda s, f: self.request_stop())))
        try:
            while not self._stop.wait(0.5):
                if self.node is not None and self.node.scheduler.dead:
                    self.fatal = self.node.scheduler.commit_error or FlowError("the scheduler stopped")
                    log.critical("%s: the scheduler stopped (%s); shutting down",
                                 self.config.name, self.fatal)
                    break
        finally:
            for sig, old in installed:
                signal.signal(sig, old)
            self.stop()

    def stop(self) -> None:
        log.info("%s: shutting down", self.config.name)
        self._teardown()
        log.info("%s: stopped", self.config.name)

    def _teardown(self) -> None:
        rpc, node, transport, lock = self.rpc, self.node, self.transport, self._lock
        self.rpc = self.node = self._lock = None
        if rpc is not None:
            rpc.stop()
        if node is not None:
            node.close()
        if transport is not None:
            transport.close()
        if lock is not None:
            lock.release()

    # ------------------------------------------------------------------ draining
    @property
    def draining(self) -> bool:
        return self.node is not None and self.node.draining

    def set_draining(self, on: bool) -> None:
        """Draining (`Node.set_draining`): no new flows, no new inbound sessions (peers'
        initiations wait unacknowledged until it ends); running flows go on."""
        assert self.node is not None
        self.node.set_draining(bool(on))
        log.info("%s: draining %s", self.config.name, "on" if on else "off")


def main(argv: Optional[list[str]] = None) -> int:
    """``python -m greenflow.rpc.node_process --dir DIR`` (what ``greenflow node start`` runs)."""
    ap = argparse.ArgumentParser(prog="greenflow node start")
    ap.add_argument("--dir", required=True)
    ap.add_argument("--log-level", default=os.environ.get("GREENFLOW_LOG_LEVEL", "INFO"))
    ap.add_argument("--no-rpc", action="store_true")
    ap.add_argument("--new-store", action="store_true",
                    help="start with a new, empty store if the node's store is missing or empty")
    args = ap.parse_args(argv)
    from greenflow.node.hash_seed import run_with_party_seed
    run_with_party_seed(args.dir)   # (returns only once the process runs with it)
    return serve(args.dir, log_level=args.log_level, rpc=not args.no_rpc,
                 new_store=args.new_store)


def serve(base_dir: str, *, log_level: str = "INFO", rpc: bool = True,
          new_store: bool = False) -> int:
    """Run a node in the foreground until SIGTERM/SIGINT. Returns the exit status
    (`EXIT_*`): a supervisor restarts or alerts on anything but 0."""
    base_dir = os.path.abspath(base_dir)
    from greenflow.node.gc_tuning import tune
    tune()  # a node process holds many flows: collect less often (see gc_tuning)
    try:
        proc = NodeProcess(base_dir, rpc=rpc, new_store=new_store)
    except Exception as exc:  # config or map missing/malformed: say so, no traceback
        print(f"greenflow node: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    max_bytes, backups = proc.log_rotation
    try:
        setup_logging(base_dir, log_level, max_bytes=max_bytes, backup_count=backups)
    except OSError as exc:   # a read-only file system, no permission: nothing started
        print(f"greenflow node: {proc.config.name} cannot start: cannot write "
              f"{exc.filename or os.path.join(base_dir, LOG_FILE)}: {exc.strerror or exc}",
              file=sys.stderr)
        return EXIT_START_FAILED
    for sig in (signal.SIGTERM, signal.SIGINT):  # also while starting: run() then stops at once
        signal.signal(sig, lambda s, f: proc.request_stop())
    try:
        proc.start()
    except StoreRefused as exc:   # missing, damaged, newer format, in use
        log.error("%s cannot start: %s", proc.config.name, exc)
        return EXIT_START_FAILED if isinstance(exc, StoreLocked) else EXIT_STORE_REFUSED
    except (AlreadyRunning, OSError, FlowError) as exc:  # port taken, app missing, ...
        log.error("%s cannot start: %s", proc.config.name, exc)
        return EXIT_START_FAILED
    proc.run()
    if proc.fatal is not None:
        log.critical("%s stopped on a fatal error (exit status %d): %s", proc.config.name,
                     EXIT_STORE_FAILED, proc.fatal)
        return EXIT_STORE_FAILED
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
