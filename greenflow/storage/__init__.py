"""Durable state behind one operation-level interface (`interface`: `FlowStore`, `Batch`):
the LMDB store (`lmdb_store`) with its single-writer guard and format marker
(`store_guard`) and page trimming of large maps (`page_trim`); large received payloads
kept aside (`payloads`). `open_store` picks the implementation for a node directory.

Imports the vocabulary and the runtime's data formats (checkpoints, journal entries).
"""
from __future__ import annotations

import importlib
import os
import tomllib
from typing import TYPE_CHECKING, Optional

from greenflow.errors import StoreError

if TYPE_CHECKING:
    from greenflow.storage.interface import FlowStore

#: The environment variable naming the store for every node opened in this process and
#: its children (unless a node's config or the caller names one): "lmdb" or a
#: "postgresql://..." URL.
STORE_ENV = "GREENFLOW_STORE"
#: The key of ``node.toml`` that names a node's store.
CONFIG_KEY = "store"
_CONFIG_FILE = "node.toml"


def store_url(node_dir: str, url: Optional[str] = None) -> str:
    """Which store a node directory uses: ``url`` if given, else ``store`` in the
    directory's ``node.toml``, else ``$GREENFLOW_STORE``, else "lmdb"."""
    if url:
        return url
    configured = _configured(node_dir)
    if configured:
        return configured
    return os.environ.get(STORE_ENV) or "lmdb"


def is_lmdb(url: str) -> bool:
    """Whether `store_url`'s answer names the LMDB store."""
    return url == "lmdb" or url.startswith("lmdb:")


def is_postgres(url: str) -> bool:
    """Whether ``url`` names a PostgreSQL store (``postgresql://`` or ``postgres://``)."""
    return url.startswith(("postgresql://", "postgres://"))


def _configured(node_dir: str) -> Optional[str]:
    # Read here rather than through network.node_config (a higher layer): the read-only
    # tools open a directory's store without loading its whole configuration.
    path = os.path.join(node_dir, _CONFIG_FILE)
    try:
        with open(path, "rb") as fh:
            doc = tomllib.load(fh)
    except FileNotFoundError:
        return None
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise StoreError(f"{path}: cannot read the node's configuration: {exc}") from None
    except UnicodeDecodeError as exc:
        raise StoreError(f"{path}: cannot read the node's configuration: not UTF-8 text "
                         f"({exc.reason} at byte {exc.start})") from None
    value = doc.get(CONFIG_KEY)
    if value is not None and not isinstance(value, str):
        raise StoreError(f"{path}: `{CONFIG_KEY}` must be a string (\"lmdb\" or a "
                         f"\"postgresql://...\" URL), found {value!r}")
    return value or None


def open_store(node_dir: str, *, url: Optional[str] = None, sync: bool = True,
               readonly: bool = False, create: bool = True) -> "FlowStore":
    """The store of the node in ``node_dir`` (see `store_url` for which one).

    "lmdb": the LMDB store in ``node_dir/store``. "postgresql://...": the PostgreSQL store
    (imported only then; it needs the ``cluster`` extra). ``create=False`` refuses to make
    a new store where none is (`StoreMissing`); ``readonly`` never writes."""
    node_dir = os.path.abspath(node_dir)
    chosen = store_url(node_dir, url)
    if is_lmdb(chosen):
        from greenflow.storage.lmdb_store import LmdbStore
        return LmdbStore(os.path.join(node_dir, "store"), sync=sync, readonly=readonly,
                         create=create)
    if is_postgres(chosen):
        try:
            module = importlib.import_module("greenflow.storage.postgres_store")
        except ImportError as exc:
            raise StoreError(
                f"the node in {node_dir} is configured for a PostgreSQL store, which needs "
                f"more packages: pip install '.[cluster]' in greenflow's checkout ({exc})") from None
        return module.PostgresStore.for_node(node_dir, chosen, sync=sync, readonly=readonly,
                                             create=create)
    raise StoreError(f"unknown store {chosen!r} for the node in {node_dir}: expected \"lmdb\" "
                     f"or a \"postgresql://...\" URL (from the caller, `{CONFIG_KEY}` in "
                     f"{_CONFIG_FILE} or ${STORE_ENV})")
