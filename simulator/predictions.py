"""The ranker's view of a simulated week: every prototype's candidate set with noisy predictions (pure).

Callers: `simulator.world.World` (once per simulated week, cached).  The
candidate set of a user is the whole live catalogue with the pre-rank
signals `SIGNAL_NAMES` (named like `default_config()`'s fusion weights) and
the rank stage's objective predictions; they are *model predictions*, wrong
in the ways production models are wrong (stale and noisy tastes, cold-start
users and items, per user-item noise), so the cascade's config matters.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import numpy as np
from numpy.typing import NDArray

from serving_sidecar.candidates import CandidateSet
from simulator.catalogue import Catalogue, LiveCatalogue
from simulator.population import Prototypes, Tastes
from simulator.scenario import Scenario

#: Signals of every candidate set, named like `default_config()`'s fusion weights.
SIGNAL_NAMES: Final = ("popularity", "personal_affinity", "freshness")
_SEED_PREDICTIONS: Final = 31

F64 = NDArray[np.float64]


@dataclass(frozen=True, slots=True, eq=False)
class WeekState:
    """Everything of one simulated week that does not depend on the config."""

    live: LiveCatalogue
    candidates: tuple[CandidateSet, ...]  # one per prototype
    taste: F64  # (P, d) true tastes
    log_price_ratio: F64  # (n,) log(price / category median)


def build_week(
    scenario: Scenario, catalogue: Catalogue, prototypes: Prototypes, tastes: Tastes, seed: int, week: int
) -> WeekState:
    """The live catalogue and every prototype's candidate set (the ranker's noisy predictions).

    Predictions use the ranker's *estimate* of the taste (stale by
    `model_lag_weeks`, noisier for new users), know a new arrival's appeal
    only partly, ignore the novelty lift, carry `noise.fresh_bias` on fresh
    items and per user-item noise; float32 throughout (P x n matrices).
    Objective units: click, conversion, return are probabilities per
    impression (return = P(buy and send back)); dwell is expected *minutes* per impression (P(click) x
    minutes a click holds the user); revenue is expected currency per
    impression (P(conversion) x price).
    """
    s = scenario
    live = catalogue.live(week)
    items = live.items
    protos = prototypes
    n, p = len(items), len(protos)
    f32 = np.float32
    taste = tastes.true(week)
    estimate = tastes.estimate(week).astype(f32)
    price_median = np.array([c.price_median for c in s.catalogue.categories])
    lpr = np.log(items.price / price_median[items.category])
    cos_est = estimate @ items.embeddings.T  # (P, n) float32
    rng = np.random.default_rng([seed, _SEED_PREDICTIONS, week + (1 << 20)])
    noise = s.noise
    scale = protos.noise_scale.astype(f32)[:, None]
    cm = s.click_model
    # Models trained on history know a new arrival's appeal only partly.
    known_appeal = items.appeal * (1.0 - 0.7 * np.exp(-live.age_weeks / 1.5))
    item_click = (
        cm.appeal * known_appeal + s.drift.seasonality * live.season[items.category] + noise.fresh_bias * live.fresh
    ).astype(f32)
    item_conv = (cm.conversion_appeal * known_appeal - cm.conversion_return * items.return_risk).astype(f32)
    price_sens = protos.price_sensitivity.astype(f32)[:, None]
    lpr32 = lpr.astype(f32)[None, :]
    logit = cm.affinity * cos_est
    logit += cm.category_affinity * protos.category_affinity.astype(f32)[:, items.category]
    logit += item_click[None, :]
    logit += (cm.base_logit + protos.click_offset).astype(f32)[:, None]
    logit -= (cm.price * price_sens) * lpr32
    logit += (noise.click * scale) * rng.standard_normal((p, n), dtype=f32)
    objectives = np.empty((p, n, 5), dtype=f32)
    click = objectives[:, :, 0]
    np.copyto(click, _sigmoid32(logit))
    conv = cm.conversion_affinity * cos_est
    conv += item_conv[None, :]
    conv += (cm.conversion_base_logit + protos.conversion_offset).astype(f32)[:, None]
    conv -= (cm.conversion_price * price_sens) * lpr32
    conv += (noise.conversion * scale) * rng.standard_normal((p, n), dtype=f32)
    np.multiply(click, _sigmoid32(conv), out=objectives[:, :, 1])
    dwell = np.exp(noise.dwell * rng.standard_normal((p, n), dtype=f32))
    dwell *= (items.dwell_s / 60.0).astype(f32)[None, :]  # minutes per impression
    np.multiply(click, dwell, out=objectives[:, :, 2])
    risk = np.clip(items.return_risk, 1e-4, 1 - 1e-4)
    ret = noise.return_ * rng.standard_normal((p, n), dtype=f32)
    ret += np.log(risk / (1 - risk)).astype(f32)[None, :]
    np.multiply(objectives[:, :, 1], _sigmoid32(ret), out=objectives[:, :, 3])
    np.multiply(objectives[:, :, 1], items.price.astype(f32)[None, :], out=objectives[:, :, 4])
    signals = np.empty((p, n, 3), dtype=f32)
    signals[:, :, 0] = live.popularity[None, :]
    signals[:, :, 1] = (cos_est + 1.0) / 2.0
    signals[:, :, 2] = live.freshness[None, :]
    names = catalogue.category_names
    sets = tuple(
        CandidateSet(
            item_ids=items.item_ids,
            signals=signals[i],
            signal_names=SIGNAL_NAMES,
            objectives=objectives[i],
            embeddings=items.embeddings,
            category=items.category,
            category_names=names,
            brand=items.brand,
            style_id=items.style_id,
            fresh=live.fresh,
            sponsored=items.sponsored,
            long_tail=live.long_tail,
        )
        for i in range(p)
    )
    return WeekState(live=live, candidates=sets, taste=taste, log_price_ratio=lpr)


def _sigmoid32(x: NDArray[np.float32]) -> NDArray[np.float32]:
    """Logistic function in float32 (via tanh: no overflow)."""
    out: NDArray[np.float32] = (np.tanh(x * np.float32(0.5)) + np.float32(1.0)) * np.float32(0.5)
    return out
