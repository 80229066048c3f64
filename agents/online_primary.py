"""Step 3 of `OnlineAgent.step`: the primary read (CUPED when pre-period covariates cover the arms),
the always-valid tests with Holm across arms, and stopping losers and futile arms.

Called by `agents.online.OnlineAgent.step`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import msgspec

from agents.experiment import (
    ArmRead,
    ExperimentState,
    GuardrailRead,
    ReadPoint,
    Verdict,
)
from agents.online_guard import _reallocate
from agents.online_reads import _Arrays, _fin, _Log, _readable, _spec
from agents.stats.cuped import CupedFit, cuped_ratio
from agents.stats.errors import StatsError
from agents.stats.multiple import holm
from agents.stats.ratio import Comparison, compare_sums
from agents.stats.sequential import SequentialState
from schemas.metrics import FIELD_INDEX

# ---- 3. primary read


def _read(
    state: ExperimentState, data: _Arrays, log: _Log, now_ms: int, guard_reads: list[GuardrailRead]
) -> tuple[ExperimentState, list[ArmRead], list[str]]:
    plan = state.plan
    metric = plan.primary
    control_id = plan.control.arm_id
    control = data.sums[control_id]
    notes: list[str] = []
    active = [a for a in state.arms if a.status == "active" and _readable(data.sums[a.arm_id], plan)]
    if not active or not _readable(control, plan):
        if guard_reads:
            log.add(
                "interim_read",
                ["guardrails only: too little traffic for a primary read"],
                state.stage,
                guardrails=tuple(guard_reads),
            )
        return state, [], []
    comparisons: dict[str, tuple[Comparison, float | None]] = {}
    updated: set[str] = set()
    # A paired read already removes the users' own propensity, which is what the covariates would explain.
    fit = None if plan.paired else _cuped(state, data, [a.arm_id for a in active], notes)
    periods = state.periods
    control_periods = data.by_period(control_id, plan, periods)
    for i, arm in enumerate(active, start=1):
        try:
            if fit is not None:
                comparisons[arm.arm_id] = (fit.compare(i, 0), fit.variance_reduction(i, 0))
            else:
                cmp = compare_sums(
                    control_periods,
                    data.by_period(arm.arm_id, plan, periods),
                    metric.numerator,
                    metric.denominator,
                    paired=plan.paired,
                )
                comparisons[arm.arm_id] = (cmp, None)
        except StatsError as err:
            notes.append(f"{arm.arm_id}: no read ({err.message})")
    arms = {a.arm_id: a for a in state.arms}
    tests: dict[str, SequentialState] = {a.arm_id: a.primary for a in state.arms if a.primary is not None}
    for arm_id, (cmp, _) in comparisons.items():
        if not (cmp.difference_variance > 0.0 and math.isfinite(cmp.difference_variance)):
            notes.append(f"{arm_id}: no read (zero variance: too few events)")
            continue
        test = tests.get(arm_id) or SequentialState.start(plan.tau2, plan.sequential_alpha)
        tests[arm_id] = test.update(cmp.difference, cmp.difference_variance)
        arms[arm_id] = msgspec.structs.replace(arms[arm_id], primary=tests[arm_id])
        updated.add(arm_id)
    order = [t.arm_id for t in plan.treatments]
    # The family is every treatment arm launched (fixed): ended arms keep their last p, unread ones count as 1.
    adjusted = holm([tests[a].p_value if a in tests else 1.0 for a in order], plan.sequential_alpha)
    winners: list[str] = []
    reads: list[ArmRead] = []
    stops: list[tuple[str, str, str]] = []
    history = list(state.history)
    for arm_id, rejected, holm_p in zip(order, adjusted.reject, adjusted.adjusted, strict=True):
        arm = arms[arm_id]
        if arm_id not in updated:
            continue
        seq = tests[arm_id]
        if arm.verdict == 0 and rejected:
            arm = msgspec.structs.replace(arm, verdict=1 if seq.estimate > 0.0 else -1, verdict_ms=now_ms)
        verdict: Verdict = "open"
        if arm.verdict > 0:
            verdict = "winner"
            winners.append(arm_id)
        elif arm.verdict < 0:
            verdict = "loser"
            why = (
                f"significantly worse than control on {metric.name} (Holm p={holm_p:.3g}, difference "
                f"{seq.estimate:+.4g}, always-valid CS [{seq.lower:+.4g}, {seq.upper:+.4g}])"
            )
            arm = msgspec.structs.replace(arm, status="stopped_loser", ended_ms=now_ms, reason=why)
            stops.append((arm_id, "loser", why))
        elif seq.upper < plan.futility_absolute:
            verdict = "futile"
            why = (
                f"futile on {metric.name}: the always-valid CS [{seq.lower:+.4g}, {seq.upper:+.4g}] excludes "
                f"{plan.futility_fraction:g} × the planned MDE {plan.mde_absolute:+.4g} "
                f"(difference {seq.estimate:+.4g})"
            )
            arm = msgspec.structs.replace(arm, status="stopped_futile", ended_ms=now_ms, reason=why)
            stops.append((arm_id, "futile", why))
        arms[arm_id] = arm
        cmp, ratio = comparisons[arm_id]
        reads.append(
            ArmRead(
                arm_id=arm_id,
                metric=metric.name,
                control=cmp.control,
                treatment=cmp.treatment,
                difference=cmp.difference,
                difference_se=cmp.difference_se,
                lift=None if math.isnan(cmp.lift) else cmp.lift,
                lower=_fin(seq.lower),
                upper=_fin(seq.upper),
                p_value=seq.p_value,
                holm_p=holm_p,
                looks=seq.looks,
                treatment_requests=data.requests(arm_id),
                control_requests=data.requests(control_id),
                cuped=ratio is not None,
                variance_ratio=None if ratio is None else _fin(ratio),
                verdict=verdict,
            )
        )
        history.append(
            ReadPoint(
                at_ms=now_ms,
                stage=state.stage,
                arm_id=arm_id,
                estimate=seq.estimate,
                se=math.sqrt(seq.variance),
                p_value=seq.p_value,
                holm_p=holm_p,
                lower=_fin(seq.lower),
                upper=_fin(seq.upper),
            )
        )
    if plan.max_history == 0:
        history = []
    elif len(history) > plan.max_history:
        history = history[-plan.max_history :]
    state = msgspec.structs.replace(state, arms=tuple(arms[a.arm_id] for a in state.arms), history=tuple(history))
    summary = [
        f"{r.arm_id}: {metric.name} {r.treatment:.5g} vs {r.control:.5g} (difference {r.difference:+.4g}, "
        f"p={r.p_value:.3g}, Holm p={r.holm_p:.3g}{', CUPED' if r.cuped else ''}) → {r.verdict}"
        for r in reads
    ]
    log.add(
        "interim_read",
        [*summary, *notes] or ["no primary read yet"],
        state.stage,
        reads=tuple(reads),
        guardrails=tuple(guard_reads),
    )
    for arm_id, _, why in stops:
        state = _reallocate(state, now_ms)
        spec = _spec(plan, arm_id)
        log.add(
            "stop_arm",
            [f"stop {arm_id} ({spec.proposal_id}): {why}"],
            state.stage,
            arm_id=arm_id,
            config_version=spec.config_version,
            proposal_id=spec.proposal_id,
            reads=tuple(r for r in reads if r.arm_id == arm_id),
            allocation=state.allocation,
        )
    return state, reads, winners


def _cuped(state: ExperimentState, data: _Arrays, arm_ids: Sequence[str], notes: list[str]) -> CupedFit | None:
    """CUPED fit over control + `arm_ids` when pre-period covariates cover them and the allocation never changed
    (None: raw read)."""
    if state.pre_period is None:
        return None
    pre = {p.arm_id: p for p in state.pre_period}
    ids = [state.plan.control.arm_id, *arm_ids]
    if any(a not in pre for a in ids):
        notes.append("CUPED off: pre-period covariates missing for some arms")
        return None
    if state.periods:
        # CUPED here pools the periods, which a stratified read must not (agents.stats.ratio): read raw instead
        notes.append("CUPED off: the allocation changed during the experiment (read stratified by period)")
        return None
    m = state.plan.primary
    try:
        return cuped_ratio(
            [(data.sums[a][FIELD_INDEX[m.numerator]], data.sums[a][FIELD_INDEX[m.denominator]]) for a in ids],
            [(pre[a].numerator, pre[a].denominator) for a in ids],
        )
    except StatsError as err:
        notes.append(f"CUPED off: {err.message}")
        return None
