"""What the console shows, read from a node: JSON-ready dicts.

Reads that touch the scheduler's state or the store run on the scheduler thread
(`Node.on_scheduler`), like every other `Node` operation; the rest (filtering, sorting,
paging) runs on the request's thread.

The views: `flow_list`, `flow_detail`, `overview` (node and vault); `formatting` holds
what they share. This module names them all.
"""
from __future__ import annotations

from greenflow.console.flow_detail import flow_detail  # noqa: F401
from greenflow.console.flow_list import FilterError, all_flows, flow_page, parse_since  # noqa: F401
from greenflow.console.formatting import (JOURNAL_LIMIT, MAX_PAGE_SIZE, ORDER,  # noqa: F401
                                          PAGE_SIZE, REPR_LIMIT, SCAN_LIMIT, iso)
from greenflow.console.overview import node_overview, vault_overview  # noqa: F401
