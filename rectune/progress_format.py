"""Small formatters of the demo's terminal lines: clock time, percentages, plurals, durations.

Who calls it: `rectune.demo`, `rectune.demo_run` and `rectune.demo_view`
use `clock`, `pct`, `plural` and `format_duration` in the lines they print.
Every function returns a string and the caller prints it: nothing here
writes to a terminal, and `clock` reads only the local time zone.
"""

from __future__ import annotations

import math
import time

__all__ = ["clock", "format_duration", "pct", "plural"]


def clock(ms: int) -> str:
    """Local wall-clock time `HH:MM:SS` of an epoch-milliseconds instant."""
    return time.strftime("%H:%M:%S", time.localtime(ms / 1000.0))


def pct(x: float, digits: int = 2) -> str:
    """A fraction as a percentage (`-` for NaN)."""
    return f"{100.0 * x:.{digits}f}%" if math.isfinite(x) else "-"


def plural(count: int, noun: str) -> str:
    """`1 window`, `3 windows`."""
    return f"{count:,} {noun}" if count == 1 else f"{count:,} {noun}s"


def format_duration(seconds: float) -> str:
    """`M:SS` for the status line."""
    whole = max(0, int(seconds))
    return f"{whole // 60}:{whole % 60:02d}"
