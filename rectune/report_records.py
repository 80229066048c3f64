"""What the demo's report is made from: the records captured during a run, and the series gathered from them.

What lives here: `RunRecords` (everything `rectune.demo` captured during one
run: metric partials, agent decision records, alerts, accepted config changes
as `ConfigPoint`s, traffic counters, the world's `OracleFigures`), the
per-window series of each arm (`WindowPoint`, `arm_label`, `series`,
`totals`) and the agents' proposal rounds read from the decision records
(`Round`, `rounds`).  Pure: values in, values out, nothing read or written.

Who calls it: `rectune.demo_run` builds the records (with the config points
`rectune.demo_feed` collects); `rectune.report_lift` (the headline lift),
`rectune.report_markdown` (the text) and `rectune.report_plots` (the
figures) read them.  Callers import these names from `rectune.report`, which
re-exports them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np

from agents.stats.errors import StatsError
from agents.stats.ratio import ratio_from_sums
from rectune.demo_view import ArmLabels, holdout_surface
from schemas.alerts import Alert
from schemas.config_log import ConfigChange, ServingState
from schemas.metrics import FIELD_INDEX, N_LATENCY_BINS, FloatArray, IntArray, MetricWindow, window_arrays

__all__ = [
    "ConfigPoint",
    "OracleFigures",
    "Round",
    "RunRecords",
    "WindowPoint",
    "arm_label",
    "rounds",
    "series",
    "totals",
]


@dataclass(frozen=True, slots=True)
class ConfigPoint:
    """One accepted change on `rectune.config` and the serving state right after it."""

    change: ConfigChange
    state: ServingState

    @property
    def at_ms(self) -> int:
        """When the change was made (its signed `created_ms`)."""
        return self.change.created_ms


@dataclass(frozen=True, slots=True)
class OracleFigures:
    """The world's exact expectations (never shown to the agents): start vs final incumbent at the end."""

    start_value: float
    final_value: float
    at_s: float


@dataclass(frozen=True, slots=True)
class RunRecords:
    """Everything the demo captured during one run (built by `rectune.demo`, read here)."""

    scenario: str
    surface: str
    north_star: tuple[str, str]
    latency_slo_ms: float
    started_ms: int
    ended_ms: int
    window_s: float
    brain: str
    partials: tuple[MetricWindow, ...]
    decisions: tuple[Mapping[str, Any], ...]
    alerts: tuple[Alert, ...]
    config: tuple[ConfigPoint, ...]
    traffic: Mapping[str, Any] = field(default_factory=dict)
    skills: tuple[Mapping[str, Any], ...] = ()
    oracle: OracleFigures | None = None
    time_scale: float = 3600.0
    holdout_share: float = 0.0
    interrupted: str | None = None
    notes: tuple[str, ...] = ()

    @property
    def north_star_name(self) -> str:
        """`clicks/requests`."""
        return f"{self.north_star[0]}/{self.north_star[1]}"


# -- per-window series ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WindowPoint:
    """One arm in one window: merged bucket sums and latency histogram of its partials."""

    start_ms: int
    sums: FloatArray
    hist: IntArray

    def ratio(self, numerator: str, denominator: str) -> float:
        """Σ numerator / Σ denominator (NaN without a denominator)."""
        den = float(self.sums[FIELD_INDEX[denominator]].sum())
        return float(self.sums[FIELD_INDEX[numerator]].sum()) / den if den else math.nan

    def ratio_se(self, numerator: str, denominator: str) -> float:
        """Delta-method standard error over user buckets (NaN when it cannot be computed)."""
        try:
            return ratio_from_sums(self.sums, numerator, denominator).se
        except StatsError:
            return math.nan


def arm_label(window: MetricWindow, surface: str, labels: ArmLabels) -> str | None:
    """The series a partial belongs to: `holdout`, an arm label of `surface`, or None (another surface)."""
    if window.surface == holdout_surface(surface):
        return "holdout"
    if window.surface == surface:
        return labels.arm(window.arm_id)
    return None


def series(records: RunRecords, labels: ArmLabels) -> dict[str, list[WindowPoint]]:
    """Per arm label, its windows in time order (partials of one window merged across partitions and cohorts)."""
    acc: dict[tuple[str, int], tuple[FloatArray, IntArray]] = {}
    for window in records.partials:
        label = arm_label(window, records.surface, labels)
        if label is None:
            continue
        sums, hist = window_arrays(window)
        key = (label, window.window_start_ms)
        if key in acc and acc[key][0].shape == sums.shape:
            acc[key][0][...] += sums
            acc[key][1][...] += hist
        else:
            acc[key] = (sums.copy(), hist.copy())
    out: dict[str, list[WindowPoint]] = {}
    for (label, start), (sums, hist) in sorted(acc.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        out.setdefault(label, []).append(WindowPoint(start, sums, hist))
    return out


def totals(points: Sequence[WindowPoint]) -> WindowPoint:
    """All windows of one series merged."""
    sums = np.sum([p.sums for p in points], axis=0)
    hist = np.sum([p.hist for p in points], axis=0) if points else np.zeros(N_LATENCY_BINS, np.int64)
    return WindowPoint(points[0].start_ms if points else 0, sums, hist)


# -- experiments --------------------------------------------------------------------------------


@dataclass(slots=True)
class Round:
    """One proposal round of the agents and the experiment it led to (read from the decision records)."""

    cycle: int
    at_ms: int
    proposals: int = 0
    kept: int = 0
    experiment_id: str = ""
    treatments: int = 0
    outcome: str = "running"
    reason: str = ""
    ended_ms: int | None = None


_TERMINAL: Final = {"promote", "stop", "rollback", "halt", "refuse", "no_candidate"}


def rounds(decisions: Sequence[Mapping[str, Any]]) -> list[Round]:
    """The agents' rounds in order, each with its proposals, the Critic's verdict and the experiment's end."""
    out: dict[int, Round] = {}
    for rec in decisions:
        cycle = rec.get("cycle")
        if not isinstance(cycle, int):
            continue
        at = int(rec.get("at_ms", 0) or 0)
        r = out.setdefault(cycle, Round(cycle, at))
        kind, payload = rec.get("kind"), rec.get("payload", {})
        payload = payload if isinstance(payload, Mapping) else {}
        if kind == "proposal":
            r.proposals = len(payload.get("proposals", []) or [])
        elif kind == "critique":
            r.kept = sum(1 for v in payload.get("verdicts", []) or [] if isinstance(v, Mapping) and v.get("kept"))
        elif kind in ("allocation", "decision"):
            sub = str(payload.get("kind", kind))
            exp = str(rec.get("experiment_id", ""))
            if exp.startswith("exp-"):
                r.experiment_id = exp
            allocation = payload.get("allocation")
            if sub == "allocate" and isinstance(allocation, Mapping):
                r.treatments = max(0, len(allocation.get("arms", []) or []) - 1)
            if sub in _TERMINAL:
                r.outcome = sub
                reasons = payload.get("reasons") or []
                r.reason = str(reasons[-1]) if reasons else ""
                r.ended_ms = at
        elif kind == "insight" and isinstance(payload.get("status"), str):
            r.outcome = f"{r.outcome} ({payload['status']})" if r.outcome != "running" else str(payload["status"])
    return [out[c] for c in sorted(out)]
