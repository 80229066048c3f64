"""The Online agent's planning steps: the power gate, the frozen `ExperimentPlan`, refusal and launch.

Called by `agents.online.OnlineAgent.plan` and `OnlineAgent.approve`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import msgspec

from agents.arm_ids import control_arm_id, treatment_arm_id
from agents.experiment import (
    ArmSpec,
    Candidate,
    Decision,
    ExperimentPlan,
    ExperimentState,
    Figure,
    PowerFigures,
)
from agents.online_policy import Baseline, OnlinePolicy, TrafficEstimate, _per_stage
from agents.online_ramp import guardrail_tau2, ramp_exposure, stage_allocation, stage_fractions
from agents.online_reads import _Log
from agents.stats.power import PowerPlan, plan_experiment


def power_plan(
    policy: OnlinePolicy,
    treatments: int,
    traffic: TrafficEstimate,
    baseline: Baseline,
    fractions: Sequence[float] | None = None,
) -> PowerPlan:
    """The sequential test's power plan for `treatments` arms over `policy`'s ramp and horizon at `traffic`.

    Called by the power gate (`_gate`, `OnlineAgent.plan`) and by `rectune.simloop` to derive a resolvable
    target from a pilot.  `fractions` are the ramp's stage fractions of the horizon (default: from the
    policy's per-stage dwell).
    """
    p = policy
    if p.randomization_unit == "request":
        baseline = baseline.paired()
    if fractions is None:
        dwell = _per_stage("min_dwell_s", p.min_dwell_s, len(p.stages))
        fractions = stage_fractions(p.stages, dwell, p.horizon_s)
    return plan_experiment(
        baseline=baseline.value,
        variance_per_unit=baseline.variance_per_request,
        units_per_second=traffic.requests_per_second,
        horizon_seconds=p.horizon_s,
        treatments=treatments,
        alpha=p.alpha,
        final_alpha=p.final_alpha,
        power=p.power,
        exposure=ramp_exposure(p.stages, fractions, treatments),
        target_mde=p.target_mde,
        variance_dof=baseline.variance_dof,
        variance_confidence=p.variance_confidence,
        persistent_share=baseline.persistent_share,
        variance_window_seconds=baseline.window_s,
    )


def _gate(
    policy: OnlinePolicy, requested_arms: int, traffic: TrafficEstimate, baseline: Baseline, fractions: Sequence[float]
) -> tuple[PowerPlan | None, PowerPlan]:
    """(the largest feasible plan with <= `requested_arms` arms, or None; the plan with all of them).

    The exposure depends on K (the ramp splits each stage over the arms),
    so arms are cut one at a time rather than by `max_treatments_for`.
    """
    requested = power_plan(policy, requested_arms, traffic, baseline, fractions)
    if requested.feasible:
        return requested, requested
    for k in range(requested_arms - 1, 0, -1):
        candidate = power_plan(policy, k, traffic, baseline, fractions)
        if candidate.feasible:
            return candidate, requested
    return None, requested


def _plan_struct(
    policy: OnlinePolicy,
    experiment_id: str,
    incumbent: int,
    arms: Sequence[Candidate],
    dwell: tuple[float, ...],
    min_requests: tuple[float, ...],
    now_ms: int,
    gate: PowerPlan | None = None,
    requested: PowerPlan | None = None,
    traffic: TrafficEstimate | None = None,
    reason: str = "not planned",
) -> ExperimentPlan:
    """The frozen plan; `gate` is the plan launched with (or, refused, the one with every arm)."""
    p, g = policy, policy.guardrails
    guardrails = msgspec.structs.replace(
        g,
        conversion_tau2=0.0
        if g.conversion_margin is None
        else guardrail_tau2(-math.log1p(-g.conversion_margin), g.alpha, p.power),
        revenue_tau2=0.0
        if g.revenue_margin is None
        else guardrail_tau2(-math.log1p(-g.revenue_margin), g.alpha, p.power),
        diversity_tau2=guardrail_tau2(g.diversity_resolution, g.alpha, p.power),
    )
    if gate is None:
        figures = PowerFigures(
            baseline=math.nan,
            variance_per_request=math.nan,
            requests_per_second=math.nan,
            exposure=math.nan,
            treatments_requested=len(arms),
            treatments=0,
            target_mde=p.target_mde,
            mde_relative=math.inf,
            mde_absolute=math.inf,
            tau2=math.nan,
            feasible=False,
            horizon_needed_s=None,
            reason=reason,
        )
    else:
        req = requested or gate
        figures = PowerFigures(
            baseline=gate.baseline,
            variance_per_request=gate.variance_per_unit,
            requests_per_second=math.nan if traffic is None else traffic.requests_per_second,
            exposure=ramp_exposure(p.stages, stage_fractions(p.stages, dwell, p.horizon_s), gate.treatments),
            treatments_requested=req.treatments,
            treatments=gate.treatments if gate.feasible else 0,
            target_mde=p.target_mde,
            mde_relative=gate.mde_relative,
            mde_absolute=gate.mde_absolute,
            tau2=gate.tau2,
            feasible=gate.feasible,
            horizon_needed_s=req.horizon_needed_seconds,
            reason=reason,
            persistent_share=gate.persistent_share,
            variance_window_s=gate.variance_window_seconds,
        )
    return ExperimentPlan(
        experiment_id=experiment_id,
        surface=p.surface,
        created_ms=now_ms,
        salt=experiment_id,
        control=ArmSpec(arm_id=control_arm_id(experiment_id), config_version=incumbent),
        treatments=tuple(
            ArmSpec(
                arm_id=treatment_arm_id(experiment_id, i), config_version=c.config_version, proposal_id=c.proposal_id
            )
            for i, c in enumerate(arms, start=1)
        ),
        stages=p.stages,
        min_dwell_s=dwell,
        min_stage_requests=min_requests,
        horizon_s=p.horizon_s,
        alpha=p.alpha,
        final_alpha=p.final_alpha,
        futility_fraction=p.futility_fraction,
        randomization_unit=p.randomization_unit,
        power=p.power,
        primary=p.primary,
        guardrails=guardrails,
        approval_required=p.approval_required,
        tau2=figures.tau2,
        mde_absolute=figures.mde_absolute,
        power_figures=figures,
        srm_threshold=p.srm_threshold,
        srm_min_expected_requests=p.srm_min_expected_requests,
        settle_s=p.settle_s,
        min_read_requests=p.min_read_requests,
        min_read_bucket_fraction=p.min_read_bucket_fraction,
        max_history=p.max_history,
    )


def _plan_figures(plan: ExperimentPlan) -> tuple[Figure, ...]:
    f = plan.power_figures
    return (
        Figure.of("treatments", f.treatments),
        Figure.of("treatments_requested", f.treatments_requested),
        Figure.of("target_mde", f.target_mde),
        Figure.of("mde_relative", f.mde_relative),
        Figure.of("mde_absolute", f.mde_absolute),
        Figure.of("baseline", f.baseline),
        Figure.of("variance_per_request", f.variance_per_request),
        Figure.of("persistent_share", f.persistent_share),
        Figure.of("variance_window_s", math.nan if f.variance_window_s is None else f.variance_window_s),
        Figure.of("requests_per_second", f.requests_per_second),
        Figure.of("exposure", f.exposure),
        Figure.of("tau2", f.tau2),
        Figure.of("horizon_s", plan.horizon_s),
        Figure.of("horizon_needed_s", math.nan if f.horizon_needed_s is None else f.horizon_needed_s),
        Figure.of("stage_share", plan.stages[0]),
    )


def _refused(plan: ExperimentPlan, reasons: Sequence[str], now_ms: int) -> tuple[ExperimentState, list[Decision]]:
    state = ExperimentState(plan=plan, status="refused", ended_ms=now_ms, outcome=reasons[-1])
    log = _Log(state, now_ms)
    log.add("refuse", reasons, 0, figures=_plan_figures(plan))
    return msgspec.structs.replace(state, seq=log.seq), log.out


def _launch(
    state: ExperimentState, now_ms: int, reasons: Sequence[str], figures: tuple[Figure, ...]
) -> tuple[ExperimentState, list[Decision]]:
    plan = state.plan
    allocation = stage_allocation(plan, 0, [True] * len(plan.treatments))
    state = msgspec.structs.replace(
        state,
        status="running",
        stage=0,
        started_ms=now_ms,
        stage_started_ms=now_ms,
        allocation_ms=now_ms,
        allocation=allocation,
        snapshot=None,
        stage_start_requests=(0.0,) * len(plan.arm_ids),
    )
    log = _Log(state, now_ms)
    shares = "/".join(f"{100 * a.share:.3g}%" for a in allocation.arms)
    log.add(
        "allocate",
        [*reasons, f"stage 1/{len(plan.stages)}: control/treatments {shares}"],
        0,
        figures=figures,
        allocation=allocation,
    )
    return msgspec.structs.replace(state, seq=log.seq), log.out
