"""Keys, signatures and hashes for the ledger (PyNaCl Ed25519, SHA-256).

Node-to-node traffic is authenticated by the transport (see the nodes guide); signatures
are for transactions, which outlive the connection they came over and are shown to third
parties (the notary, later owners resolving a chain).

Key pairs and key files are defined in `greenflow.keys` (a node's own identity needs
them, and the core does not import the ledger) and re-exported here.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

from greenflow.keys import (PUBLIC_KEY_BYTES, SEED_BYTES, SIGNATURE_BYTES, KeyFileError, KeyPair,
                    load_keypair, load_or_create_keypair, save_keypair, verify)
from greenflow.wire import register_wire_type

__all__ = [
    "KeyFileError", "KeyPair", "SecureHash", "load_keypair", "load_or_create_keypair",
    "save_keypair", "verify",
]

# Re-exported constants (not in __all__, as before).
_ = (PUBLIC_KEY_BYTES, SEED_BYTES, SIGNATURE_BYTES)


@dataclass(frozen=True, order=True)
class SecureHash:
    """A SHA-256 digest: the identity of a transaction. ``str()`` is its hex form."""

    value: bytes

    def __post_init__(self) -> None:
        if type(self.value) is not bytes or len(self.value) != 32:
            raise ValueError("a SecureHash holds 32 bytes")

    @classmethod
    def sha256(cls, data: bytes) -> SecureHash:
        return cls(hashlib.sha256(data).digest())

    @classmethod
    def parse(cls, text: str) -> SecureHash:
        """The hash whose hex form is ``text`` (as printed by ``str()``)."""
        return cls(bytes.fromhex(text))

    @property
    def hex(self) -> str:
        return self.value.hex()

    @property
    def short(self) -> str:
        """The first 8 hex digits, enough to tell transactions apart in logs."""
        return self.value[:4].hex()

    def __str__(self) -> str:
        return self.value.hex()

    def __repr__(self) -> str:
        return f"SecureHash({self.value.hex()[:16]}…)"


register_wire_type(SecureHash)
