"""Ed25519 key pairs and key files: a node's identity key and the keys the ledger signs with.

The core needs these for its own identity (`greenflow.node.identity`), so they live below the
ledger; `greenflow.ledger.crypto` re-exports them under the names ledger code uses.

Private key material never shows in a ``repr``, a log line or a checkpoint: `KeyPair`
redacts itself and refuses to be pickled, so a flow that holds one fails loudly at its
first checkpoint instead of writing the key into the store.
"""
from __future__ import annotations

import logging
import os
import stat
import tempfile
from typing import NoReturn

import nacl.exceptions
import nacl.signing

from greenflow.errors import FlowError

__all__ = [
    "KeyFileError", "KeyPair", "load_keypair", "load_or_create_keypair", "save_keypair",
    "verify",
]

log = logging.getLogger(__name__)

SEED_BYTES = 32
PUBLIC_KEY_BYTES = 32
SIGNATURE_BYTES = 64


class KeyFileError(FlowError):
    """A key file is missing, unreadable or not a 32-byte Ed25519 seed. Nothing was
    overwritten: fix or remove the file (losing the key loses the identity)."""


class KeyPair:
    """An Ed25519 signing key with its public half.

    Equal key pairs are those with the same public key. The private half is reachable only
    through `sign` (and `save_keypair`), never through ``repr``, ``str`` or pickling.
    """

    __slots__ = ("_signing_key", "public_key")

    def __init__(self, signing_key: nacl.signing.SigningKey) -> None:
        self._signing_key = signing_key
        self.public_key: bytes = bytes(signing_key.verify_key)

    @classmethod
    def generate(cls) -> KeyPair:
        return cls(nacl.signing.SigningKey.generate())

    @classmethod
    def from_seed(cls, seed: bytes) -> KeyPair:
        """The key pair a 32-byte seed determines (the same seed gives the same keys)."""
        if type(seed) is not bytes or len(seed) != SEED_BYTES:
            raise ValueError(f"an Ed25519 seed is {SEED_BYTES} bytes")
        return cls(nacl.signing.SigningKey(seed))

    def sign(self, data: bytes) -> bytes:
        """The 64-byte detached signature of ``data``."""
        return self._signing_key.sign(data).signature

    def __repr__(self) -> str:
        return f"KeyPair(public_key={self.public_key.hex()[:16]}…, private key redacted)"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, KeyPair) and other.public_key == self.public_key

    def __hash__(self) -> int:
        return hash(self.public_key)

    def __reduce__(self) -> NoReturn:
        raise TypeError(
            "a KeyPair is never pickled or checkpointed, so its private key stays off disk; "
            "keep key pairs in the node's key management and sign through it"
        )


def verify(public_key: bytes, data: bytes, signature: bytes) -> bool:
    """Whether ``signature`` is ``public_key``'s signature of ``data``. Malformed keys and
    signatures (wrong length, wrong type) are simply not valid: they come from peers."""
    try:
        nacl.signing.VerifyKey(public_key).verify(data, signature)
        return True
    except (nacl.exceptions.BadSignatureError, nacl.exceptions.CryptoError, ValueError, TypeError):
        return False


# ---------------------------------------------------------------- key files


def save_keypair(path: str | os.PathLike[str], keypair: KeyPair) -> None:
    """Write the key pair's 32-byte seed to ``path``, readable by the owner only.

    The seed goes to a temporary file in the same directory first, synced, then linked to
    ``path``, so a crash leaves either no key file or a whole one, and an existing key file
    is never replaced (`KeyFileError`)."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".key-")  # created 0600
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(bytes(keypair._signing_key))
            fh.flush()
            os.fsync(fh.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            raise KeyFileError(f"{path} already holds a key; it is never overwritten") from None
    finally:
        os.unlink(tmp)


def load_keypair(path: str | os.PathLike[str]) -> KeyPair:
    """The key pair whose seed ``save_keypair`` wrote to ``path``."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as fh:
            seed = fh.read(SEED_BYTES + 1)
            mode = os.fstat(fh.fileno()).st_mode
    except OSError as exc:
        raise KeyFileError(f"cannot read key file {path}: {exc.strerror}") from None
    if len(seed) != SEED_BYTES:
        raise KeyFileError(f"{path} is not a {SEED_BYTES}-byte Ed25519 seed")
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning("key file %s is readable by others (mode %o); chmod 600 it", path, mode & 0o777)
    return KeyPair.from_seed(seed)


def load_or_create_keypair(path: str | os.PathLike[str]) -> KeyPair:
    """The key pair stored at ``path``, generated and stored there on first use."""
    try:
        return load_keypair(path)
    except KeyFileError:
        if os.path.exists(path):
            raise  # a damaged key file is not silently replaced by a new identity
    keypair = KeyPair.generate()
    try:
        save_keypair(path, keypair)
    except KeyFileError:
        return load_keypair(path)  # another process created it between our two looks
    return keypair
