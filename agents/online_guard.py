"""Steps 1 and 2 of `OnlineAgent.step`: the SRM check and the per-arm guardrails (latency, non-inferiority,
diversity), plus `_reallocate`, which every step that ends an arm uses.

Called by `agents.online.OnlineAgent.step` (and `_reallocate` by `agents.online_primary` and
`agents.online_stage`).
"""

from __future__ import annotations

from collections.abc import Sequence
from collections.abc import Set as AbstractSet
from typing import Final

import msgspec
import numpy as np

from agents.experiment import (
    ExperimentError,
    ExperimentState,
    Figure,
    GuardrailRead,
    PeriodMark,
    Snapshot,
)
from agents.online_ramp import served_shares, stage_allocation
from agents.online_reads import (
    _REQUESTS,
    _Arrays,
    _breach_text,
    _diversity,
    _Log,
    _non_inferiority,
    _NonInferior,
    _readable,
    _spec,
)
from agents.stats.srm import SrmResult, srm_buckets
from schemas.metrics import latency_quantile
from schemas.slo import quantile_breach

#: The quantile a latency SLO bounds (the guardrail's `latency_p99_slo_ms`).
_P99: Final = 0.99

# ---- 1. SRM


def _srm(state: ExperimentState, data: _Arrays, log: _Log, now_ms: int) -> tuple[ExperimentState, bool]:
    plan, allocation = state.plan, state.allocation
    assert allocation is not None  # noqa: S101 - checked by step
    if state.snapshot is None:
        if state.allocation_ms is not None and now_ms >= state.allocation_ms + plan.settle_s * 1000.0:
            snap = Snapshot(
                taken_ms=now_ms,
                requests=tuple(tuple(data.sums[a][_REQUESTS].tolist()) for a in plan.arm_ids),
                latency=tuple(tuple(data.hist[a].tolist()) for a in plan.arm_ids),
            )
            periods = state.periods
            if state.allocation_ms != state.started_ms:  # a new allocation period begins (not the launch's)
                mark = PeriodMark(
                    taken_ms=now_ms, sums=tuple(tuple(data.sums[a].ravel().tolist()) for a in plan.arm_ids)
                )
                periods = (*periods, mark)
            state = msgspec.structs.replace(state, snapshot=snap, periods=periods)
        return state, False
    base = np.asarray(state.snapshot.requests, dtype=np.float64)
    counts = np.stack([data.sums[a][_REQUESTS] for a in plan.arm_ids])
    if base.shape != counts.shape:
        msg = f"totals: bucket layout changed mid-experiment ({base.shape} → {counts.shape})"
        raise ExperimentError(msg)
    window = counts - base
    if (window < -1e-9).any():
        msg = "totals: cumulative requests decreased since the SRM snapshot (totals must be exact and cumulative)"
        raise ExperimentError(msg)
    window = np.maximum(window, 0.0)
    shares = served_shares(allocation)
    positive = [s for s in shares if s > 0.0]
    if min(positive) * window.sum() < plan.srm_min_expected_requests:
        return state, False
    result: SrmResult = srm_buckets(window, shares, threshold=plan.srm_threshold)
    if not result.halt:
        return state, False
    arms = tuple(
        msgspec.structs.replace(a, status="ended", ended_ms=now_ms, reason="halted: SRM") if a.status == "active" else a
        for a in state.arms
    )
    control_only = stage_allocation(plan, state.stage, [False] * len(plan.treatments))
    reason = (
        f"{result.reason} over {window.sum():.0f} requests since {state.snapshot.taken_ms}: assignment or "
        "logging is broken and no read of this experiment can be trusted; everyone back to control"
    )
    state = msgspec.structs.replace(
        state, status="halted_srm", arms=arms, allocation=control_only, ended_ms=now_ms, outcome=reason
    )
    log.add(
        "halt",
        [reason],
        state.stage,
        figures=(
            Figure.of("srm_p_value", result.p_value),
            Figure.of("srm_statistic", result.statistic),
            Figure.of("srm_threshold", result.threshold),
            *(Figure.of(f"observed_share.{a}", s) for a, s in zip(plan.arm_ids, result.observed_shares, strict=True)),
            *(Figure.of(f"expected_share.{a}", s) for a, s in zip(plan.arm_ids, result.expected_shares, strict=True)),
        ),
        allocation=control_only,
        ends_experiment=True,
        alert="srm",
        severity="critical",
    )
    return state, True


# ---- 2. guardrails


