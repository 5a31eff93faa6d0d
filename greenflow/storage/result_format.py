"""A finished flow's result record as stored (`dump_result`, `load_result`), shared by
every store so the bytes mean the same everywhere.

A record is written once per finished flow. Its pickle (a dict, the enum turned into a
string first) cost about 3x the typed form below and was 2.5x its size, so a record whose
fields are all plain atoms is stored typed (tag E, "ended"); anything else (a tuple, a list, an
object, an int past 64 bits) keeps the pickle, and records stored as pickles before load
as they always did.
"""
from __future__ import annotations

from typing import Any, Optional

import msgspec

from greenflow import serialization
from greenflow.status import FlowStatus

RESULT_TAG = b"E"   # version 1: msgpack array [status, flow_class, client_id, started_at,
#                     finished_at, key, value, key, value...] (the record's other fields)
_FIXED = ("flow_class", "client_id", "started_at", "finished_at")
_NOT_EXTRA = frozenset(("status",) + _FIXED)
_ATOMS = serialization.ATOMS
_PLAIN = {s: s.value for s in FlowStatus}   # a dict hit, ~6x cheaper than ``.value``
_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder().decode


def dump_result(record: dict) -> bytes:
    """``record`` as stored: typed when it can be (`encode_result`), else a pickle with
    the status as the plain string, so the C pickler never calls back into Python for
    the enum."""
    typed = encode_result(record)
    if typed is not None:
        return typed
    return serialization.dumps({**record, "status": FlowStatus(record["status"]).value})


def load_result(raw: bytes) -> dict:
    rec = serialization.loads(raw)
    rec["status"] = FlowStatus(rec["status"])  # also reads records stored with the enum
    return rec


def encode_result(record: dict) -> Optional[bytes]:
    """The typed form of ``record``, or None when it cannot carry it exactly: a fixed
    field missing, or a value that is not a flat atom (msgpack would return a tuple as
    a list, an int subclass as an int)."""
    status = record["status"]
    row = [_PLAIN.get(status) or FlowStatus(status).value]
    for k in _FIXED:
        v = record.get(k, row)   # missing: the row itself, which is no atom
        if type(v) not in _ATOMS:
            return None
        row.append(v)
    if len(record) > 5:
        for k, v in record.items():
            if k not in _NOT_EXTRA:
                if type(v) not in _ATOMS or type(k) is not str:
                    return None
                row.append(k)
                row.append(v)
    try:
        return RESULT_TAG + _encode(row)
    # An int past 64 bits; a str with a lone surrogate (UnicodeEncodeError, a
    # ValueError), which the pickle keeps.
    except (TypeError, ValueError, OverflowError, msgspec.EncodeError):
        return None


def _decode_result(body: Any) -> dict:
    row = _decode(body)
    rec = {"flow_class": row[1], "client_id": row[2], "started_at": row[3],
           "finished_at": row[4], "status": row[0]}
    for i in range(5, len(row) - 1, 2):
        rec[row[i]] = row[i + 1]
    return rec


serialization.register_format(RESULT_TAG, _decode_result)
