"""What an app's table row may be, checked where the row is written.

A row goes into a `Batch` during a flow's step and reaches the store only at the
round's group commit. A row the store cannot take (a key of str, an empty key, a value
of str, a key longer than LMDB's) failed that commit, and with it the round of every
flow: the node stopped committing, or kept failing its rounds. So `Batch.table_put` and
`table_delete` check each row as it is written, in the writing flow, and the error is
that flow's.
"""
from __future__ import annotations

from typing import Any

from greenflow.errors import KeyTooLong

#: The longest key any store takes: LMDB refuses a longer one (MDB_BAD_VALSIZE) only at
#: the commit, which would stop the node's commits, so `Batch` refuses it at the write.
#: The PostgreSQL store keeps the same bound, so an app behaves alike on both.
MAX_KEY_BYTES = 511


def check_key(table: str, key: bytes) -> None:
    if len(key) > MAX_KEY_BYTES:
        raise KeyTooLong(f"a key of {len(key)} bytes for the table {table!r} is longer than "
                         f"the {MAX_KEY_BYTES} bytes a store key may hold")


def checked_row(table: Any, key: Any, value: Any = b"") -> tuple[bytes, bytes]:
    """``(key, value)`` as a store takes them (a bytearray becomes bytes); TypeError,
    ValueError or `KeyTooLong` naming the table for what no store takes."""
    if type(table) is not str or not table:
        raise (ValueError if table == "" else TypeError)(
            f"an app table is named by a non-empty str, not {type(table).__qualname__} "
            f"{table!r:.60}")
    if isinstance(key, (bytearray, memoryview)):
        key = bytes(key)
    if isinstance(value, (bytearray, memoryview)):
        value = bytes(value)
    if type(key) is not bytes:
        raise TypeError(f"a key of the table {table!r} is bytes, not {type(key).__qualname__}"
                        + (" (encode it: key.encode())" if isinstance(key, str) else ""))
    if not key:
        raise ValueError(f"a key of the table {table!r} is at least one byte long")
    check_key(table, key)
    if type(value) is not bytes:
        raise TypeError(f"a value of the table {table!r} is bytes, not "
                        f"{type(value).__qualname__}")
    return key, value
