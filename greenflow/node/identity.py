"""A node's own identity: its well-known name and Ed25519 key pair.

The 32-byte seed lives in ``<node dir>/identity.key`` (mode 0600), created on first open
by the ledger's key-file helpers (written to a temporary file, synced, then linked, so a
crash never leaves a half-written key, and an existing key is never replaced). The
public half is the node's `Party.owning_key`. The private key never appears in a repr, a
log or a checkpoint dump.
"""
from __future__ import annotations

import os

import nacl.signing

from greenflow.errors import FlowError
from greenflow.keys import KeyPair, load_or_create_keypair
from greenflow.party import Party

KEY_FILE = "identity.key"
NAME_FILE = "identity.name"


def read_node_name(node_dir: str) -> str:
    """The name of the node whose directory is ``node_dir`` (`FlowError` when it holds
    no node): what tools that open a node directory read first."""
    path = os.path.join(node_dir, NAME_FILE)
    try:
        with open(path, encoding="utf-8") as fh:
            name = fh.read().strip()
    except OSError:
        raise FlowError(f"{node_dir} is not a node directory (no {NAME_FILE})") from None
    except UnicodeDecodeError as exc:
        raise FlowError(f"{path} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    if not name:
        raise FlowError(f"{path} is empty")
    return name


class NodeIdentity:
    def __init__(self, name: str, keypair: KeyPair) -> None:
        self._keypair = keypair
        self.party = Party(name, keypair.public_key)

    def __repr__(self) -> str:
        return f"NodeIdentity({self.party.name!r}, private key redacted)"

    @classmethod
    def load_or_create(cls, base_dir: str, name: str) -> "NodeIdentity":
        name_path = os.path.join(base_dir, NAME_FILE)
        if os.path.exists(name_path):
            with open(name_path, encoding="utf-8") as fh:
                stored = fh.read().strip()
            if stored and stored != name:
                raise FlowError(f"node directory {base_dir} belongs to {stored!r}, not {name!r}")
        keypair = load_or_create_keypair(os.path.join(base_dir, KEY_FILE))
        if not os.path.exists(name_path):
            with open(name_path, "w", encoding="utf-8") as fh:
                fh.write(name + "\n")
        return cls(name, keypair)

    @property
    def keypair(self) -> KeyPair:
        return self._keypair

    def sign(self, data: bytes) -> bytes:
        return self._keypair.sign(data)

    @property
    def signing_key(self) -> nacl.signing.SigningKey:
        """The raw key, for what needs more than signing (the transport derives its
        Curve25519 key from it)."""
        return self._keypair._signing_key
