"""Power gating: the minimum detectable effect the traffic can resolve, and how many arms it affords.

Before launching, the Online agent asks: with this traffic, this many arms
and this horizon, what is the smallest relative lift the *sequential* test
will detect with the requested power?  If the Actor's target effect is
smaller, it refuses the experiment or cuts arms, and records `reason`.

Model.  Traffic of `units_per_second` (the unit the variance is expressed in,
e.g. requests) over `horizon_seconds`, times the ramp `exposure`, is split
equally over `treatments + 1` arms: N units per arm.  The variance per unit
σ²_u comes from observed bucket statistics (`unit_variance`: delta-method
Var(r) × units, so it already carries the user-clustering design effect).
A lift δ scales the treatment arm's numerator by (1 + δ), so its variance by
up to (1 + δ)² (exactly for the user-heterogeneity part, (1 + δ) for the
Bernoulli noise: the square is the conservative choice), and the variance of
the difference at the horizon under the alternative is
V_N = (σ²_u/N)·(1 + (1 + δ)²).  Using the null variance 2σ²_u/N instead
overstated power: at an 8% MDE one 200-run study measured ~73%.

MDE.  Family-wise α is split by Bonferroni, α/treatments (Holm's first,
strictest step; later steps are looser, so this is conservative).  The mSPRT
with τ² = k*·V_N (`sequential.mixing_variance`) rejects at the horizon when
|z| >= z* = sqrt(k* + 1), so

    MDE_rel·baseline = (z* + z_{power}) · sqrt(V_N(MDE_rel))   (solved in closed form).

This is the fixed-horizon MDE inflated by the efficiency factor
(z* + z_β)/(z_{1−α/2} + z_β) (1.38 at α = 0.05, power 0.8).  It is an analytic
*lower bound* on power, not a simulation calibration: the event "Λ_N >= 1/α
at the horizon" is contained in "p <= α at some look <= N", so under the
normal approximation, with the variance known, the detection probability
within the horizon is at least `power` (the far tail of the wrong sign is ignored, < 1e-6).  `proofs`
checks it by simulation.

Final look (`final_alpha` > 0).  The design may keep part of α for one
fixed-horizon test at the horizon: the always-valid test runs at
α_seq = α − final_alpha and, if it has not decided by the horizon, a
two-sided z-test at final_alpha (Holm across the arms) reads the last
estimate once.  By the union bound the family-wise error stays <= α however
often the sequential part is read.  The horizon then rejects at
min(z*(α_seq/K), z_{1−final_alpha/(2K)}) and that boundary replaces z* in
the MDE (τ² stays the sequential test's, at α_seq); with α split evenly at
α = 0.05 and one arm the boundary is 2.24 instead of 3.03.  The power bound
above holds with this boundary: a final-look rejection at the horizon is a
detection within the horizon.

Variance uncertainty.  σ²_u is itself estimated (from ~64 buckets per
arm), and power is a steep function of it: planning on the point estimate
delivers the nominal power only on average over pilots (measured at the
reported MDE: 78-86% across seeds and traffic sizes for a nominal 80%; the
bound's slack and the early-look bonus roughly cancel the estimation
noise).  Given `variance_dof` (the estimate's degrees of freedom, e.g.
arms·(B − 1) for a pooled pilot over B buckets), the plan uses the one-sided upper confidence
limit σ²_u·dof/χ²_{1−c}(dof) at `variance_confidence` c (default 0.8), as
Browne (1995, "On the use of a pilot sample for sample size determination",
Statistics in Medicine 14) recommends so the planned power is reached
despite the pilot's noise; this makes the MDE ~5% larger at 126 dof.

Persistent variance.  σ²_u projected as constant per unit means Var ∝
1/traffic.  That holds when traffic grows by new users; when it grows by
returning users the variance shrinks more slowly (in the simulated worlds a
read over 12× the traffic had 0.9× the standard error).  Given the
persistent share φ of the measured variance (`agents.stats.persistence`,
from consecutive parts of the baseline window) and that window's length W,
the plan projects the variance per unit to the horizon H as
σ²_u·(1 − φ + φ·H/W): the persistent part per unit grows with the units
each user contributes, i.e. Var = transient/N + persistent/(user share).
This adds a floor that no horizon removes, so `horizon_needed_seconds` is
infinite when the target lies below it.  φ = 0 is the 1/traffic plan.  The
MDE is for an improvement (a loss of the same size is detected with
slightly more power).

Callers: the Online agent before each launch and at each ramp stage; the
Critic (to drop proposals whose hypothesised effect is below the MDE);
`proofs` and the tests.  Pure.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final

from agents.stats.distributions import chi2_ppf, normal_ppf
from agents.stats.errors import StatsError
from agents.stats.ratio import RatioEstimate
from agents.stats.sequential import optimal_mixing_ratio

DEFAULT_MAX_TREATMENTS: Final = 16


@dataclass(frozen=True, slots=True)
class PowerPlan:
    """The power gate's answer: MDE, the sequential test's τ², feasibility against a target, and why."""

    baseline: float
    variance_per_unit: float
    planning_variance: float
    units_per_arm: float
    treatments: int
    horizon_seconds: float
    alpha: float
    alpha_per_test: float
    power: float
    z_boundary: float
    final_alpha: float
    z_power: float
    efficiency: float
    terminal_variance: float
    mde_absolute: float
    mde_relative: float
    tau2: float
    target_mde: float | None
    persistent_share: float
    variance_window_seconds: float | None
    feasible: bool
    max_treatments: int
    horizon_needed_seconds: float | None
    reason: str


def unit_variance(estimate: RatioEstimate, units: float) -> float:
    """σ²_u = Var(r)·units: the variance per traffic unit implied by an observed delta-method read.

    `units` is the arm's traffic in the same unit as the plan's
    `units_per_second` (e.g. the arm's total requests in the read).
    """
    if not (units > 0.0 and math.isfinite(units)):
        msg = f"units: must be positive and finite, got {units!r}"
        raise StatsError(msg)
    return estimate.variance * units


def _positive(name: str, value: float) -> None:
    if not (value > 0.0 and math.isfinite(value)):
        msg = f"{name}: must be positive and finite, got {value!r}"
        raise StatsError(msg)


def _duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "more than any horizon (the persistent variance is above the target's)"
    if seconds >= 86_400.0:
        days = seconds / 86_400.0
        return f"{days:.0f} days" if abs(days - round(days)) < 0.05 else f"{days:.1f} days"
    if seconds >= 3_600.0:
        return f"{seconds / 3_600.0:.1f} hours"
    return f"{seconds / 60.0:.0f} minutes"


def _persistent_growth(share: float, window_seconds: float | None) -> float:
    """φ/W: the persistent variance's growth per unit per second of horizon (0 when φ = 0); validates both."""
    if not 0.0 <= share <= 1.0:
        msg = f"persistent_share: must be in [0, 1], got {share!r}"
        raise StatsError(msg, "agents.stats.persistence estimates it")
    if share == 0.0:
        return 0.0
    if window_seconds is None or not (window_seconds > 0.0 and math.isfinite(window_seconds)):
        msg = f"variance_window_seconds: must be positive and finite when persistent_share > 0, got {window_seconds!r}"
        raise StatsError(msg, "pass the length of the window the variance was measured on")
    return share / window_seconds


def _lift(relative: float) -> str:
    if not math.isfinite(relative):
        return "no lift at all"
    pct = 100.0 * relative
    return f"±{pct:.1f}% lift" if pct >= 1.0 else f"±{pct:.2g}% lift"


def _arms(n: int) -> str:
    return f"{n} treatment arm{'s' if n != 1 else ''}"


def horizon_boundary(alpha: float, final_alpha: float, treatments: int) -> tuple[float, float]:
    """(k*, z at the horizon): the sequential test's mixing ratio at (α − final_alpha)/K and the |z| rejecting there.

    Called by `_mde`: the smaller of the always-valid boundary and the final look's z.
    """
    k = optimal_mixing_ratio((alpha - final_alpha) / treatments)
    z = math.sqrt(k + 1.0)
    if final_alpha > 0.0:
        z = min(z, normal_ppf(1.0 - final_alpha / (2.0 * treatments)))
    return k, z


def _mde(
    treatments: int,
    *,
    baseline: float,
    variance_per_unit: float,
    units: float,
    alpha: float,
    power: float,
    final_alpha: float = 0.0,
) -> tuple[float, float, float, float, float]:
    """(mde_rel, mde_abs, terminal_variance, tau2, z_boundary) for `treatments` arms sharing `units`.

    Solves δ·b = (z* + z_β)·sqrt(v·(1 + (1 + δ)²)) for the relative MDE δ,
    with v = σ²_u/N one arm's variance at the horizon and b the baseline:
    with a = (z* + z_β)²·v/b², δ = (a + sqrt(2a − a²))/(1 − a); infinite when
    a >= 1 (no lift is resolvable).  z* is `horizon_boundary`'s.
    """
    k, z_star = horizon_boundary(alpha, final_alpha, treatments)
    z_sum = z_star + normal_ppf(power)
    v = variance_per_unit / (units / (treatments + 1))
    a = z_sum * z_sum * v / (baseline * baseline)
    if a >= 1.0:
        return math.inf, math.inf, math.inf, math.inf, z_star
    mde_rel = (a + math.sqrt(2.0 * a - a * a)) / (1.0 - a)
    terminal = v * (1.0 + (1.0 + mde_rel) ** 2)
    return mde_rel, mde_rel * baseline, terminal, k * terminal, z_star


def plan_experiment(
    *,
    baseline: float,
    variance_per_unit: float,
    units_per_second: float,
    horizon_seconds: float,
    treatments: int = 1,
    alpha: float = 0.05,
    power: float = 0.8,
    exposure: float = 1.0,
    target_mde: float | None = None,
    variance_dof: float | None = None,
    variance_confidence: float = 0.8,
    max_search: int = DEFAULT_MAX_TREATMENTS,
    final_alpha: float = 0.0,
    persistent_share: float = 0.0,
    variance_window_seconds: float | None = None,
) -> PowerPlan:
    """Gate an experiment: the relative MDE of the sequential test, and whether `target_mde` is resolvable.

    `final_alpha` is the part of `alpha` kept for a fixed-horizon final look
    (module doc); 0 plans a purely always-valid read.  `variance_dof`
    switches on planning at the upper confidence limit of the variance (see
    the module doc).  `persistent_share` (φ) with `variance_window_seconds`
    (the window the variance was measured on) projects it to the horizon
    as σ²·(1 − φ + φ·horizon/window) (module doc, "Persistent variance").
    `exposure` is the fraction of the traffic in the experiment (the ramp
    stage's total share); `target_mde` is a relative lift (0.02 = 2%).  When
    the target is not resolvable, `max_treatments` says how many treatment
    arms would be (0: none; refuse) and `horizon_needed_seconds` how long
    the requested arms would need.
    """
    for name, value in (
        ("baseline", baseline),
        ("variance_per_unit", variance_per_unit),
        ("units_per_second", units_per_second),
        ("horizon_seconds", horizon_seconds),
    ):
        _positive(name, value)
    if not 0.0 < exposure <= 1.0:
        msg = f"exposure: must be in (0, 1], got {exposure!r}"
        raise StatsError(msg)
    if not 0.0 < alpha < 1.0 or not 0.0 < power < 1.0:
        msg = f"alpha, power: must be in (0, 1), got {alpha!r}, {power!r}"
        raise StatsError(msg)
    if not 0.0 <= final_alpha < alpha:
        msg = f"final_alpha: must be in [0, alpha) (the final look's share of alpha={alpha!r}), got {final_alpha!r}"
        raise StatsError(msg)
    if treatments < 1 or max_search < 1:
        msg = f"treatments: need at least 1 treatment arm, got {treatments} (max_search {max_search})"
        raise StatsError(msg)
    if target_mde is not None:
        _positive("target_mde", target_mde)
    planning = variance_per_unit
    if variance_dof is not None:
        _positive("variance_dof", variance_dof)
        if not 0.0 < variance_confidence < 1.0:
            msg = f"variance_confidence: must be in (0, 1), got {variance_confidence!r}"
            raise StatsError(msg)
        planning = variance_per_unit * variance_dof / chi2_ppf(1.0 - variance_confidence, variance_dof)
    growth = _persistent_growth(persistent_share, variance_window_seconds)
    # σ²(1 − φ) per unit stays; σ²φ per unit grows with the horizon (the same users come back).
    transient, persistent_rate = planning * (1.0 - persistent_share), planning * growth
    planning = transient + persistent_rate * horizon_seconds
    units = units_per_second * horizon_seconds * exposure
    kw = {
        "baseline": baseline,
        "variance_per_unit": planning,
        "units": units,
        "alpha": alpha,
        "power": power,
        "final_alpha": final_alpha,
    }
    mde_rel, mde_abs, terminal, tau2, z_star = _mde(treatments, **kw)
    z_power = normal_ppf(power)
    efficiency = (z_star + z_power) / (normal_ppf(1.0 - alpha / (2.0 * treatments)) + z_power)
    span = _duration(horizon_seconds)
    if target_mde is None:
        feasible, max_t, needed = math.isfinite(mde_rel), treatments, None
        reason = f"traffic resolves {_lift(mde_rel)} in {span} with {_arms(treatments)}"
    else:
        max_t = 0
        for t in range(1, max(max_search, treatments) + 1):
            if _mde(t, **kw)[0] > target_mde:
                break
            max_t = t
        feasible = mde_rel <= target_mde
        # Invert the MDE equation at δ = target: the per-arm variance v the target needs, hence the units.
        z_sum = z_star + normal_ppf(power)
        v_needed = (target_mde * baseline / z_sum) ** 2 / (1.0 + (1.0 + target_mde) ** 2)
        # v(H) = (K + 1)/(rate·e)·(transient/H + persistent_rate): the persistent part is a floor.
        per_arm = (treatments + 1) / (units_per_second * exposure)
        floor = persistent_rate * per_arm
        needed = transient * per_arm / (v_needed - floor) if v_needed > floor else math.inf
        head = f"{span} with {_arms(treatments)}; target {100 * target_mde:.2g}%"
        if feasible:
            reason = f"traffic resolves {_lift(mde_rel)} in {head}: launch"
        elif max_t > 0:
            cut = _mde(max_t, **kw)[0]
            reason = (
                f"traffic can resolve only {_lift(mde_rel)} in {head}: cut to {_arms(max_t)} (resolves {_lift(cut)})"
            )
        else:
            one = _mde(1, **kw)[0]
            reason = (
                f"traffic can resolve only {_lift(mde_rel)} in {head}: refuse "
                f"(even 1 treatment arm resolves only {_lift(one)}; "
                f"{_arms(treatments)} would need {_duration(needed)})"
            )
    return PowerPlan(
        baseline=baseline,
        variance_per_unit=variance_per_unit,
        planning_variance=planning,
        units_per_arm=units / (treatments + 1),
        treatments=treatments,
        horizon_seconds=horizon_seconds,
        alpha=alpha,
        alpha_per_test=alpha / treatments,
        power=power,
        z_boundary=z_star,
        final_alpha=final_alpha,
        z_power=z_power,
        efficiency=efficiency,
        terminal_variance=terminal,
        mde_absolute=mde_abs,
        mde_relative=mde_rel,
        tau2=tau2,
        target_mde=target_mde,
        persistent_share=persistent_share,
        variance_window_seconds=variance_window_seconds,
        feasible=feasible,
        max_treatments=max_t,
        horizon_needed_seconds=needed,
        reason=reason,
    )


def max_treatments_for(
    *,
    target_mde: float,
    baseline: float,
    variance_per_unit: float,
    units_per_second: float,
    horizon_seconds: float,
    alpha: float = 0.05,
    power: float = 0.8,
    exposure: float = 1.0,
    variance_dof: float | None = None,
    max_search: int = DEFAULT_MAX_TREATMENTS,
    final_alpha: float = 0.0,
    persistent_share: float = 0.0,
    variance_window_seconds: float | None = None,
) -> int:
    """How many treatment arms the traffic affords at `target_mde` (0: not even one); inverse of the plan."""
    plan = plan_experiment(
        baseline=baseline,
        variance_per_unit=variance_per_unit,
        units_per_second=units_per_second,
        horizon_seconds=horizon_seconds,
        alpha=alpha,
        power=power,
        exposure=exposure,
        target_mde=target_mde,
        variance_dof=variance_dof,
        max_search=max_search,
        final_alpha=final_alpha,
        persistent_share=persistent_share,
        variance_window_seconds=variance_window_seconds,
    )
    return plan.max_treatments
