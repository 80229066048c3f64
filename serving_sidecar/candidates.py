"""The cascade's input: one request's candidate set as columnar numpy arrays (pure).

The ranker builds one `CandidateSet` per request (from its retrieval stage and
feature store) and hands it to `serving_sidecar.cascade.rank` together with
the arm's `CascadeConfig`.  Columns rather than per-item objects because the
pre-rank stage scores 10^5 candidates in one matrix-vector product: a Python
object per candidate would cost more than the whole latency budget.

`synthetic_candidates` builds an apparel-like set (styles in several
colourways whose embeddings are near-duplicates, categories, brands, fresh
arrivals, sponsored items) for the tests, the benchmark and the simulator.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

import numpy as np
from numpy.typing import NDArray

from serving_sidecar.errors import SidecarError

#: Column order of `CandidateSet.objectives` (the rank stage's calibrated predictions).
OBJECTIVES: Final = ("click", "conversion", "dwell", "return", "revenue")
#: Signals `synthetic_candidates` produces; the first three are the ones `default_config()` fuses.
SYNTHETIC_SIGNALS: Final = ("popularity", "personal_affinity", "freshness", "trend")
APPAREL_CATEGORIES: Final = (
    "dresses",
    "tops",
    "knitwear",
    "trousers",
    "jeans",
    "skirts",
    "outerwear",
    "shoes",
    "bags",
    "accessories",
    "activewear",
    "swimwear",
)


class CandidateError(SidecarError):
    """A candidate set whose columns do not fit together (shape, dtype, codes)."""


def _fail(rule: str) -> None:
    msg = f"CandidateSet: {rule}"
    raise CandidateError(msg, hint="see serving_sidecar/candidates.py for the layout")


@dataclass(frozen=True, slots=True, eq=False)
class CandidateSet:
    """One request's candidates, one row per item (n rows, all columns aligned).

    - `item_ids` (n,) str or int ids; `signals` (n, k) float32 pre-rank value
      signals named by `signal_names` (fusion weights refer to these names);
    - `objectives` (n, 5) float32 calibrated predictions in `OBJECTIVES` order
      (click, conversion, return: probabilities; dwell, revenue: expected values >= 0);
    - `embeddings` (n, d) float32, L2-normalised (the re-rank's similarity space);
    - `category` (n,) int codes into `category_names`; `brand` (n,) int codes;
      `style_id` (n,) int (colourways of one style share it);
    - `fresh`, `sponsored`, `long_tail` (n,) bool.

    Construction checks shapes and coerces float columns to contiguous float32
    (no copy when they already are), so the cascade's hot path checks nothing.
    Values must be finite; the cascade treats a NaN fused score as -inf.
    """

    item_ids: NDArray[Any]
    signals: NDArray[np.float32]
    signal_names: tuple[str, ...]
    objectives: NDArray[np.float32]
    embeddings: NDArray[np.float32]
    category: NDArray[np.int64]
    category_names: tuple[str, ...]
    brand: NDArray[np.int64]
    style_id: NDArray[np.int64]
    fresh: NDArray[np.bool_]
    sponsored: NDArray[np.bool_]
    long_tail: NDArray[np.bool_]

    def __post_init__(self) -> None:
        # object.__setattr__: the dataclass is frozen, coercion happens once here.
        for name in ("signals", "objectives", "embeddings"):
            object.__setattr__(self, name, np.ascontiguousarray(getattr(self, name), dtype=np.float32))
        for name in ("category", "brand", "style_id"):
            object.__setattr__(self, name, np.asarray(getattr(self, name), dtype=np.int64))
        for name in ("fresh", "sponsored", "long_tail"):
            object.__setattr__(self, name, np.asarray(getattr(self, name), dtype=np.bool_))
        n = len(self.item_ids)
        if self.item_ids.ndim != 1:
            _fail("item_ids must be one-dimensional")
        if self.signals.ndim != 2 or self.signals.shape != (n, len(self.signal_names)):
            _fail(f"signals must have shape (n, len(signal_names)) = ({n}, {len(self.signal_names)})")
        if len(set(self.signal_names)) != len(self.signal_names):
            _fail("signal_names must be distinct")
        if self.objectives.shape != (n, len(OBJECTIVES)):
            _fail(f"objectives must have shape ({n}, {len(OBJECTIVES)}) in order {OBJECTIVES}")
        if self.embeddings.ndim != 2 or self.embeddings.shape[0] != n or self.embeddings.shape[1] < 1:
            _fail(f"embeddings must have shape ({n}, d) with d >= 1")
        for name in ("category", "brand", "style_id", "fresh", "sponsored", "long_tail"):
            if getattr(self, name).shape != (n,):
                _fail(f"{name} must have shape ({n},)")
        if n and (int(self.category.min()) < 0 or int(self.category.max()) >= len(self.category_names)):
            _fail(f"category codes must lie in [0, {len(self.category_names)})")

    def __len__(self) -> int:
        return len(self.item_ids)


def _normalise(x: NDArray[np.float64]) -> NDArray[np.float64]:
    norms: NDArray[np.float64] = np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    return x / norms


def _sigmoid(x: NDArray[np.float64]) -> NDArray[np.float64]:
    return 1.0 / (1.0 + np.exp(-x))


def synthetic_candidates(
    n: int,
    rng: np.random.Generator,
    *,
    dim: int = 32,
    n_categories: int = len(APPAREL_CATEGORIES),
    n_brands: int = 40,
    max_colourways: int = 5,
    fresh_rate: float = 0.1,
    sponsored_rate: float = 0.03,
    colourway_noise: float = 0.08,
) -> CandidateSet:
    """An apparel-like candidate set of `n` items for one synthetic user (deterministic given `rng`).

    Styles come in 1..`max_colourways` colourways whose embeddings differ by a
    small perturbation (`colourway_noise`; cosine about 0.99 at the default),
    so the near-duplicate collapse has real work to do.  Embeddings cluster by
    category and brand, so MMR diversity shows up as category diversity.  A
    style is fresh as a whole (a new arrival); sponsorship is per item.  The
    objectives follow the user's affinity and item popularity, so fusion and
    rank mostly agree but not exactly (as in production).
    """
    if not 1 <= n_categories <= len(APPAREL_CATEGORIES):
        msg = f"n_categories must be in [1, {len(APPAREL_CATEGORIES)}]"
        raise ValueError(msg)
    # Enough styles for n items at the mean colourway count, then truncate.
    counts = rng.integers(1, max_colourways + 1, size=max(1, 2 * n // max(1, max_colourways) + 1))
    style_of = np.repeat(np.arange(counts.size), counts)
    while style_of.size < n:  # rare: the draw fell short; add single-colourway styles
        style_of = np.concatenate([style_of, np.arange(counts.size, counts.size + n - style_of.size)])
    style_of = style_of[:n]
    n_styles = int(style_of.max()) + 1 if n else 0

    # Category popularity is skewed (dresses and tops dominate apparel catalogues).
    cat_p = 1.0 / np.arange(1, n_categories + 1) ** 0.8
    style_cat = rng.choice(n_categories, size=n_styles, p=cat_p / cat_p.sum())
    style_brand = rng.integers(0, n_brands, size=n_styles)
    cat_dir = _normalise(rng.standard_normal((n_categories, dim)))
    brand_dir = _normalise(rng.standard_normal((n_brands, dim)))
    style_emb = _normalise(
        1.0 * cat_dir[style_cat] + 0.5 * brand_dir[style_brand] + 0.6 * _normalise(rng.standard_normal((n_styles, dim)))
    )
    emb = _normalise(style_emb[style_of] + colourway_noise * rng.standard_normal((n, dim)) / np.sqrt(dim))

    # One user: a taste vector near one or two categories.
    user = _normalise((cat_dir[rng.integers(0, n_categories)] + 0.7 * rng.standard_normal(dim))[None, :])[0]
    affinity = emb @ user
    style_pop = rng.lognormal(0.0, 1.0, size=n_styles)
    popularity = np.log1p(style_pop[style_of] * rng.lognormal(0.0, 0.3, size=n))
    popularity /= max(float(popularity.max()), 1e-12) if n else 1.0
    age_days = rng.exponential(60.0, size=n_styles)
    new_arrival = rng.random(n_styles) < fresh_rate
    age_days[new_arrival] = rng.uniform(0.0, 14.0, size=int(new_arrival.sum()))
    fresh = age_days[style_of] < 14.0
    freshness = np.exp(-age_days[style_of] / 30.0)
    trend = _sigmoid(2.0 * rng.standard_normal(n_styles))[style_of]
    signals = np.stack([popularity, (affinity + 1.0) / 2.0, freshness, trend], axis=1)

    logit = -3.0 + 2.5 * affinity + 1.0 * popularity + 0.3 * rng.standard_normal(n)
    click = _sigmoid(logit)
    conversion = click * _sigmoid(-2.0 + 1.5 * affinity + 0.3 * rng.standard_normal(n))
    dwell = rng.lognormal(2.0, 0.5, size=n) * (0.5 + click * 5.0)
    returns = _sigmoid(-1.5 + 0.5 * rng.standard_normal(n_styles))[style_of]
    price = rng.lognormal(3.5, 0.6, size=n_styles)[style_of]
    objectives = np.stack([click, conversion, dwell, returns, conversion * price], axis=1)

    rank_of = np.argsort(np.argsort(-popularity, kind="stable"), kind="stable")
    return CandidateSet(
        item_ids=np.array([f"sku-{s:06d}-{i:06d}" for i, s in enumerate(style_of.tolist())], dtype=np.str_),
        signals=signals.astype(np.float32),
        signal_names=SYNTHETIC_SIGNALS,
        objectives=objectives.astype(np.float32),
        embeddings=emb.astype(np.float32),
        category=style_cat[style_of],
        category_names=APPAREL_CATEGORIES[:n_categories],
        brand=style_brand[style_of],
        style_id=style_of.astype(np.int64),
        fresh=fresh,
        sponsored=rng.random(n) < sponsored_rate,
        long_tail=rank_of >= max(1, n // 5),
    )
