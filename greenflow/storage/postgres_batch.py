"""Turning a `Batch` into ``gf_commit``'s arguments: the batch folded into the final
state of every key it writes (`_Plan`), then encoded straight to PostgreSQL's binary array
format (`_Array`, `_ArrayDumper`). The commit's hot path, apart from the connection
handling in `greenflow.storage.postgres_store`."""
from __future__ import annotations

import struct
from typing import Any, Callable, Optional

from psycopg import pq
from psycopg.adapt import Dumper

from greenflow.errors import StoreError
from greenflow.storage import interface as I
from greenflow.storage.partitions import initiator_flow_id, partition_of, session_partition
from greenflow.storage.postgres_schema import _ARGS, _NARGS


def _us(t: float) -> int:
    return max(0, int(t * 1_000_000))


class _Plan:
    """A batch folded into the final state of every key it writes (see the module doc)."""

    __slots__ = ("drops", "logic", "headers", "journal", "frames", "wake", "inbox", "payloads",
                 "outbox", "routes", "timers", "results", "clients", "client_exp", "app",
                 "started", "refused", "fenced_parts")

    def __init__(self, ops: list[tuple]) -> None:
        self.drops: set[str] = set()
        self.logic: dict[str, bytes] = {}
        self.headers: dict[str, tuple[bytes, bool]] = {}   # fid -> (blob, checked)
        self.journal: dict[str, dict[int, bytes]] = {}
        self.frames: dict[str, bytes] = {}
        self.wake: dict[str, bool] = {}
        self.inbox: dict[str, dict[tuple[str, int], Optional[bytes]]] = {}
        self.payloads: dict[str, dict[tuple[str, int], bytes]] = {}
        self.outbox: dict[tuple[str, str, bool, int], Optional[bytes]] = {}
        self.routes: dict[tuple[str, str, int], tuple[bytes, Optional[float]]] = {}
        self.timers: dict[tuple[int, str], bool] = {}
        self.results: dict[str, tuple[bytes, Optional[float]]] = {}
        self.clients: dict[str, str] = {}
        self.client_exp: dict[str, float] = {}
        self.app: dict[tuple[str, bytes], Optional[bytes]] = {}
        self.started: set[str] = set()      # start record written in this batch, not dropped since
        self.refused: list[str] = []
        self.fenced_parts: set[str] = set()  # flow ids whose partitions the commit must own
        for op in ops:
            self._add(op)

    def _add(self, op: tuple) -> None:
        code = op[0]
        if code == I.PUT_HEADER:
            fid = op[1]
            if fid in self.started:
                self.headers[fid] = (op[2], False)
            elif fid in self.drops:
                self.headers.pop(fid, None)
                self.refused.append(fid)
            else:
                self.headers[fid] = (op[2], True)
            self.fenced_parts.add(fid)
        elif code == I.APPEND_JOURNAL:
            self.journal.setdefault(op[1], {})[op[2]] = op[3]
            self.fenced_parts.add(op[1])
        elif code == I.PUT_OUTBOX:
            self.outbox[(op[1], op[2], bool(op[3]), op[4])] = op[5]
        elif code == I.DELETE_OUTBOX:
            self.outbox[(op[1], op[2], bool(op[3]), op[4])] = None
        elif code == I.START_FLOW:
            fid = op[1]
            self.logic[fid] = op[2]
            self.started.add(fid)
            self.fenced_parts.add(fid)
        elif code == I.PUT_SNAPSHOT:
            self.frames[op[1]] = op[2]
            self.fenced_parts.add(op[1])
        elif code == I.SET_WAKE:
            self.wake[op[1]] = bool(op[2])
            self.fenced_parts.add(op[1])
        elif code == I.PUT_INBOX:
            self.inbox.setdefault(op[1], {})[(op[2], op[3])] = op[4]
        elif code == I.DELETE_INBOX:
            self.inbox.setdefault(op[1], {})[(op[2], op[3])] = None
            self.fenced_parts.add(op[1])
        elif code == I.PUT_PAYLOAD:
            self.payloads.setdefault(op[1], {})[(op[2], op[3])] = op[4]
        elif code == I.PUT_ROUTE:
            self.routes[(op[1], op[2], op[3])] = (op[4], op[5])
            # A session's routes are its partition's (a clustered worker answers "no such
            # route" from memory for the partitions it holds): fenced with it.
            self.fenced_parts.add(initiator_flow_id(op[2]))
        elif code == I.PUT_TIMER:
            self.timers[(_us(op[1]), op[2])] = True
            self.fenced_parts.add(op[2])
        elif code == I.DELETE_TIMER:
            self.timers[(_us(op[1]), op[2])] = False
            self.fenced_parts.add(op[2])
        elif code == I.DROP_FLOW:
            fid = op[1]
            self.drops.add(fid)
            self.started.discard(fid)
            for d in (self.logic, self.headers, self.journal, self.frames, self.wake,
                      self.inbox, self.payloads):
                d.pop(fid, None)
            self.fenced_parts.add(fid)
        elif code == I.PUT_HEADER_UNCHECKED:
            self.headers[op[1]] = (op[2], False)
            self.fenced_parts.add(op[1])
        elif code == I.PUT_RESULT:
            self.results[op[1]] = (op[2], op[3])
            self.fenced_parts.add(op[1])
        elif code == I.PUT_CLIENT:
            self.clients[op[1]] = op[2]
            self.client_exp.pop(op[1], None)
        elif code == I.EXPIRE_CLIENT:
            self.client_exp[op[1]] = op[2]
        elif code == I.TABLE_PUT:
            self.app[(op[1], bytes(op[2]))] = op[3]
        elif code == I.TABLE_DELETE:
            self.app[(op[1], bytes(op[2]))] = None
        else:
            raise StoreError(f"unknown batch operation {op!r}")

    def arguments(self) -> list[Any]:
        """gf_commit's array arguments (None where the batch has nothing for a step)."""
        args: list[Any] = [None] * _NARGS
        P = partition_of

        def put(step: str, rows: list[tuple]) -> None:
            if rows:
                first, types = _ARGS[step]
                for k, (t, col) in enumerate(zip(types, zip(*rows))):
                    args[first + k] = _Array(t, col)

        if self.drops:
            put("drop", [(f,) for f in self.drops])
        put("del_inbox", [(f, s, q) for f, rows in self.inbox.items()
                          for (s, q), v in rows.items() if v is None])
        put("del_outbox", [k for k, v in self.outbox.items() if v is None])
        put("del_timer", [k for k, v in self.timers.items() if not v])
        put("del_wake", [(f,) for f, on in self.wake.items() if not on])
        put("del_app", [k for k, v in self.app.items() if v is None])
        put("header_checked", [(f, P(f), b) for f, (b, c) in self.headers.items() if c])
        put("logic", [(f, P(f), b) for f, b in self.logic.items()])
        put("header", [(f, P(f), b) for f, (b, c) in self.headers.items() if not c])
        put("journal", [(f, s, P(f), c) for f, chunks in self.journal.items()
                        for s, c in chunks.items()])
        put("frames", [(f, P(f), b) for f, b in self.frames.items()])
        put("wake", [(f, P(f)) for f, on in self.wake.items() if on])
        put("inbox", [(f, s, q, P(f), v) for f, rows in self.inbox.items()
                      for (s, q), v in rows.items() if v is not None])
        put("payload", [(f, s, q, P(f), v) for f, rows in self.payloads.items()
                        for (s, q), v in rows.items()])
        put("outbox", [(p, s, r, q, _outbox_part(s, r), v)
                       for (p, s, r, q), v in self.outbox.items() if v is not None])
        put("route", [(p, s, r, v, e) for (p, s, r), (v, e) in self.routes.items()])
        put("timer", [(d, f, P(f)) for (d, f), v in self.timers.items() if v])
        put("result", [(f, P(f), b, e) for f, (b, e) in self.results.items()])
        put("client", list(self.clients.items()))
        put("expire_client", list(self.client_exp.items()))
        put("app", [(t, k, v) for (t, k), v in self.app.items() if v is not None])
        return args


