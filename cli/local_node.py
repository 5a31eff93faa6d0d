"""Opening a node directory in this process, for the read-only tools (``checkpoints
dump``, ``replay``, ``vault query``).

They map the node's store into their own memory, so they need the checks ``node start``
makes first: a truncated ``data.mdb`` kills whoever reads a page past its end with
SIGBUS (no message, exit 135), so the file is checked by plain reads and walked in a
child process before this one maps it. Every way the directory can be unusable then ends
in one ``Error:`` line naming the file, with the exit code ``node start`` would give:
2 for the command line or the node's configuration, 3 for a store refused as it is,
1 for a store that could not be reached.
"""
from __future__ import annotations

import contextlib
import os
from typing import Iterator

from greenflow.cli.errors import CliError, NotANodeDirectory, UsageProblem


class StoreRefusedError(CliError):
    """The node's store is missing, damaged or of another format (``node start`` exits 3
    on it too)."""

    exit_code = 3


def node_name(node_dir: str) -> str:
    """The node's name, from ``DIR/identity.name``."""
    from greenflow.errors import FlowError
    from greenflow.node.identity import read_node_name

    try:
        return read_node_name(node_dir)
    except FlowError as exc:
        raise NotANodeDirectory(str(exc)) from None


def check_store(node_dir: str) -> None:
    """Refuse, before anything maps it, a store ``node start`` would refuse."""
    from greenflow.errors import StoreError, StoreRefused
    from greenflow.storage import is_lmdb, is_postgres, store_url
    from greenflow.storage import store_guard

    try:
        url = store_url(node_dir)
    except StoreError as exc:   # node.toml unreadable, or `store` not a string
        raise UsageProblem(str(exc)) from None
    if not is_lmdb(url):
        if not is_postgres(url):
            raise UsageProblem(f"{os.path.join(node_dir, 'node.toml')}: `store` must be "
                               f"\"lmdb\" or a \"postgresql://...\" URL, found {url!r}")
        return   # the PostgreSQL store checks itself when it opens
    store_dir = os.path.join(os.path.abspath(node_dir), "store")
    try:
        if not store_guard.present(store_dir):
            raise store_guard.missing(store_dir)
        store_guard.check_file(store_dir)
        store_guard.check_in_child(store_dir)
    except StoreRefused as exc:
        raise StoreRefusedError(str(exc)) from None


@contextlib.contextmanager
def reading(node_dir: str) -> Iterator[str]:
    """Check the directory and its store, then run the block; yields the node's name.
    A store that fails while the block reads it ends as ``node start`` would end."""
    import lmdb

    from greenflow.errors import StoreError, StoreRefused
    from greenflow.storage import store_guard

    name = node_name(node_dir)
    check_store(node_dir)
    try:
        yield name
    except StoreRefused as exc:
        raise StoreRefusedError(str(exc)) from None
    except StoreError as exc:   # e.g. a PostgreSQL server that does not answer
        raise CliError(" ".join(str(exc).split())) from None   # (libpq's has several lines)
    except (lmdb.Error, UnicodeDecodeError) as exc:   # garbage the checks missed
        store = os.path.join(os.path.abspath(node_dir), "store")
        raise StoreRefusedError(str(store_guard.corrupt(store, exc))) from None
