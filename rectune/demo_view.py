"""The demo's live view, pure: arm labels, one-liners for decisions, alerts and config changes, panels.

`rectune.demo` feeds what it reads from `rectune.metrics`, `rectune.decisions`,
`rectune.alerts` and `rectune.config` into these functions and prints what
they return; `rectune.report` reuses the one-liners for the run's timeline.
Nothing here reads a clock, a socket or a terminal: times are passed in.

Agent records are untrusted JSON (another process wrote them): every field is
read with a default, so a record of a newer or older shape degrades to a
shorter line instead of stopping the demo.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from rectune.progress import ArmStats, ClosedWindow, Estimate, clock, format_duration, relative_lift
from schemas.alerts import Alert
from schemas.config_log import ConfigChange, ServingState

_ARM: Final = re.compile(r"^(?P<exp>.+)\.(?P<role>c|t\d+)$")
#: Arm id of the holdout users (kept on the starting config by `rectune traffic`).
HOLDOUT: Final = "holdout"


def holdout_surface(surface: str) -> str:
    """The surface label of the holdout's events (kept apart from the agents' surface, which never sees it)."""
    return f"{surface}.holdout"


class ArmLabels:
    """Short names for arms: experiment ids become E1, E2… in order of first sight (`E1.c`, `E1.t2`).

    One instance lives for the whole run (the demo and the report share it),
    so a label never changes meaning.
    """

    def __init__(self) -> None:
        self.experiments: dict[str, str] = {}

    def experiment(self, experiment_id: str) -> str:
        """`E<n>` for an experiment id (assigned on first sight)."""
        if experiment_id not in self.experiments:
            self.experiments[experiment_id] = f"E{len(self.experiments) + 1}"
        return self.experiments[experiment_id]

    def arm(self, arm_id: str) -> str:
        """`control`, `holdout`, or `E<n>.c` / `E<n>.t<k>` for an experiment's arm."""
        match = _ARM.match(arm_id)
        if match is None:
            return arm_id
        return f"{self.experiment(match['exp'])}.{match['role']}"

    def legend(self) -> list[str]:
        """`E1 = exp-…` lines for the summary and the report."""
        return [f"{label} = {exp}" for exp, label in self.experiments.items()]


def is_treatment(arm_id: str) -> bool:
    """True for an experiment's treatment arm (`<experiment>.t<k>`)."""
    match = _ARM.match(arm_id)
    return match is not None and match["role"] != "c"


# -- one-liners ----------------------------------------------------------------------------


def _get(mapping: Any, key: str, default: Any = None) -> Any:
    return mapping.get(key, default) if isinstance(mapping, Mapping) else default


def _pct(x: float | None, digits: int = 1, *, sign: bool = True) -> str:
    if x is None or not math.isfinite(x):
        return "-"
    return f"{100 * x:+.{digits}f}%" if sign else f"{100 * x:.{digits}f}%"


def _clip(text: str, limit: int = 110) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _changes(changes: Any) -> str:
    parts = []
    for change in changes if isinstance(changes, list) else []:
        name = str(_get(change, "name", "?")).split(".")[-1]
        value = _get(change, "value")
        shown = f"{value:.3g}" if isinstance(value, float) else str(value)
        parts.append(f"{name}={shown}")
    return ", ".join(parts)


def _shares(allocation: Any, labels: ArmLabels) -> str:
    arms = _get(allocation, "arms", [])
    parts = []
    for arm in arms if isinstance(arms, list) else []:
        share = _get(arm, "share", 0.0)
        parts.append(f"{labels.arm(str(_get(arm, 'arm_id', '?')))} {_pct(share, 0, sign=False)}")
    return " / ".join(parts)


def _reason(payload: Any) -> str:
    reasons = _get(payload, "reasons", [])
    return _clip(str(reasons[-1])) if isinstance(reasons, list) and reasons else ""


