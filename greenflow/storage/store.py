"""The module the LMDB store lived in before the storage interface: kept so code that
imports ``greenflow.storage.store.Store`` still runs. New code opens stores with
`greenflow.storage.open_store` and speaks `greenflow.storage.interface`."""
from __future__ import annotations

from greenflow.storage.interface import Batch, FlowStore, dump_result, journal_chunk, load_result
from greenflow.storage.lmdb_store import LmdbStore, Store

__all__ = ["Batch", "FlowStore", "LmdbStore", "Store", "dump_result", "journal_chunk",
           "load_result"]
