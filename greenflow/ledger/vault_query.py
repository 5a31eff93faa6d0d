"""Vault queries: criteria, sorting, paging and tracking over a node's states.

``services.vault.query_by(QueryCriteria(...), PageSpecification(...), Sort(...))`` returns a
`Page`; ``track_by`` returns a `DataFeed`: that page plus a `Feed` of `VaultUpdate`s.
`read_vault` runs the same queries over a node directory's store, read-only, beside a
running node (``greenflow vault query``).

The parts: `vault_types` (criteria, paging, pages, updates), `vault_index` (the indexes),
`vault_engine` (answering a query; `read_vault`), `vault_feed` (tracking), `vault_json`
(text forms). This module names them all, as before.
"""
from __future__ import annotations

from greenflow.ledger.vault_engine import QueryEngine, _cursor, read_vault, update_matches  # noqa: F401
from greenflow.ledger.vault_feed import DataFeed, Feed  # noqa: F401
from greenflow.ledger.vault_index import (_REC, _SEQ, _TID, INDEX_DBS, IndexReader,  # noqa: F401
                                         _dt, _lid_bytes, _us, consumed_us, consumed_value,
                                         external_prefix, load_class, pack_entry, seq_key,
                                         type_name, type_prefix, unpack_entry)
from greenflow.ledger.vault_json import (JsonFeed, page_json, query_params,  # noqa: F401
                                        state_class, track_params, update_json)
from greenflow.ledger.vault_types import (DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE, Page,  # noqa: F401
                                         PageSpecification, QueryCriteria, Sort, StateMetadata,
                                         StateStatus, VaultQueryError, VaultUpdate, _status)

__all__ = [
    "DEFAULT_PAGE_SIZE", "MAX_PAGE_SIZE", "DataFeed", "Feed", "Page", "PageSpecification",
    "QueryCriteria", "Sort", "StateMetadata", "StateStatus", "VaultQueryError", "VaultUpdate",
    "read_vault",
]
