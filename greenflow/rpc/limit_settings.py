"""The RPC's limits (the ``[rpc]`` table of ``node.toml``), the error a refused request
raises, and the bounded parse of a JSON body. See `greenflow.rpc.limits`."""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any, Optional

from greenflow.network.node_config import ConfigError, positive_settings

log = logging.getLogger("greenflow.rpc")


class LimitExceeded(Exception):
    """A request is refused by a limit: answered with ``status`` and the message."""

    def __init__(self, status: int, type_: str, message: str,
                 retry_after: Optional[float] = None) -> None:
        super().__init__(message)
        self.status, self.type, self.message, self.retry_after = status, type_, message, retry_after


@dataclass
class RpcLimits:
    """The RPC's limits; set any of them in the ``[rpc]`` table of ``node.toml``."""

    max_connections: int = 128      # connections served at once, one worker thread each
    max_connections_per_address: int = 32  # of those, open from one client address
    max_streams: int = 32           # of those, /progress streams
    backlog: int = 1024             # the listen queue of connections not yet accepted
    request_timeout: float = 20.0   # end of an answer -> end of the next request; also each send
    header_timeout: float = 10.0    # end of an answer -> end of the next request's headers
    max_body_bytes: int = 1 << 20   # a request body
    max_json_depth: int = 64        # nesting of [ and { in a body
    stream_buffer: int = 1000       # events a /progress stream may be behind before it is dropped
    stream_status_flows: int = 1000  # flows listed in the first event of /progress
    login_failures: int = 5         # failed logins per client address within login_window ...
    login_window: float = 60.0      # ... before it gets 429 until the window clears
    login_wait: float = 5.0         # a password check waits this long for its turn, then 503
    log_interval: float = 10.0      # repeated warnings: one line per interval

    @classmethod
    def from_config(cls, doc: Optional[dict], where: str = "node.toml [rpc]") -> "RpcLimits":
        out = positive_settings(cls, doc, where)
        if out.max_streams >= out.max_connections:
            raise ConfigError(f"{where}: `max_streams` ({out.max_streams}) must be below "
                              f"`max_connections` ({out.max_connections}), or streams could "
                              "hold every connection")
        return out


# ---------------------------------------------------------------------------- JSON
def json_depth(value: Any, limit: int) -> int:
    """The nesting depth of a parsed JSON value, walked without recursion and stopping
    as soon as it passes ``limit`` (so the cost is linear in the value, bounded)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        v, d = stack.pop()
        if isinstance(v, dict):
            v = v.values()
        elif not isinstance(v, list):
            continue
        deepest = max(deepest, d)
        if deepest > limit:
            return deepest
        stack.extend((x, d + 1) for x in v if isinstance(x, (list, dict)))
    return deepest


def parse_json_body(raw: bytes, limit: int) -> Any:
    """The body as JSON, or `LimitExceeded` (400) naming what is wrong with it: not JSON,
    or nested deeper than ``limit`` (``max_json_depth``)."""
    too_deep = LimitExceeded(400, "BadRequest", f"the body is nested deeper than {limit} "
                             "levels (max_json_depth)")
    try:
        doc = json.loads(raw)
    except RecursionError:
        raise too_deep from None
    except ValueError as exc:
        raise LimitExceeded(400, "BadRequest", f"the body is not JSON: {exc}") from None
    if json_depth(doc, limit) > limit:
        raise too_deep
    return doc

