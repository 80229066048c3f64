"""The true user behaviour of the simulated world: click, conversion and list crowding (pure numpy).

Callers: `simulator.world.World` (both the fast path, on every prototype's
list at once, and the demo path, on one shown list); the tests check the
model's properties here directly.

- **Relevance** (`click_logit`): a logit from the user's taste (cosine to the
  item's embedding), category affinity, the item's appeal, its price relative
  to its category (scaled by the user's price sensitivity), seasonal demand of
  its category, and — for users with an appetite for novelty — whether it is
  fresh.
- **Position and crowding** (`list_click_probabilities`): P(click at k) =
  examination(k) · crowding(k) · sigmoid(logit); examination decays with the
  position and falls off past the fold; crowding discounts an item for every
  earlier item of the same style (a colourway of something already shown),
  the same category and the same brand (the last two scaled by the user's
  appetite for diversity).  So a list of near-duplicates or of one category
  earns fewer clicks than a diverse list of equally relevant items.
- **Conversion** (`conversion_logit`) happens only after a click; revenue is
  the item's price, so it tracks price (and price-sensitive users click and
  buy expensive items less).
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from simulator.scenario import ClickModelSpec

F64 = NDArray[np.float64]
I64 = NDArray[np.int64]


def sigmoid(x: F64) -> F64:
    """Logistic function (numerically safe for large |x|)."""
    out: F64 = 0.5 * (1.0 + np.tanh(0.5 * x))
    return out


def examination(n_slots: int, spec: ClickModelSpec) -> F64:
    """P(the user looks at position k), k = 0..n_slots-1: (1+k)^-exponent, decaying past the fold."""
    k = np.arange(n_slots, dtype=np.float64)
    exam: F64 = (1.0 + k) ** -spec.position_exponent
    beyond = np.maximum(k - spec.fold + 1.0, 0.0)
    out: F64 = exam * spec.beyond_fold_decay**beyond
    return out


def click_logit(
    spec: ClickModelSpec,
    *,
    cosine: F64,
    category_affinity: F64,
    appeal: F64,
    log_price_ratio: F64,
    fresh: NDArray[np.bool_],
    season: F64,
    seasonality: float,
    click_offset: F64,
    price_sensitivity: F64,
    novelty: F64,
) -> F64:
    """True click logit of user-item pairs before position and crowding (arrays broadcast together)."""
    out: F64 = (
        spec.base_logit
        + click_offset
        + spec.affinity * cosine
        + spec.category_affinity * category_affinity
        + spec.appeal * appeal
        - spec.price * price_sensitivity * log_price_ratio
        + seasonality * season
        + spec.freshness * novelty * fresh
    )
    return out


def conversion_logit(
    spec: ClickModelSpec,
    *,
    cosine: F64,
    appeal: F64,
    log_price_ratio: F64,
    return_risk: F64,
    conversion_offset: F64,
    price_sensitivity: F64,
) -> F64:
    """True logit of P(convert | click) (badly fitting items, i.e. high return risk, convert less)."""
    out: F64 = (
        spec.conversion_base_logit
        + conversion_offset
        + spec.conversion_affinity * cosine
        + spec.conversion_appeal * appeal
        - spec.conversion_price * price_sensitivity * log_price_ratio
        - spec.conversion_return * return_risk
    )
    return out


def _earlier_matches(codes: I64, valid: NDArray[np.bool_]) -> F64:
    """For each slot k of (..., L) lists: how many valid earlier slots j < k carry the same code."""
    n = codes.shape[-1]
    same = (codes[..., :, None] == codes[..., None, :]) & valid[..., None, :]
    earlier = np.tril(np.ones((n, n), dtype=np.bool_), k=-1)
    out: F64 = np.sum(same & earlier, axis=-1, dtype=np.float64)
    return out


def crowding(
    spec: ClickModelSpec,
    *,
    style: I64,
    category: I64,
    brand: I64,
    valid: NDArray[np.bool_],
    diversity: F64,
) -> F64:
    """Multiplicative attractiveness of each slot of (..., L) lists given the slots before it.

    `diversity` has the lists' leading shape (one appetite per list).
    """
    dup = _earlier_matches(style, valid)
    cat = _earlier_matches(category, valid)
    brd = _earlier_matches(brand, valid)
    appetite = np.asarray(diversity, dtype=np.float64)[..., None]
    out: F64 = np.exp(
        -spec.duplicate_penalty * dup - appetite * (spec.category_crowding * cat + spec.brand_crowding * brd)
    )
    return out


def list_click_probabilities(
    spec: ClickModelSpec,
    *,
    logit: F64,
    style: I64,
    category: I64,
    brand: I64,
    valid: NDArray[np.bool_],
    diversity: F64,
) -> F64:
    """P(click) of every slot of (..., L) lists for a user of multiplier 1 (0 on invalid slots).

    A user with click-propensity multiplier m clicks slot k with probability
    min(1, m · this).
    """
    exam = examination(logit.shape[-1], spec)
    crowd = crowding(spec, style=style, category=category, brand=brand, valid=valid, diversity=diversity)
    out: F64 = np.where(valid, exam * crowd * sigmoid(logit), 0.0)
    return out
