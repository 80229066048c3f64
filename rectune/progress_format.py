"""Terminal formatting of the demo's progress: table rows, intervals, the lift line, the status line.

What lives here: the row layout (`table_header`, `LEGEND`, `format_arm_row`,
`format_window`), the small formatters (`clock`, `pct`, `format_ctr`,
`format_lift`, `plural`, `format_rate`, `format_duration`) and `Status` with
`format_status` (the single live status line, shortened to the terminal's
width).

Who calls it: `rectune.demo`, `rectune.demo_run` and `rectune.demo_view`
use `clock`, `pct`, `plural` and `format_duration` in the lines they print;
the rows and the status line format `rectune.progress_stats.ArmStats` and
`rectune.progress_windows.ClosedWindow`.  Every function returns a string and
the caller prints it: nothing here writes to a terminal, and `clock` reads
only the local time zone.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Final

from rectune.progress_stats import ArmStats, Estimate
from rectune.progress_windows import ClosedWindow

__all__ = [
    "LEGEND",
    "Status",
    "clock",
    "format_arm_row",
    "format_ctr",
    "format_duration",
    "format_lift",
    "format_rate",
    "format_status",
    "format_window",
    "pct",
    "plural",
    "table_header",
]

#: Columns of a window / summary row (label, arm, then the metrics).
_ROW = (
    "{label:<8}  {arm:<10} {req:>8} {impr:>8} {clicks:>6}  {ctr:<21} {conv:>5} {rev:>9}  {lat:>11}  {cats:>5}  {dup:>6}"
)

#: What the abbreviated columns mean (printed under the first header).
LEGEND: Final = (
    "  impr: shown items | CTR: clicks per shown item, 95% CI by the delta method over user buckets",
    "  cats: distinct categories per list | dup: near-duplicate share of shown items | p50/p99: ranker latency",
)


def table_header(label: str = "window") -> str:
    """Column header printed above the window rows and the summary table."""
    return _ROW.format(
        label=label,
        arm="arm",
        req="requests",
        impr="impr",
        clicks="clicks",
        ctr="CTR [95% CI]",
        conv="conv",
        rev="revenue",
        lat="p50/p99 ms",
        cats="cats",
        dup="dup",
    )


def clock(ms: int) -> str:
    """Local wall-clock time `HH:MM:SS` of an epoch-milliseconds instant."""
    return time.strftime("%H:%M:%S", time.localtime(ms / 1000.0))


def pct(x: float, digits: int = 2) -> str:
    """A fraction as a percentage (`-` for NaN)."""
    return f"{100.0 * x:.{digits}f}%" if math.isfinite(x) else "-"


def format_ctr(est: Estimate) -> str:
    """CTR and its interval, e.g. `4.13% [3.85, 4.41]` (bounds in percent)."""
    if not math.isfinite(est.value):
        return "-"
    if not math.isfinite(est.se):
        return pct(est.value)
    return f"{pct(est.value)} [{100 * est.low:.2f}, {100 * est.high:.2f}]"


def _num(x: float, fmt: str) -> str:
    return format(x, fmt) if math.isfinite(x) else "-"


def format_arm_row(label: str, stats: ArmStats) -> str:
    """One table row: a window's (or the run's) statistics for one arm."""
    return _ROW.format(
        label=label,
        arm=stats.arm[:10],
        req=f"{stats.requests:,}",
        impr=f"{stats.impressions:,}",
        clicks=f"{stats.clicks:,}",
        ctr=format_ctr(stats.ctr),
        conv=f"{stats.conversions:,}",
        rev=f"{stats.revenue:,.0f}",
        lat=f"{_num(stats.latency_p50_ms, '.1f')}/{_num(stats.latency_p99_ms, '.1f')}",
        cats=_num(stats.categories_per_list, ".2f"),
        dup=pct(stats.near_duplicate_rate, 2),
    )


def format_window(window: ClosedWindow, *, span_ms: tuple[int, int] | None = None) -> list[str]:
    """The rows of one closed window, one per arm, labelled with its start time.

    `span_ms` (first, last event time the generator produced) marks a window
    the generator only partly covered, so a thin first or last window is not
    mistaken for a traffic drop; an incomplete window (some partition never
    reported) is marked too.
    """
    rows = [format_arm_row(clock(window.start_ms), stats) for stats in window.arms.values()]
    notes = []
    if span_ms is not None:
        covered = min(window.end_ms, span_ms[1] + 1) - max(window.start_ms, span_ms[0])
        width = window.end_ms - window.start_ms
        if 0 < covered < width:
            notes.append(f"partial window: {covered / 1000:.1f} of {width / 1000:.0f} s of traffic")
    if not window.complete:
        notes.append(f"only {len(window.partitions)} partition(s) reported")
    if notes and rows:
        rows[-1] += "   (" + "; ".join(notes) + ")"
    return rows


def format_lift(lift: Estimate, treatment: str, control: str) -> str:
    """The summary's lift line, e.g. `CTR lift treatment vs control: +14.2% [95% CI +8.1%, +20.3%]`."""
    if not math.isfinite(lift.value):
        return f"CTR lift {treatment} vs {control}: not enough data"
    head = f"CTR lift {treatment} vs {control}: {100 * lift.value:+.1f}%"
    if not math.isfinite(lift.se):
        return head
    verdict = "significant" if lift.low > 0 or lift.high < 0 else "not significant"
    return f"{head}  [95% CI {100 * lift.low:+.1f}%, {100 * lift.high:+.1f}%]  ({verdict} at 5%)"


