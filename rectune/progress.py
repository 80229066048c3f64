"""Pure helpers behind the demo's live view: ratio intervals, window bookkeeping, small formatters.

`rectune.demo` (the I/O side) feeds closed metric partials into a `WindowBook`,
asks it which windows are complete, and prints lines `rectune.demo_view`
builds from them.  Nothing here reads a clock, a socket or a terminal: "now" is passed
in, so every function is unit-tested without a broker.

Statistics: the randomisation unit is the user, and users are hashed into a
fixed number of buckets (`schemas.metrics.user_bucket`), so a ratio metric
such as CTR (clicks / impressions) gets its variance from the delta method
over buckets — see `ratio_interval`.

Layout: this module holds no code of its own; it re-exports (`__all__`) the
public names of the modules the helpers live in, so callers import from
`rectune.progress`:

- `rectune.progress_stats`: the statistics (`Estimate`, `ratio_interval`,
  `relative_lift`, `ArmStats`, `arm_stats`, `Z95`, `DEFAULT_NORTH_STAR`);
- `rectune.progress_windows`: the window bookkeeping (`WindowBook`,
  `ClosedWindow`);
- `rectune.progress_format`: the small formatters (`clock`, `pct`,
  `plural`, `format_duration`).
"""

from __future__ import annotations

from rectune.progress_format import clock, format_duration, pct, plural
from rectune.progress_stats import (
    DEFAULT_NORTH_STAR,
    Z95,
    ArmStats,
    Estimate,
    arm_stats,
    ratio_interval,
    relative_lift,
)
from rectune.progress_windows import ClosedWindow, WindowBook

__all__ = [
    "DEFAULT_NORTH_STAR",
    "Z95",
    "ArmStats",
    "ClosedWindow",
    "Estimate",
    "WindowBook",
    "arm_stats",
    "clock",
    "format_duration",
    "pct",
    "plural",
    "ratio_interval",
    "relative_lift",
]