def describe_record(record: Mapping[str, Any], labels: ArmLabels) -> str | None:
    """One line for an agent record from `rectune.decisions`; None for the ones the view skips (interim reads).

    Called by the demo's decision reader as records arrive and by the report's timeline.
    """
    kind = str(record.get("kind", "?"))
    payload = record.get("payload", {})
    if kind == "interim_read" or kind == "brain_call":
        return None
    if kind == "proposal":
        proposals = _get(payload, "proposals", [])
        items = proposals if isinstance(proposals, list) else []
        moves = " ".join(f"[{_clip(_changes(_get(p, 'changes')), 70)}]" for p in items[:3])
        dropped = _get(payload, "dropped", [])
        extra = f", {len(dropped)} dropped by the Actor" if isinstance(dropped, list) and dropped else ""
        return f"Actor    round {record.get('cycle', '?')}: {len(items)} proposal(s){extra}: {moves}"
    if kind == "critique":
        verdicts = _get(payload, "verdicts", [])
        items = verdicts if isinstance(verdicts, list) else []
        kept = sum(1 for v in items if _get(v, "kept"))
        refused = [f"{_get(v, 'rule', '?')}" for v in items if not _get(v, "kept")]
        why = f" (refused: {', '.join(sorted(set(refused)))})" if refused else ""
        if _get(payload, "stage") == "off_policy":
            unjudged = sum(1 for v in items if any("not evidence" in str(r) for r in _get(v, "reasons", []) or []))
            note = f", {unjudged} without evidence either way" if unjudged else ""
            return f"Critic   off-policy screen on replays: kept {kept} of {len(items)}{why}{note}"
        return f"Critic   kept {kept} of {len(items)}{why}"
    if kind in ("allocation", "decision"):
        return _describe_decision(record, payload, labels)
    if kind == "insight":
        status = _get(payload, "status", "?")
        insights = _get(payload, "insights", [])
        count = len(insights) if isinstance(insights, list) else 0
        exp = labels.experiment(str(record.get("experiment_id", "?")))
        return f"Insight  {exp} {status}: {count} insight(s) for the Skill agent"
    if kind == "skill":
        changes = _get(payload, "changes", [])
        items = changes if isinstance(changes, list) else []
        kinds: dict[str, int] = {}
        for change in items:
            key = str(_get(change, "kind", "?"))
            kinds[key] = kinds.get(key, 0) + 1
        text = ", ".join(f"{n} {k}" for k, n in sorted(kinds.items())) or "no change"
        return f"Skill    Skillhub: {text}"
    return f"agents   {kind}"


def _describe_decision(record: Mapping[str, Any], payload: Any, labels: ArmLabels) -> str:
    kind = str(_get(payload, "kind", record.get("kind", "?")))
    exp_id = str(record.get("experiment_id", "?"))
    cycle = record.get("cycle", "?")
    if kind == "no_candidate":
        why = _reason(payload) or "critic kept none"
        return f"Online   round {cycle}: no candidate to test ({why})"
    if kind == "refuse":  # never ran: no experiment label
        return f"Online   round {cycle} refused: {_reason(payload)}"
    exp = labels.experiment(exp_id) if exp_id.startswith("exp-") else exp_id
    arm = _get(payload, "arm_id")
    arm_text = f" {labels.arm(str(arm))}" if arm else ""
    stage = _get(payload, "stage", 0)
    if kind in ("allocate", "ramp"):
        return f"Online   {exp} {kind} stage {int(stage) + 1}: {_shares(_get(payload, 'allocation'), labels)}"
    if kind == "hold_for_approval":
        return f"Online   {exp} held for approval: `rectune approve {exp_id}`"
    if kind == "promote":
        version = _get(payload, "config_version")
        return f"Online   {exp} PROMOTE{arm_text} (config v{version}): {_reason(payload)}"
    if kind in ("rollback", "halt"):
        return f"Online   {exp} {kind.upper()}{arm_text}: {_reason(payload)}"
    return f"Online   {exp} {kind}{arm_text}: {_reason(payload)}"


def describe_alert(alert: Alert, labels: ArmLabels) -> str:
    """One line for an alert from `rectune.alerts` (sidecar SLO breaches, agents' guardrails, SRM, refusals)."""
    arm = f" {labels.arm(alert.arm_id)}" if alert.arm_id else ""
    return f"ALERT    {alert.severity} {alert.kind}{arm} from {alert.source}: {_clip(alert.message, 100)}"


def describe_change(change: ConfigChange, after: ServingState, labels: ArmLabels) -> str:
    """One line for an accepted change on `rectune.config` (the sidecars apply exactly these)."""
    head = f"config   v{change.version} {change.kind}"
    if change.kind == "config":
        verb = f"activated: incumbent is now v{change.version}" if change.activate else "registered"
        return f"{head} {verb} ({change.author})"
    if change.kind == "allocation":
        if after.allocation is None:
            return f"{head}: allocation ended, everyone on incumbent v{after.control_version}"
        exp = labels.experiment(after.allocation.experiment_id)
        shares = " / ".join(
            f"{labels.arm(a.arm_id)} v{a.config_version} {_pct(a.share, 0, sign=False)}" for a in after.allocation.arms
        )
        unit = " (per request)" if after.allocation.unit == "request" else ""
        return f"{head}: {exp} {shares}{unit}"
    return f"{head}: restored v{change.restores_version}, incumbent v{after.control_version}"


# -- windows and panels ----------------------------------------------------------------------


def _num(x: float, fmt: str) -> str:
    return format(x, fmt) if math.isfinite(x) else "-"


def window_line(window: ClosedWindow, labels: ArmLabels) -> str:
    """One line per closed window: each arm's north star and p99, and the window's requests."""
    parts = [
        f"{labels.arm(stats.arm)} {_num(stats.north_star.value, '.3f')} p99 {_num(stats.latency_p99_ms, '.0f')}"
        for stats in sorted(window.arms.values(), key=lambda s: _arm_order(s.arm, labels))
    ]
    requests = sum(stats.requests for stats in window.arms.values())
    note = "" if window.complete else f"  ({len(window.partitions)} partition(s) reported)"
    return f"{clock(window.start_ms)}  window  {' | '.join(parts)}  ({requests:,} req){note}"


