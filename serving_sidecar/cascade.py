"""The reference cascade ranker: applies one `CascadeConfig` end to end (pure numpy).

Callers: the ranker, through the sidecar, once per request with the arm's config
(`config.for_surface(surface)` already resolved; `rank` reads only the base
stages); the simulator and the benchmarks do the same.  `pre_rank`, `rank_stage` and
`re_rank` are exposed so tests can check each stage on its own.

1. **pre-rank**: fused = signals @ w, one float32 matrix-vector product over
   all n candidates (w holds each named signal's fusion weight; signals the
   config does not name weigh 0; a name the candidate set lacks is a
   `CascadeError`: a silently ignored weight would quietly change what an arm
   serves).  The best `candidate_cut` survive (`argpartition`, O(n); unordered).
   A NaN fused score counts as -inf.
2. **rank**: on the survivors' objective predictions (click, conversion, dwell,
   return, revenue):
   `weighted_sum` = w_c·click + w_v·conversion + w_d·dwell + w_rev·revenue − w_ret·return;
   `weighted_product` = log(click^w_c · conversion^w_v · dwell^w_d · revenue^w_rev · (1−return)^w_ret),
   each factor clamped at 1e-6 first.  The product is computed and reported as
   its log (same order, no underflow); it rewards items good on *every*
   objective, the sum lets one objective compensate another.  The best `cut`
   survive, ordered by score (ties: lower candidate row first).
3. **re-rank**: greedy MMR over that pool, one slot at a time:
   mmr = λ·(rel + freshness_boost·fresh) − (1−λ)·max_sim, with rel the rank
   score min-max scaled to [0, 1] over the pool and max_sim the largest cosine
   similarity to an item already shown (0 before the first pick, so negative
   similarity counts as no similarity).  Eligible items are not yet shown,
   within `max_per_category` / `max_per_brand`, and not near-duplicates
   (cosine similarity to every shown item <= `near_duplicate_threshold`).
   A slot at one of `sponsored_positions`, while fewer than `sponsored_quota`
   sponsored items are shown, takes the best eligible sponsored item; with
   none eligible it becomes an organic slot.  Sponsored items never take any
   other slot.  An organic slot takes the best eligible organic item, except
   that with probability ε = `exploration_rate` it takes one drawn uniformly
   from the m eligible organic items.  The list ends early when a slot has no
   eligible item (caps and collapse can exhaust a small pool).

**Logged propensity** of a shown item: the probability that this policy puts
this item in this slot *given the items already in the earlier slots* (they
fix the pool state: similarities, caps, quota).  Organic slot:
(1−ε)·1[item is the greedy choice] + ε/m.  Sponsored slot: 1.0 (deterministic).
So ε = 0 gives 1.0 everywhere, and the probability of a whole list is the
product of its items' propensities.  All randomness comes from the `rng`
passed in (when ε > 0: one `random()` per organic slot, one `integers(m)` per
exploration), so a seed reproduces a list; no clock is read.  Greedy ties go
to the item earlier in rank order.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, NamedTuple

import numpy as np
from numpy.typing import NDArray

from schemas.config import CascadeConfig, PreRank, Rank, ReRank
from schemas.events import ShownItem
from serving_sidecar.candidates import CandidateSet
from serving_sidecar.errors import SidecarError

#: Floor of each factor of `weighted_product` before the log (a zero prediction would give -inf).
PRODUCT_FLOOR: Final = 1e-6
#: Largest magnitude a stage score may have on the wire (`schemas.events.Score`).
_SCORE_LIMIT: Final = 1e12

__all__ = [
    "PRODUCT_FLOOR",
    "CascadeError",
    "RankedList",
    "ReRanked",
    "fusion_vector",
    "objective_scores",
    "pre_rank",
    "rank",
    "rank_stage",
    "re_rank",
]


class CascadeError(SidecarError):
    """A config the cascade cannot apply to a candidate set (e.g. a fusion weight on an unknown signal)."""


@dataclass(frozen=True, slots=True, eq=False)
class RankedList:
    """The shown list, slot by slot: `indices[p]` is the candidate row shown at position p.

    Per slot: the item's fused pre-rank score, its rank score, its MMR score
    when it was picked, its logged propensity (see the module docstring) and
    whether the exploration draw filled the slot.
    """

    indices: NDArray[np.int64]
    pre_rank_scores: NDArray[np.float64]
    rank_scores: NDArray[np.float64]
    re_rank_scores: NDArray[np.float64]
    propensities: NDArray[np.float64]
    explored: NDArray[np.bool_]

    @property
    def positions(self) -> NDArray[np.int64]:
        """Positions 0..len-1 (the list is contiguous by construction)."""
        return np.arange(len(self.indices), dtype=np.int64)

    def __len__(self) -> int:
        return len(self.indices)

    def to_shown_items(self, candidates: CandidateSet) -> tuple[ShownItem, ...]:
        """The impression's items for the event sink (`candidates` must be the set this list ranked).

        Scores are clamped to the wire bounds (non-finite ones become 0 or the
        bound) so an emitted impression always decodes.
        """
        rows = self.indices
        scores = np.stack([self.pre_rank_scores, self.rank_scores, self.re_rank_scores], axis=1)
        scores = np.clip(np.nan_to_num(scores, nan=0.0), -_SCORE_LIMIT, _SCORE_LIMIT)
        names = candidates.category_names
        columns = zip(
            candidates.item_ids[rows].tolist(),
            candidates.category[rows].tolist(),
            scores.tolist(),
            candidates.style_id[rows].tolist(),
            self.propensities.tolist(),
            candidates.fresh[rows].tolist(),
            candidates.long_tail[rows].tolist(),
            strict=True,
        )
        return tuple(
            ShownItem(
                item_id=str(item),
                position=position,
                category=names[cat],
                scores=(s[0], s[1], s[2]),
                style_id=str(style),
                propensity=prop,
                fresh=fresh,
                long_tail=tail,
            )
            for position, (item, cat, s, style, prop, fresh, tail) in enumerate(columns)
        )


class ReRanked(NamedTuple):
    """What `re_rank` chose: `slots[p]` indexes the pool; the other arrays are per slot."""

    slots: NDArray[np.int64]
    mmr_scores: NDArray[np.float64]
    propensities: NDArray[np.float64]
    explored: NDArray[np.bool_]


def fusion_vector(candidates: CandidateSet, stage: PreRank) -> NDArray[np.float32]:
    """The (k,) weight per signal column; raises `CascadeError` on a weight naming an unknown signal."""
    column = {name: i for i, name in enumerate(candidates.signal_names)}
    weights = np.zeros(len(column), dtype=np.float32)
    for signal in stage.fusion_weights:
        i = column.get(signal.name)
        if i is None:
            msg = f"pre_rank.fusion_weights: signal {signal.name!r} is not in the candidate set"
            raise CascadeError(msg, hint=f"known signals: {', '.join(candidates.signal_names) or '(none)'}")
        weights[i] = signal.value
    return weights


def pre_rank(candidates: CandidateSet, stage: PreRank) -> tuple[NDArray[np.int64], NDArray[np.float32]]:
    """Rows of the best `candidate_cut` candidates (unordered) and the fused score of every candidate."""
    fused: NDArray[np.float32] = candidates.signals @ fusion_vector(candidates, stage)
    nan = np.isnan(fused)
    if nan.any():  # NaN would sort above every real score and win the cut
        fused[nan] = -np.inf
    n = fused.shape[0]
    if stage.candidate_cut >= n:
        return np.arange(n, dtype=np.int64), fused
    survivors = np.argpartition(fused, n - stage.candidate_cut)[n - stage.candidate_cut :]
    return survivors.astype(np.int64, copy=False), fused


def objective_scores(objectives: NDArray[np.float32], stage: Rank) -> NDArray[np.float64]:
    """Rank score of each row of an (m, 5) objective block (formulas in the module docstring)."""
    w = stage.objective_weights
    values = objectives.astype(np.float64)
    scores: NDArray[np.float64]
    if stage.combination == "weighted_sum":
        scores = values @ np.array([w.click, w.conversion, w.dwell, -w.return_, w.revenue])
        return scores
    values[:, 3] = 1.0 - values[:, 3]  # the product penalises returns through P(no return)
    logs = np.log(np.maximum(values, PRODUCT_FLOOR))
    scores = logs @ np.array([w.click, w.conversion, w.dwell, w.return_, w.revenue])
    return scores


def rank_stage(
    candidates: CandidateSet, survivors: NDArray[np.int64], stage: Rank
) -> tuple[NDArray[np.int64], NDArray[np.float64]]:
    """Rows of the best `cut` survivors ordered by rank score (descending), and those scores."""
    scores = objective_scores(candidates.objectives[survivors], stage)
    scores[np.isnan(scores)] = -np.inf
    m = scores.shape[0]
    keep = min(stage.cut, m)
    top = np.argpartition(scores, m - keep)[m - keep :] if keep < m else np.arange(m)
    # lexsort: score descending, then candidate row, so ties never depend on partition internals.
    order = top[np.lexsort((survivors[top], -scores[top]))]
    return survivors[order], scores[order]


def _relevance(scores: NDArray[np.float64]) -> NDArray[np.float64]:
    """Rank scores min-max scaled to [0, 1] over the pool (all 0 when they are all equal)."""
    finite = scores[np.isfinite(scores)]
    if finite.size == 0:
        return np.zeros(scores.shape, dtype=np.float64)
    low, span = float(finite.min()), float(finite.max() - finite.min())
    if span <= 0.0:
        return np.zeros(scores.shape, dtype=np.float64)
    return np.clip(np.nan_to_num((scores - low) / span, nan=0.0), 0.0, 1.0)


def re_rank(
    candidates: CandidateSet,
    pool: NDArray[np.int64],
    pool_scores: NDArray[np.float64],
    stage: ReRank,
    rng: np.random.Generator,
    *,
    forced: NDArray[np.int64] | None = None,
) -> ReRanked:
    """Fill up to `list_size` slots from `pool` (candidate rows, rank order) by MMR with caps and slots.

    Each pick costs O(pool·d): one similarity vector against the new item
    updates the running max-similarity, so only the ≤ `list_size` picks loop
    in Python.

    `forced` (replay, `serving_sidecar.replay`): the picks are given (indices
    into `pool`, -1 for an item not in it) instead of drawn, nothing is drawn
    from `rng`, and `propensities` become this stage's probability of each
    forced pick given the forced earlier ones.  The arrays stop after the first
    pick of probability 0 (no later slot can then follow this policy) or when
    this stage's list would have ended.
    """
    size = pool.shape[0]
    lam = stage.mmr_lambda
    eps = stage.exploration_rate
    relevance = lam * (_relevance(pool_scores) + stage.freshness_boost * candidates.fresh[pool])
    embeddings = candidates.embeddings[pool]
    category_codes = candidates.category[pool]
    brand_codes = candidates.brand[pool]
    categories: list[int] = category_codes.tolist()
    brands: list[int] = brand_codes.tolist()
    sponsored = candidates.sponsored[pool]
    organic = ~sponsored
    max_sim = np.zeros(size, dtype=np.float32)
    alive = np.ones(size, dtype=np.bool_)  # not shown, not collapsed, within caps
    threshold = np.float32(stage.near_duplicate_threshold)
    per_category: dict[int, int] = {}
    per_brand: dict[int, int] = {}
    sponsored_slots = frozenset(stage.sponsored_positions)
    quota = stage.sponsored_quota
    slots: list[int] = []
    mmr_scores: list[float] = []
    propensities: list[float] = []
    explored: list[bool] = []

    # Hot loop (≤ list_size turns): array methods and np.dot rather than np.argmax / `@`,
    # which cost several µs more per call on a few hundred items.
    slot_count = min(stage.list_size, size) if forced is None else min(stage.list_size, size, forced.size)
    for position in range(slot_count):
        mmr = relevance - (1.0 - lam) * max_sim
        pick, propensity, drawn = -1, 1.0, False
        if quota > 0 and position in sponsored_slots:
            eligible = alive & sponsored
            best = int(np.where(eligible, mmr, -np.inf).argmax())
            if eligible[best]:
                pick = best
                quota -= 1
                if forced is not None:  # a sponsored slot is deterministic
                    pick, propensity = int(forced[position]), float(int(forced[position]) == best)
        if pick < 0:
            eligible = alive & organic
            greedy = int(np.where(eligible, mmr, -np.inf).argmax())
            if not eligible[greedy]:
                break
            pick = greedy
            if forced is not None or eps > 0.0:
                m = int(np.count_nonzero(eligible))
                if forced is not None:
                    pick = int(forced[position])
                elif rng.random() < eps:
                    pick, drawn = int(np.flatnonzero(eligible)[rng.integers(m)]), True
                # a drawn pick is always eligible; only a forced one (replay) may not be, and has probability 0
                propensity = (1.0 - eps) * (pick == greedy) + eps / m if pick >= 0 and eligible[pick] else 0.0
        if propensity == 0.0:  # replay only: this policy cannot show the forced item here
            slots.append(pick)
            mmr_scores.append(float("nan"))
            propensities.append(0.0)
            explored.append(False)
            break
        slots.append(pick)
        mmr_scores.append(float(mmr[pick]))
        propensities.append(propensity)
        explored.append(drawn)

        alive[pick] = False
        np.maximum(max_sim, embeddings.dot(embeddings[pick]), out=max_sim)
        alive &= max_sim <= threshold  # near-duplicate collapse
        category, brand = categories[pick], brands[pick]
        per_category[category] = per_category.get(category, 0) + 1
        if per_category[category] >= stage.max_per_category:
            alive &= category_codes != category
        per_brand[brand] = per_brand.get(brand, 0) + 1
        if per_brand[brand] >= stage.max_per_brand:
            alive &= brand_codes != brand

    return ReRanked(
        slots=np.array(slots, dtype=np.int64),
        mmr_scores=np.array(mmr_scores, dtype=np.float64),
        propensities=np.array(propensities, dtype=np.float64),
        explored=np.array(explored, dtype=np.bool_),
    )


def rank(candidates: CandidateSet, config: CascadeConfig, rng: np.random.Generator) -> RankedList:
    """Run the whole cascade for one request (pure apart from drawing from `rng`).

    Every cut is clamped to what the previous stage produced, so a config that
    skipped `validate_config` still yields a valid (maybe shorter) list.
    """
    survivors, fused = pre_rank(candidates, config.pre_rank)
    pool, pool_scores = rank_stage(candidates, survivors, config.rank)
    chosen = re_rank(candidates, pool, pool_scores, config.re_rank, rng)
    rows = pool[chosen.slots]
    return RankedList(
        indices=rows,
        pre_rank_scores=fused[rows].astype(np.float64),
        rank_scores=pool_scores[chosen.slots],
        re_rank_scores=chosen.mmr_scores,
        propensities=chosen.propensities,
        explored=chosen.explored,
    )
