"""Vectorised cross-checks of the issue's statistical proofs: A/A validity, power at the MDE, early stopping.

The headline proofs run through the Online agent itself
(`agents.online_proofs`: `OnlineAgent.plan`'s power gate, then
`OnlineAgent.step` at every look); that module depends on the agent, so it
lives next to it, not here.  This module re-implements the agent's primary
read over whole simulated paths, fast enough for thousands of runs, and
serves as a cross-check (its `pilot_plan` reports the agent's MDE and τ² for
the same pilot, `tests/agents/test_stats_proofs.py`).  Each study simulates
many experiments (`simulate`), reads every one continuously — every look —
and counts outcomes:

- `read_sequential`: delta-method CTR over buckets (optionally CUPED), the
  difference treatment − control fed to the mSPRT; the experiment stops at
  the first look with always-valid p <= α; verdict +1 (promote) or −1
  (stop the loser) from the sign of the estimate there.  With
  `final_alpha` > 0 the always-valid test runs at α − final_alpha and an
  experiment it has not decided gets one two-sided z-test on the horizon's
  estimate at final_alpha (the Online agent's final look);
- `read_naive`: the per-impression z-test (`simulate.naive_z_path`) peeked at
  every look, stopping at the first |z| >= z_{1−α/2};
- `pilot_plan`: the power gate fed as in production: the variance per
  request and the baseline come from an A/A pilot of the same traffic (a
  pre-period of the horizon's length), pooled over its arms;
- `aa_study`: false promotion (verdict +1) and false decision (any verdict)
  rates under no effect, sequential vs naive on the same data;
- `read_holm`: every arm of a many-arm experiment, Holm-adjusted at every look;
- `simulated_totals` / `arm_totals`: one look of a simulated experiment (or
  one arm's cumulative sums) as the per-arm `schemas.metrics.ArmTotals` the
  metrics feed would give the Online agent (used by the agents' tests and
  by `agents.online_proofs`, which runs these proofs through the agent).

Rates come with Wilson score intervals (Wilson 1927) so a reader can judge
the Monte Carlo error.  Callers: the tests (small sizes), `bench/stats.py`
(the `reader_*` cross-check keys) and `agents.online_proofs` (`read_naive`,
`simulated_totals`, `arm_totals`).  Pure numpy.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from agents.stats.cuped import cuped_arrays
from agents.stats.distributions import normal_ppf, two_sided_p
from agents.stats.errors import StatsError
from agents.stats.multiple import holm
from agents.stats.power import PowerPlan, plan_experiment
from agents.stats.ratio import ratio_arrays, ratio_estimate
from agents.stats.sequential import always_valid_p_path, first_crossing
from agents.stats.simulate import SimulatedExperiment, TrafficModel, naive_z_path, simulate_experiment
from schemas.metrics import FIELD_INDEX, N_FIELDS, N_LATENCY_BINS, ArmTotals, latency_bins


@dataclass(frozen=True, slots=True)
class Read:
    """How one experiment read continuously ended: look (1-based; 0 = ran to the horizon), verdict, time."""

    stop_look: int
    verdict: int
    stop_fraction: float
    final_p: float
    variance_ratio: float = math.nan


def wilson_interval(successes: int, trials: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (Monte Carlo error of a simulated rate)."""
    if trials <= 0 or not 0 <= successes <= trials:
        msg = f"successes, trials: need 0 <= successes <= trials and trials > 0, got {successes}, {trials}"
        raise StatsError(msg)
    z = normal_ppf(0.5 + 0.5 * level)
    p = successes / trials
    denom = 1.0 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denom
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def _stop(experiment: SimulatedExperiment, looks: np.ndarray, index: int, sign: float, final_p: float) -> Read:
    horizon = float(experiment.look_seconds[-1])
    if index < 0:
        return Read(0, 0, 1.0, final_p)
    look = int(looks[index])
    verdict = 1 if sign > 0 else -1
    return Read(look + 1, verdict, float(experiment.look_seconds[look]) / horizon, final_p)


