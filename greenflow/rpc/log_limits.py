"""The RPC's names for the bounded log (`clip`, `RateLimitedLog`): they live in
`greenflow.log_limits`, at the bottom of the package, so that every layer (the
scheduler's inbound frames, the transport) keeps its log bounded the same way."""
from __future__ import annotations

from greenflow.log_limits import CLIP_CHARS, RateLimitedLog, clip

__all__ = ["CLIP_CHARS", "RateLimitedLog", "clip"]
