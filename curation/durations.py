"""Durations as people read video time: `1:02:03` (hours:minutes:seconds).

Its own small module so that `svp curate report` and the dashboard (which must not import the report's shard
writer just to print a time) show time the same way.
"""

from __future__ import annotations

import math

_HOUR = 3600.0


def hms(hours: float | None) -> str:
    """Hours as hours:minutes:seconds (`1:02:03`), the way video durations are read."""
    if hours is None or not math.isfinite(hours):
        return "-"
    seconds = round(hours * _HOUR)
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def signed_hms(hours: float) -> str:
    """A change of duration: `+0:01:30`, `-0:00:05` (`hms` of its size, with its sign)."""
    return ("-" if round(hours * _HOUR) < 0 else "+") + hms(abs(hours))