def plural(count: int, noun: str) -> str:
    """`1 window`, `3 windows`."""
    return f"{count:,} {noun}" if count == 1 else f"{count:,} {noun}s"


def format_rate(count: float, seconds: float) -> str:
    """`count / seconds` as a thousands-separated per-second rate (`-` before any time passed)."""
    return f"{count / seconds:,.0f}/s" if seconds > 0 else "-"


def format_duration(seconds: float) -> str:
    """`M:SS` for the status line."""
    whole = max(0, int(seconds))
    return f"{whole // 60}:{whole % 60:02d}"


@dataclass(frozen=True, slots=True)
class Status:
    """One snapshot of the demo's progress (what the status line shows)."""

    phase: str
    elapsed_s: float
    duration_s: float
    requests: int
    item_events: int
    rate_item_events_s: float
    windows_closed: int
    windows_pending: int
    accounted_item_events: int
    worker_alive: bool


def format_status(status: Status, width: int | None = None) -> str:
    """The single live status line (TTY) or periodic progress line (logs).

    With a `width` (the terminal's), the least important parts are dropped
    until the line fits, so a redraw never wraps: first the windows still
    closing, then the request count, the aggregated share, the worker state.
    Events are item-level events (DESIGN.md's count).
    """
    share = status.accounted_item_events / status.item_events if status.item_events else math.nan
    head = (
        f"[{format_duration(status.elapsed_s)}/{format_duration(status.duration_s)} {status.phase}] "
        f"{status.item_events:,} events, {status.rate_item_events_s:,.0f}/s"
    )
    # (priority, text), shown in this order; the highest priority number is dropped first.
    parts = [
        (0, head),
        (1, f"windows {status.windows_closed} closed"),
        (5, f"{status.windows_pending} closing" if status.windows_pending else ""),
        (4, f"{status.requests:,} requests"),
        (3, f"aggregated {pct(share, 1)}"),
        (2, f"worker {'up' if status.worker_alive else 'DOWN'}"),
    ]
    parts = [(rank, text) for rank, text in parts if text]
    line = " | ".join(text for _, text in parts)
    while width is not None and len(line) > width and len(parts) > 1:
        parts.remove(max(parts))
        line = " | ".join(text for _, text in parts)
    return line
