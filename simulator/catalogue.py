"""The apparel catalogue of a world: styles in colourways, weekly arrivals and retirements (pure).

Callers: `simulator.world.World` (one `Catalogue` per world; `live(week)` per
simulated week).  Everything is deterministic given the world seed and the
week index: the styles launched in week w come from a generator seeded with
(seed, w), so any week's live catalogue can be rebuilt without replaying the
weeks before it.

Geometry of the embedding space: a style's embedding is its category's
direction plus its brand's direction plus its own noise; its colourways are
rotations of it by a small angle, so colourways of one style have cosine in
`colourway_similarity` with the style (near-duplicates), styles of one
category and brand about 0.7, of one category about 0.55.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Final

import numpy as np
from numpy.typing import NDArray

from simulator.scenario import CatalogueSpec

WEEK_S: Final = 7 * 24 * 3600.0
#: An item's accumulated interactions (its popularity) grow with its age up to this many weeks.
_POPULARITY_SATURATION_WEEKS: Final = 8.0
_FRESHNESS_TAU_WEEKS: Final = 3.0
_SEED_ARRIVALS: Final = 11
_SEED_UNIVERSE: Final = 12
_WEEK_OFFSET: Final = 1 << 20

F64 = NDArray[np.float64]
I64 = NDArray[np.int64]
B = NDArray[np.bool_]


def _unit(x: F64) -> F64:
    out: F64 = x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)
    return out


@dataclass(frozen=True, slots=True, eq=False)
class Universe:
    """What does not change with the weeks: category and brand directions, brand price tier and appeal."""

    category_dir: F64  # (C, d) unit vectors
    brand_dir: F64  # (B, d)
    brand_price: F64  # (B,) multiplicative price tier
    brand_appeal: F64  # (B,) logit appeal of the brand


@dataclass(frozen=True, slots=True, eq=False)
class Items:
    """Columns of a set of items (one row per colourway); `Catalogue.live` returns one per week.

    `appeal` is the item's true logit appeal (style + colourway + brand,
    minus the sponsored penalty); `dwell_s` the seconds a click earns;
    `return_risk` the chance a purchase is returned; `launch_week` and
    `lifetime_weeks` place the item in time.
    """

    item_ids: NDArray[np.str_]
    style_id: I64
    category: I64
    brand: I64
    embeddings: NDArray[np.float32]
    price: F64
    appeal: F64
    dwell_s: F64
    return_risk: F64
    sponsored: B
    launch_week: I64
    lifetime_weeks: I64
    popularity_noise: F64

    def __len__(self) -> int:
        return len(self.item_ids)

    def take(self, rows: I64 | B) -> Items:
        """The items at `rows` (an index array or a mask)."""
        return Items(
            item_ids=self.item_ids[rows],
            style_id=self.style_id[rows],
            category=self.category[rows],
            brand=self.brand[rows],
            embeddings=self.embeddings[rows],
            price=self.price[rows],
            appeal=self.appeal[rows],
            dwell_s=self.dwell_s[rows],
            return_risk=self.return_risk[rows],
            sponsored=self.sponsored[rows],
            launch_week=self.launch_week[rows],
            lifetime_weeks=self.lifetime_weeks[rows],
            popularity_noise=self.popularity_noise[rows],
        )

    @staticmethod
    def concat(blocks: list[Items]) -> Items:
        """All rows of `blocks`, in order."""
        return Items(
            item_ids=np.concatenate([b.item_ids for b in blocks]),
            style_id=np.concatenate([b.style_id for b in blocks]),
            category=np.concatenate([b.category for b in blocks]),
            brand=np.concatenate([b.brand for b in blocks]),
            embeddings=np.ascontiguousarray(np.concatenate([b.embeddings for b in blocks])),
            price=np.concatenate([b.price for b in blocks]),
            appeal=np.concatenate([b.appeal for b in blocks]),
            dwell_s=np.concatenate([b.dwell_s for b in blocks]),
            return_risk=np.concatenate([b.return_risk for b in blocks]),
            sponsored=np.concatenate([b.sponsored for b in blocks]),
            launch_week=np.concatenate([b.launch_week for b in blocks]),
            lifetime_weeks=np.concatenate([b.lifetime_weeks for b in blocks]),
            popularity_noise=np.concatenate([b.popularity_noise for b in blocks]),
        )


@dataclass(frozen=True, slots=True, eq=False)
class LiveCatalogue:
    """The catalogue on sale in one week, with the week-dependent columns.

    `age_weeks` since launch; `fresh` = launched less than `fresh_weeks` ago;
    `popularity` in [0, 1] (accumulated interactions: grows with appeal and
    age, so new arrivals start low); `freshness` = exp(-age/3 weeks);
    `long_tail` = outside the most popular (1 - long_tail_share) of items;
    `season` (C,) the seasonal demand of each category this week in [-1, 1].
    """

    week: int
    items: Items
    age_weeks: F64
    fresh: B
    popularity: F64
    freshness: F64
    long_tail: B
    season: F64
    row_of: dict[str, int]

    def __len__(self) -> int:
        return len(self.items)


def build_universe(spec: CatalogueSpec, seed: int) -> Universe:
    """Category and brand geometry of a world (deterministic in `seed`)."""
    rng = np.random.default_rng([seed, _SEED_UNIVERSE])
    d = spec.embedding_dim
    n_cat = len(spec.categories)
    return Universe(
        category_dir=_unit(rng.standard_normal((n_cat, d))),
        brand_dir=_unit(rng.standard_normal((spec.brands, d))),
        brand_price=np.exp(spec.brand_price_sigma * rng.standard_normal(spec.brands)),
        brand_appeal=0.3 * rng.standard_normal(spec.brands),
    )


def season_of_week(spec: CatalogueSpec, week: float, start_week: float) -> F64:
    """Seasonal demand of each category at simulated `week`: cos of the distance to its peak (0 if none)."""
    calendar = week + start_week
    out = np.zeros(len(spec.categories))
    for i, c in enumerate(spec.categories):
        if c.season_peak_week is not None:
            out[i] = math.cos(2.0 * math.pi * (calendar - c.season_peak_week) / 52.0)
    return out


def lifetime_cap(spec: CatalogueSpec) -> int:
    """Longest life of a style in weeks (geometric lifetimes are truncated here, ~2% mass)."""
    return max(2, math.ceil(4.0 / spec.turnover_per_week))


class Catalogue:
    """A world's catalogue across weeks; `live(week)` is cached (a handful of weeks at a time)."""

    def __init__(
        self,
        spec: CatalogueSpec,
        seed: int,
        *,
        season_start_week: float,
        seasonality: float,
        popularity_noise: float,
    ) -> None:
        self.spec = spec
        self._popularity_noise = popularity_noise
        self.seed = seed
        self.universe = build_universe(spec, seed)
        self._season_start = season_start_week
        self._seasonality = seasonality
        self._cap = lifetime_cap(spec)
        cap = self._cap
        # Arrivals per week so that arrivals x mean truncated lifetime = live_styles.
        t = spec.turnover_per_week
        mean_life = (1.0 - (1.0 - t) ** cap) / t
        self._arrivals_per_week = max(1, round(spec.live_styles / mean_life))
        self.live = lru_cache(maxsize=4)(self._live)
        self._arrivals = lru_cache(maxsize=512)(self._make_arrivals)

    @property
    def category_names(self) -> tuple[str, ...]:
        """Names of the categories, in code order."""
        return tuple(c.name for c in self.spec.categories)

    def _make_arrivals(self, week: int) -> Items:
        """The styles (all colourways) launched in `week` (deterministic in seed and week)."""
        spec = self.spec
        uni = self.universe
        rng = np.random.default_rng([self.seed, _SEED_ARRIVALS, week + _WEEK_OFFSET])
        n = self._arrivals_per_week
        d = spec.embedding_dim
        # New arrivals lean towards the categories whose season is coming.
        season_ahead = season_of_week(spec, week + 4, self._season_start)
        share = np.array([c.share for c in spec.categories]) * np.exp(0.5 * self._seasonality * season_ahead)
        cat = rng.choice(len(share), size=n, p=share / share.sum())
        brand = rng.integers(0, spec.brands, size=n)
        style_vec = _unit(uni.category_dir[cat] + 0.5 * uni.brand_dir[brand] + 0.7 * _unit(rng.standard_normal((n, d))))
        multi = rng.random(n) < spec.duplicate_rate
        colourways = np.where(multi, rng.integers(2, max(spec.max_colourways, 2) + 1, size=n), 1)
        if spec.max_colourways == 1:
            colourways[:] = 1
        lifetime = np.minimum(rng.geometric(spec.turnover_per_week, size=n), self._cap)
        med = np.array([c.price_median for c in spec.categories])[cat]
        price = np.round(med * uni.brand_price[brand] * np.exp(spec.price_sigma * rng.standard_normal(n)), 2) + 0.99
        style_appeal = spec.appeal_sigma * rng.standard_normal(n) + uni.brand_appeal[brand]
        dwell_med = np.array([c.dwell_s_median for c in spec.categories])[cat]
        dwell = dwell_med * np.exp(0.5 * rng.standard_normal(n))
        base_return = np.array([c.return_rate for c in spec.categories])[cat]
        return_risk = 1.0 / (1.0 + np.exp(-(np.log(base_return / (1.0 - base_return)) + 0.7 * rng.standard_normal(n))))

        style_of = np.repeat(np.arange(n), colourways)
        m = style_of.size
        lo, hi = spec.colourway_similarity
        cos = np.where(colourways[style_of] > 1, rng.uniform(lo, hi, size=m), 1.0)
        centre = style_vec[style_of]
        ortho = rng.standard_normal((m, d))
        ortho = _unit(ortho - np.sum(ortho * centre, axis=1, keepdims=True) * centre)
        emb = _unit(cos[:, None] * centre + np.sqrt(np.maximum(1.0 - cos**2, 0.0))[:, None] * ortho)
        colour_index = np.arange(m) - np.repeat(np.r_[0, np.cumsum(colourways)[:-1]], colourways)
        sponsored = rng.random(m) < spec.sponsored_rate
        appeal = (
            style_appeal[style_of]
            + spec.colourway_appeal_sigma * rng.standard_normal(m)
            + np.where(sponsored, spec.sponsored_appeal, 0.0)
        )
        style_ids = (week + _WEEK_OFFSET) * 100_000 + style_of
        ids = np.array(
            [f"sku-w{week}-s{s}-c{c}" for s, c in zip(style_of.tolist(), colour_index.tolist(), strict=True)]
        )
        return Items(
            item_ids=ids,
            style_id=style_ids.astype(np.int64),
            category=cat[style_of].astype(np.int64),
            brand=brand[style_of].astype(np.int64),
            embeddings=emb.astype(np.float32),
            price=price[style_of],
            appeal=appeal,
            dwell_s=dwell[style_of],
            return_risk=return_risk[style_of],
            sponsored=sponsored,
            launch_week=np.full(m, week, dtype=np.int64),
            lifetime_weeks=lifetime[style_of].astype(np.int64),
            popularity_noise=rng.standard_normal(m),
        )

    def arrivals(self, week: int) -> Items:
        """The items launched in `week` (cached)."""
        return self._arrivals(week)

    def _live(self, week: int) -> LiveCatalogue:
        spec = self.spec
        blocks = []
        for launch in range(week - self._cap + 1, week + 1):
            block = self._arrivals(launch)
            alive = block.launch_week + block.lifetime_weeks > week
            if alive.any():
                blocks.append(block.take(alive))
        items = Items.concat(blocks)
        age = (week - items.launch_week).astype(np.float64) + 0.5
        exposure = np.minimum(age, _POPULARITY_SATURATION_WEEKS) ** 0.8
        raw = np.log1p(np.exp(0.8 * items.appeal) * exposure * np.where(items.sponsored, 1.5, 1.0) * 10.0)
        raw = raw * np.exp(self._popularity_noise * items.popularity_noise)
        popularity = raw / max(float(raw.max()), 1e-12)
        n = len(items)
        head = round((1.0 - spec.long_tail_share) * n)
        order = np.argsort(-popularity, kind="stable")
        long_tail = np.ones(n, dtype=np.bool_)
        long_tail[order[:head]] = False
        return LiveCatalogue(
            week=week,
            items=items,
            age_weeks=age,
            fresh=age < spec.fresh_weeks,
            popularity=popularity,
            freshness=np.exp(-age / _FRESHNESS_TAU_WEEKS),
            long_tail=long_tail,
            season=season_of_week(spec, week, self._season_start),
            row_of={item: i for i, item in enumerate(items.item_ids.tolist())},
        )