def read_sequential(
    experiment: SimulatedExperiment,
    tau2: float,
    alpha: float = 0.05,
    *,
    cuped: bool = False,
    treatment: int = 1,
    control: int = 0,
    final_alpha: float = 0.0,
) -> Read:
    """Read `experiment` at every look with the mSPRT on the CTR difference; stop at the first p <= alpha.

    With `final_alpha` the mSPRT runs at `alpha − final_alpha` and, if it
    never crosses, the last look's z-test at `final_alpha` decides.
    """
    pair = [control, treatment]
    x, y = experiment.clicks[pair], experiment.impressions[pair]
    looks = np.flatnonzero((y.sum(axis=-1) > 0.0).all(axis=0))
    if looks.size == 0:
        return Read(0, 0, 1.0, 1.0)
    x, y = x[:, looks], y[:, looks]
    ratio = math.nan
    if cuped:
        paths = cuped_arrays(x, y, experiment.pre_clicks[pair], experiment.pre_impressions[pair])
        est = paths.adjusted[1] - paths.adjusted[0]
        var = paths.adjusted_variance.sum(axis=0)
        raw = paths.raw_variance.sum(axis=0)
        ratio = float(var[-1] / raw[-1]) if raw[-1] > 0 else math.nan
    else:
        r, v = ratio_arrays(x, y)
        est, var = r[1] - r[0], v.sum(axis=0)
    p = always_valid_p_path(est, var, tau2)
    index = int(first_crossing(p, alpha - final_alpha))
    read = _stop(experiment, looks, index, float(est[index]) if index >= 0 else 0.0, float(p[-1]))
    if index < 0 and final_alpha > 0.0 and two_sided_p(float(est[-1]), float(var[-1])) <= final_alpha:
        read = Read(looks.size, 1 if est[-1] > 0 else -1, 1.0, read.final_p)
    return Read(read.stop_look, read.verdict, read.stop_fraction, read.final_p, ratio)


def read_naive(experiment: SimulatedExperiment, alpha: float = 0.05, *, treatment: int = 1, control: int = 0) -> Read:
    """Read with the naive per-impression z-test at every look; stop at the first |z| >= z_{1−α/2}."""
    z = naive_z_path(experiment, treatment, control)
    looks = np.flatnonzero(np.isfinite(z))
    crit = normal_ppf(1.0 - alpha / 2.0)
    hit = np.flatnonzero(np.abs(z[looks]) >= crit)
    index = int(hit[0]) if hit.size else -1
    final_p = math.erfc(abs(float(z[looks[-1]])) / math.sqrt(2.0)) if looks.size else 1.0
    return _stop(experiment, looks, index, float(z[looks[index]]) if index >= 0 else 0.0, final_p)


def pilot_plan(
    model: TrafficModel,
    rng: np.random.Generator,
    *,
    alpha: float = 0.05,
    power: float = 0.8,
    target_mde: float | None = None,
    variance_confidence: float | None = 0.8,
    final_alpha: float = 0.0,
) -> PowerPlan:
    """The power gate on variance per request measured from one A/A pilot of `model` (pooled over its arms).

    The pooled estimate has arms·(buckets − 1) degrees of freedom; with
    `variance_confidence` set, the gate plans on its upper confidence limit
    (Browne 1995), with None on the point estimate.
    """
    pilot = simulate_experiment(model, [0.0] * model.arms, rng)
    per_unit = []
    for a in range(model.arms):
        est = ratio_estimate(pilot.clicks[a, -1], pilot.impressions[a, -1])
        per_unit.append(est.variance * float(pilot.requests[a, -1].sum()))
    baseline = float(pilot.clicks[:, -1].sum() / pilot.impressions[:, -1].sum())
    return plan_experiment(
        baseline=baseline,
        variance_per_unit=float(np.mean(per_unit)),
        units_per_second=float(pilot.requests[:, -1].sum()) / model.horizon_seconds,
        horizon_seconds=model.horizon_seconds,
        treatments=model.arms - 1,
        alpha=alpha,
        power=power,
        target_mde=target_mde,
        variance_dof=None if variance_confidence is None else float(model.arms * (model.buckets - 1)),
        variance_confidence=0.8 if variance_confidence is None else variance_confidence,
        final_alpha=final_alpha,
    )


