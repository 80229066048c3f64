"""Pure ramp and allocation helpers of the Online agent: stage fractions, exposure, τ², served shares.

Called by the planning and stage logic (`agents.online_plan`, `agents.online_stage`,
`agents.online_guard`), by `agents.loop` (`stage_allocation`) and by `rectune.simloop`
(through the re-exports in `agents.online`).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence

import msgspec

from agents.experiment import (
    Candidate,
    ExperimentError,
    ExperimentPlan,
)
from agents.stats.distributions import normal_ppf
from agents.stats.sequential import optimal_mixing_ratio
from schemas.config import ASSIGNMENT_BUCKETS, Allocation, ArmShare, ConfigError, validate_allocation

# --------------------------------------------------------------------------- pure helpers


def _span(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "forever"
    if seconds >= 86_400.0:
        return f"{seconds / 86_400.0:.1f} days"
    if seconds >= 3_600.0:
        return f"{seconds / 3_600.0:.1f} hours"
    return f"{seconds / 60.0:.0f} minutes"


def _pct(relative: float) -> str:
    return f"{100.0 * relative:.2g}%" if math.isfinite(relative) else "no lift at all"


def stage_fractions(stages: Sequence[float], min_dwell_s: Sequence[float], horizon_s: float) -> tuple[float, ...]:
    """Fraction of the horizon spent in each stage when every stage but the last lasts its minimum dwell."""
    early = sum(min_dwell_s[:-1])
    if early >= horizon_s:
        msg = f"min_dwell_s: the ramp's first {len(stages) - 1} stages ({_span(early)}) leave no time in the horizon"
        raise ExperimentError(msg)
    return (*(d / horizon_s for d in min_dwell_s[:-1]), 1.0 - early / horizon_s)


def ramp_exposure(stages: Sequence[float], fractions: Sequence[float], treatments: int) -> float:
    """The `exposure` to give `plan_experiment` so its equal-split model matches the ramp's information.

    Over the ramp, a treatment arm sees m_T = Σ_s f_s·S_s/K of the traffic
    and control m_C = Σ_s f_s·(1 − S_s) (pooled over stages).  The power
    model splits `exposure` equally over K + 1 arms, giving a difference
    variance 2σ²(K + 1)/(e·U); matching σ²(1/m_T + 1/m_C)/U gives
    e = 2(K + 1)/(1/m_T + 1/m_C), capped at 1.  With a last stage of 50%
    and short early stages, e ≈ 1 whatever K.
    """
    m_t = sum(f * s / treatments for f, s in zip(fractions, stages, strict=True))
    m_c = sum(f * (1.0 - s) for f, s in zip(fractions, stages, strict=True))
    return min(1.0, 2.0 * (treatments + 1) / (1.0 / m_t + 1.0 / m_c))


def guardrail_tau2(resolution: float, alpha: float, power: float) -> float:
    """τ² of an always-valid guardrail test centred on effects of size `resolution` (its own scale).

    τ = resolution·sqrt(k*)/(z* + z_power): the mixing scale the power plan
    would choose if `resolution` were the MDE (τ ≈ 0.74 × MDE at α = 0.05,
    power 0.8; `agents.stats.sequential`).
    """
    k = optimal_mixing_ratio(alpha)
    tau = resolution * math.sqrt(k) / (math.sqrt(k + 1.0) + normal_ppf(power))
    return tau * tau


def served_shares(allocation: Allocation) -> tuple[float, ...]:
    """The traffic shares the sidecar actually serves for `allocation` (control first).

    Mirrors `serving_sidecar.assignment.treatment_range` (agents may not
    import the sidecar): treatment i owns round(share·B) buckets of its lane
    of B/K, B = `ASSIGNMENT_BUCKETS`; control takes the rest.
    """
    k = len(allocation.arms) - 1
    out = []
    for i, arm in enumerate(allocation.arms[1:], start=1):
        lane = i * ASSIGNMENT_BUCKETS // k - (i - 1) * ASSIGNMENT_BUCKETS // k
        out.append(min(max(round(arm.share * ASSIGNMENT_BUCKETS), 0), lane) / ASSIGNMENT_BUCKETS)
    return (1.0 - sum(out), *out)


def stage_allocation(plan: ExperimentPlan, stage: int, active: Sequence[bool]) -> Allocation:
    """The allocation of ramp `stage`: each active treatment arm gets stage / K, stopped arms 0, control the rest.

    Stopped arms keep their (empty) place so every other arm's lane stays
    where it was (ramp stability needs a fixed K).
    """
    per = plan.stages[stage] / len(plan.treatments)
    shares = [per if on else 0.0 for on in active]
    arms = (
        ArmShare(plan.control.arm_id, plan.control.config_version, max(0.0, 1.0 - sum(shares))),
        *(ArmShare(t.arm_id, t.config_version, s) for t, s in zip(plan.treatments, shares, strict=True)),
    )
    try:
        allocation = Allocation(
            experiment_id=plan.experiment_id, salt=plan.salt, arms=arms, unit=plan.randomization_unit
        )
        return validate_allocation(allocation)
    except ConfigError as err:  # a bug, not bad input: the plan's stages were validated
        msg = f"allocation: stage {stage} of {plan.experiment_id} is not a valid allocation ({err})"
        raise ExperimentError(msg) from err


def _experiment_id(surface: str, incumbent: int, candidates: Sequence[Candidate], now_ms: int) -> str:
    key = msgspec.json.encode([surface, incumbent, now_ms, [[c.proposal_id, c.config_version] for c in candidates]])
    return "exp-" + hashlib.sha256(key).hexdigest()[:12]


__all__ = ["guardrail_tau2", "ramp_exposure", "served_shares", "stage_allocation", "stage_fractions"]
