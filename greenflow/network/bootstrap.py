"""Making node directories: ``greenflow network bootstrap`` and ``greenflow node init``.

A bootstrapped network is a folder with one directory per node; each holds the node's
key pair, its ``node.toml`` and the same ``network-map.json``. Nodes get consecutive
ports from ``base_port``: P2P on ``base_port + 2i``, RPC on ``base_port + 2i + 1``
(``base_port=0`` picks free ports, for tests).
"""
from __future__ import annotations

import os
import random
import re
import socket
from typing import Iterable, Optional

from greenflow.node.identity import NodeIdentity
from greenflow.network.network_map import MAP_FILE, NetworkMap, NodeInfo
from greenflow.network.node_config import (CONFIG_FILE, ConfigError, NodeConfig, RpcUser, check_ports, hash_password,
                          new_password, write_credentials)

DEFAULT_APPS = ("samples.ping",)


def dir_name(name: str) -> str:
    """The directory a node gets under a network folder: its short name, made safe."""
    from greenflow.party import Party
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", Party(name).short_name) or "node"


def free_port(host: str = "127.0.0.1", avoid: Iterable[int] = ()) -> int:
    """A port free to listen on now, below the kernel's ephemeral range where it can be.

    A port the kernel hands out for ``bind(0)`` comes from the range it also gives
    outgoing connections, so any connection opened between now and the node's own bind
    (a busy machine opens many) may take it: the node then fails with "Address already in
    use". A port below that range can only be taken by another listener."""
    low = _ephemeral_low()
    if low is not None and low > 4096:
        pick = _PORTS.randrange
        avoid = frozenset(avoid)
        for _ in range(64):
            port = pick(max(1024, low - 16384), low)
            if port in avoid:   # given to another node of the same network, not bound yet
                continue
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                try:
                    s.bind((host, port))
                except OSError:
                    continue
                return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


_PORTS = random.Random(os.urandom(16))


def _ephemeral_low() -> Optional[int]:
    """The first port of the kernel's ephemeral range (Linux), or None if unknown."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as fh:
            return int(fh.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _refuse_a_node_there(base_dir: str) -> None:
    """A directory that holds a node's files, its configuration or what a node made (a
    key, a store: left by another run, say) is never made a new node's: its store and key
    would be adopted silently, its flows and states with them."""
    for what in (CONFIG_FILE, "identity.key", "identity.name", "store"):
        if os.path.exists(os.path.join(base_dir, what)):
            raise ConfigError(f"{base_dir} already holds a node ({what} exists): use another "
                              "directory, or remove that one")


def init_node(base_dir: str, name: str, *, p2p_address: tuple[str, int],
              rpc_address: tuple[str, int], apps: Iterable[str] = DEFAULT_APPS,
              notary: bool = False, rpc_user: str = "admin",
              rpc_password: Optional[str] = None, validating_notary: bool = False) -> NodeConfig:
    """Create one node directory: key pair, ``node.toml`` with one RPC user (password
    hashed; the plain password goes to ``rpc-credentials``, mode 0600, for the local CLI),
    an empty store and, if there is none yet, a network map naming only this node.
    ``validating_notary`` makes a notary of the validating kind (docs/ledger-notary.md)."""
    base_dir = os.path.abspath(base_dir)
    _refuse_a_node_there(base_dir)
    if validating_notary and not notary:
        raise ConfigError(f"{name}: a validating notary must be a notary")
    if not name or name != name.strip():   # what the network map and peers would refuse
        raise ConfigError(f"a node's name must not be empty or start or end with a space: "
                          f"{name!r}")
    if not rpc_user:
        raise ConfigError("the RPC user's name must not be empty")
    check_ports(p2p_address, rpc_address, name)
    os.makedirs(base_dir, exist_ok=True)
    identity = NodeIdentity.load_or_create(base_dir, name)
    password = rpc_password or new_password()
    cfg = NodeConfig(name=name, p2p_address=p2p_address, rpc_address=rpc_address,
                     apps=list(apps), notary=notary, validating_notary=validating_notary,
                     rpc_users=[RpcUser(rpc_user, hash_password(password), ["ALL"])],
                     base_dir=base_dir)
    cfg.save()
    write_credentials(base_dir, rpc_user, password)
    # The store exists from the start: a node directory without one has lost it, and
    # `greenflow node start` refuses it rather than start afresh (see store_guard).
    from greenflow.storage import open_store
    open_store(base_dir).close()
    if not os.path.exists(cfg.network_map_path):
        NetworkMap([NodeInfo(identity.party, p2p_address, notary)]).save(cfg.network_map_path)
    return cfg


def bootstrap_network(root: str, nodes: Iterable[str], *, notary: Optional[str] = None,
                      base_port: int = 10000, host: str = "127.0.0.1",
                      apps: Iterable[str] = DEFAULT_APPS, rpc_user: str = "admin",
                      rpc_password: Optional[str] = None,
                      validating_notary: bool = False) -> list[NodeConfig]:
    """Create a node directory under ``root`` for each name (and the notary, of the
    validating kind with ``validating_notary``), then write the same network map into
    each. Returns the configs, notary first."""
    if validating_notary and not notary:
        raise ConfigError("a validating notary needs a notary name (--notary)")
    names = ([notary] if notary else []) + [n for n in nodes if n != notary]
    if not names:
        raise ConfigError("bootstrap needs at least one node name")
    if len(set(names)) != len(names):
        raise ConfigError(f"node names must be distinct: {', '.join(names)}")
    dirs = [dir_name(n) for n in names]
    if len(set(dirs)) != len(dirs):
        raise ConfigError(f"two node names map to one directory: {', '.join(dirs)}")
    top = base_port + 2 * len(names) - 1
    if base_port and not 0 < base_port <= top <= 65535:
        raise ConfigError(f"{len(names)} nodes from base port {base_port} need ports up to "
                          f"{top}; the highest port is 65535 (a lower base port, or 0 for "
                          "free ports)")
    for d in dirs:   # all of them before any is made: nothing half made when one is taken
        _refuse_a_node_there(os.path.join(os.path.abspath(root), d))
    apps = list(apps)
    configs = []
    taken: set[int] = set()
    for i, (name, d) in enumerate(zip(names, dirs)):
        if base_port:
            p2p, rpc = base_port + 2 * i, base_port + 2 * i + 1
        else:
            # Each port is free when picked, but none is bound until its node starts:
            # without the ports picked so far to avoid, two nodes could get the same one.
            p2p = free_port(host, taken)
            rpc = free_port(host, taken | {p2p})
            taken |= {p2p, rpc}
        configs.append(init_node(os.path.join(root, d), name, p2p_address=(host, p2p),
                                 rpc_address=(host, rpc), apps=apps,
                                 notary=(name == notary), rpc_user=rpc_user,
                                 rpc_password=rpc_password,
                                 validating_notary=validating_notary and name == notary))
    netmap = NetworkMap(NodeInfo(NodeIdentity.load_or_create(c.base_dir, c.name).party,
                                 c.p2p_address, c.notary) for c in configs)
    for c in configs:
        netmap.save(os.path.join(c.base_dir, MAP_FILE))
    return configs