@dataclass(frozen=True, slots=True)
class AAStudy:
    """A/A outcomes over `runs` experiments: false promotions (+1) and false decisions (any), per method."""

    runs: int
    alpha: float
    false_promotions: int
    false_decisions: int
    naive_false_promotions: int
    naive_false_decisions: int
    cuped_false_promotions: int
    cuped_false_decisions: int
    cuped_variance_ratio: float

    @property
    def false_promotion_rate(self) -> float:
        """Share of A/A runs the sequential read promoted (the issue's headline, must be <= 5%)."""
        return self.false_promotions / self.runs

    @property
    def naive_false_promotion_rate(self) -> float:
        """Share of A/A runs the naive peeked per-impression test promoted."""
        return self.naive_false_promotions / self.runs


def aa_study(
    model: TrafficModel,
    tau2: float,
    runs: int,
    rng: np.random.Generator,
    *,
    alpha: float = 0.05,
    cuped: bool = True,
    final_alpha: float = 0.0,
) -> AAStudy:
    """`runs` A/A experiments read continuously by the mSPRT (raw and CUPED) and by the naive test.

    `final_alpha` > 0 adds the final look to the sequential reads (the naive test is unchanged).
    """
    if runs < 1:
        msg = f"runs: need at least 1, got {runs}"
        raise StatsError(msg)
    counts = np.zeros(6, dtype=np.int64)
    ratios = []
    for _ in range(runs):
        exp = simulate_experiment(model, [0.0] * model.arms, rng)
        reads = [read_sequential(exp, tau2, alpha, final_alpha=final_alpha), read_naive(exp, alpha)]
        if cuped:
            reads.append(read_sequential(exp, tau2, alpha, cuped=True, final_alpha=final_alpha))
            ratios.append(reads[-1].variance_ratio)
        for i, read in enumerate(reads):
            counts[2 * i] += read.verdict == 1
            counts[2 * i + 1] += read.verdict != 0
    c = [int(v) for v in counts]
    return AAStudy(runs, alpha, c[0], c[1], c[2], c[3], c[4], c[5], float(np.mean(ratios)) if ratios else math.nan)


def read_holm(
    experiment: SimulatedExperiment, tau2: float, alpha: float = 0.05, *, final_alpha: float = 0.0
) -> tuple[int, ...]:
    """Verdict per treatment arm (+1/−1/0) when every arm's always-valid p is Holm-adjusted at every look.

    Each arm's verdict is the sign of its estimate at the first look where
    Holm rejects it; the family-wise error is controlled at `alpha`.  With
    `final_alpha` the looks run at `alpha − final_alpha` and the arms still
    open at the horizon get the final look: z-tests Holm-adjusted at
    `final_alpha` (decided arms count as p = 1).
    """
    arms = experiment.clicks.shape[0]
    looks = np.flatnonzero((experiment.impressions.sum(axis=-1) > 0.0).all(axis=0))
    r, v = ratio_arrays(experiment.clicks[:, looks], experiment.impressions[:, looks])
    est = r[1:] - r[0]
    var = v[1:] + v[0]
    p = always_valid_p_path(est, var, tau2)
    verdicts = [0] * (arms - 1)
    for k in range(looks.size):
        result = holm(p[:, k].tolist(), alpha - final_alpha)
        for i, rejected in enumerate(result.reject):
            if rejected and verdicts[i] == 0:
                verdicts[i] = 1 if est[i, k] > 0 else -1
    if final_alpha > 0.0:
        last = [1.0 if verdicts[i] else two_sided_p(float(est[i, -1]), float(var[i, -1])) for i in range(arms - 1)]
        for i, rejected in enumerate(holm(last, final_alpha).reject):
            if rejected and verdicts[i] == 0:
                verdicts[i] = 1 if est[i, -1] > 0 else -1
    return tuple(verdicts)


