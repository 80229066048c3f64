"""What the Online power gate plans on: the incumbent's traffic since the last round, and the A/A pre-period.

What lives here: which arms are experiment arms (`_TREATMENT_ARM`); the
baseline marks a round leaves (`baseline_marks`) and the incumbent's totals
since them (`baseline_since_mark`); the CUPED variance ratio the next plan
assumes (`_cuped_ratio`); the A/A pre-period's arm ids and allocation
(`pre_period_arm`, `pre_period_id`, `pre_period_totals`, `pre_period_allocation`).

Who calls it: `agents.loop.AgentLoop` (proposal, planning, cool-down and run
steps); `pre_period_arm` also the runtime's tests.  Re-exported by
`agents.loop`.  Pure functions: no I/O.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Final

import numpy as np

from agents.experiment import Decision, ExperimentPlan
from agents.loop_state import BaselineMark
from agents.online import stage_allocation
from schemas.config import Allocation, ArmShare
from schemas.metrics import ArmTotals

_TREATMENT_ARM: Final = re.compile(r"\.(t\d+|c)$")
#: the power gate never plans on less than this share of the raw variance (a lucky read must not underpower the next)
_MIN_CUPED_RATIO: Final = 0.25


def _cuped_ratio(decisions: Sequence[Decision], last: float) -> float:
    """The median Var(adjusted)/Var(raw) of these decisions' CUPED reads, floored at `_MIN_CUPED_RATIO`; else `last`.

    The power gate plans the next experiment on it: what the A/A covariates
    removed on this surface is the best guess of what they will remove next.
    """
    ratios = sorted(
        r.variance_ratio
        for d in decisions
        for r in d.reads
        if r.cuped and r.variance_ratio is not None and math.isfinite(r.variance_ratio)
    )
    if not ratios:
        return last
    return min(1.0, max(_MIN_CUPED_RATIO, ratios[len(ratios) // 2]))


def pre_period_arm(plan: ExperimentPlan, arm_id: str) -> str:
    """The A/A pre-period arm of experiment arm `arm_id` (`<exp>.c` → `<exp>.pre.c`, `<exp>.t1` → `<exp>.pre.t1`).

    CUPED needs each arm's pre-period sums *of its own users* per metric
    bucket; the metric windows cannot split earlier traffic by a future arm,
    so the loop serves an A/A allocation first with the experiment's salt:
    same users per arm, every arm on the incumbent, arm ids from here.  Their
    merged totals are then passed to `OnlineAgent.step` as `pre_period`.
    """
    return pre_period_id(plan.experiment_id, arm_id)


def pre_period_id(experiment_id: str, arm_id: str) -> str:
    """`pre_period_arm` for a reader that has the experiment id but not its plan (`agents.loop_readings`)."""
    return f"{experiment_id}.pre{arm_id.removeprefix(experiment_id)}"


def pre_period_totals(plan: ExperimentPlan, totals: Mapping[str, ArmTotals]) -> dict[str, ArmTotals]:
    """The A/A pre-period totals of `plan`'s arms that `totals` holds, keyed by the experiment arm's id.

    Called by `AgentLoop._run` (the Online read's CUPED covariates, used only
    when every arm has them) and `agents.loop_learn` (Insight's pairs).
    """
    return {a: t for a in plan.arm_ids if (t := totals.get(pre_period_arm(plan, a))) is not None}


def is_pre_period_arm(arm_id: str) -> bool:
    """Whether `arm_id` names an A/A pre-period arm (`pre_period_arm`'s `<exp>.pre.<arm>` form)."""
    return ".pre." in arm_id


def pre_period_allocation(plan: ExperimentPlan) -> Allocation:
    """The A/A allocation of the pre-period: the final stage's lanes, every arm serving the incumbent.

    Lanes fill from their start, so a treatment arm's users at any stage are
    among its final-stage users: the covariates cover every user it will see.
    """
    final = stage_allocation(plan, plan.final_stage, [True] * len(plan.treatments))
    return Allocation(
        experiment_id=plan.experiment_id,
        salt=plan.salt,
        arms=tuple(ArmShare(pre_period_arm(plan, a.arm_id), plan.control.config_version, a.share) for a in final.arms),
    )


def baseline_marks(totals: Mapping[str, ArmTotals]) -> tuple[BaselineMark, ...]:
    """The baseline (non-experiment) arms' cumulative totals now (`LoopState.baseline_mark`).

    Called by `AgentLoop` when a round ends: the next round's power gate
    plans on the traffic since this mark (`baseline_since_mark`).
    """
    return tuple(
        BaselineMark(
            a,
            t.windows,
            tuple(np.asarray(t.sums, dtype=np.float64).ravel().tolist()),
            tuple(np.asarray(t.latency_hist, dtype=np.int64).tolist()),
            t.sums.shape[1],
        )
        for a, t in sorted(totals.items())
        if not _TREATMENT_ARM.search(a)
    )


def baseline_since_mark(
    totals: Mapping[str, ArmTotals], marks: Sequence[BaselineMark], min_requests: float
) -> list[ArmTotals]:
    """The incumbent's (non-experiment arms') totals since the last round ended (`LoopState.baseline_mark`).

    Called by `AgentLoop` before proposing and when planning; arms with fewer
    than `min_requests` requests or no window since the mark are left out.
    Cumulative totals since the metrics topic began mix earlier incumbents,
    and with returning users their variance per request grows with the
    history's length (user effects do not average out), so a gate fed all
    history refuses ever more; the traffic since the last round is recent
    and of the current incumbent only.
    """
    by_arm = {m.arm_id: m for m in marks}
    arms = []
    for a, t in totals.items():
        if _TREATMENT_ARM.search(a):
            continue
        m = by_arm.get(a)
        if m is not None and m.buckets == t.sums.shape[1] and len(m.sums) == t.sums.size:
            t = ArmTotals(
                t.surface,
                a,
                t.sums - np.asarray(m.sums, dtype=np.float64).reshape(t.sums.shape),
                t.latency_hist - np.asarray(m.latency_hist, dtype=np.int64),
                t.item_events,
                t.late_item_events,
                t.windows - m.windows,
            )
        arms.append(t)
    return [t for t in arms if t.total("requests") >= min_requests and t.windows > 0]