# ---------------------------------------------------------------------------- arrays
# psycopg's generic list dumper inspects every element to choose a type; a commit sends
# a few dozen arrays, so they are encoded here, straight to PostgreSQL's binary array
# format (one dimension, lower bound 1), for the element type the statement declares.
_ARRAY_HEAD = struct.Struct("!iiiii")
_I32 = struct.Struct("!i")
# element type -> (element oid, array oid, encoder of one non-null element)
_ELEMENTS: dict[str, tuple[int, int, Callable[[Any], bytes]]] = {
    "text": (25, 1009, lambda v: v.encode()),
    "bytea": (17, 1001, bytes),
    "bigint": (20, 1016, struct.Struct("!q").pack),
    "integer": (23, 1007, struct.Struct("!i").pack),
    "smallint": (21, 1005, struct.Struct("!h").pack),
    "boolean": (16, 1000, lambda v: b"\x01" if v else b"\x00"),
    "float8": (701, 1022, struct.Struct("!d").pack),
}


class _Array:
    """A column of values for one ``unnest`` argument, of SQL element type ``kind``."""

    __slots__ = ("kind", "values")

    def __init__(self, kind: str, values: tuple) -> None:
        self.kind = kind
        self.values = values


class _ArrayDumper(Dumper):
    format = pq.Format.BINARY

    def get_key(self, obj: Any, format: Any) -> Any:
        return (type(obj), obj.kind)

    def upgrade(self, obj: Any, format: Any) -> "Dumper":
        d = _ArrayDumper(type(obj))
        d.oid = _ELEMENTS[obj.kind][1]
        return d

    def dump(self, obj: Any) -> bytes:
        elem_oid, _, enc = _ELEMENTS[obj.kind]
        vals = obj.values
        parts = [b""]
        nulls = 0
        pack = _I32.pack
        for v in vals:
            if v is None:
                nulls = 1
                parts.append(b"\xff\xff\xff\xff")
            else:
                b = enc(v)
                parts.append(pack(len(b)))
                parts.append(b)
        parts[0] = _ARRAY_HEAD.pack(1, nulls, elem_oid, len(vals), 1)
        return b"".join(parts)


def _outbox_part(sid: str, to_responder: bool) -> int:
    # The sending flow's partition when this side initiated the session; a responder's
    # frames are filed under the session's initiator (the flow id in the session id).
    return session_partition(sid)

