"""What flows reach through ``self.services``: the node's identity, keys, clock and
whatever services apps attach (the ledger attaches its vault and identity service).

Flows hold no reference to this object; they reach it through the running flow's
context, so it is never pickled into a checkpoint.
"""
from __future__ import annotations

import functools
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Callable, Iterator, Optional, TypeVar

from greenflow.party import Party
from greenflow.storage.interface import Batch
from greenflow.runtime.traps import current_runtime_or_none

F = TypeVar("F", bound=Callable[..., Any])


def journaled(method: F) -> F:
    """Make a service method deterministic for flows that call it.

    Called from a flow, the call is journalled like ``side_effect``: it runs live once and
    its result (or exception) is recorded with the flow's next checkpoint; on replay the
    recorded result is returned and the method does not run again. Writes it makes
    through `ServiceHub.writes` go into the same group commit as that checkpoint, so the
    effect and the journal entry become durable together (or not at all, and then the
    call simply runs again). Called outside a flow, it is a plain call.
    """
    name = method.__qualname__

    @functools.wraps(method)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        rt = current_runtime_or_none()
        if rt is None:
            return method(self, *args, **kwargs)
        return rt.service_call(name, lambda: method(self, *args, **kwargs))

    return wrapper  # type: ignore[return-value]

if TYPE_CHECKING:
    from greenflow.node.node import Node

# name -> factory(node): services an app module offers every node, built on first use.
_FACTORIES: dict[str, Callable[["Node"], Any]] = {}


def register_service_factory(name: str, factory: Callable[["Node"], Any]) -> None:
    """Offer a service to every node as ``services.<name>``, built by ``factory(node)``
    the first time a node asks for it (the ledger registers its vault this way, so the
    core never imports the ledger and a node that never trades never opens a vault)."""
    _FACTORIES[name] = factory


class ServiceHub:
    def __init__(self, node: "Node") -> None:
        self._node = node
        self._extra: dict[str, Any] = {}

    @property
    def my_info(self) -> Party:
        return self._node.party

    @property
    def clock(self) -> Any:
        return self._node.clock

    def sign(self, data: bytes) -> bytes:
        """Sign with the node's identity key (Ed25519)."""
        return self._node.identity.sign(data)

    @property
    def signing_key(self) -> Any:
        return self._node.identity.signing_key

    @property
    def store(self) -> Any:
        return self._node.store

    @contextmanager
    def writes(self) -> Iterator[Any]:
        """A batch for app writes. Inside a flow its rows go into the scheduler's
        group-commit batch (durable with the flow's next checkpoint), each checked as it
        is written (`FlowWrites`); outside, a batch committed on exit."""
        if current_runtime_or_none() is not None:
            yield FlowWrites(self._node.scheduler, self._node.store)
            return
        batch = Batch()
        yield batch
        if batch:
            self._node.store.commit(batch)

    def register(self, name: str, service: Any) -> None:
        """Attach an app service, reachable as ``services.<name>``."""
        self._extra[name] = service

    def get(self, name: str, default: Optional[Any] = None) -> Any:
        service = self._extra.get(name)
        if service is None and name in _FACTORIES:
            service = self._extra[name] = _FACTORIES[name](self._node)
        return default if service is None else service

    def __getattr__(self, name: str) -> Any:
        extra = self.__dict__.get("_extra", {})
        if name in extra:
            return extra[name]
        if name in _FACTORIES and "_node" in self.__dict__:
            return self.get(name)
        raise AttributeError(f"the node has no service {name!r} "
                             f"(registered: {sorted(set(extra) | set(_FACTORIES))})")


class FlowWrites:
    """The rows a flow writes, each into the batch of the round in progress.

    A row for a table the store never opened was refused by the store at the round's
    commit, which stopped the node's commits (every flow's work of that round was lost
    with it); it is refused here, in the writing flow. And the batch is looked up at
    every write: a flow that suspended inside ``with services.writes()`` wrote its later
    rows into a batch already committed, and they were silently lost."""

    __slots__ = ("_sched", "_has_table")

    def __init__(self, sched: Any, store: Any) -> None:
        self._sched = sched
        self._has_table = getattr(store, "has_table", None)

    def table_put(self, table: str, key: bytes, value: bytes) -> None:
        self._check(table)
        self._sched.batch.table_put(table, key, value)

    def table_delete(self, table: str, key: bytes) -> None:
        self._check(table)
        self._sched.batch.table_delete(table, key)

    def _check(self, table: str) -> None:
        if self._has_table is not None and type(table) is str and table \
                and not self._has_table(table):
            raise ValueError(f"the table {table!r} was never opened on this node's store: "
                             f"open it (store.open_table({table!r})) where the app's service "
                             "is made, before flows write it")

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sched.batch, name)   # the batch's other operations, as before
