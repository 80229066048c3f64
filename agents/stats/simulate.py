"""Synthetic experiment traffic at the bucket-sum level, with real user-level heterogeneity.

What the pipeline would publish for an experiment, without the pipeline: per
arm, per look (cumulative), per user bucket, the sums of clicks, item
impressions and requests — plus pre-period sums of the same users for CUPED.
The user, not the request or the impression, is the randomisation unit:

- `users` distinct users arrive uniformly over the horizon and are assigned
  to arms by `shares` (independent of their metric bucket, as the sidecar's
  salted assignment hash is independent of `crc32(user) mod B`); the bucket
  is a uniform draw, which is what a hash of random ids gives;
- each user has a click propensity p_u ~ Beta(μκ, (1−μ)κ) (mean `mean_ctr`,
  concentration `ctr_concentration`: smaller κ, more heterogeneity);
- each user makes 1 + Poisson(λ_u) requests with λ_u ~ Gamma(`activity_shape`)
  of mean `requests_per_user` − 1 (heavy and light users), spread uniformly
  over a session window of `session_fraction` × horizon after arrival
  (requests past the horizon are not observed), so many users return across
  looks;
- each request shows `items_per_request` items; clicks ~ Binomial(items, p_u·(1 + lift_arm));
- pre-period: each user made Poisson(pre_requests_per_user·(1 + λ_u)/requests_per_user)
  requests with the same propensity and no lift.

`naive_z_path` is the wrong analysis kept for contrast: a pooled two-proportion
z-test that treats every impression as an independent Bernoulli trial,
ignoring that impressions cluster within users; read at every look it
inflates false positives twice over (clustering and peeking).

Callers: `proofs` (A/A, power and early-stop studies), `bench/stats.py`, the
tests.  Pure numpy; all randomness from the caller's `numpy.random.Generator`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from agents.stats.errors import StatsError

FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True, slots=True)
class TrafficModel:
    """Parameters of the synthetic traffic (defaults: a two-week, two-arm test of a 5% CTR)."""

    users: int = 20_000
    buckets: int = 64
    looks: int = 56
    horizon_seconds: float = 14 * 86_400.0
    items_per_request: int = 12
    mean_ctr: float = 0.05
    ctr_concentration: float = 20.0
    requests_per_user: float = 4.0
    activity_shape: float = 0.7
    session_fraction: float = 0.25
    pre_requests_per_user: float = 4.0
    shares: tuple[float, ...] = field(default=(0.5, 0.5))

    def __post_init__(self) -> None:
        """Refuse parameters that cannot describe traffic (names the field and rule)."""
        ints = {"users": self.users, "buckets": self.buckets, "looks": self.looks, "items": self.items_per_request}
        bad = [f"{k}={v}" for k, v in ints.items() if v < (2 if k == "buckets" else 1)]
        if not 0.0 < self.mean_ctr < 1.0 or self.ctr_concentration <= 0.0:
            bad.append(f"mean_ctr={self.mean_ctr} in (0,1), ctr_concentration={self.ctr_concentration} > 0")
        if self.requests_per_user < 1.0 or self.activity_shape <= 0.0 or self.pre_requests_per_user < 0.0:
            bad.append("requests_per_user >= 1, activity_shape > 0, pre_requests_per_user >= 0")
        if not 0.0 < self.session_fraction <= 1.0 or self.horizon_seconds <= 0.0:
            bad.append("session_fraction in (0, 1], horizon_seconds > 0")
        if len(self.shares) < 2 or any(s < 0.0 for s in self.shares) or not math.isclose(sum(self.shares), 1.0):
            bad.append(f"shares={self.shares}: at least 2 non-negative shares summing to 1")
        if bad:
            msg = f"TrafficModel: invalid {', '.join(bad)}"
            raise StatsError(msg)

    @property
    def arms(self) -> int:
        """Number of arms (arm 0 is control)."""
        return len(self.shares)


@dataclass(frozen=True, slots=True)
class SimulatedExperiment:
    """Cumulative bucket sums per look: arrays (arms, looks, buckets); pre-period (arms, buckets)."""

    clicks: FloatArray
    impressions: FloatArray
    requests: FloatArray
    pre_clicks: FloatArray
    pre_impressions: FloatArray
    look_seconds: FloatArray
    lifts: tuple[float, ...]
    users_per_arm: tuple[int, ...]


def simulate_experiment(model: TrafficModel, lifts: Sequence[float], rng: np.random.Generator) -> SimulatedExperiment:
    """One synthetic experiment: `lifts[a]` is arm a's true relative CTR lift (0 for control and A/A arms)."""
    if len(lifts) != model.arms or any(not math.isfinite(v) or v <= -1.0 for v in lifts):
        msg = f"lifts: need {model.arms} finite lifts > −1 (one per arm), got {list(lifts)}"
        raise StatsError(msg)
    n_users, arms, b, k, items = model.users, model.arms, model.buckets, model.looks, model.items_per_request
    arm = rng.choice(arms, size=n_users, p=np.asarray(model.shares))
    bucket = rng.integers(0, b, size=n_users)
    kappa = model.ctr_concentration
    propensity = rng.beta(model.mean_ctr * kappa, (1.0 - model.mean_ctr) * kappa, size=n_users)
    extra_mean = model.requests_per_user - 1.0
    rate = (
        rng.gamma(model.activity_shape, extra_mean / model.activity_shape, size=n_users)
        if extra_mean > 0.0
        else np.zeros(n_users)
    )
    n_req = 1 + rng.poisson(rate)
    arrival = rng.random(n_users)
    owner = np.repeat(np.arange(n_users), n_req)
    when = arrival[owner] + model.session_fraction * rng.random(owner.size)
    seen = when < 1.0
    owner, when = owner[seen], when[seen]
    look = np.minimum((when * k).astype(np.int64), k - 1)
    lift = np.asarray(lifts, dtype=np.float64)
    p_click = np.minimum(propensity[owner] * (1.0 + lift[arm[owner]]), 1.0)
    clicks = rng.binomial(items, p_click)
    cell = (arm[owner] * b + bucket[owner]) * k + look
    size = arms * b * k

    def cumulative(weights: npt.NDArray[np.int64] | None) -> FloatArray:
        counts = np.bincount(cell, weights=weights, minlength=size).astype(np.float64)
        out: FloatArray = np.cumsum(counts.reshape(arms, b, k).transpose(0, 2, 1), axis=1)
        return out

    requests = cumulative(None)
    pre_req = rng.poisson(model.pre_requests_per_user * (1.0 + rate) / model.requests_per_user)
    pre_clicks = rng.binomial(items * pre_req, propensity)
    pre_cell = arm * b + bucket
    pre_shape = (arms, b)
    return SimulatedExperiment(
        clicks=cumulative(clicks),
        impressions=requests * items,
        requests=requests,
        pre_clicks=np.bincount(pre_cell, weights=pre_clicks, minlength=arms * b).reshape(pre_shape).astype(np.float64),
        pre_impressions=np.bincount(pre_cell, weights=items * pre_req, minlength=arms * b)
        .reshape(pre_shape)
        .astype(np.float64),
        look_seconds=model.horizon_seconds * np.arange(1, k + 1, dtype=np.float64) / k,
        lifts=tuple(float(v) for v in lifts),
        users_per_arm=tuple(int(c) for c in np.bincount(arm, minlength=arms)),
    )


def naive_z_path(experiment: SimulatedExperiment, treatment: int = 1, control: int = 0) -> FloatArray:
    """The naive per-impression two-proportion z statistic at every look (impressions treated as i.i.d.).

    z = (p̂_T − p̂_C) / sqrt(p̂(1 − p̂)(1/n_T + 1/n_C)) with the pooled p̂; NaN
    where an arm has no impressions yet.  For contrast only: never use it.
    """
    c = experiment.clicks.sum(axis=-1)
    n = experiment.impressions.sum(axis=-1)
    ct, cc, nt, nc = c[treatment], c[control], n[treatment], n[control]
    with np.errstate(divide="ignore", invalid="ignore"):
        pooled = (ct + cc) / (nt + nc)
        se = np.sqrt(pooled * (1.0 - pooled) * (1.0 / nt + 1.0 / nc))
        z: FloatArray = (ct / nt - cc / nc) / se
    return np.where(np.isfinite(z), z, np.nan)
