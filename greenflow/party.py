"""Who takes part: a `Party` is a well-known name bound to an Ed25519 public key."""
from __future__ import annotations

from dataclasses import dataclass

#: The longest a party's name may be, in bytes of UTF-8: it is part of the store's keys
#: (outbox, sessions), which a store bounds (LMDB: 511 bytes).
MAX_NAME_BYTES = 200


def name_fits(name: object) -> bool:
    """Whether ``name`` can be a party's: a string of 1 to `MAX_NAME_BYTES` bytes."""
    return isinstance(name, str) and bool(name) and (
        len(name) * 4 <= MAX_NAME_BYTES or len(name.encode("utf-8", "replace")) <= MAX_NAME_BYTES)


@dataclass(frozen=True)
class Party:
    """A participant on the network.

    ``name`` is an X.500-style name (``"O=Alice,L=London,C=GB"``) or a short one
    (``"Alice"``); ``owning_key`` is the raw 32-byte Ed25519 public key that proves it.
    Two parties are equal only when both name and key match, so a peer that claims
    another's name with its own key is a different party.
    """

    name: str
    owning_key: bytes = b""

    def __str__(self) -> str:
        return self.name

    def __reduce__(self) -> tuple:
        return (Party, (self.name, self.owning_key))

    def __repr__(self) -> str:
        return f"Party({self.name!r})"

    @property
    def short_name(self) -> str:
        """The organisation part of an X.500 name (``O=Alice,...`` -> ``Alice``)."""
        for part in self.name.split(","):
            key, _, value = part.strip().partition("=")
            if key.strip().upper() == "O" and value:
                return value.strip()
        return self.name
