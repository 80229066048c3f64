"""The report's Markdown: the headline lift sentence, the sections and tables, and `build_report`.

What lives here: `format_lift_line` (the headline sentence, which the demo's
summary prints too), `timeline`, the section builders (outcome with the lift
table and the oracle's figures, experiments, per-arm totals, skills, Pareto
front), `Report` and `build_report`, which lays the text out around the
figures of `rectune.report_plots` (imported when a report is built, so
matplotlib loads only then).  Text only: the numbers come from
`rectune.report_records` and `rectune.report_lift`; nothing is written here
(`rectune.report_writer` saves the report).

Who calls it: `rectune.demo_run` at the end of a run (`build_report`, and
`format_lift_line` for the console summary) and the tests, through
`rectune.report`, which re-exports these names.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from rectune.demo_view import ArmLabels, describe_alert, describe_change, describe_record
from rectune.report_lift import Z95, Lift, final_lift
from rectune.report_records import RunRecords, WindowPoint, rounds, series, totals
from schemas.metrics import FIELD_INDEX

__all__ = ["Report", "build_report", "format_lift_line", "timeline"]


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
        "read. The incumbent side is every partial of the tuned surface, from the moment the final incumbent last "
        f"became the control ({_offset(records, lift.since_ms) if lift is not None else 'n/a'}), whose served "
        "configs all equal its config: the winning arm's reads before its promotion are left out, since it was "
        "promoted because they were high. The holdout side is the holdout's partials of the same windows. Both "
        "sides are "
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
