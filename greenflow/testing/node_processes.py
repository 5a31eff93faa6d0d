"""`ProcessNetwork`: real node processes on loopback, for tests, benchmarks and demos.

::

    with ProcessNetwork(tmp_path, ["Alice", "Bob"], apps=["samples.ping"]) as net:
        net.start_all()
        out = net.client("Alice").start_flow("samples.ping.Ping", {"peer": "Bob", "n": 3}, wait=30)
        net.kill("Bob")            # SIGKILL: a power cut
        net.start("Bob")           # restart from its directory; flows resume

Each node runs ``python -m greenflow.rpc.node_process --dir DIR/<name>`` (what ``greenflow
node start`` runs) with free loopback ports, and is driven over its RPC. Modules listed
in ``pythonpath`` are importable in the node processes (put your test flows there).
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from typing import Any, Iterable, Optional

import greenflow

from greenflow.errors import FlowError
from greenflow.network.bootstrap import bootstrap_network, dir_name
from greenflow.network.node_config import NodeConfig
from greenflow.rpc.client import RpcClient, RpcClientError

_SOURCE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(greenflow.__file__)))


class NodeProcessFailed(FlowError, RuntimeError):
    """A node process of the network exited instead of starting (its log's tail says why).
    A `RuntimeError` as well, for callers that caught that before."""


class NodeNotAnswering(FlowError, TimeoutError):
    """A node process did not answer its RPC in time (a `TimeoutError` as well)."""


class ProcessNetwork:
    """Nodes ``nodes`` (and ``notary``, if named) bootstrapped under ``root`` on free
    loopback ports, each started as its own process by `start` / `start_all` and driven
    over its RPC (`client`). `kill` is a power cut (SIGKILL by default), `stop` a clean
    stop; a node stays down until started again, which is how a test keeps a party away
    while others need it (MockNetwork's `restart_node` brings a node back at once). Used
    as a context manager, every node still running is stopped at the end."""

    def __init__(self, root: Any, nodes: Iterable[str], *, notary: Optional[str] = None,
                 apps: Iterable[str] = ("samples.ping",), pythonpath: Iterable[str] = (),
                 log_level: str = "INFO", env: Optional[dict] = None,
                 validating_notary: bool = False) -> None:
        self.root = os.path.abspath(str(root))
        self.configs = {c.name: c for c in bootstrap_network(
            self.root, list(nodes), notary=notary, base_port=0, apps=list(apps),
            validating_notary=validating_notary)}
        self.pythonpath = [os.path.abspath(p) for p in pythonpath]
        self.log_level = log_level
        self.extra_env = dict(env or {})
        self.procs: dict[str, subprocess.Popen] = {}
        self._clients: dict[str, RpcClient] = {}

    @property
    def names(self) -> list[str]:
        return list(self.configs)

    def dir(self, name: str) -> str:
        return os.path.join(self.root, dir_name(name))

    def config(self, name: str) -> NodeConfig:
        return self.configs[name]

    # ------------------------------------------------------------------ processes
    def _env(self) -> dict:
        env = dict(os.environ)
        paths = [_SOURCE_ROOT] + self.pythonpath
        if env.get("PYTHONPATH"):
            paths.append(env["PYTHONPATH"])
        env["PYTHONPATH"] = os.pathsep.join(paths)
        env.update(self.extra_env)
        return env

    def start(self, name: str, wait: float = 30.0) -> RpcClient:
        """Start (or restart) a node process and wait until its RPC answers."""
        old = self.procs.get(name)
        if old is not None and old.poll() is None:
            raise NodeProcessFailed(f"{name} is already running (pid {old.pid})")
        log = open(os.path.join(self.dir(name), "stderr.log"), "ab")
        proc = subprocess.Popen(
            [sys.executable, "-m", "greenflow.rpc.node_process", "--dir", self.dir(name),
             "--log-level", self.log_level],
            stdout=log, stderr=subprocess.STDOUT, env=self._env(), cwd=self.root)
        log.close()
        self.procs[name] = proc
        if wait:
            self.wait_ready(name, wait)
        return self.client(name)

    def start_all(self, wait: float = 30.0) -> None:
        for name in self.names:
            self.start(name, wait=0)
        for name in self.names:
            self.wait_ready(name, wait)

    def wait_ready(self, name: str, timeout: float = 30.0) -> None:
        proc = self.procs[name]
        deadline = time.monotonic() + timeout
        client = self.client(name)
        while True:
            if proc.poll() is not None:
                raise NodeProcessFailed(f"{name} exited with {proc.returncode}:\n{self.log_tail(name)}")
            try:
                if client.node_info()["pid"] == proc.pid:
                    return
            except RpcClientError:
                pass
            if time.monotonic() > deadline:
                raise NodeNotAnswering(f"{name} did not answer RPC within {timeout}s:\n"
                                   f"{self.log_tail(name)}")
            time.sleep(0.05)

    def kill(self, name: str, sig: int = signal.SIGKILL, wait: float = 30.0) -> int:
        """Send ``sig`` (default SIGKILL: a power cut) and wait for the process to end."""
        proc = self.procs[name]
        if proc.poll() is None:
            proc.send_signal(sig)
        self._clients.pop(name, None)
        return proc.wait(wait)

    def stop(self, name: str, wait: float = 30.0) -> int:
        """SIGTERM: a clean shutdown."""
        return self.kill(name, signal.SIGTERM, wait)

    def running(self, name: str) -> bool:
        p = self.procs.get(name)
        return p is not None and p.poll() is None

    def client(self, name: str, timeout: float = 60.0) -> RpcClient:
        c = self._clients.get(name)
        if c is None:
            c = self._clients[name] = RpcClient.for_node(self.dir(name), timeout=timeout)
        return c

    def log_tail(self, name: str, lines: int = 40) -> str:
        path = os.path.join(self.dir(name), "stderr.log")
        try:
            with open(path, encoding="utf-8", errors="replace") as fh:
                return "".join(fh.readlines()[-lines:])
        except OSError:
            return "(no log)"

    def close(self) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is None:
                proc.terminate()
        for name, proc in self.procs.items():
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        for c in self._clients.values():
            c.close()

    def __enter__(self) -> "ProcessNetwork":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
