"""Per-step read helpers of the Online agent: dense arrays of one step's totals, the decision log,
and the guardrail tests (non-inferiority, diversity) folded one look at a time.

Called only from `agents.online` and its step modules (`agents.online_guard`,
`agents.online_primary`, `agents.online_stage`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Final, Literal

import msgspec
import numpy as np
import numpy.typing as npt

from agents.experiment import (
    ArmSpec,
    ArmState,
    Decision,
    DecisionKind,
    ExperimentError,
    ExperimentPlan,
    ExperimentState,
    GuardrailRead,
    PeriodMark,
    PrePeriod,
)
from agents.stats.errors import StatsError
from agents.stats.ratio import compare_sums, ratio_from_sums
from agents.stats.sequential import SequentialState
from schemas.metrics import FIELD_INDEX, N_FIELDS, N_LATENCY_BINS, ArmTotals

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

_REQUESTS: Final = FIELD_INDEX["requests"]
_NonInferior = Literal["conversion", "revenue"]


class _Arrays:
    """Dense per-arm arrays of one step's totals, in `plan.arm_ids` order (missing arms are zeros)."""

    def __init__(self, plan: ExperimentPlan, totals: Mapping[str, ArmTotals]) -> None:
        present = [totals[a] for a in plan.arm_ids if a in totals]
        self.any = bool(present)
        shapes = {t.sums.shape for t in present}
        if len(shapes) > 1:
            msg = f"totals: arms of {plan.experiment_id} disagree on the bucket layout {sorted(shapes)}"
            raise ExperimentError(msg)
        shape = shapes.pop() if shapes else (N_FIELDS, 2)
        if shape[0] != N_FIELDS:
            msg = f"totals: sums must be ({N_FIELDS} fields × buckets), got {shape}"
            raise ExperimentError(msg)
        self.buckets = shape[1]
        self.sums: dict[str, FloatArray] = {}
        self.hist: dict[str, IntArray] = {}
        for arm_id in plan.arm_ids:
            t = totals.get(arm_id)
            self.sums[arm_id] = np.zeros(shape) if t is None else np.asarray(t.sums, dtype=np.float64)
            self.hist[arm_id] = (
                np.zeros(N_LATENCY_BINS, np.int64) if t is None else np.asarray(t.latency_hist, dtype=np.int64)
            )

    def requests(self, arm_id: str) -> float:
        return float(self.sums[arm_id][_REQUESTS].sum())

    def by_period(self, arm_id: str, plan: ExperimentPlan, marks: Sequence[PeriodMark]) -> FloatArray:
        """`arm_id`'s sums per allocation period, (periods × fields × buckets); its cumulative sums without marks.

        What `compare_sums` reads, so no comparison pools traffic served
        under different shares (`agents.stats.ratio`).
        """
        now = self.sums[arm_id]
        if not marks:
            return now
        index = plan.arm_ids.index(arm_id)
        if any(len(mark.sums[index]) != now.size for mark in marks):
            msg = f"totals: bucket layout of {arm_id} changed mid-experiment (its period marks hold another shape)"
            raise ExperimentError(msg)
        marked = [np.asarray(mark.sums[index], dtype=np.float64).reshape(now.shape) for mark in marks]
        edges = np.stack([np.zeros_like(now), *marked, now])
        return np.maximum(np.diff(edges, axis=0), 0.0)


def _readable(sums: FloatArray, plan: ExperimentPlan) -> bool:
    """Enough traffic for the normal approximation behind a delta-method read (requests and non-empty buckets)."""
    row = sums[_REQUESTS]
    return bool(row.sum() >= plan.min_read_requests and (row > 0).mean() >= plan.min_read_bucket_fraction)


class _Log:
    """Decisions of one call, numbered after the state's last `seq`."""

    def __init__(self, state: ExperimentState, now_ms: int) -> None:
        self.state, self.now_ms, self.seq = state, now_ms, state.seq
        self.out: list[Decision] = []

    def add(self, kind: DecisionKind, reasons: Sequence[str], stage: int, **kw: Any) -> None:
        self.seq += 1
        plan = self.state.plan
        self.out.append(
            Decision(
                decision_id=f"{plan.experiment_id}#{self.seq}",
                seq=self.seq,
                experiment_id=plan.experiment_id,
                surface=plan.surface,
                kind=kind,
                at_ms=self.now_ms,
                stage=stage,
                reasons=tuple(reasons),
                **kw,
            )
        )


# --------------------------------------------------------------------------- guardrail reads


