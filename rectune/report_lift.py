"""The report's headline number: the lift of the final incumbent over the starting config, with a 95% interval.

What lives here: `final_lift` (the incumbent side, since it last became
the control, against the holdout side of the same windows, on the north star and the `SECONDARY` ratios, delta
method over user buckets; the comparison is explained in `rectune.report`'s
docstring), the `Lift` it returns, and `Z95`, the normal quantile the
report's per-arm intervals use.  Pure: `RunRecords` in, numbers out.

Who calls it: `rectune.report_markdown.build_report` (the report's Outcome
section), `rectune.demo` (the live panel's headline) and `rectune.demo_run`
(the summary printed at the end of a run); the demo modules import these
names through `rectune.report`, which re-exports them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

import numpy as np

from agents.stats.errors import StatsError
from agents.stats.ratio import Comparison, compare_sums
from rectune.demo_view import holdout_surface
from rectune.report_records import RunRecords
from schemas.config import CascadeConfig
from schemas.metrics import FIELD_INDEX, window_arrays

__all__ = ["SECONDARY", "Z95", "Lift", "final_lift", "incumbent_since_ms"]

#: Other ratios the report compares besides the north star (name, numerator, denominator).
SECONDARY: Final = (
    ("CTR (clicks per shown item)", "clicks", "impressions"),
    ("conversions per request", "conversions", "requests"),
    ("revenue per request", "revenue", "requests"),
    ("distinct categories per list", "distinct_categories", "requests"),
    ("fresh share of shown items", "fresh", "impressions"),
)
Z95: Final = 1.959963984540054


@dataclass(frozen=True, slots=True)
class Lift:
    """Final incumbent vs starting config (holdout), on the north star and the secondary ratios."""

    start_version: int
    final_version: int
    same_config: bool
    since_ms: int
    windows: int
    incumbent_requests: float
    holdout_requests: float
    north_star: Comparison
    secondary: tuple[tuple[str, Comparison | None], ...]

    def interval(self) -> tuple[float, float]:
        """95% interval of the relative lift (exp of the log-ratio interval, minus one)."""
        return self.north_star.lift_interval(0.95)


def incumbent_since_ms(records: RunRecords, config: CascadeConfig) -> int:
    """When `config` last became the incumbent (the control) on the config log; `records.started_ms` if never.

    `final_lift` reads only windows from then on: before it, the final
    incumbent served as a treatment arm that was promoted *because* its read
    was high, and counting that read would carry the winner's curse into the
    headline.
    """
    since_ms: int | None = None
    for point in records.config:
        if point.state.configs.get(point.state.control_version) == config:
            since_ms = point.at_ms if since_ms is None else since_ms
        else:
            since_ms = None
    return records.started_ms if since_ms is None else since_ms


def final_lift(records: RunRecords) -> tuple[Lift | None, str]:
    """The lift of the final incumbent over the starting config, or None and why not (see the module doc)."""
    if not records.config:
        return None, "no config change was read from rectune.config"
    final_state = records.config[-1].state
    final_version = final_state.control_version
    final_config = final_state.configs.get(final_version)
    start_version = int(records.traffic.get("holdout_version") or records.config[0].state.control_version)
    start_config = final_state.configs.get(start_version)
    if final_config is None or start_config is None:
        return None, "the final or the starting config is missing from the config log"
    configs: Mapping[int, CascadeConfig] = final_state.configs
    since_ms = incumbent_since_ms(records, final_config)
    incumbent = [
        w
        for w in records.partials
        if w.surface == records.surface
        and w.window_start_ms >= since_ms
        and w.config_versions
        and all(configs.get(v) == final_config for v in w.config_versions)
    ]
    windows = {w.window_start_ms for w in incumbent}
    holdout = [
        w for w in records.partials if w.surface == holdout_surface(records.surface) and w.window_start_ms in windows
    ]
    if not incumbent or not holdout:
        return None, "no window since the final incumbent took over holds both its traffic and the holdout's"
    inc_sums = np.sum([window_arrays(w)[0] for w in incumbent], axis=0)
    hold_sums = np.sum([window_arrays(w)[0] for w in holdout], axis=0)
    num, den = records.north_star
    try:
        # the holdout is a user-level split (its own surface), so the two sides hold different users
        main = compare_sums(hold_sums, inc_sums, num, den)
    except StatsError as err:
        return None, f"the north star cannot be compared ({err})"
    if not math.isfinite(main.lift):
        return None, "the north star is zero on one side"
    secondary: list[tuple[str, Comparison | None]] = []
    for name, n, d in SECONDARY:
        try:
            secondary.append((name, compare_sums(hold_sums, inc_sums, n, d)))
        except StatsError:
            secondary.append((name, None))
    req = FIELD_INDEX["requests"]
    return (
        Lift(
            start_version=start_version,
            final_version=final_version,
            same_config=final_config == start_config,
            since_ms=since_ms,
            windows=len(windows),
            incumbent_requests=float(inc_sums[req].sum()),
            holdout_requests=float(hold_sums[req].sum()),
            north_star=main,
            secondary=tuple(secondary),
        ),
        "",
    )