def simulated_totals(
    experiment: SimulatedExperiment,
    look: int,
    arm_ids: Sequence[str],
    *,
    surface: str = "home",
    latency_ms: float | Mapping[str, float] = 20.0,
    conversions_per_click: float = 0.1,
    revenue_per_click: float = 4.0,
    categories_per_list: float = 6.0,
) -> dict[str, ArmTotals]:
    """Cumulative totals at `look` (negative counts from the end) of arms 0.. of `experiment`, keyed by `arm_ids`.

    Called by the agents' tests (loop and Online agent) to feed simulated
    traffic through the real readers.  Requests, item impressions and clicks
    come from the simulation; the guardrail rows are filled deterministically
    (conversions and revenue proportional to clicks, `categories_per_list`
    distinct categories per list, every request's latency `latency_ms`, per
    arm id when a mapping) so guardrails read "healthy" unless a test says
    otherwise.  `windows` is the number of looks so far.
    """
    looks = experiment.clicks.shape[1]
    if not -looks <= look < looks or len(arm_ids) > experiment.clicks.shape[0]:
        msg = f"look, arm_ids: need -{looks} <= look < {looks} and at most {experiment.clicks.shape[0]} arm ids"
        raise StatsError(msg)
    index = look % looks
    return {
        arm_id: arm_totals(
            arm_id,
            experiment.requests[arm, index],
            experiment.impressions[arm, index],
            experiment.clicks[arm, index],
            index + 1,
            surface=surface,
            latency_ms=latency_ms.get(arm_id, 20.0) if isinstance(latency_ms, Mapping) else latency_ms,
            conversions_per_click=conversions_per_click,
            revenue_per_click=revenue_per_click,
            categories_per_list=categories_per_list,
        )
        for arm, arm_id in enumerate(arm_ids)
    }


def arm_totals(
    arm_id: str,
    requests: np.ndarray,
    impressions: np.ndarray,
    clicks: np.ndarray,
    windows: int,
    *,
    surface: str = "home",
    latency_ms: float = 20.0,
    conversions_per_click: float = 0.1,
    revenue_per_click: float = 4.0,
    categories_per_list: float = 6.0,
) -> ArmTotals:
    """One arm's cumulative per-bucket requests, impressions and clicks as the metrics feed's `ArmTotals`.

    Called by `simulated_totals` and by `agents.online_proofs` (traffic that
    follows the agent's live allocation).  The guardrail rows are filled
    deterministically so guardrails read "healthy": conversions and revenue
    proportional to clicks, `categories_per_list` distinct categories per
    list, every request's latency `latency_ms`.
    """
    sums = np.zeros((N_FIELDS, requests.shape[-1]))
    sums[FIELD_INDEX["requests"]] = requests
    sums[FIELD_INDEX["impressions"]] = impressions
    sums[FIELD_INDEX["clicks"]] = clicks
    sums[FIELD_INDEX["conversions"]] = conversions_per_click * clicks
    sums[FIELD_INDEX["revenue"]] = revenue_per_click * clicks
    sums[FIELD_INDEX["distinct_categories"]] = categories_per_list * requests
    hist = np.zeros(N_LATENCY_BINS, np.int64)
    hist[int(latency_bins([latency_ms])[0])] = int(requests.sum())
    return ArmTotals(surface, arm_id, sums, hist, int(impressions.sum()), 0, windows)