def _fin(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _num(value: float | None) -> str:
    return "unbounded" if value is None else f"{value:+.4g}"


def _spec(plan: ExperimentPlan, arm_id: str) -> ArmSpec:
    for t in plan.treatments:
        if t.arm_id == arm_id:
            return t
    msg = f"arm_id: {arm_id!r} is not a treatment arm of {plan.experiment_id}"
    raise ExperimentError(msg)


def _breach_text(read: GuardrailRead) -> str:
    if read.guardrail == "latency_p99":
        if read.value is None:  # no read of ours: the serving breaker's verdict
            return f"latency: {read.note}"
        return f"latency p99 {read.value:.1f} ms > SLO {read.threshold:g} ms ({read.note})"
    if read.guardrail == "diversity":
        return (
            f"diversity {read.value:.3g} distinct categories per list, always-valid upper bound "
            f"{read.bound:.3g} < floor {read.threshold:g}"
        )
    value = "n/a" if read.value is None else f"{100 * read.value:+.2f}%"
    bound = "n/a" if read.bound is None else f"{100 * read.bound:+.2f}%"
    return (
        f"{read.guardrail} lift {value}, always-valid upper bound {bound} < −margin "
        f"{100 * read.threshold:+.2f}% (non-inferiority breached)"
    )


def _non_inferiority(
    arm: ArmState,
    name: _NonInferior,
    control: FloatArray,
    sums: FloatArray,
    margin: float,
    tau2: float,
    alpha: float,
    *,
    paired: bool,
) -> tuple[ArmState, GuardrailRead]:
    """Fold one look of the log-ratio test of `name` (conversion or revenue per request) and judge the margin."""
    numerator = "conversions" if name == "conversion" else "revenue"
    test: SequentialState | None = arm.conversion if name == "conversion" else arm.revenue
    quiet = GuardrailRead(arm_id=arm.arm_id, guardrail=name, value=None, bound=None, threshold=-margin, breached=False)
    try:
        cmp = compare_sums(control, sums, numerator, "requests", paired=paired)
    except StatsError as err:
        return arm, msgspec.structs.replace(quiet, note=err.message)
    if math.isnan(cmp.log_ratio) or not cmp.log_ratio_variance > 0.0:
        return arm, msgspec.structs.replace(quiet, note="no events yet in one arm")
    test = (test or SequentialState.start(tau2, alpha)).update(cmp.log_ratio, cmp.log_ratio_variance)
    arm = (
        msgspec.structs.replace(arm, conversion=test)
        if name == "conversion"
        else msgspec.structs.replace(arm, revenue=test)
    )
    read = msgspec.structs.replace(
        quiet,
        value=_fin(cmp.lift),
        bound=_fin(math.expm1(test.upper)),
        breached=test.upper < math.log1p(-margin),
        note=f"{test.looks} looks",
    )
    return arm, read


def _diversity(
    arm: ArmState, sums: FloatArray, floor: float, tau2: float, alpha: float
) -> tuple[ArmState, GuardrailRead]:
    """Fold one look of the arm's mean distinct categories per list and judge the floor."""
    try:
        est = ratio_from_sums(sums, "distinct_categories", "requests")
    except StatsError as err:
        return arm, GuardrailRead(
            arm_id=arm.arm_id,
            guardrail="diversity",
            value=None,
            bound=None,
            threshold=floor,
            breached=False,
            note=err.message,
        )
    if not est.variance > 0.0:  # every list alike: the mean is known exactly
        return arm, GuardrailRead(
            arm_id=arm.arm_id,
            guardrail="diversity",
            value=est.value,
            bound=est.value,
            threshold=floor,
            breached=est.value < floor,
            note="no variation across buckets",
        )
    test = (arm.diversity or SequentialState.start(tau2, alpha)).update(est.value, est.variance)
    arm = msgspec.structs.replace(arm, diversity=test)
    return arm, GuardrailRead(
        arm_id=arm.arm_id,
        guardrail="diversity",
        value=est.value,
        bound=_fin(test.upper),
        threshold=floor,
        breached=test.upper < floor,
        note=f"{test.looks} looks",
    )


def _pre_period(plan: ExperimentPlan, pre: Mapping[str, ArmTotals]) -> tuple[PrePeriod, ...]:
    m = plan.primary
    out = []
    for arm_id in plan.arm_ids:
        if arm_id in pre:
            sums = np.asarray(pre[arm_id].sums, dtype=np.float64)
            out.append(
                PrePeriod(
                    arm_id=arm_id,
                    numerator=tuple(sums[FIELD_INDEX[m.numerator]].tolist()),
                    denominator=tuple(sums[FIELD_INDEX[m.denominator]].tolist()),
                )
            )
    return tuple(out)
