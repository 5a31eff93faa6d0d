"""A node's own identity: its well-known name and Ed25519 key pair.

The 32-byte seed lives in ``<node dir>/identity.key`` (mode 0600) and is created on first
open; the public half is the node's `Party.owning_key`. The private key never appears in
a repr, a log or a checkpoint dump.
"""
from __future__ import annotations

import os

import nacl.signing

from .errors import FlowError
from .party import Party

KEY_FILE = "identity.key"
NAME_FILE = "identity.name"


class NodeIdentity:
    def __init__(self, name: str, signing_key: nacl.signing.SigningKey) -> None:
        self._signing_key = signing_key
        self.party = Party(name, bytes(signing_key.verify_key))

    def __repr__(self) -> str:
        return f"NodeIdentity({self.party.name!r}, private key redacted)"

    @classmethod
    def load_or_create(cls, base_dir: str, name: str) -> "NodeIdentity":
        path = os.path.join(base_dir, KEY_FILE)
        name_path = os.path.join(base_dir, NAME_FILE)
        if os.path.exists(path):
            with open(path, "rb") as fh:
                seed = fh.read()
            if len(seed) != 32:
                raise FlowError(f"{path} is not a 32-byte Ed25519 seed (found {len(seed)} bytes)")
            if os.path.exists(name_path):
                with open(name_path, encoding="utf-8") as fh:
                    stored = fh.read().strip()
                if stored and stored != name:
                    raise FlowError(f"node directory {base_dir} belongs to {stored!r}, "
                                    f"not {name!r}")
            return cls(name, nacl.signing.SigningKey(seed))
        key = nacl.signing.SigningKey.generate()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(bytes(key))
        with open(name_path, "w", encoding="utf-8") as fh:
            fh.write(name + "\n")
        return cls(name, key)

    def sign(self, data: bytes) -> bytes:
        return self._signing_key.sign(data).signature

    @property
    def signing_key(self) -> nacl.signing.SigningKey:
        return self._signing_key
