"""Every error the framework raises, in one place.

Who raises each class and what a user should do about it is said in its docstring.
`FlowError` is the base of them all, so `except FlowError` catches everything the
framework throws at flow code (but never `FlowKilled`'s unwinding, see below).
"""
from __future__ import annotations

import uuid
from typing import Optional


class FlowError(Exception):
    """Base class of every error greenflow raises."""


class FlowException(FlowError):
    """Raised by flow code *on purpose*: a business-level refusal.

    It propagates to every peer with an open session and is raised again there at the
    peer's next ``receive``, with the same class (when the peer has it imported), the
    same message and the same ``error_id``. Only class name, message and ``error_id``
    cross the wire: the receiving side never runs the class's ``__init__``.
    """

    def __init__(self, message: str = "", *args: object, error_id: Optional[int] = None) -> None:
        super().__init__(message, *args)
        self.error_id = error_id

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else ""

    def __str__(self) -> str:
        return self.message

    def ensure_error_id(self) -> int:
        """The id that lets operators on both sides find the same failure in their logs."""
        if getattr(self, "error_id", None) is None:
            self.error_id = uuid.uuid4().int >> 65
        return self.error_id  # type: ignore[return-value]


class UnexpectedFlowEnd(FlowError):
    """The peer ended, closed the session, failed with an internal error, or was killed
    while this side still expected something from it. The message names the peer and what
    this side expected; it never carries the text of the peer's internal error."""


class ReceiveTypeError(FlowError):
    """A received payload is not of the type the flow asked for. The receiving flow fails
    (unless it catches this); its peer sees `UnexpectedFlowEnd`."""


class FlowTimeout(FlowError):
    """A ``receive(..., timeout=)`` expired. The session stays usable: a later receive
    gets the message if it arrives after all."""


class NonDeterminismError(FlowError):
    """On replay the flow asked for something other than what its journal recorded.

    Raised by the runtime, never into flow code: the flow is parked as HOSPITALIZED so an
    operator can look at it (the reason is in ``FlowInfo.error``). Usually flow code read
    the clock, randomness or outside data directly instead of through ``now()``,
    ``random()``, ``side_effect()`` or ``run_external()``, or the code changed under a
    running flow."""


class FlowKilled(FlowError):
    """The flow was killed by an operator. ``handle.result()`` raises it; the flow itself
    cannot catch its unwinding."""


class UnknownFlow(FlowError):
    """A peer has no flow registered to answer the initiating flow (or the flow id / class
    asked for is unknown here). The message names the peer and the initiating class."""


class UnknownParty(FlowError):
    """A name or key that no node on the network answers to. Check the spelling against
    the network map (``greenflow node`` lists it) or the names given to ``create_node``."""


class SessionRefused(FlowError):
    """A peer refused a session this flow opened because of a limit it applies (e.g. too
    many sessions from this node already open there); the message names the limit. Unlike
    `UnknownFlow`, trying again later may succeed."""


class NotSerializable(FlowError):
    """A payload cannot cross the wire: only builtins, `Party`, framework types and classes
    marked ``@serializable`` can. Raised at ``send()``; the message names the type."""


class NotStartable(FlowError):
    """RPC or the CLI asked to start a flow class that is not marked ``@startable``."""


class WireFormatError(FlowError):
    """Bytes that arrived from outside are not a valid frame or payload. The frame is
    dropped and logged; nothing the peer sent is ever unpickled."""


class NodeClosed(FlowError):
    """The node object a caller reached has closed (`Node.close`, a power cut in tests, a
    clustered worker whose partitions changed hands and who serves them from a new one):
    it says nothing of a flow's outcome. Re-attach through the node serving now."""


class NotHere(FlowError):
    """A clustered worker was asked to act on a flow (kill, retry) that another worker of
    the party runs: nothing was done. ``owner`` names that worker and ``rpc`` is its RPC
    address (None when not known): send the request there (`RpcClient` does by itself)."""

    def __init__(self, message: str, owner: object = None, rpc: object = None) -> None:
        super().__init__(message)
        self.owner, self.rpc = owner, rpc


class StoreError(FlowError):
    """The node's LMDB store failed (disk full, corrupt file). Nothing committed is lost;
    the node stops committing until the cause is fixed."""


class KeyTooLong(FlowError, ValueError):
    """A key is longer than a store can hold (`greenflow.storage.interface.MAX_KEY_BYTES`,
    LMDB's own bound, kept by every store so an app behaves alike on each). Raised where
    the key is written, in the flow that wrote it, so only that flow fails: found at the
    commit instead, it would stop every flow's commits."""


class Fenced(StoreError):
    """A clustered worker tried to commit for a partition it no longer owns (its lease
    was taken over, or renewed by another owner at a later epoch). The whole commit was
    rolled back: the new owner replays the partition's flows, so nothing is lost or done
    twice. The worker must drop the partition's flows from memory."""


class WorkerNameInUse(FlowError):
    """Another live process is a clustered worker of the same party under the same name
    (its heartbeat is younger than the lease time): a worker does not start under it.
    ``heartbeat`` is that process's last one."""

    def __init__(self, message: str, heartbeat: object = None) -> None:
        super().__init__(message)
        self.heartbeat = heartbeat


class StoreRefused(StoreError):
    """The store cannot be opened as it is (missing, damaged, of another format or in
    use by another process): the node must not start on it, or it would forget or
    mangle what it committed. The message names the file and what to do."""


class StoreMissing(StoreRefused):
    """An initialised node's store is missing or empty."""


class StoreCorrupt(StoreRefused):
    """The store's file fails LMDB's checks or greenflow's own format record."""


class StoreLocked(StoreRefused):
    """Another process holds the store's lock."""


class TransientError(FlowError):
    """A failure that is not the flow's own decision and may go away (a storage or
    transport hiccup, a service briefly unavailable). The flow hospital retries the flow
    from its last checkpoint with backoff instead of failing it; raise it (or a subclass)
    from services for errors worth retrying."""


class InternalFlowError(FlowError):
    """A bug in greenflow itself: please file it with the traceback."""
