"""What keeps one RPC client from starving the others: limits, the login guard and the
HTTP server that enforces them (see docs/rpc.md, "Limits"): `limit_settings` (the limits,
JSON bodies), `login_guard`, `bounded_http` (the server); this module names them all.

The server is the standard library's `http.server` on a bounded pool: one worker thread
per open connection, at most ``max_connections`` of them (a connection beyond that is
answered ``503`` at once and closed, so a burst gets an answer instead of a hang), at
most ``max_connections_per_address`` from one client address (so one client that opens
connections and never finishes a request cannot take them all), a real listen backlog,
and deadlines per request: from the end of one answer a connection has
``header_timeout`` seconds to the end of the next request's headers and
``request_timeout`` to the end of its body, so idle, half-open and trickling
connections give their thread back soon. A third-party server
(waitress) was considered: its fixed task pool would be held by the long-lived
``/progress`` streams, and the limits that matter here (logins, streams, JSON depth) are
the application's own anyway, so the node keeps no dependency for its RPC.

Password checks (Argon2id, ~0.1 s and 64 MB each by design) are what a flood of wrong
passwords would spend: `LoginGuard` remembers successful checks, runs one check at a
time with a bounded wait, one per client address (concurrent ones wait for it), backs a client
off with ``429`` after ``login_failures`` failures in ``login_window`` seconds, and
answers an unknown user name only after the same hash work as a known one, so names
cannot be told apart by timing.
"""
from greenflow.rpc.bounded_http import BoundedHTTPServer
from greenflow.rpc.limit_settings import LimitExceeded, RpcLimits, json_depth, parse_json_body
from greenflow.rpc.login_guard import LoginGuard

__all__ = ["BoundedHTTPServer", "LimitExceeded", "LoginGuard", "RpcLimits", "json_depth", "parse_json_body"]
