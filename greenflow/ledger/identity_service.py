"""`IdentityService` (``services.identity_service``): who is who on the network.

Names resolve to parties through the node's transport: the network map of a real node
(`greenflow.network.network_map`), the other nodes of a `MockNetwork`. Keys resolve back to the
parties the node has met, so error messages can say "Seller" instead of a key in hex.
"""
from __future__ import annotations

import threading
from typing import Any, Iterable, Optional

from greenflow.errors import UnknownParty
from greenflow.party import Party
from greenflow.node.services import register_service_factory

__all__ = ["IdentityService", "UnknownParty"]


class IdentityService:
    def __init__(self, node: Any) -> None:
        self._node = node
        self._by_key: dict[bytes, Party] = {node.party.owning_key: node.party}
        self._lock = threading.Lock()

    @property
    def me(self) -> Party:
        return self._node.party

    def party(self, name: str) -> Optional[Party]:
        """The party registered under exactly ``name``, or None."""
        if name == self._node.party.name:
            return self._node.party
        lookup = getattr(self._node.transport, "party", None)
        found = lookup(name) if lookup is not None else None
        if found is not None:
            self._learn(found)
        return found

    def require_party(self, name: str) -> Party:
        found = self.party(name)
        if found is None:
            known = ", ".join(sorted(p.name for p in self.all_parties())) or "none"
            raise UnknownParty(f"no party named {name!r} on the network (known: {known})")
        return found

    def party_from_key(self, key: bytes) -> Optional[Party]:
        """The party owning ``key``, among those this node knows (None otherwise)."""
        found = self._by_key.get(key)
        if found is None:
            for party in self.all_parties():
                if party.owning_key == key:
                    return party
        return found

    def all_parties(self) -> list[Party]:
        """Every party on the network this node can see."""
        parties = {p.owning_key: p for p in self._network_parties()}
        parties.setdefault(self._node.party.owning_key, self._node.party)
        for party in parties.values():
            self._learn(party)
        return list(parties.values())

    def notaries(self) -> list[Party]:
        """The network's notaries (a real node reads its network map; a MockNetwork node
        asks its network which nodes were created as notaries)."""
        transport = self._node.transport
        netmap = getattr(transport, "netmap", None)
        if netmap is not None:
            return [info.party for info in netmap.notaries]
        net = getattr(transport, "net", None)
        if net is not None:
            return [mn.party for mn in net.nodes if getattr(mn.node, "is_notary", False)]
        return [self._node.party] if getattr(self._node, "is_notary", False) else []

    def register(self, parties: Iterable[Party]) -> None:
        """Remember parties met outside the network map (e.g. named in a transaction)."""
        for party in parties:
            self._learn(party)

    def describe_key(self, key: bytes) -> str:
        party = self.party_from_key(key)
        return party.name if party is not None else key.hex()[:16] + "…"

    def _learn(self, party: Party) -> None:
        if party.owning_key and party.owning_key not in self._by_key:
            with self._lock:
                self._by_key.setdefault(party.owning_key, party)

    def _network_parties(self) -> list[Party]:
        transport = self._node.transport
        netmap = getattr(transport, "netmap", None)
        if netmap is not None:
            return [info.party for info in netmap]
        net = getattr(transport, "net", None)
        if net is not None:
            return [mn.party for mn in net.nodes]
        return []


register_service_factory("identity_service", IdentityService)
