"""What the RPC answers: its error type and the JSON views of values, flows and errors
that every endpoint (and the console) shares."""
from __future__ import annotations

import dataclasses
import enum
import uuid
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any, Optional

from greenflow.flows.registry import qualified_name
from greenflow.messages import MAX_ERROR_TEXT, exception_text
from greenflow.log_limits import clip
from greenflow.party import Party
from greenflow.rpc.flow_values import convert, shown

MAX_WAIT_SECONDS = 600.0
REPR_LIMIT = 400


class RpcError(Exception):
    """An error answered to the client as ``{"error": {"type", "message"}}``."""

    def __init__(self, status: int, type_: str, message: str,
                 retry_after: Optional[float] = None) -> None:
        super().__init__(message)
        self.status, self.type, self.message = status, type_, message
        self.retry_after = retry_after


# ---------------------------------------------------------------------- JSON values
BIG_INT_BITS = 14_000


def to_json(value: Any, depth: int = 0) -> Any:
    """A JSON-ready view of a flow result or argument: builtins as themselves, parties as
    their names, bytes as hex, dates ISO 8601, Decimals as strings, dataclasses as dicts;
    anything else as ``{"repr": ...}`` (bounded). An int of more than `BIG_INT_BITS` bits
    (Python writes at most 4,300 decimal digits by default) as ``{"hex": ...}``."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        if value.bit_length() <= BIG_INT_BITS:
            return value
        return {"hex": hex(value), "type": qualified_name(type(value))}
    if isinstance(value, float):
        return value if value == value and value not in (float("inf"), float("-inf")) else str(value)
    if depth > 50:
        return {"repr": "..."}
    if isinstance(value, Party):
        return value.name
    if isinstance(value, enum.Enum):
        return value.name
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).hex()
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, (Decimal, uuid.UUID)):
        return str(value)
    if isinstance(value, dict):
        return {k if isinstance(k, str) else str(to_json(k, depth + 1)): to_json(v, depth + 1)
                for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [to_json(v, depth + 1) for v in value]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        out = {f.name: to_json(getattr(value, f.name, None), depth + 1)
               for f in dataclasses.fields(value)}
        out["__type__"] = qualified_name(type(value))
        return out
    try:
        text = repr(value)
    except Exception as exc:  # noqa: BLE001 - user __repr__
        text = f"<unrepresentable {type(value).__qualname__}: {exception_text(exc)}>"
    return {"repr": text[:REPR_LIMIT], "type": qualified_name(type(value))}


def error_json(exc: BaseException) -> dict:
    """An error as JSON. A flow's own exception is user code: its message is bounded and
    a ``__str__`` that raises is said, not raised (`exception_text`)."""
    return {"type": type(exc).__name__, "message": exception_text(exc, MAX_ERROR_TEXT)}




def seconds(value: Any, what: str) -> float:
    try:
        if isinstance(value, bool):   # float(True) is 1.0: a yes is not a duration
            raise TypeError
        s = float(value)
    except (TypeError, ValueError):
        raise RpcError(400, "BadRequest", f"`{what}` must be a number of seconds") from None
    if not 0 <= s <= MAX_WAIT_SECONDS:   # (NaN too: it was told "between 0 and 600")
        raise RpcError(400, "BadRequest", f"`{what}` must be a number of seconds from 0 to "
                                          f"{MAX_WAIT_SECONDS:.0f}, got {clip(value, 40)}")
    return s


def count(value: Any, what: str, default: int, most: int) -> int:
    """A page size from a query: ``default`` when absent, else a whole number from 1 to
    ``most`` (a larger one is an error, not cut silently: the client would take the
    short page for the whole list)."""
    if value is None:
        return default
    text = str(value).strip()
    # (Length first: past 4,300 digits int() raises ValueError, and the request was a 500.)
    if not (text.isascii() and text.isdigit()) or len(text) > 18 or not 1 <= int(text) <= most:
        raise RpcError(400, "BadRequest", f"`{what}` must be a whole number from 1 to {most}, "
                                          f"not {shown(str(value), 40)!r}")
    return int(text)


def flag(value: Any, what: str) -> bool:
    """A yes/no query parameter, in the words a flow's bool argument takes."""
    try:
        return convert(str(value), bool)
    except ValueError:
        raise RpcError(400, "BadRequest", f"`{what}` must be true or false (yes/no, on/off, "
                                          f"1/0), not {str(value)[:40]!r}") from None


def check_text(doc: Any, where: str) -> None:
    """400 naming the field when a string of ``doc`` (keys too) holds an unpaired
    surrogate: JSON's ``\\ud800`` escapes make one, and no encoder (UTF-8 in the store,
    on the wire, in an answer) can write it, so it would fail far from the request."""
    stack = [(doc, where)]
    while stack:
        value, path = stack.pop()
        if isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                raise RpcError(400, "BadRequest", f"`{shown(path)}` holds an unpaired surrogate "
                                                  "(not a Unicode character)") from None
        elif isinstance(value, dict):
            for k, v in value.items():
                child = f"{path}.{k}" if path else str(k)
                stack += [(k, child), (v, child)]
        elif isinstance(value, list):
            stack.extend((v, f"{path}[{i}]") for i, v in enumerate(value))


def flow_json(f: Any) -> dict:
    out = {"id": f.id, "flow_class": f.flow_class, "status": f.status.value,
           "progress_step": f.progress_step, "suspended_on": f.suspended_on,
           "resident": f.resident, "error": f.error}
    if getattr(f, "worker", None) is not None:   # a clustered node: who runs it
        out["worker"] = f.worker
    return out



def finished(status: str) -> bool:
    return status in ("COMPLETED", "FAILED", "KILLED")
