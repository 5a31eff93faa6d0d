"""Where `RateLimitedLog` and `clip` were first defined: they moved to
`greenflow.log_limits` so that every layer (the scheduler's inbound frames too) can keep
its log bounded against what others send; importers of this path keep working."""
from __future__ import annotations

from greenflow.log_limits import CLIP_CHARS, RateLimitedLog, clip

__all__ = ["CLIP_CHARS", "RateLimitedLog", "clip"]
