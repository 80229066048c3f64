"""The demo's end-of-run report, pure: the records captured during a run in, markdown and figures out.

`rectune.demo` captures every metric partial, agent record, alert and
accepted config change it reads during the run into `RunRecords`;
`build_report(records)` turns them into a `Report` (markdown text plus
matplotlib figures, nothing written), and `rectune.report_writer` saves it
under `runs/<UTC time>/`.  Unit-tested with hand-made records, no services.

The headline number is the lift of the final incumbent over the starting
config on the scenario's north-star ratio, with a 95% interval.  Which
comparison: `rectune traffic` keeps a holdout — a fixed share of users,
chosen by a salted hash independent of the experiment assignment and of the
metric buckets — on the starting config for the whole run, on a surface the
agents never read.  The incumbent side is every partial of the tuned surface
whose served configs all equal the final incumbent's config (the control arm
after the last promotion, and the winning arm before it), the holdout side
the holdout partials of the same windows.  The two sides are concurrent
and hold disjoint randomised users, so the ratio of their north stars is a
fair lift; its variance is the delta method over user buckets
(`agents.stats.ratio`), a fixed-sample interval for this single final read.
With no promotion the final incumbent is the starting config and the
comparison is an A/A check.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

import numpy as np

from agents.stats.errors import StatsError
from agents.stats.ratio import Comparison, compare, ratio_from_sums
from rectune.demo_view import ArmLabels, describe_alert, describe_change, describe_record, holdout_surface
from schemas.alerts import Alert
from schemas.config import CascadeConfig
from schemas.config_log import ConfigChange, ServingState
from schemas.metrics import FIELD_INDEX, N_LATENCY_BINS, FloatArray, IntArray, MetricWindow, window_arrays

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


# -- the lift of the final incumbent over the starting config ------------------------------------


@dataclass(frozen=True, slots=True)
class Lift:
    """Final incumbent vs starting config (holdout), on the north star and the secondary ratios."""

    start_version: int
    final_version: int
    same_config: bool
    windows: int
    incumbent_requests: float
    holdout_requests: float
    north_star: Comparison
    secondary: tuple[tuple[str, Comparison | None], ...]

    def interval(self) -> tuple[float, float]:
        """95% interval of the relative lift (exp of the log-ratio interval, minus one)."""
        return self.north_star.lift_interval(0.95)


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
    incumbent = [
        w
        for w in records.partials
        if w.surface == records.surface
        and w.config_versions
        and all(configs.get(v) == final_config for v in w.config_versions)
    ]
    windows = {w.window_start_ms for w in incumbent}
    holdout = [
        w for w in records.partials if w.surface == holdout_surface(records.surface) and w.window_start_ms in windows
    ]
    if not incumbent or not holdout:
        return None, "no window holds both the final incumbent's traffic and the holdout's"
    inc_sums = np.sum([window_arrays(w)[0] for w in incumbent], axis=0)
    hold_sums = np.sum([window_arrays(w)[0] for w in holdout], axis=0)
    num, den = records.north_star
    try:
        main = compare(ratio_from_sums(hold_sums, num, den), ratio_from_sums(inc_sums, num, den))
    except StatsError as err:
        return None, f"the north star cannot be compared ({err})"
    if not math.isfinite(main.lift):
        return None, "the north star is zero on one side"
    secondary: list[tuple[str, Comparison | None]] = []
    for name, n, d in SECONDARY:
        try:
            secondary.append((name, compare(ratio_from_sums(hold_sums, n, d), ratio_from_sums(inc_sums, n, d))))
        except StatsError:
            secondary.append((name, None))
    req = FIELD_INDEX["requests"]
    return (
        Lift(
            start_version=start_version,
            final_version=final_version,
            same_config=final_config == start_config,
            windows=len(windows),
            incumbent_requests=float(inc_sums[req].sum()),
            holdout_requests=float(hold_sums[req].sum()),
            north_star=main,
            secondary=tuple(secondary),
        ),
        "",
    )


def format_lift_line(lift: Lift | None, why: str, north_star_name: str) -> str:
    """The headline sentence about the lift (markdown; the demo's summary prints it too)."""
    if lift is None:
        return f"Lift of the final incumbent over the starting config: not available ({why})."
    low, high = lift.interval()
    verdict = "significant at 5%" if low > 0.0 or high < 0.0 else "not significant at 5%"
    what = (
        f"final incumbent v{lift.final_version} vs starting config v{lift.start_version}"
        if not lift.same_config
        else f"no promotion: incumbent v{lift.final_version} serves the starting config (A/A check)"
    )
    return (
        f"North star ({north_star_name}) lift, {what}: **{100 * lift.north_star.lift:+.1f}%** "
        f"[95% CI {100 * low:+.1f}%, {100 * high:+.1f}%] ({verdict}; "
        f"{lift.incumbent_requests:,.0f} vs {lift.holdout_requests:,.0f} holdout requests over {lift.windows} windows)"
    )


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


# -- the report ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Report:
    """The report: markdown (figures referenced by file name) and the figures to save beside it."""

    markdown: str
    figures: Mapping[str, Any]
    lift: Lift | None
    lift_note: str


def _offset(records: RunRecords, at_ms: int) -> str:
    seconds = max(0.0, (at_ms - records.started_ms) / 1000.0)
    return f"{int(seconds) // 60}:{int(seconds) % 60:02d}"


def timeline(records: RunRecords, labels: ArmLabels) -> list[tuple[int, str]]:
    """(time, line) for every decision (interim reads aside), alert and config change, in time order."""
    items: list[tuple[int, str]] = []
    for rec in records.decisions:
        line = describe_record(rec, labels)
        if line is not None:
            items.append((int(rec.get("at_ms", 0) or 0), line))
    items.extend((a.at_ms, describe_alert(a, labels)) for a in records.alerts)
    items.extend((p.at_ms, describe_change(p.change, p.state, labels)) for p in records.config)
    return sorted(items, key=lambda item: item[0])


def _fmt(x: float, digits: int = 4) -> str:
    return f"{x:.{digits}g}" if math.isfinite(x) else "-"


def _arm_table(records: RunRecords, by_arm: Mapping[str, list[WindowPoint]]) -> list[str]:
    num, den = records.north_star
    lines = [
        f"| arm | windows | requests | {records.north_star_name} [95% CI] | CTR | p99 ms "
        "| categories/list | fresh share |",
        "|---|---:|---:|---|---:|---:|---:|---:|",
    ]
    from schemas.metrics import latency_quantile  # local: only the table needs it

    for label, points in by_arm.items():
        t = totals(points)
        value, se = t.ratio(num, den), t.ratio_se(num, den)
        ci = f"{_fmt(value)} [{_fmt(value - Z95 * se)}, {_fmt(value + Z95 * se)}]" if math.isfinite(se) else _fmt(value)
        lines.append(
            f"| {label} | {len(points)} | {t.sums[FIELD_INDEX['requests']].sum():,.0f} | {ci} "
            f"| {_fmt(t.ratio('clicks', 'impressions'))} | {_fmt(latency_quantile(t.hist, 0.99), 3)} "
            f"| {_fmt(t.ratio('distinct_categories', 'requests'), 3)} | {_fmt(t.ratio('fresh', 'impressions'), 3)} |"
        )
    return lines


def _lift_section(records: RunRecords, lift: Lift | None, why: str) -> list[str]:
    lines = ["## Outcome", "", format_lift_line(lift, why, records.north_star_name), ""]
    lines += [
        "Which comparison: a holdout of "
        f"{100 * records.holdout_share:.0f}% of users (salted hash, independent of the experiment assignment and "
        "of the metric buckets) stayed on the starting config for the whole run, on a surface the agents never "
        "read. The incumbent side is every partial of the tuned surface whose served configs all equal the final "
        "incumbent's config; the holdout side is the holdout's partials of the same windows. Both sides are "
        "concurrent and randomised, so their ratio is a fair lift. Interval: delta method over user buckets, "
        "fixed-sample (one final read), on the log ratio.",
        "",
    ]
    if lift is not None:
        lines += ["| metric | starting config (holdout) | final incumbent | lift [95% CI] |", "|---|---:|---:|---|"]
        for name, comp in (("north star " + records.north_star_name, lift.north_star), *lift.secondary):
            if comp is None or not math.isfinite(comp.lift):
                lines.append(f"| {name} | - | - | - |")
                continue
            low, high = comp.lift_interval(0.95)
            lines.append(
                f"| {name} | {_fmt(comp.control)} | {_fmt(comp.treatment)} "
                f"| {100 * comp.lift:+.1f}% [{100 * low:+.1f}%, {100 * high:+.1f}%] |"
            )
        lines.append("")
    if records.oracle is not None:
        o = records.oracle
        rel = o.final_value / o.start_value - 1.0 if o.start_value else math.nan
        lines += [
            f"The world's oracle (exact expectation, never shown to the agents) at simulated day "
            f"{o.at_s / 86_400:.1f}: starting config {_fmt(o.start_value)}, final incumbent {_fmt(o.final_value)} "
            f"({100 * rel:+.1f}%).",
            "",
        ]
    return lines


def _rounds_section(records: RunRecords, labels: ArmLabels) -> list[str]:
    found = rounds(records.decisions)
    lines = ["## Experiments", ""]
    if not found:
        return [*lines, "The agents made no proposal during the run.", ""]
    lines += [
        "| round | at | proposals | kept by Critic | experiment | treatments | outcome | why |",
        "|---:|---|---:|---:|---|---:|---|---|",
    ]
    for r in found:
        exp = r.experiment_id or "-"
        if r.experiment_id and r.treatments:
            exp = f"{labels.experiment(r.experiment_id)} ({r.experiment_id})"
        why = r.reason.replace("|", "/")[:160]
        lines.append(
            f"| {r.cycle} | {_offset(records, r.at_ms)} | {r.proposals} | {r.kept} | {exp} | {r.treatments} "
            f"| {r.outcome} | {why} |"
        )
    return [*lines, ""]


def _skills_section(records: RunRecords) -> list[str]:
    lines = ["## Skills learned (Skillhub)", ""]
    if not records.skills:
        return [*lines, "No skill was stored during the run.", ""]
    lines += ["| stage | cohort | parameter | direction | confidence | status |", "|---|---|---|---|---:|---|"]
    for skill in records.skills:
        pattern = skill.get("pattern", {}) if isinstance(skill.get("pattern"), Mapping) else {}
        lines.append(
            f"| {skill.get('stage', '-')} | {skill.get('cohort', '-')} | {pattern.get('parameter', '-')} "
            f"| {pattern.get('direction', '-')} {pattern.get('choice', '')} "
            f"| {_fmt(float(skill.get('confidence', math.nan)), 2)} | {skill.get('status', '-')} |"
        )
    return [*lines, ""]


def _front_section(records: RunRecords) -> list[str]:
    """The Insight agent's last Pareto front of tried configs (objective, latency p99, diversity)."""
    front: list[Mapping[str, Any]] = []
    compared: list[str] = []
    for rec in records.decisions:
        payload = rec.get("payload")
        if rec.get("kind") == "insight" and isinstance(payload, Mapping):
            found = payload.get("pareto_front")
            if isinstance(found, list):
                front = [p for p in found if isinstance(p, Mapping) and isinstance(p.get("metrics"), Mapping)]
                named = payload.get("pareto_metrics")
                compared = [str(m) for m in named] if isinstance(named, list) else []
    lines = ["## Pareto front of tried configs (Insight)", ""]
    if not front:
        return [*lines, "No experiment was decided during the run, so there is no front yet.", ""]
    names = [n for n in compared if n in front[0]["metrics"]] or list(front[0]["metrics"])
    lines += ["| config (arm) | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    for point in front:
        values = point["metrics"]
        cells = " | ".join(_fmt(float(values.get(n, math.nan)), 4) for n in names)
        lines.append(f"| {point.get('config_id', '-')} | {cells} |")
    note = (
        "Each config's estimates come from the experiment that served it; none of them beats another on every column."
    )
    return [*lines, "", note, ""]


def build_report(records: RunRecords, labels: ArmLabels | None = None) -> Report:
    """Markdown and figures of one run (called by the demo's writer at the end, and by the tests)."""
    from rectune.report_plots import figures  # local: matplotlib only when a report is built

    labels = labels or ArmLabels()
    by_arm = series(records, labels)
    lift, why = final_lift(records)
    started = datetime.fromtimestamp(records.started_ms / 1000, tz=UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    wall_s = (records.ended_ms - records.started_ms) / 1000.0
    traffic = records.traffic
    lines = [
        f"# rectune demo run: {records.scenario}, {started}",
        "",
        f"- {wall_s:.0f} s of wall time ({wall_s * records.time_scale / 86_400:.1f} simulated days of catalogue "
        f"ageing at {records.time_scale:g}x); surface `{records.surface}`; brain `{records.brain}`",
        f"- north star `{records.north_star_name}`; latency SLO p99 <= {records.latency_slo_ms:g} ms; "
        f"{records.window_s:g} s metric windows",
        f"- traffic: {int(traffic.get('requests', 0)):,} requests "
        f"({int(traffic.get('holdout_requests', 0)):,} holdout), "
        f"{int(traffic.get('item_events', 0)):,} item events, {int(traffic.get('clicks', 0)):,} clicks, "
        f"{int(traffic.get('conversions', 0)):,} conversions",
    ]
    if records.interrupted:
        lines.append(f"- **the run was interrupted ({records.interrupted})**: this report covers what was read")
    lines += [f"- {note}" for note in records.notes]
    lines.append("")
    lines += _lift_section(records, lift, why)
    lines += _rounds_section(records, labels)
    lines += ["## Per-arm totals", "", *_arm_table(records, by_arm), ""]
    if labels.experiments:
        lines += ["Arm labels: " + "; ".join(labels.legend()), ""]
    lines += _skills_section(records)
    lines += _front_section(records)
    figs = figures(records, by_arm, labels, lift)
    lines += ["## Figures", ""]
    lines += [f"![{name}]({name})" for name in figs]
    lines += ["", "## Timeline", "", "```"]
    lines += [f"{_offset(records, at)}  {line}" for at, line in timeline(records, labels)]
    lines += ["```", ""]
    return Report("\n".join(lines), figs, lift, why)
