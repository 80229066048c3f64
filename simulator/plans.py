"""Plans: what one config shows every user prototype in one week, and what that earns (pure).

Callers: `simulator.world.World` (its fast path and oracle view cache one
`Plan` per (config, week)).  `rank_pools` runs the REAL cascade's pre-rank and
rank stages (`serving_sidecar.cascade.pre_rank`, `rank_stage`) per prototype;
`build_plan` runs its re-rank (`re_rank`) once per exploration draw — together
exactly `cascade.rank` — and `truth` applies the click model to the shown
lists: per-slot click probabilities for a user of multiplier 1, conversion
probabilities and prices, plus the list statistics of `BUCKET_FIELDS`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import numpy as np
from numpy.typing import NDArray

from schemas.config import CascadeConfig
from serving_sidecar.cascade import pre_rank, rank_stage, re_rank
from simulator import latency as lat
from simulator.click_model import click_logit, conversion_logit, list_click_probabilities, sigmoid
from simulator.population import Prototypes
from simulator.predictions import WeekState
from simulator.scenario import Scenario

_SEED_EXPLORATION: Final = 41

F64 = NDArray[np.float64]
I64 = NDArray[np.int64]
#: Per prototype: the rank pool (candidate rows in rank order) and its rank scores.
Pools = tuple[tuple[I64, F64], ...]


@dataclass(frozen=True, slots=True, eq=False)
class Plan:
    """One config in one week: every prototype's list(s) and their outcome probabilities.

    Arrays are (P, R, L): R exploration draws, L = list_size slots (padded).
    """

    rows: I64
    valid: NDArray[np.bool_]
    click_p: F64  # per slot, for a user of multiplier 1
    conversion_p: F64  # P(convert | click)
    price: F64
    stats: F64  # (P, R, 5): impressions, distinct_categories, near_duplicates, fresh, long_tail
    latency_median_ms: float
    n_candidates: int


def truth(
    scenario: Scenario, prototypes: Prototypes, week: WeekState, protos: I64, rows: I64, valid: NDArray[np.bool_]
) -> tuple[F64, F64, F64]:
    """Click probability (multiplier 1), P(convert | click) and price of (..., L) lists of `protos`.

    `rows` index the week's live catalogue; `valid` marks real slots (padding is 0 everywhere).
    """
    s = scenario
    live = week.live
    items = live.items
    safe = np.where(valid, rows, 0)
    pr = prototypes
    pshape = (slice(None), *((None,) * (rows.ndim - protos.ndim)))
    p_idx = protos[pshape]
    emb = items.embeddings[safe].astype(np.float64)
    cosine = np.einsum("...d,...d->...", emb, week.taste[protos][(*pshape[:-1], None, slice(None))])
    cat = items.category[safe]
    lpr = week.log_price_ratio[safe]
    logit = click_logit(
        s.click_model,
        cosine=cosine,
        category_affinity=pr.category_affinity[p_idx, cat],
        appeal=items.appeal[safe],
        log_price_ratio=lpr,
        fresh=live.fresh[safe],
        season=live.season[cat],
        seasonality=s.drift.seasonality,
        click_offset=pr.click_offset[p_idx],
        price_sensitivity=pr.price_sensitivity[p_idx],
        novelty=pr.novelty[p_idx],
    )
    click = list_click_probabilities(
        s.click_model,
        logit=logit,
        style=np.where(valid, items.style_id[safe], -1),
        category=cat,
        brand=items.brand[safe],
        valid=valid,
        diversity=pr.diversity[protos][pshape[:-1]],
    )
    conv = sigmoid(
        conversion_logit(
            s.click_model,
            cosine=cosine,
            appeal=items.appeal[safe],
            log_price_ratio=lpr,
            return_risk=items.return_risk[safe],
            conversion_offset=pr.conversion_offset[p_idx],
            price_sensitivity=pr.price_sensitivity[p_idx],
        )
    )
    return click, np.where(valid, conv, 0.0), np.where(valid, items.price[safe], 0.0)


# -- plans ----------------------------------------------------------------------


def rank_pools(week: WeekState, config: CascadeConfig) -> Pools:
    """Each prototype's rank pool (pre-rank, then rank stage); configs differing only in re-rank share it."""
    built = []
    for cands in week.candidates:
        survivors, _ = pre_rank(cands, config.pre_rank)
        built.append(rank_stage(cands, survivors, config.rank))
    return tuple(built)


def build_plan(
    scenario: Scenario,
    prototypes: Prototypes,
    week: WeekState,
    pools: Pools,
    config: CascadeConfig,
    *,
    seed: int,
    week_index: int,
) -> Plan:
    """Every prototype's shown list(s) under `config` and their outcome probabilities.

    With `exploration_rate > 0`, `simulation.exploration_draws` lists per
    prototype, each re-ranked with a generator seeded by (seed, week,
    prototype, draw): the same draws for every config (common random numbers).
    """
    n_protos = len(prototypes)
    draws = scenario.simulation.exploration_draws if config.re_rank.exploration_rate > 0 else 1
    rows = np.full((n_protos, draws, config.re_rank.list_size), -1, dtype=np.int64)
    for p in range(n_protos):
        pool, scores = pools[p]
        for r in range(draws):
            rng = np.random.default_rng([seed, _SEED_EXPLORATION, week_index + (1 << 20), p, r])
            chosen = re_rank(week.candidates[p], pool, scores, config.re_rank, rng)
            rows[p, r, : chosen.slots.size] = pool[chosen.slots]
    valid = rows >= 0
    protos = np.arange(n_protos, dtype=np.int64)
    click, conv, price = truth(scenario, prototypes, week, protos, rows, valid)
    items = week.live.items
    safe = np.where(valid, rows, 0)
    count = valid.sum(axis=2)
    stats = np.stack(
        [
            count,
            distinct(np.where(valid, items.category[safe], -1)),
            count - distinct(np.where(valid, items.style_id[safe], -1)),
            np.sum(valid & week.live.fresh[safe], axis=2),
            np.sum(valid & week.live.long_tail[safe], axis=2),
        ],
        axis=2,
    ).astype(np.float64)
    n_cand = len(items)
    return Plan(
        rows=rows,
        valid=valid,
        click_p=click,
        conversion_p=conv,
        price=price,
        stats=stats,
        latency_median_ms=lat.median_ms(scenario.latency, config, n_cand),
        n_candidates=n_cand,
    )


def distinct(codes: I64) -> F64:
    """How many distinct non-negative codes each (..., L) list holds (negative = padding)."""
    s = np.sort(codes, axis=-1)
    first = np.concatenate([np.ones((*s.shape[:-1], 1), dtype=np.bool_), s[..., 1:] != s[..., :-1]], axis=-1)
    out: F64 = np.sum(first & (s >= 0), axis=-1, dtype=np.float64)
    return out
