"""The RPC's names for the bounded log (`clip`, `RateLimitedLog`): they live in
`greenflow.node.log_limits`, below the transport, which bounds its log the same way."""
from greenflow.node.log_limits import CLIP_CHARS, RateLimitedLog, clip

__all__ = ["CLIP_CHARS", "RateLimitedLog", "clip"]
