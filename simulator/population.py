"""The user population of a world: latent-preference prototypes and the users behind them (pure).

Callers: `simulator.world.World`.  A few hundred *prototypes* carry the latent
preferences (cohort, taste vector in the embedding space, category
affinities, price sensitivity, appetites for diversity and novelty, click
offset); many *users* each belong to one prototype and add their own
click-propensity multiplier and activity weight.  So thousands of distinct
users exist (user-level variance is real) while the cascade runs once per
prototype.  Tastes drift week by week (a random walk); the ranker's estimate
of a taste lags `model_lag_weeks` behind and is noisier for new users.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Final

import numpy as np
from numpy.typing import NDArray

from simulator.catalogue import Universe
from simulator.scenario import Scenario, refuse

_SEED_PROTOTYPES: Final = 21
_SEED_USERS: Final = 22
_SEED_DRIFT: Final = 23
_SEED_ESTIMATE: Final = 24

F64 = NDArray[np.float64]
I64 = NDArray[np.int64]


def _unit(x: F64) -> F64:
    out: F64 = x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)
    return out


@dataclass(frozen=True, slots=True, eq=False)
class Prototypes:
    """Per-prototype latent preferences (P rows).

    `cohort` indexes `Scenario.cohorts`; `taste0` (P, d) unit taste at week 0;
    `category_affinity` (P, C) logit affinity per category; `click_offset` and
    `conversion_offset` logits; `price_sensitivity`, `diversity`, `novelty`
    appetites (>= 0); `noise_scale` the model's noise multiplier (cohort's
    `prediction_noise`); `estimate_error` (P, d) the fixed error of the
    ranker's taste estimate.
    """

    cohort: I64
    taste0: F64
    category_affinity: F64
    click_offset: F64
    conversion_offset: F64
    price_sensitivity: F64
    diversity: F64
    novelty: F64
    noise_scale: F64
    estimate_error: F64

    def __len__(self) -> int:
        return len(self.cohort)


@dataclass(frozen=True, slots=True, eq=False)
class Users:
    """Per-user columns (U rows): id, prototype, click multiplier (mean 1) and request probability."""

    user_ids: tuple[str, ...]
    prototype: I64
    multiplier: F64
    request_p: F64  # sums to 1: the chance a request comes from this user

    def __len__(self) -> int:
        return len(self.user_ids)


def _cohort_counts(shares: list[float], total: int, *, field: str) -> list[int]:
    """Split `total` prototypes (or users) over the cohorts by `shares`: every positive share gets >= 1.

    Called by `build_prototypes` and `build_users` (a cohort with a positive
    share but no prototype would have its users served by another cohort's
    prototype).  Each positive share first gets one; the remaining
    `total - positives` go by largest-remainder rounding of each cohort's
    quota beyond that one (`share * total - 1`, floored at 0, scaled down
    when tiny cohorts' forced ones leave less than the quotas ask).  When
    every positive quota is >= 1 this is plain largest-remainder rounding of
    `shares * total` (the shipped scenarios' counts).  Zero shares get 0.
    Refuses (`field`) a `total` below the number of positive shares.
    """
    positive = [i for i, share in enumerate(shares) if share > 0.0]
    if total < len(positive):
        refuse(
            field,
            f"must be >= the number of cohorts with a positive share ({len(positive)}), got {total}",
            hint=f"raise {field} or set the smallest cohorts' share to 0",
        )
    rest = total - len(positive)
    need = {i: max(shares[i] * total - 1.0, 0.0) for i in positive}
    asked = sum(need.values())
    if asked > rest + 1e-9:  # forced ones took seats the quotas wanted (not float noise)
        need = {i: q * rest / asked for i, q in need.items()}
    counts = [0] * len(shares)
    for i in positive:
        counts[i] = 1 + int(need[i])
    # Largest remainder first (ties to the earlier cohort); cycling only matters when shares sum a bit below 1.
    order = sorted(positive, key=lambda i: need[i] - int(need[i]), reverse=True)
    for k in range(total - sum(counts)):
        counts[order[k % len(order)]] += 1
    return counts


def build_prototypes(scenario: Scenario, universe: Universe, seed: int) -> Prototypes:
    """Draw the prototypes of a world (deterministic in `seed`)."""
    pop = scenario.population
    rng = np.random.default_rng([seed, _SEED_PROTOTYPES])
    n = pop.prototypes
    d = universe.category_dir.shape[1]
    n_cat = universe.category_dir.shape[0]
    counts = _cohort_counts([c.share for c in scenario.cohorts], n, field="population.prototypes")
    cohort = np.repeat(np.arange(len(counts)), counts).astype(np.int64)
    cat_share = np.array([c.share for c in scenario.catalogue.categories])
    favourites = np.stack(
        [rng.choice(n_cat, size=pop.favourite_categories, replace=False, p=cat_share) for _ in range(n)]
    )
    fav_mask = np.zeros((n, n_cat))
    np.put_along_axis(fav_mask, favourites, 1.0, axis=1)
    brand = rng.integers(0, universe.brand_dir.shape[0], size=n)
    taste0 = _unit(
        pop.taste_focus * (fav_mask @ universe.category_dir) / pop.favourite_categories
        + 0.4 * universe.brand_dir[brand]
        + _unit(rng.standard_normal((n, d)))
    )
    affinity = 0.5 * rng.standard_normal((n, n_cat)) + fav_mask - fav_mask.mean(axis=1, keepdims=True)
    spec = scenario.cohorts

    def per(attr: str) -> F64:
        return np.array([getattr(spec[c], attr) for c in cohort.tolist()], dtype=np.float64)

    jitter = np.exp(0.3 * rng.standard_normal((3, n)))
    return Prototypes(
        cohort=cohort,
        taste0=taste0,
        category_affinity=affinity,
        click_offset=per("click_offset") + 0.3 * rng.standard_normal(n),
        conversion_offset=per("conversion_offset") + 0.2 * rng.standard_normal(n),
        price_sensitivity=per("price_sensitivity") * jitter[0],
        diversity=per("diversity_appetite") * jitter[1],
        novelty=per("novelty_appetite") * jitter[2],
        noise_scale=per("prediction_noise"),
        estimate_error=rng.standard_normal((n, d)) / np.sqrt(d),
    )


def build_users(scenario: Scenario, prototypes: Prototypes, seed: int) -> Users:
    """Draw the users of a world: cohort by share, a prototype of that cohort, multiplier and activity."""
    pop = scenario.population
    rng = np.random.default_rng([seed, _SEED_USERS])
    counts = _cohort_counts([c.share for c in scenario.cohorts], pop.users, field="population.users")
    user_cohort = np.repeat(np.arange(len(counts)), counts)
    prototype = np.empty(pop.users, dtype=np.int64)
    for c in range(len(counts)):
        members = np.flatnonzero(prototypes.cohort == c)
        rows = np.flatnonzero(user_cohort == c)
        if rows.size:
            # Every prototype of the cohort gets users (round-robin), then shuffled.
            prototype[rows] = rng.permutation(np.resize(members, rows.size))
    sigma = pop.propensity_sigma
    multiplier = np.exp(sigma * rng.standard_normal(pop.users) - 0.5 * sigma * sigma)
    activity = np.array([scenario.cohorts[c].activity for c in user_cohort.tolist()]) * np.exp(
        pop.activity_sigma * rng.standard_normal(pop.users)
    )
    return Users(
        user_ids=tuple(f"u{i:07d}" for i in range(pop.users)),
        prototype=prototype,
        multiplier=multiplier,
        request_p=activity / activity.sum(),
    )


class Tastes:
    """Each prototype's true taste in week w (a random walk from `taste0`) and the ranker's estimate."""

    def __init__(self, scenario: Scenario, prototypes: Prototypes, seed: int) -> None:
        self._step = scenario.drift.taste_per_week
        self._lag = scenario.drift.model_lag_weeks
        self._affinity_noise = scenario.noise.affinity_signal
        self._protos = prototypes
        self._seed = seed
        self.true = lru_cache(maxsize=8)(self._true)
        self.estimate = lru_cache(maxsize=8)(self._estimate)

    def _walk(self, week: int) -> F64:
        p = self._protos
        n, d = p.taste0.shape
        total = np.zeros((n, d))
        for w in range(1, max(week, 0) + 1):
            rng = np.random.default_rng([self._seed, _SEED_DRIFT, w])
            total += rng.standard_normal((n, d)) / np.sqrt(d)
        return total

    def _true(self, week: int) -> F64:
        """Unit taste vectors (P, d) in `week`."""
        return _unit(self._protos.taste0 + self._step * self._walk(week))

    def _estimate(self, week: int) -> F64:
        """The ranker's taste estimate (P, d): `model_lag_weeks` stale, plus the cohort-scaled fixed error."""
        p = self._protos
        stale = self.true(max(week - self._lag, 0))
        return _unit(stale + self._affinity_noise * p.noise_scale[:, None] * p.estimate_error)