def _guardrails(
    state: ExperimentState, data: _Arrays, log: _Log, now_ms: int, opened: AbstractSet[str] = frozenset()
) -> tuple[ExperimentState, list[GuardrailRead]]:
    plan, g = state.plan, state.plan.guardrails
    control = data.sums[plan.control.arm_id]
    reads: list[GuardrailRead] = []
    arms = list(state.arms)
    for i, arm in enumerate(arms):
        if arm.status != "active":
            continue
        sums = data.sums[arm.arm_id]
        breaches: list[GuardrailRead] = []
        if arm.arm_id in opened:
            read = GuardrailRead(
                arm_id=arm.arm_id,
                guardrail="latency_p99",
                value=None,
                bound=None,
                threshold=float(g.latency_p99_slo_ms or 0.0),
                breached=True,
                note="the serving sidecar's SLO breaker cut this arm back to control (rectune.alerts)",
            )
            reads.append(read)
            breaches.append(read)
        if g.latency_p99_slo_ms is not None:
            breaches += _latency(state, data, arm.arm_id, g.latency_p99_slo_ms, reads)
        if _readable(sums, plan) and _readable(control, plan):
            checks: tuple[tuple[_NonInferior, float | None, float], ...] = (
                ("conversion", g.conversion_margin, g.conversion_tau2),
                ("revenue", g.revenue_margin, g.revenue_tau2),
            )
            for name, margin, tau2 in checks:
                if margin is None:
                    continue
                arm, read = _non_inferiority(
                    arm,
                    name,
                    data.by_period(plan.control.arm_id, plan, state.periods),
                    data.by_period(arm.arm_id, plan, state.periods),
                    margin,
                    tau2,
                    g.alpha,
                    paired=plan.paired,
                )
                reads.append(read)
                if read.breached:
                    breaches.append(read)
        if g.diversity_floor is not None and _readable(sums, plan):
            arm, read = _diversity(arm, sums, g.diversity_floor, g.diversity_tau2, g.alpha)
            reads.append(read)
            if read.breached:
                breaches.append(read)
        if breaches:
            why = "; ".join(_breach_text(b) for b in breaches)
            arm = msgspec.structs.replace(arm, status="rolled_back", ended_ms=now_ms, reason=f"guardrail: {why}")
        arms[i] = arm
    state = msgspec.structs.replace(state, arms=tuple(arms))
    for arm in state.arms:
        if arm.status == "rolled_back" and arm.ended_ms == now_ms:
            state = _reallocate(state, now_ms)
            spec = _spec(plan, arm.arm_id)
            log.add(
                "rollback",
                [f"rollback {arm.arm_id} (config {spec.config_version}, {spec.proposal_id}): {arm.reason}"],
                state.stage,
                arm_id=arm.arm_id,
                config_version=spec.config_version,
                proposal_id=spec.proposal_id,
                guardrails=tuple(r for r in reads if r.arm_id == arm.arm_id),
                allocation=state.allocation,
                alert="guardrail_breach",
                severity="warning",
            )
    return state, reads


def latency_holds(reads: Sequence[GuardrailRead]) -> set[str]:
    """Arms whose p99 reads over the SLO this step, without a breach shown yet: not promotable now.

    Called by `agents.online.OnlineAgent.step` before the stage logic: a
    rollback needs evidence of a breach, a promotion needs no sign of one.
    """
    return {
        r.arm_id
        for r in reads
        if r.guardrail == "latency_p99" and not r.breached and r.value is not None and r.value > r.threshold
    }


def _latency(
    state: ExperimentState, data: _Arrays, arm_id: str, slo: float, reads: list[GuardrailRead]
) -> list[GuardrailRead]:
    """The arm's p99 against the SLO since the SRM window opened (the current load), else since the start.

    Breached only when the always-valid exceedance test
    (`schemas.slo`) at the guardrails' alpha shows more than 1%
    of the window's requests at or over the SLO (the first histogram edge at
    or above it); a p99 that merely reads over the SLO is reported
    (`value`), and holds the arm back from promotion (`latency_holds`), but
    does not roll it back.
    """
    g = state.plan.guardrails
    hist = data.hist[arm_id]
    scope = "since start"
    if state.snapshot is not None:
        recent = hist - np.asarray(state.snapshot.latency[state.plan.arm_ids.index(arm_id)], dtype=np.int64)
        if recent.sum() >= g.min_latency_requests:
            hist, scope = recent, "this allocation"
    if hist.sum() < g.min_latency_requests:
        return []
    p99 = latency_quantile(hist, 0.99)
    control = latency_quantile(data.hist[state.plan.control.arm_id], 0.99)
    test, edge_ms = quantile_breach(hist, slo, quantile=_P99, alpha=g.alpha)
    note = f"{scope}: {test.describe()} at {edge_ms:.4g} ms; control p99 {control:.1f} ms"
    read = GuardrailRead(
        arm_id=arm_id,
        guardrail="latency_p99",
        value=p99,
        bound=test.share,
        threshold=slo,
        breached=test.breached,
        note=note,
    )
    reads.append(read)
    return [read] if read.breached else []


def _reallocate(state: ExperimentState, now_ms: int) -> ExperimentState:
    """The current stage's allocation for the arms still active; restarts the SRM window."""
    active = [a.status == "active" for a in state.arms]
    return msgspec.structs.replace(
        state,
        allocation=stage_allocation(state.plan, state.stage, active),
        allocation_ms=now_ms,
        snapshot=None,
    )
