"""A node's own identity: its well-known name and Ed25519 key pair.

The 32-byte seed lives in ``<node dir>/identity.key`` (mode 0600), created when the
directory first becomes a node by the key-file helpers (written to a temporary file,
synced, then linked, so a crash never leaves a half-written key, and an existing key is
never replaced). The public half is the node's `Party.owning_key`: its peers and the
network map know the node by it, so a node that exists already (it has an
``identity.name`` or a store) never gets a new key made for it; a lost key is an error
to restore from a backup, not a new identity. The private key never appears in a repr,
a log or a checkpoint dump.
"""
from __future__ import annotations

import os

import nacl.signing

from greenflow.errors import FlowError
from greenflow.keys import KeyFileError, KeyPair, load_keypair, load_or_create_keypair
from greenflow.party import Party
from greenflow.storage import store_guard
from greenflow.storage.plain_files import open_plain_file

KEY_FILE = "identity.key"
NAME_FILE = "identity.name"
#: More than any node name (at most 200 bytes) with its newline: the most read of the file.
MAX_NAME_CHARS = 1024


def read_node_name(node_dir: str) -> str:
    """The name of the node whose directory is ``node_dir`` (`FlowError` when it holds
    no node): what tools that open a node directory read first."""
    path = os.path.join(node_dir, NAME_FILE)
    try:
        with open(path, encoding="utf-8") as fh:
            name = fh.read(MAX_NAME_CHARS + 1).strip()
    except FileNotFoundError:
        raise FlowError(f"{node_dir} is not a node directory (no {NAME_FILE})") from None
    except OSError as exc:   # a directory, a link loop, no permission: the file is there
        raise FlowError(f"cannot read {path}, which holds the node's name: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise FlowError(f"{path} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    if not name:
        raise FlowError(f"{path} is empty")
    if len(name) > MAX_NAME_CHARS:
        raise FlowError(f"{path} does not hold a node name: it is longer than one may be")
    return name


class IdentityMissing(KeyFileError):
    """The node exists but its ``identity.key`` does not: a new key would be another
    identity, which neither the network map nor the node's peers know."""


def key_path(base_dir: str) -> str:
    return os.path.join(base_dir, KEY_FILE)


def _node_exists(base_dir: str) -> bool:
    """Whether ``base_dir`` already is a node: ``identity.name`` is written only after
    the key, and the store only by a node that had one."""
    return os.path.exists(os.path.join(base_dir, NAME_FILE)) or \
        store_guard.present(os.path.join(base_dir, "store"))


def missing_key(base_dir: str) -> IdentityMissing:
    return IdentityMissing(
        f"{key_path(base_dir)} is missing: this node's private key is gone, and a new one "
        "would be another identity that its peers and the network map do not know. Restore "
        f"{KEY_FILE} from a backup of this node directory")


class NodeIdentity:
    def __init__(self, name: str, keypair: KeyPair) -> None:
        self._keypair = keypair
        self.party = Party(name, keypair.public_key)

    def __repr__(self) -> str:
        return f"NodeIdentity({self.party.name!r}, private key redacted)"

    @classmethod
    def load_or_create(cls, base_dir: str, name: str) -> "NodeIdentity":
        """The identity of the node in ``base_dir``; a directory that is no node yet gets
        a new key pair (`IdentityMissing` for a node that has lost its key)."""
        _check_name(base_dir, name)
        if not os.path.exists(key_path(base_dir)) and _node_exists(base_dir):
            raise missing_key(base_dir)
        keypair = load_or_create_keypair(key_path(base_dir))
        _write_name(base_dir, name)
        return cls(name, keypair)

    @classmethod
    def load(cls, base_dir: str, name: str) -> "NodeIdentity":
        """The identity of the node in ``base_dir``, which must have its key: what a node
        process opens, never making one (`KeyFileError` naming the file)."""
        _check_name(base_dir, name)
        if not os.path.exists(key_path(base_dir)):
            raise missing_key(base_dir)
        try:
            keypair = load_keypair(key_path(base_dir))
        except KeyFileError as exc:
            raise KeyFileError(f"{exc}; restore {KEY_FILE} from a backup of this node "
                               "directory") from None
        _write_name(base_dir, name)
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


def _check_name(base_dir: str, name: str) -> None:
    """Refuse a directory whose ``identity.name`` is another node's or unreadable."""
    if os.path.exists(os.path.join(base_dir, NAME_FILE)):
        try:
            stored = read_node_name(base_dir)
        except FlowError as exc:
            raise FlowError(f"{exc}: it holds the node's name; write {name!r} into it") from None
        if stored != name:
            raise FlowError(f"node directory {base_dir} belongs to {stored!r}, not {name!r} "
                            f"(its {NAME_FILE} says so): open it as {stored!r}, or give "
                            f"{name!r} a directory of its own")


def _write_name(base_dir: str, name: str) -> None:
    name_path = os.path.join(base_dir, NAME_FILE)
    if not os.path.lexists(name_path):
        with open_plain_file(name_path, "x", encoding="utf-8") as fh:
            fh.write(name + "\n")
