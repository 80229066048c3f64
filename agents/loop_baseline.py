"""What the Online power gate plans on: the incumbent's traffic since the last round, and the A/A pre-period.

What lives here: the
baseline marks a round leaves (`baseline_marks`) and the incumbent's totals
since them (`baseline_since_mark`); the variance curve the next plan
assumes, learnt from the reads (`curve_points`, `learn_variance_curve`); the
two parts of the baseline window whose buckets measure the variance's
persistent share (`baseline_parts`) and its pooling over rounds
(`pool_persistent_share`); the A/A pre-period's arm ids and allocation
(`pre_period_arm`, `pre_period_totals`, `pre_period_allocation`; the ids' grammar is
`agents.arm_ids`).

Who calls it: `agents.loop.AgentLoop` (proposal, planning, cool-down and run
steps); `pre_period_arm` also the runtime's tests.  Re-exported by
`agents.loop`.  Pure functions: no I/O.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Final

import msgspec
import numpy as np
import numpy.typing as npt

from agents.arm_ids import is_experiment_arm, pre_period_id
from agents.experiment import Decision, ExperimentPlan
from agents.loop_state import BaselineMark, LoopState
from agents.online import stage_allocation
from agents.stats.persistence import fit_variance_curve, pool_curves, pooled
from schemas.config import Allocation, ArmShare
from schemas.metrics import FIELD_INDEX, ArmTotals

FloatArray = npt.NDArray[np.float64]
_REQUESTS: Final = FIELD_INDEX["requests"]

#: rounds the persistent share is averaged over before older rounds fade (one estimate has a standard error ~0.2)
PERSISTENT_MEMORY_ROUNDS: Final = 8
#: an experiment's reads kept for its variance curve (a read per arm per step: ample for a two-parameter fit)
MAX_CURVE_POINTS: Final = 256


def curve_points(decisions: Sequence[Decision], started_ms: int, reference: float) -> list[tuple[float, float]]:
    """(seconds since the experiment started, variance per request / `reference`) of these decisions' primary reads.

    The variance per request of a read is its Var(difference) over
    (1/n_t + 1/n_c): constant in time under the 1/N model, growing when the
    same users come back.  `reference` is the raw variance per request the
    experiment was planned on (`LoopState.curve_reference`).  Called by
    `AgentLoop._run` each step; `learn_variance_curve` fits them at the end.
    """
    out = []
    for d in decisions:
        for r in d.reads:
            n_t, n_c = r.treatment_requests, r.control_requests
            if n_t > 0.0 and n_c > 0.0 and math.isfinite(r.difference_se) and reference > 0.0:
                per_request = r.difference_se**2 / (1.0 / n_t + 1.0 / n_c)
                out.append(((d.at_ms - started_ms) / 1000.0, per_request / reference))
    return out


def learn_variance_curve(state: LoopState) -> LoopState:
    """`state` with the ended experiment's `curve_points` fitted and pooled into the surface's variance curve.

    Called by `AgentLoop._run` when an experiment ends; the next power gate
    plans on the curve (`agents.loop_plan`).
    """
    curve = pool_curves(state.variance_curve(), fit_variance_curve(state.curve_points), PERSISTENT_MEMORY_ROUNDS)
    if curve is None:
        return msgspec.structs.replace(state, curve_points=())
    return msgspec.structs.replace(
        state,
        curve_points=(),
        curve_intercept=curve.intercept,
        curve_slope_per_s=curve.slope_per_s,
        curve_reads=curve.reads,
    )


def pre_period_arm(plan: ExperimentPlan, arm_id: str) -> str:
    """The A/A pre-period arm of experiment arm `arm_id` (`<exp>.c` → `<exp>.pre.c`, `<exp>.t1` → `<exp>.pre.t1`).

    CUPED needs each arm's pre-period sums *of its own users* per metric
    bucket; the metric windows cannot split earlier traffic by a future arm,
    so the loop serves an A/A allocation first with the experiment's salt:
    same users per arm, every arm on the incumbent, arm ids from here.  Their
    merged totals are then passed to `OnlineAgent.step` as `pre_period`.
    """
    return pre_period_id(plan.experiment_id, arm_id)


def pre_period_totals(plan: ExperimentPlan, totals: Mapping[str, ArmTotals]) -> dict[str, ArmTotals]:
    """The A/A pre-period totals of `plan`'s arms that `totals` holds, keyed by the experiment arm's id.

    Called by `AgentLoop._run` (the Online read's CUPED covariates, used only
    when every arm has them) and `agents.loop_learn` (Insight's pairs).
    """
    return {a: t for a in plan.arm_ids if (t := totals.get(pre_period_arm(plan, a))) is not None}


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
        if not is_experiment_arm(a)
    )


def _mark_sums(mark: BaselineMark | None, shape: tuple[int, ...]) -> FloatArray | None:
    """A mark's (fields × buckets) sums as an array of `shape`, or None when there is none or its layout differs."""
    if mark is None or (mark.buckets, len(mark.sums)) != (shape[1], shape[0] * shape[1]):
        return None
    return np.asarray(mark.sums, dtype=np.float64).reshape(shape)


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
        if is_experiment_arm(a):
            continue
        m = by_arm.get(a)
        at_mark = _mark_sums(m, t.sums.shape)
        if m is not None and at_mark is not None:
            t = ArmTotals(
                t.surface,
                a,
                t.sums - at_mark,
                t.latency_hist - np.asarray(m.latency_hist, dtype=np.int64),
                t.item_events,
                t.late_item_events,
                t.windows - m.windows,
            )
        arms.append(t)
    return [t for t in arms if t.total("requests") >= min_requests and t.windows > 0]


def baseline_parts(
    totals: Mapping[str, ArmTotals],
    marks: Sequence[BaselineMark],
    mid: Sequence[BaselineMark],
    min_requests: float,
) -> list[tuple[FloatArray, FloatArray]]:
    """Each baseline arm's (fields × buckets) sums before and after `mid` (`LoopState.baseline_mid`), since `marks`.

    Called by the planning phase (`agents.loop_plan`): the two parts of the
    window the power gate plans on, for `agents.online.persistent_share_of`.
    Arms with fewer than `min_requests` requests in either part, or whose
    layout changed, are left out.
    """
    start = {m.arm_id: m for m in marks}
    out = []
    for m in mid:
        now = totals.get(m.arm_id)
        at_mid = None if now is None else _mark_sums(m, now.sums.shape)
        if now is None or at_mid is None:
            continue
        before = _mark_sums(start.get(m.arm_id), now.sums.shape)
        first = at_mid if before is None else at_mid - before
        second = now.sums - at_mid
        if min(first[_REQUESTS].sum(), second[_REQUESTS].sum()) >= min_requests:
            out.append((first, second))
    return out


def pool_persistent_share(share: float, reads: int, estimate: float | None) -> tuple[float, int]:
    """(pooled share, reads) after one more round's `estimate` (None: unchanged), `pooled` over
    `PERSISTENT_MEMORY_ROUNDS` rounds: the share is a property of the surface's users, one estimate is noisy."""
    if estimate is None:
        return share, reads
    return pooled(share, estimate, reads, PERSISTENT_MEMORY_ROUNDS), reads + 1
