"""The simulated run's Online policy and loop settings, derived from the scenario's traffic and the budget.

What lives here: the preset's design constants (properties of the method,
not of any scenario), `SimPreset`, `preset_for` (the policy and settings of
one run), the scenario's north star as the Online agent's primary metric
(`north_star_metric`) and as Insight's objective (`insight_objective`), and
`pilot_target_mde` (the target a pilot's traffic resolves).  Re-exported by
`rectune.simloop`; callers: `rectune.simloop.run_simloop`, `bench/tuning.py`,
`bench/power_calibration.py`, the tests.  Pure: no I/O.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final

from agents.critic import CriticRules
from agents.experiment import GuardrailSpec, MetricSpec
from agents.insight import insight_objective_for, ratio_metric_name
from agents.loop import LoopSettings
from agents.online import Baseline, OnlinePolicy, TrafficEstimate, power_plan
from schemas.config import RandomizationUnit
from schemas.guardrails import Guardrails
from simulator.scenario import Scenario

# Design constants of the preset (see `preset_for`): properties of the method, not of any scenario.
#: The horizon lets about this many full-length experiments fit the budget, per randomisation unit.  Per user,
#: 14, not 10: with returning users the CUPED-adjusted variance of a read has a floor that a longer read does not
#: lower (the loop's learned variance curve, `agents.stats.persistence.VarianceCurve`), so shorter experiments lose
#: little power and leave room for more rounds (agents' oracle share on the bench's seeds 0-9, core / seasonal /
#: thin: 0.52 / 0.45 / 0.05 against 0.45 / 0.29 / 0.12 with 10, on the same loop; BENCHMARKS.md).  Per request, 24:
#: a paired read has no such floor and resolves a trust step's lift in about a day (agents' share, seeds 0-19:
#: 0.64 / 0.62 / 0.48 against 0.61 / 0.59 / 0.39 with 14; chosen on seeds 0-9, held on 10-19; BENCHMARKS.md).
EXPERIMENTS_PER_BUDGET: Final[Mapping[RandomizationUnit, float]] = MappingProxyType({"user": 14.0, "request": 24.0})
STEPS_PER_HORIZON: Final = 24  # simulation steps (loop ticks) per experiment horizon
FIRST_STAGE_FRACTION: Final = 0.15  # share of the horizon the first (small) ramp stage lasts at least
PRE_PERIOD_FRACTION: Final = 0.25  # share of the horizon each A/A pre-period (CUPED covariates) lasts
PLANNED_ARMS: Final = 2  # treatment arms an experiment is planned for when the target comes from a pilot
#: Steps of control traffic the pilot measures: as many as the loop's first power gate sees (a step until it
#: proposes, a step until the candidates are registered), so the gate plans on the same kind of baseline.
PILOT_STEPS: Final = 2
#: Consecutive power-gate refusals after which the simulated operator accepts the MDE the gate says the traffic
#: resolves (a refusing gate learns nothing, so an over-ambitious target would stall the run for good).
REFUSALS_BEFORE_RELAXING: Final = 3
MIN_STEP_S: Final = 60.0
MAX_STEP_S: Final = 6 * 3_600.0
#: The stream worker's metric window (`windows` of the totals count these, as the live feed's do).
METRIC_WINDOW_S: Final = 60.0


# --------------------------------------------------------------------------- preset


@dataclass(frozen=True, slots=True)
class SimPreset:
    """Online policy, loop settings and step (one simulate + one tick) of a simulated run, and how they came about."""

    policy: OnlinePolicy
    settings: LoopSettings
    step_s: float
    notes: tuple[str, ...] = ()


def north_star_metric(scenario: Scenario) -> MetricSpec:
    """The scenario's north star as the Online agent's primary metric, named as `agents.insight.METRICS` names it.

    One name for the north star across the Online reads, Insight, the Skillhub
    and the brain's warm start (e.g. `clicks_per_request`); a ratio Insight
    does not know is named `<numerator>_per_<denominator>`.
    """
    numerator, denominator = scenario.north_star
    name = ratio_metric_name(numerator, denominator) or f"{numerator}_per_{denominator}"
    return MetricSpec(name=name, numerator=numerator, denominator=denominator)


def insight_objective(scenario: Scenario) -> str:
    """The Insight/Skill objective for the north star: its `agents.insight.METRICS` name ("ctr" if Insight lacks it)."""
    return insight_objective_for(north_star_metric(scenario).name)


def pilot_target_mde(policy: OnlinePolicy, pilot: tuple[TrafficEstimate, Baseline]) -> float:
    """The relative lift `PLANNED_ARMS` treatment arms resolve over `policy`'s ramp and horizon at a pilot's traffic."""
    traffic, baseline = pilot
    return power_plan(policy, PLANNED_ARMS, traffic, baseline).mde_relative


def preset_for(
    scenario: Scenario,
    budget_s: float,
    *,
    surface: str = "home",
    guardrails: Guardrails | None = None,
    target_mde: float = 0.02,
    pilot: tuple[TrafficEstimate, Baseline] | None = None,
    randomization_unit: RandomizationUnit = "request",
) -> SimPreset:
    """Policy and settings for tuning `scenario`'s surface within `budget_s` of its traffic.

    Derived from the budget and the traffic rate only (not tuned to any
    scenario): the horizon lets `EXPERIMENTS_PER_BUDGET[randomization_unit]`
    experiments fit the budget; a step (one `World.simulate` call, then one loop tick) is
    horizon / `STEPS_PER_HORIZON` (clamped to [1 min, 6 h]); metric windows
    are the stream worker's 60 s; two ramp stages, 10% then 50% treatment, the
    first lasting at least `FIRST_STAGE_FRACTION` of the horizon and both
    needing the requests a 10% stage collects in that time at the scenario's
    rate (so a thin surface waits for samples, not for the clock); the
    north star is the primary metric, the latency SLO the latency guardrail
    and the Critic's latency budget; conversions are non-inferior within
    2%.  `randomization_unit` "request" (the default) spreads every user's
    requests over the arms and reads them paired, which removes the
    between-user variance of a returning population; "user" keeps each user
    in one arm, and each experiment then starts with an A/A pre-period of
    `PRE_PERIOD_FRACTION` of the horizon whose per-arm buckets are the CUPED
    covariates (without it that variance stops the read's standard error
    from shrinking).  The simulated users carry nothing from one request to
    the next, so the bench cannot charge the per-request design for
    carry-over; `bench/tuning.py --unit user` measures the per-user one.
    `target_mde` is the relative lift worth finding (the power gate
    refuses or cuts arms when the traffic cannot resolve it in the horizon);
    given a `pilot` (traffic and baseline of the incumbent, measured before
    tuning starts) it is instead the lift the pilot's traffic resolves with
    `PLANNED_ARMS` treatment arms over the ramp in the horizon — the budget
    decides what is worth looking for, and the gate cuts arms if the
    variance turns out larger.
    """
    if not (budget_s > 0.0 and math.isfinite(budget_s)):
        msg = f"budget_s: must be a positive number of simulated seconds, got {budget_s!r}"
        raise ValueError(msg)
    rate = scenario.requests_per_s
    per_budget = EXPERIMENTS_PER_BUDGET[randomization_unit]
    horizon_s = budget_s / per_budget
    step_s = min(max(horizon_s / STEPS_PER_HORIZON, MIN_STEP_S), MAX_STEP_S)
    stages = (0.1, 0.5)
    first_dwell_s = max(FIRST_STAGE_FRACTION * horizon_s, step_s)
    min_requests = 0.5 * rate * first_dwell_s * stages[0]
    rails = guardrails if guardrails is not None else Guardrails()
    policy = OnlinePolicy(
        surface=surface,
        primary=north_star_metric(scenario),
        target_mde=target_mde,
        stages=stages,
        min_dwell_s=(first_dwell_s, step_s),
        min_stage_requests=min_requests,
        horizon_s=horizon_s,
        guardrails=GuardrailSpec(latency_p99_slo_ms=scenario.latency_slo_ms, conversion_margin=0.02),
        settle_s=min(300.0, step_s / 2.0),
        min_read_requests=min(2_000.0, max(200.0, min_requests)),
        randomization_unit=randomization_unit,
    )
    if pilot is not None:
        target_mde = pilot_target_mde(policy, pilot)
        policy = dataclasses.replace(policy, target_mde=target_mde)
    settings = LoopSettings(
        k=3,
        cooldown_s=step_s,
        window_s=METRIC_WINDOW_S,
        objective=insight_objective(scenario),
        rules=CriticRules(guardrails=rails, latency_budget_ms=scenario.latency_slo_ms),
        pre_period_s=PRE_PERIOD_FRACTION * horizon_s if randomization_unit == "user" else 0.0,
    )
    notes = (
        f"horizon {horizon_s / 86_400.0:.3g} d = budget / {per_budget:g}",
        f"step {step_s:g} s = horizon / {STEPS_PER_HORIZON} (clamped to [{MIN_STEP_S:g}, {MAX_STEP_S:g}] s)",
        f"stages {stages}, first dwell {first_dwell_s:g} s, {min_requests:.0f} requests per stage at {rate:g} req/s"
        f", randomised per {randomization_unit}",
        f"target MDE {100 * target_mde:.3g}%"
        + (f" (what {PLANNED_ARMS} arms resolve in the pilot's traffic)" if pilot else ""),
    )
    return SimPreset(policy=policy, settings=settings, step_s=step_s, notes=notes)
