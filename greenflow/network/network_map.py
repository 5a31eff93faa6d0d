"""The network map: every party on the network, its public key and its P2P address.

Each node directory holds the same ``network-map.json`` (written by ``greenflow network
bootstrap``). The transport trusts nothing else: a peer is who the map says only if it
proves it holds the private key of the public key listed under its name. So the map is
the root of trust of a network; distribute it the way you distribute the nodes' config.

File format (JSON, one object)::

    {"version": 1,
     "nodes": [{"name": "Alice", "public_key": "<64 hex>", "p2p_address": "127.0.0.1:10000",
                "notary": false}, ...]}
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Iterable, Optional

from greenflow.errors import FlowError
from greenflow.party import MAX_NAME_BYTES, Party, name_fits
from greenflow.storage.plain_files import open_plain_file

MAP_FILE = "network-map.json"
FORMAT_VERSION = 1
#: The most a network map file may hold: ~300 bytes per node, so room for ~200,000 nodes;
#: a file past it (a link to /dev/zero, a runaway write) is refused, not read into memory.
MAX_MAP_CHARS = 64 << 20


class NetworkMapError(FlowError):
    """The network map file is missing, malformed, or names a party twice. Fix the file
    (or bootstrap the network again); the node does not start without a valid map."""


def parse_address(text: str) -> tuple[str, int]:
    """``"host:port"`` (``"[::1]:port"`` for IPv6) -> ``(host, port)``."""
    host, sep, port = str(text).rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise NetworkMapError(f"address {text!r} is not host:port")
    return host.strip("[]"), int(port)


def format_address(addr: tuple[str, int]) -> str:
    host, port = addr
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@dataclass(frozen=True)
class NodeInfo:
    """One entry of the map."""
    party: Party
    p2p_address: tuple[str, int]
    notary: bool = False

    @property
    def name(self) -> str:
        return self.party.name

    def to_json(self) -> dict:
        return {"name": self.party.name, "public_key": self.party.owning_key.hex(),
                "p2p_address": format_address(self.p2p_address), "notary": self.notary}


class NetworkMap:
    """Immutable lookup of the parties of one network, by name and by key."""

    def __init__(self, nodes: Iterable[NodeInfo]) -> None:
        self._by_name: dict[str, NodeInfo] = {}
        self._by_key: dict[bytes, NodeInfo] = {}
        for info in nodes:
            if not name_fits(info.name):   # part of the store's keys (outbox, sessions)
                raise NetworkMapError(f"a party name must be 1 to {MAX_NAME_BYTES} bytes "
                                      f"(UTF-8): {info.name[:60]!r}...")
            if info.name in self._by_name:
                raise NetworkMapError(f"the network map names {info.name!r} twice")
            if len(info.party.owning_key) != 32:
                raise NetworkMapError(f"{info.name!r} has no 32-byte Ed25519 public key")
            if info.party.owning_key in self._by_key:
                raise NetworkMapError(f"{info.name!r} and {self._by_key[info.party.owning_key].name!r}"
                                      " share one public key")
            self._by_name[info.name] = info
            self._by_key[info.party.owning_key] = info

    def __iter__(self):
        return iter(self._by_name.values())

    def __len__(self) -> int:
        return len(self._by_name)

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    def get(self, name: str) -> Optional[NodeInfo]:
        """The entry registered under exactly ``name``."""
        return self._by_name.get(name)

    def party(self, name: str) -> Optional[Party]:
        info = self._by_name.get(name)
        return info.party if info is not None else None

    def resolve(self, name: str) -> NodeInfo:
        """Look a party up as a person would type it: its full name, or the organisation
        part of an X.500 name (``Bob`` for ``O=Bob,L=London,C=GB``), case-insensitively
        when that is unambiguous."""
        info = self._by_name.get(name)
        if info is not None:
            return info
        low = name.strip().lower()
        hits = [i for i in self._by_name.values()
                if i.name.lower() == low or i.party.short_name.lower() == low]
        if len(hits) == 1:
            return hits[0]
        known = ", ".join(sorted(self._by_name)) or "none"
        if len(name) > 100:   # quoted back to clients: never a huge input in full
            name = name[:100] + "..."
        if not hits:
            raise NetworkMapError(f"no party {name!r} on the network map (known: {known})")
        raise NetworkMapError(f"{name!r} is ambiguous on the network map: "
                              + ", ".join(sorted(i.name for i in hits)))

    @property
    def notaries(self) -> list[NodeInfo]:
        return [i for i in self._by_name.values() if i.notary]

    # ------------------------------------------------------------------ files
    def to_json(self) -> dict:
        return {"version": FORMAT_VERSION, "nodes": [i.to_json() for i in self._by_name.values()]}

    def save(self, path: str) -> None:
        tmp = path + ".tmp"
        with open_plain_file(tmp, "w", encoding="utf-8") as fh:
            json.dump(self.to_json(), fh, indent=2)
            fh.write("\n")
        os.replace(tmp, path)

    @classmethod
    def from_json(cls, doc: object, where: str = "network map") -> "NetworkMap":
        if not isinstance(doc, dict) or doc.get("version") != FORMAT_VERSION \
                or not isinstance(doc.get("nodes"), list):
            raise NetworkMapError(f"{where}: expected {{\"version\": {FORMAT_VERSION}, "
                                  "\"nodes\": [...]}")
        nodes = []
        for i, e in enumerate(doc["nodes"]):
            try:
                key = bytes.fromhex(e["public_key"])
                name = e["name"]
                if not isinstance(name, str) or not name:
                    raise ValueError("empty name")
                notary = e.get("notary", False)
                if type(notary) is not bool:   # "false" is true to bool()
                    raise ValueError(f"notary is true or false, not {notary!r}")
                nodes.append(NodeInfo(Party(name, key), parse_address(e["p2p_address"]), notary))
            except NetworkMapError as exc:   # its address: named with the file and entry
                raise NetworkMapError(f"{where}: entry {i}: {exc}") from None
            except (KeyError, TypeError, ValueError) as exc:
                raise NetworkMapError(f"{where}: entry {i} is malformed ({exc!r})") from None
        try:
            return cls(nodes)
        except NetworkMapError as exc:   # a name or key twice: the file is what to fix
            raise NetworkMapError(f"{where}: {exc}") from None

    @classmethod
    def load(cls, path: str) -> "NetworkMap":
        try:
            with open(path, encoding="utf-8") as fh:
                text = fh.read(MAX_MAP_CHARS + 1)
            if len(text) > MAX_MAP_CHARS:
                raise NetworkMapError(f"{path} is larger than a network map may be "
                                      f"({MAX_MAP_CHARS:,} characters)")
            doc = json.loads(text)
        except FileNotFoundError:
            raise NetworkMapError(f"no network map at {path}; run `greenflow network "
                                  "bootstrap` or copy the network's map there") from None
        except ValueError as exc:
            raise NetworkMapError(f"{path} is not valid JSON: {exc}") from None
        except OSError as exc:   # a directory, no permission: named as the network map
            raise NetworkMapError(f"cannot read the network map {path}: {exc.strerror}") from None
        return cls.from_json(doc, path)
