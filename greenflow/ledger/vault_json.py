"""The vault's text forms, for the RPC, the console and the command line: a state class
named as text, query parameters as text, pages and updates as JSON."""
from __future__ import annotations

from typing import Any, Iterable, Optional

from greenflow.ledger.states import ContractState, StateAndRef
from greenflow.ledger.vault_feed import Feed
from greenflow.ledger.vault_types import (DEFAULT_PAGE_SIZE, Page, PageSpecification,
                                          QueryCriteria, Sort, VaultQueryError, VaultUpdate,
                                          _status)
from greenflow.ledger.vault_index import load_class, type_name


def state_class(path: str, known: Iterable[str], import_modules: bool = True) -> type:
    """The state class ``module:Class`` names. A class this vault has recorded states of
    always resolves; another is imported only when ``import_modules`` (the local command
    line may; a remote caller may not make the node import modules)."""
    if not path or path in ("ContractState", "all", "*"):
        return ContractState
    module, sep, qual = path.partition(":")
    if not sep or not module or not qual:
        raise VaultQueryError(f"a state type is given as module:Class, not {path!r}")
    names = set(known)
    for candidate in (path, "greenflow." + path):  # samples.trade:X is greenflow.samples.trade:X
        if candidate in names:
            cls = load_class(candidate)
            if cls is not None:
                return cls
    if not import_modules:
        raise VaultQueryError(f"this vault holds no states of type {path}")
    from greenflow.flows.registry import resolve_module
    try:
        obj: Any = resolve_module(module)
    except Exception as exc:
        raise VaultQueryError(f"cannot import {module!r}: {exc}") from None
    for part in qual.split("."):
        found = getattr(obj, part, None)
        if found is None:
            raise VaultQueryError(f"module {module} has no class {qual!r}")
        obj = found
    if not (isinstance(obj, type) and issubclass(obj, ContractState)):
        raise VaultQueryError(f"{path} is not a ContractState class")
    return obj


def _text(state: Any) -> Optional[str]:
    """The state as its class writes it for people (its own ``__str__``), if it has one."""
    if type(state).__str__ is object.__str__:
        return None
    try:
        return str(state)[:200]
    except Exception:  # noqa: BLE001 - an app's __str__ must not break a listing
        return None


def page_json(page: Page) -> dict:
    """A page as JSON: states as their fields (parties as names, amounts as dicts)."""
    from greenflow.rpc.server import to_json
    return {
        "total": page.total_states_available, "page_number": page.page_number,
        "page_size": page.page_size, "next_cursor": page.next_cursor,
        "states": [{"ref": str(s.ref), "type": m.contract_state_class_name, "status": m.status.value,
                    "recorded_time": m.recorded_time.isoformat() if m.recorded_time else None,
                    "consumed_time": m.consumed_time.isoformat() if m.consumed_time else None,
                    "notary": m.notary, "locked_by": m.lock_id, "state": to_json(s.state),
                    "text": _text(s.state)}
                   for s, m in zip(page.states, page.states_metadata)],
    }


def query_params(vault: Any, params: dict) -> dict:
    """A query given as text parameters (RPC's ``GET /vault/states``): ``type``
    (module:Class, one the vault holds), ``status``, ``linear_id`` and ``external_id``
    (comma-separated), ``page``, ``page_size``, ``cursor``, ``sort``, ``desc``. Returns
    `page_json`. Bad parameters raise `VaultQueryError`."""
    return page_json(vault.query_by(*_parse_params(vault, params)))


def _parse_params(vault: Any, params: dict) -> tuple[QueryCriteria, PageSpecification, Sort]:
    unknown = set(params) - {"type", "status", "linear_id", "external_id", "page", "page_size",
                             "cursor", "sort", "desc"}
    if unknown:
        raise VaultQueryError(f"unknown query parameter(s): {', '.join(sorted(unknown))}")
    for name, value in params.items():
        if type(value) is not str and (type(value) is not int or name not in ("page", "page_size")):
            raise VaultQueryError(f"query parameter {name} is text, not {type(value).__qualname__} "
                                  f"{value!r:.100}")

    def number(name: str, default: int) -> int:
        text = params.get(name)
        try:
            return default if text in (None, "") else int(text)
        except ValueError:
            raise VaultQueryError(f"{name} is a whole number, not {text!r}") from None

    def listed(name: str) -> Optional[list[str]]:
        text = params.get(name)
        return [x for x in str(text).split(",") if x] or None if text else None

    known = sorted(vault._indexes.known_types(str(params.get("type") or "")))
    criteria = QueryCriteria(state_class(params.get("type", ""), known, import_modules=False),
                             _status(params.get("status") or "unconsumed"),
                             linear_ids=listed("linear_id"), external_ids=listed("external_id"))
    paging = PageSpecification(number("page", 1), number("page_size", DEFAULT_PAGE_SIZE),
                               params.get("cursor") or None)
    sort = Sort(params.get("sort") or "recorded_time",
                str(params.get("desc", "")).lower() in ("1", "true", "yes"))
    return criteria, paging, sort


def track_params(vault: Any, params: dict) -> tuple[dict, "JsonFeed"]:
    """`query_params`, tracked: the snapshot page as JSON and a feed of the updates as
    JSON (RPC's ``GET /vault/updates``; the caller closes the feed)."""
    criteria, paging, sort = _parse_params(vault, params)
    feed = vault.track_by(criteria, paging, sort)
    return page_json(feed.snapshot), JsonFeed(feed.updates)


class JsonFeed:
    """A `Feed` whose updates come out as `update_json` documents."""

    def __init__(self, feed: Feed) -> None:
        self.feed = feed

    def next(self, timeout: Optional[float] = None) -> Optional[dict]:
        update = self.feed.next(timeout)
        return None if update is None else update_json(update)

    @property
    def closed(self) -> bool:
        return self.feed.closed

    @property
    def dropped(self) -> Optional[str]:
        """Why the vault ended the feed (it fell behind: see `Feed`), or None."""
        return self.feed.dropped

    def close(self) -> None:
        self.feed.close()


def update_json(update: VaultUpdate) -> dict:
    from greenflow.rpc.server import to_json

    def one(s: StateAndRef) -> dict:
        return {"ref": str(s.ref), "type": type_name(type(s.state)), "state": to_json(s.state)}
    return {"consumed": [one(s) for s in update.consumed], "produced": [one(s) for s in update.produced]}