def _arm_order(arm_id: str, labels: ArmLabels) -> tuple[int, str]:
    label = labels.arm(arm_id)
    rank = 0 if arm_id == "control" else 2 if arm_id == HOLDOUT else 1
    return rank, label


@dataclass(frozen=True, slots=True)
class PanelArm:
    """One row of the live panel: an arm's cumulative statistics and what it serves."""

    stats: ArmStats
    config_version: int | None
    share: float | None


def _ci(est: Estimate, digits: str = ".3f") -> str:
    if not math.isfinite(est.value):
        return "-"
    if not math.isfinite(est.se):
        return format(est.value, digits)
    return f"{est.value:{digits}} [{est.low:{digits}}, {est.high:{digits}}]"


def _lift(est: Estimate) -> str:
    if not math.isfinite(est.value):
        return "-"
    if not math.isfinite(est.se):
        return _pct(est.value)
    return f"{_pct(est.value)} [{_pct(est.low)}, {_pct(est.high)}]"


def panel(
    *,
    elapsed_s: float,
    duration_s: float,
    north_star_name: str,
    slo_ms: float,
    serving: ServingState,
    arms: Sequence[PanelArm],
    control_arm: str | None,
    recent: Sequence[str],
    labels: ArmLabels,
    headline: str = "",
) -> list[str]:
    """The periodic live panel: the serving state, each active arm (north star with 95% CI, lift vs
    its control with 95% CI, p99 against the SLO), a `headline` (the demo
    passes the incumbent-vs-holdout lift so far), and the last decisions.

    Intervals here are fixed-sample delta-method intervals over user buckets
    for reading along; the agents decide on always-valid sequential reads and,
    at the horizon, one fixed-horizon final look.
    """
    exp = serving.allocation
    head = f"── {format_duration(elapsed_s)}/{format_duration(duration_s)}  incumbent v{serving.control_version}"
    head += f", experiment {labels.experiment(exp.experiment_id)}" if exp is not None else ", no experiment running"
    lines = [head + " " + "─" * max(0, 100 - len(head))]
    lines.append(
        f"  {'arm':<8} {'config':>6} {'share':>6} {'requests':>9}  {north_star_name + ' [95% CI]':<26}"
        f" {'lift vs control [95% CI]':<28} {'p99 ms':>7} (SLO {slo_ms:g})"
    )
    control = next((a.stats for a in arms if a.stats.arm == control_arm), None)
    for arm in arms:
        s = arm.stats
        compared = control is not None and s.arm not in (control_arm, HOLDOUT)
        lift = _lift(relative_lift(s.north_star, control.north_star)) if compared and control else ""
        over = " OVER" if math.isfinite(s.latency_p99_ms) and s.latency_p99_ms > slo_ms else ""
        lines.append(
            f"  {labels.arm(s.arm):<8} {('v' + str(arm.config_version)) if arm.config_version else '-':>6}"
            f" {_pct(arm.share, 0, sign=False) if arm.share is not None else '-':>6} {s.requests:>9,}"
            f"  {_ci(s.north_star):<26} {lift:<28} {_num(s.latency_p99_ms, '.1f'):>7}{over}"
        )
    if headline:
        lines.append(f"  {headline}")
    if recent:
        lines.append("  last decisions:")
        lines.extend(f"    {line}" for line in recent)
    return lines


@dataclass(frozen=True, slots=True)
class LoopStatus:
    """One snapshot of the run for the status line."""

    phase: str
    elapsed_s: float
    duration_s: float
    requests: int
    requests_per_s: float
    item_events: int
    aggregated_share: float
    windows_closed: int
    decisions: int
    experiments: int
    promotions: int
    rollbacks: int
    children_up: int
    children: int


def format_loop_status(status: LoopStatus, width: int | None = None) -> str:
    """The single live status line; with a `width`, the least important parts go first until it fits."""
    head = f"[{format_duration(status.elapsed_s)}/{format_duration(status.duration_s)} {status.phase}]"
    parts = [
        (0, head),
        (1, f"{status.requests:,} req ({status.requests_per_s:,.0f}/s)"),
        (2, f"experiments {status.experiments}, promoted {status.promotions}, rolled back {status.rollbacks}"),
        (3, f"processes {status.children_up}/{status.children} up"),
        (4, f"windows {status.windows_closed}"),
        (5, f"aggregated {_pct(status.aggregated_share, 1, sign=False)}"),
        (6, f"{status.decisions} records"),
        (7, f"{status.item_events:,} events"),
    ]
    line = " | ".join(text for _, text in parts)
    while width is not None and len(line) > width and len(parts) > 1:
        parts.remove(max(parts))
        line = " | ".join(text for _, text in parts)
    return line
