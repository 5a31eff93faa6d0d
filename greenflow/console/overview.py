"""The console's node and vault pages: the node's identity, store and peers; the vault's
unconsumed states by type."""
from __future__ import annotations

import os
from typing import Any

from greenflow.rpc.metrics import peer_stats, store_bytes, store_file_bytes
from greenflow.console.formatting import PAGE_SIZE, FilterError, _repr, iso


# ---------------------------------------------------------------------- the node
def node_overview(proc: Any, node: Any) -> dict:
    def collect() -> dict:
        sched, store = node.scheduler, node.store
        stored = store.flow_count()
        in_store_resident = sum(1 for rt in sched.resident.values() if rt.start_blob is None)
        return {"resident": len(sched.resident),
                "hibernated": max(0, stored - in_store_resident),
                "unfinished": stored + len(sched.resident) - in_store_resident,
                "store_bytes": store_bytes(node), "store_file_bytes": store_file_bytes(node),
                "draining": sched.draining, "commits": sched.stats.get("commits", 0),
                "flows_started": sched.stats.get("flows_started", 0)}

    out = node.on_scheduler(collect)
    peers = peer_stats(proc)
    netmap = getattr(proc, "netmap", None)
    me = node.party.name
    rows = []
    if netmap is not None:
        for info in netmap:
            if info.name == me:
                continue
            p = peers.get(info.name, {})
            doc = info.to_json()
            rows.append({"name": info.name, "address": doc.get("p2p_address") or doc.get("address"),
                         "notary": bool(doc.get("notary")),
                         "link_up": bool(p.get("link_up")), "inbound_up": bool(p.get("inbound_up")),
                         "frames_out": p.get("frames_out", 0), "frames_in": p.get("frames_in", 0),
                         "unacked": p.get("unacked", 0), "seen": bool(p)})
    cfg = getattr(proc, "config", None)
    out.update({"name": me, "public_key": node.party.owning_key.hex(), "peers": rows,
                "apps": getattr(cfg, "apps", None), "notary": getattr(cfg, "notary", None),
                "started": iso(getattr(proc, "started_at", None)), "pid": os.getpid(),
                "base_dir": getattr(proc, "base_dir", None)})
    return out


# ---------------------------------------------------------------------- the vault
def vault_overview(node: Any, query: dict) -> dict:
    """Unconsumed states by type (from the vault's index) and the recorded
    transactions, each paged. A node whose apps never opened a vault shows none."""
    try:
        page = max(1, int(query.get("page") or 1))
        tx_page = max(1, int(query.get("tx_page") or 1))
    except ValueError:
        raise FilterError("`page` and `tx_page` must be whole numbers") from None
    wanted = (query.get("type") or "").strip()
    size = PAGE_SIZE

    def collect() -> dict:
        services = node.services
        vault = services.get("vault")   # opened here if the ledger is installed
        if vault is None:
            return {"open": False, "types": [], "states": [], "transactions": [], "tx_total": 0}
        by_type, locks = vault.unconsumed_by_type()
        types = [{"type": t, "count": len(v)} for t, v in sorted(by_type.items())]
        chosen = wanted if wanted in by_type else (types[0]["type"] if types else None)
        states = by_type.get(chosen, []) if chosen else []
        pages = max(1, (len(states) + size - 1) // size)
        p = min(page, pages)
        shown = [{"ref": f"{sar.ref.tx_id.value.hex()}:{sar.ref.index}"
                  if hasattr(sar.ref.tx_id, "value") else _repr(sar.ref),
                  "state": _repr(sar.state), "locked_by": locks.get(sar.ref)}
                 for sar in states[(p - 1) * size: p * size]]
        txs = []
        total = node.store.table_count("vault_txs")
        tx_pages = max(1, (total + size - 1) // size)
        tp = min(tx_page, tx_pages)
        skip = (tp - 1) * size
        for i, (k, raw) in enumerate(node.store.table_items("vault_txs")):
            if i < skip:
                continue
            if len(txs) >= size:
                break
            try:
                stx = vault.stored_transaction(k)
                tx = stx.tx
                txs.append({"id": k.hex(), "inputs": len(tx.inputs), "outputs": len(tx.outputs),
                            "output_types": sorted({type(o).__name__ for o in tx.outputs}),
                            "commands": [type(getattr(c, "value", c)).__name__
                                         for c in getattr(tx, "commands", ())],
                            "notary": getattr(getattr(tx, "notary", None), "name", None),
                            "signatures": len(getattr(stx, "sigs", ()) or ())})
            except Exception as exc:  # noqa: BLE001
                txs.append({"id": k.hex(), "error": f"{type(exc).__name__}: {exc}"})
        return {"open": True, "types": types, "type": chosen, "states": shown, "page": p,
                "pages": pages, "transactions": txs, "tx_total": total, "tx_page": tp,
                "tx_pages": tx_pages}

    return node.on_scheduler(collect)
