"""Classes that moved into modules of their own still load from the module paths that
earlier versions stored them under (checkpoints and journals pickle a class by its
module), because the old module re-exports them."""
from __future__ import annotations

import importlib
import pickle

import pytest

from greenflow import serialization

# old module -> names defined elsewhere now, that a flow may hold in a checkpoint
MOVED = {
    "greenflow.ledger.vault_query": ["QueryCriteria", "PageSpecification", "Sort", "StateStatus",
                                     "StateMetadata", "Page", "VaultUpdate", "VaultQueryError"],
    "greenflow.node.node": ["FlowInfo", "FlowHandle"],
}


def _value(name: str):
    if name == "FlowInfo":
        from greenflow.node.flow_views import FlowInfo
        from greenflow.status import FlowStatus
        return FlowInfo("f1", "a.B", FlowStatus.COMPLETED, None, None, False, None)
    if name == "FlowHandle":
        return None
    from greenflow.ledger import vault_types as t
    return {"QueryCriteria": t.QueryCriteria(), "PageSpecification": t.PageSpecification(2, 10),
            "Sort": t.Sort("recorded_time", descending=True), "StateStatus": t.StateStatus.CONSUMED,
            "StateMetadata": None, "Page": None, "VaultUpdate": t.VaultUpdate((), ()),
            "VaultQueryError": t.VaultQueryError("bad page")}[name]


@pytest.mark.parametrize("old,name", [(m, n) for m, names in MOVED.items() for n in names])
def test_a_moved_class_is_the_same_class_under_its_old_path(old, name):
    cls = getattr(importlib.import_module(old), name)
    assert cls.__module__ != old                  # it did move ...
    assert getattr(importlib.import_module(cls.__module__), name) is cls


@pytest.mark.parametrize("old,name", [(m, n) for m, names in MOVED.items() for n in names
                                      if _value(n) is not None])
def test_a_value_stored_under_the_old_module_path_still_loads(old, name):
    value = _value(name)
    new = type(value).__module__
    raw = pickle.dumps({"held": value}, protocol=0)
    stored = raw.replace(b"c" + new.encode() + b"\n", b"c" + old.encode() + b"\n")
    assert stored != raw and b"c" + new.encode() + b"\n" not in stored
    for tag in (b"P", b"D"):   # the C pickler's blobs and dill's
        back = serialization.loads(tag + stored)["held"]
        assert type(back) is type(value)
        assert (back.args == value.args) if isinstance(value, Exception) else back == value
