"""What flows reach through ``self.services``: the node's identity, keys, clock and
whatever services apps attach (the ledger attaches its vault and identity service).

Flows hold no reference to this object; they reach it through the running flow's
context, so it is never pickled into a checkpoint.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional

from .party import Party

if TYPE_CHECKING:
    from .node import Node


class ServiceHub:
    def __init__(self, node: "Node") -> None:
        self._node = node
        self._extra: dict[str, Any] = {}

    @property
    def my_info(self) -> Party:
        return self._node.party

    @property
    def clock(self) -> Any:
        return self._node.clock

    def sign(self, data: bytes) -> bytes:
        """Sign with the node's identity key (Ed25519)."""
        return self._node.identity.sign(data)

    @property
    def signing_key(self) -> Any:
        return self._node.identity.signing_key

    @property
    def store(self) -> Any:
        return self._node.store

    def register(self, name: str, service: Any) -> None:
        """Attach an app service, reachable as ``services.<name>``."""
        self._extra[name] = service

    def get(self, name: str, default: Optional[Any] = None) -> Any:
        return self._extra.get(name, default)

    def __getattr__(self, name: str) -> Any:
        extra = self.__dict__.get("_extra", {})
        if name in extra:
            return extra[name]
        raise AttributeError(f"the node has no service {name!r} (registered: {sorted(extra)})")
