"""Scoring of one tuning run against the oracle (pure): regret, share of the oracle's lift, regressions, breaches.

A method's run is a `MethodTrace`: per simulated step, the requests served
and the served mix (each arm's config and traffic share, the incumbent
first); the promotions it made (the config it replaced and the one it
shipped); how many experiments it ran and rolled back.  `score` reads it
with an oracle view `truth(config, at_s) -> Truth` (the world's exact
expectation, never shown to the methods) and the oracle's best config:

- `oracle_share` = (value(final incumbent) − value(start)) / (value(best) − value(start)),
  all three evaluated at `value_at_s` (NaN when the oracle found no lift);
- `cum_regret` = Σ_steps requests × (value(best) − Σ_arms share × value(arm)),
  values at the step's start time (the best config's value moves with the
  world too);
- `regressions_shipped`: promotions whose new config's true value at the
  promotion time is below the replaced incumbent's;
- `null_arms`, `null_arms_promoted`: treatment arms (any served arm but
  the step's incumbent, with a config other than the incumbent's) whose true
  value in the week they were first served was not above that incumbent's,
  and how many of those configs were later promoted: the false-positive rate
  the test's α bounds, which `regressions_shipped` per promotion does not
  (it also depends on how many arms were good);
- `guardrail_breaches`: distinct served arms (`ServedArm.key`) that at any
  step had a true latency p99 above the SLO, or true conversions per request
  below (1 − margin) × the step's incumbent's;
- `final_meets_slo`: whether the final incumbent, at `value_at_s` (when its
  share is scored), keeps the latency SLO by the oracle's rule
  (`Truth.meets_slo`: `simulator.oracle.meets_slo`, under which the oracle's
  search counts a config over the SLO as worthless).  `oracle_share` does
  not apply it (a final over the SLO still scores its value), so the
  benchmark reports it next to the share; `finals_over_slo` counts the runs
  whose final breaks it.

Callers: the tuning bench and its tools (`bench/_tuning_world.py` scores each run) and the unit test.  No
simulator import: the oracle comes in as a function (`bench/_tuning_world.py`'s `TruthCache` builds it
from `World.expected` and `simulator.oracle.meets_slo`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from schemas.config import CascadeConfig


@dataclass(frozen=True, slots=True)
class Truth:
    """The oracle's view of one config at one time: north-star value, p99 latency, conversions per request.

    `meets_slo`: whether the config keeps the world's latency SLO by the
    oracle's feasibility rule (`simulator.oracle.meets_slo`), decided by
    whoever builds the view; `score` reads it for the final incumbent.
    """

    value: float
    latency_p99_ms: float
    conversions: float
    meets_slo: bool


@dataclass(frozen=True, slots=True)
class ServedArm:
    """One arm of a step's served mix: a stable key (experiment + arm), its config and its traffic share."""

    key: str
    config: CascadeConfig
    share: float


@dataclass(frozen=True, slots=True)
class Step:
    """One simulated step: when, how many requests, and the mix served (`served[0]` is the incumbent)."""

    start_s: float
    duration_s: float
    requests: float
    served: tuple[ServedArm, ...]

    @property
    def incumbent(self) -> CascadeConfig:
        """The config the incumbent (control) arm served in this step."""
        return self.served[0].config


@dataclass(frozen=True, slots=True)
class Promotion:
    """A shipped change: at `at_s`, `new` replaced `old` as the incumbent."""

    at_s: float
    old: CascadeConfig
    new: CascadeConfig


@dataclass(frozen=True, slots=True)
class MethodTrace:
    """What one method did over the budget (see the module docstring)."""

    method: str
    start: CascadeConfig
    final: CascadeConfig
    steps: tuple[Step, ...]
    promotions: tuple[Promotion, ...] = ()
    experiments: int = 0
    rollbacks: int = 0


@dataclass(frozen=True, slots=True)
class Score:
    """The figures of one run (one method, scenario and seed)."""

    oracle_share: float
    cum_regret: float
    experiments: int
    promotions: int
    regressions_shipped: int
    rollbacks: int
    guardrail_breaches: int
    final_value: float
    requests: float
    final_meets_slo: bool
    null_arms: int = 0
    null_arms_promoted: int = 0


TruthFn = Callable[[CascadeConfig, float], Truth]


def step_regret(step: Step, truth: TruthFn, best: CascadeConfig) -> float:
    """Requests of `step` × (oracle best − true value of the traffic-weighted mix it served)."""
    served_value = sum(arm.share * truth(arm.config, step.start_s).value for arm in step.served)
    return step.requests * (truth(best, step.start_s).value - served_value)


def null_arm_promotions(trace: MethodTrace, truth: TruthFn) -> tuple[int, int]:
    """(treatment arms not better than their incumbent when first served, how many of their configs were promoted).

    Called by `score`; an arm serving the incumbent's own config (a control
    or an A/A pre-period arm) is no treatment and is left out.
    """
    first: dict[str, tuple[CascadeConfig, CascadeConfig, float]] = {}
    for step in trace.steps:
        for arm in step.served[1:]:
            if arm.share > 0.0 and arm.key not in first and arm.config != step.incumbent:
                first[arm.key] = (arm.config, step.incumbent, step.start_s)
    promoted = [p.new for p in trace.promotions]
    nulls = [config for config, control, at in first.values() if truth(config, at).value <= truth(control, at).value]
    return len(nulls), sum(config in promoted for config in nulls)


def _share_of_lift(final: float, start: float, best: float) -> float:
    lift = best - start
    return (final - start) / lift if lift > 0.0 else math.nan


def score(
    trace: MethodTrace,
    truth: TruthFn,
    best: CascadeConfig,
    *,
    value_at_s: float,
    latency_slo_ms: float,
    conversion_margin: float,
) -> Score:
    """Score `trace` with the oracle (`truth`) and its `best` config (see the module docstring)."""
    if not 0.0 <= conversion_margin < 1.0 or not latency_slo_ms > 0.0:
        msg = f"conversion_margin in [0, 1), latency_slo_ms > 0: got {conversion_margin}, {latency_slo_ms}"
        raise ValueError(msg)
    regret = 0.0
    breached: set[str] = set()
    requests = 0.0
    for step in trace.steps:
        at = step.start_s
        total_share = sum(arm.share for arm in step.served)
        if step.served and not math.isclose(total_share, 1.0, abs_tol=1e-6):
            msg = f"steps[{at:g}].served: shares must sum to 1, got {total_share:g}"
            raise ValueError(msg)
        incumbent = truth(step.incumbent, at)
        for arm in step.served:
            t = truth(arm.config, at)
            if arm.share > 0.0 and (
                t.latency_p99_ms > latency_slo_ms or t.conversions < (1.0 - conversion_margin) * incumbent.conversions
            ):
                breached.add(arm.key)
        regret += step_regret(step, truth, best)
        requests += step.requests
    regressions = sum(truth(p.new, p.at_s).value < truth(p.old, p.at_s).value for p in trace.promotions)
    start = truth(trace.start, value_at_s).value
    final_truth = truth(trace.final, value_at_s)
    final = final_truth.value
    null_arms, null_promoted = null_arm_promotions(trace, truth)
    return Score(
        oracle_share=_share_of_lift(final, start, truth(best, value_at_s).value),
        cum_regret=regret,
        experiments=trace.experiments,
        promotions=len(trace.promotions),
        regressions_shipped=int(regressions),
        rollbacks=trace.rollbacks,
        guardrail_breaches=len(breached),
        final_value=final,
        requests=requests,
        final_meets_slo=final_truth.meets_slo,
        null_arms=null_arms,
        null_arms_promoted=null_promoted,
    )


def finals_over_slo(scores: Sequence[Score]) -> int:
    """How many of `scores` (one method's runs) ended with a final incumbent over the latency SLO.

    Called by `bench/tuning.py`'s summary: the runs whose `oracle_share`
    counts a config the oracle itself would score as worthless.
    """
    return sum(not s.final_meets_slo for s in scores)


def mean_sd(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value; NaNs are left out; NaN when nothing is left)."""
    finite = np.asarray([v for v in values if not math.isnan(v)], dtype=np.float64)
    if finite.size == 0:
        return math.nan, math.nan
    sd = float(finite.std(ddof=1)) if finite.size > 1 else 0.0
    return float(finite.mean()), sd


def incumbent_path(trace: MethodTrace, truth: TruthFn) -> tuple[list[float], list[float]]:
    """(step start times in days, true value of the incumbent at each step): the tuning plot's curve."""
    days = [s.start_s / 86_400.0 for s in trace.steps]
    values = [truth(s.incumbent, s.start_s).value for s in trace.steps]
    return days, values


def regret_path(trace: MethodTrace, truth: TruthFn, best: CascadeConfig) -> tuple[list[float], list[float]]:
    """(step end times in days, cumulative regret after each step): the tuning plot's second curve."""
    days, total, regrets = [], 0.0, []
    for step in trace.steps:
        total += step_regret(step, truth, best)
        days.append((step.start_s + step.duration_s) / 86_400.0)
        regrets.append(total)
    return days, regrets
