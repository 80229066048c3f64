"""The reference cascade ranker: cuts, weights, combination forms, re-rank policy, propensities.

Correctness only; latency is measured by a benchmark, never asserted here.
"""

from __future__ import annotations

import dataclasses
from collections import Counter, defaultdict
from typing import Any

import msgspec
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas.config import CascadeConfig, Objectives, PreRank, Rank, ReRank, Signal, default_config, validate_config
from schemas.events import ShownItem
from serving_sidecar.candidates import (
    SYNTHETIC_SIGNALS,
    CandidateError,
    CandidateSet,
    synthetic_candidates,
)
from serving_sidecar.cascade import (
    PRODUCT_FLOOR,
    CascadeError,
    RankedList,
    objective_scores,
    pre_rank,
    rank,
    rank_stage,
)


def make_config(
    *,
    fusion: dict[str, float] | None = None,
    candidate_cut: int = 200,
    rank_cut: int = 60,
    combination: str = "weighted_sum",
    **re_rank: Any,
) -> CascadeConfig:
    """`default_config()` with the given changes; re-rank fields by keyword (validated).

    Exploration and sponsored slots are off unless asked for, so each test sees only the rule it checks.
    """
    re_rank = {"exploration_rate": 0.0, "sponsored_quota": 0, "sponsored_positions": (), **re_rank}
    base = default_config()
    pre = base.pre_rank
    if fusion is not None:
        pre = PreRank(fusion_weights=tuple(Signal(k, v) for k, v in fusion.items()), candidate_cut=candidate_cut)
    else:
        pre = msgspec.structs.replace(pre, candidate_cut=candidate_cut)
    stage = msgspec.structs.replace(base.rank, cut=rank_cut, combination=combination)
    rerank = msgspec.structs.replace(base.re_rank, **re_rank)
    return validate_config(CascadeConfig(pre_rank=pre, rank=stage, re_rank=rerank))


def cands(seed: int, n: int = 2_000, **kwargs: Any) -> CandidateSet:
    return synthetic_candidates(n, np.random.default_rng(seed), **kwargs)


def _check_valid(ranked: RankedList, c: CandidateSet, config: CascadeConfig) -> None:
    """Invariants every served list must satisfy, whatever the config."""
    rr = config.re_rank
    rows = ranked.indices
    assert len(rows) <= rr.list_size
    assert len(set(rows.tolist())) == len(rows)
    assert ranked.positions.tolist() == list(range(len(rows)))
    assert np.all(ranked.propensities > 0.0)
    assert np.all(ranked.propensities <= 1.0)
    assert max(Counter(c.category[rows].tolist()).values(), default=0) <= rr.max_per_category
    assert max(Counter(c.brand[rows].tolist()).values(), default=0) <= rr.max_per_brand
    sponsored_at = np.flatnonzero(c.sponsored[rows]).tolist()
    assert set(sponsored_at) <= set(rr.sponsored_positions)
    assert len(sponsored_at) <= rr.sponsored_quota
    emb = c.embeddings[rows]
    sims = emb @ emb.T
    np.fill_diagonal(sims, -1.0)
    assert sims.size == 0 or sims.max() <= rr.near_duplicate_threshold + 1e-5


# --- pre-rank and rank -------------------------------------------------------------------------


def test_cut_sizes_are_respected() -> None:
    c = cands(1)
    config = make_config(candidate_cut=300, rank_cut=40, list_size=20, max_per_category=20, max_per_brand=20)
    survivors, fused = pre_rank(c, config.pre_rank)
    assert len(survivors) == 300
    assert len(set(survivors.tolist())) == 300
    assert fused.shape == (len(c),)
    pool, scores = rank_stage(c, survivors, config.rank)
    assert len(pool) == 40
    assert set(pool.tolist()) <= set(survivors.tolist())
    assert np.all(np.diff(scores) <= 0)
    ranked = rank(c, config, np.random.default_rng(0))
    assert len(ranked) == 20
    assert set(ranked.indices.tolist()) <= set(pool.tolist())


def test_cuts_larger_than_the_input_are_clamped() -> None:
    c = cands(2, n=30)
    config = CascadeConfig(
        pre_rank=PreRank(fusion_weights=(Signal("popularity", 1.0),), candidate_cut=1_000),
        rank=Rank(objective_weights=default_config().rank.objective_weights, combination="weighted_sum", cut=500),
        re_rank=msgspec.structs.replace(default_config().re_rank, list_size=200, max_per_category=200),
    )
    ranked = rank(c, config, np.random.default_rng(0))
    _check_valid(ranked, c, config)
    assert 0 < len(ranked) <= 30


@pytest.mark.parametrize("signal", SYNTHETIC_SIGNALS)
def test_all_fusion_weight_on_one_signal_keeps_the_top_items_by_that_signal(signal: str) -> None:
    c = cands(3)
    survivors, _ = pre_rank(c, make_config(fusion={signal: 1.0}, candidate_cut=150).pre_rank)
    column = c.signals[:, SYNTHETIC_SIGNALS.index(signal)]
    dropped = np.setdiff1d(np.arange(len(c)), survivors)
    assert column[survivors].min() >= column[dropped].max()  # ">=" allows ties at the boundary


def test_fusion_weights_change_the_survivors() -> None:
    c = cands(4)
    a, _ = pre_rank(c, make_config(fusion={"popularity": 1.0}).pre_rank)
    b, _ = pre_rank(c, make_config(fusion={"personal_affinity": 1.0}).pre_rank)
    assert len(set(a.tolist()) ^ set(b.tolist())) > 50


def test_a_weight_on_an_unknown_signal_is_an_error_naming_it() -> None:
    with pytest.raises(CascadeError, match="margin"):
        rank(cands(5), make_config(fusion={"popularity": 1.0, "margin": 0.5}), np.random.default_rng(0))


def test_a_nan_signal_never_wins_the_cut() -> None:
    c = cands(6, n=100)
    c.signals[:10, 0] = np.nan
    survivors, fused = pre_rank(c, make_config(fusion={"popularity": 1.0}, candidate_cut=50, rank_cut=20).pre_rank)
    assert not set(survivors.tolist()) & set(range(10))
    assert np.all(np.isneginf(fused[:10]))


def test_weighted_sum_and_weighted_product_follow_their_formulas() -> None:
    objectives = np.array(
        [
            [0.9, 1e-4, 1.0, 0.1, 1.0],  # great click, almost no conversion
            [0.3, 0.3, 1.0, 0.1, 1.0],  # balanced
            [0.3, 0.3, 1.0, 0.6, 1.0],  # balanced but often returned
            [0.0, 0.5, 1.0, 0.1, 1.0],  # a zero prediction: floored in the product
        ],
        dtype=np.float32,
    )
    weights = Objectives(click=1.0, conversion=1.0, dwell=0.0, return_=0.5, revenue=0.0)
    s = objectives.astype(np.float64)
    total = objective_scores(objectives, Rank(objective_weights=weights, combination="weighted_sum", cut=4))
    np.testing.assert_allclose(total, s[:, 0] + s[:, 1] - 0.5 * s[:, 3])
    product = objective_scores(objectives, Rank(objective_weights=weights, combination="weighted_product", cut=4))
    expected = np.log(np.maximum(s[:, 0], PRODUCT_FLOOR)) + np.log(s[:, 1]) + 0.5 * np.log(1.0 - s[:, 3])
    np.testing.assert_allclose(product, expected)
    # The sum lets click compensate for conversion; the product does not.
    assert total[0] > total[1]
    assert product[1] > product[0]
    # Returns are penalised in both forms.
    assert total[2] < total[1]
    assert product[2] < product[1]
    assert np.isfinite(product[3])


def test_the_combination_form_changes_the_rank_cut() -> None:
    c = cands(7)
    survivors, _ = pre_rank(c, make_config().pre_rank)
    total, _ = rank_stage(c, survivors, make_config(combination="weighted_sum").rank)
    product, _ = rank_stage(c, survivors, make_config(combination="weighted_product").rank)
    assert total.tolist() != product.tolist()


# --- re-rank policy ----------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(5))
def test_category_and_brand_caps_hold(seed: int) -> None:
    c = cands(seed, n_brands=6)
    config = make_config(list_size=20, max_per_category=2, max_per_brand=3, exploration_rate=0.3)
    ranked = rank(c, config, np.random.default_rng(seed))
    assert len(ranked) > 0
    _check_valid(ranked, c, config)


def test_near_duplicates_are_collapsed() -> None:
    c = cands(8)
    loose = make_config(list_size=30, mmr_lambda=1.0, near_duplicate_threshold=1.0, max_per_category=30)
    strict = msgspec.structs.replace(
        loose, re_rank=msgspec.structs.replace(loose.re_rank, near_duplicate_threshold=0.9)
    )

    def max_pair_sim(config: CascadeConfig) -> float:
        emb = c.embeddings[rank(c, config, np.random.default_rng(0)).indices]
        sims = emb @ emb.T
        np.fill_diagonal(sims, -1.0)
        return float(sims.max())

    assert max_pair_sim(loose) > 0.95  # colourways of one style do make it into a pure-relevance list
    assert max_pair_sim(strict) <= 0.9 + 1e-5


@pytest.mark.parametrize("seed", range(5))
def test_sponsored_items_only_at_sponsored_positions_and_within_quota(seed: int) -> None:
    c = cands(seed, sponsored_rate=0.3)
    config = make_config(list_size=12, sponsored_quota=2, sponsored_positions=(1, 4, 9), exploration_rate=0.2)
    ranked = rank(c, config, np.random.default_rng(seed))
    _check_valid(ranked, c, config)
    at = np.flatnonzero(c.sponsored[ranked.indices]).tolist()
    assert at == [1, 4]  # plenty of sponsored items: the first two sponsored positions take them
    assert np.all(ranked.propensities[at] == 1.0)


def test_a_sponsored_slot_without_a_sponsored_item_goes_to_organic() -> None:
    c = cands(9, sponsored_rate=0.0)
    config = make_config(list_size=12, sponsored_quota=2, sponsored_positions=(0, 5))
    ranked = rank(c, config, np.random.default_rng(0))
    assert len(ranked) == 12
    assert not c.sponsored[ranked.indices].any()


def test_no_exploration_means_propensity_one_and_a_deterministic_list() -> None:
    c = cands(10, sponsored_rate=0.1)
    config = make_config(list_size=20, exploration_rate=0.0)
    a = rank(c, config, np.random.default_rng(1))
    b = rank(c, config, np.random.default_rng(2))
    assert a.indices.tolist() == b.indices.tolist()
    assert np.all(a.propensities == 1.0)
    assert not a.explored.any()


def test_same_seed_same_list() -> None:
    c = cands(11)
    config = make_config(list_size=20, exploration_rate=0.5)
    a, b = (rank(c, config, np.random.default_rng(42)) for _ in range(2))
    for field in dataclasses.fields(RankedList):
        np.testing.assert_array_equal(getattr(a, field.name), getattr(b, field.name))
    assert a.explored.any()


def test_logged_propensities_match_empirical_slot_frequencies() -> None:
    """Over many seeds, P(item at slot | earlier slots) matches the logged propensity.

    Slot 0 has one pool state; slot 1 is checked conditionally on each slot-0
    item seen often enough.  Tolerance: 5 binomial standard errors per
    (prefix, item) cell, so a wrong formula (e.g. dropping the greedy term) fails
    while chance alone essentially never does.
    """
    c = cands(12, n=60)
    eps = 0.3
    config = make_config(fusion={"popularity": 1.0}, candidate_cut=60, rank_cut=15, list_size=2, exploration_rate=eps)
    runs = 6_000
    logged: dict[tuple[int, ...], dict[int, float]] = defaultdict(dict)
    seen: dict[tuple[int, ...], Counter[int]] = defaultdict(Counter)
    for seed in range(runs):
        ranked = rank(c, config, np.random.default_rng(seed))
        rows = ranked.indices.tolist()
        for slot, row in enumerate(rows):
            prefix = tuple(rows[:slot])
            p = float(ranked.propensities[slot])
            assert logged[prefix].setdefault(row, p) == p  # same pool state, same propensity
            seen[prefix][row] += 1
    checked = 0
    for prefix, counts in seen.items():
        total = sum(counts.values())
        if total < 500:
            continue
        # Conditional on the prefix, the slot's distribution must sum to one over the items it can take.
        assert sum(logged[prefix].values()) <= 1.0 + 1e-9
        for row, count in counts.items():
            p = logged[prefix][row]
            tolerance = 5.0 * np.sqrt(p * (1.0 - p) / total) + 1.0 / total
            assert abs(count / total - p) <= tolerance, (prefix, row, count / total, p)
            checked += 1
    assert checked >= 20
    # Slot 0: m = the organic items of the pool; the greedy one carries (1 - eps) + eps/m, the others eps/m.
    pool, _ = rank_stage(c, pre_rank(c, config.pre_rank)[0], config.rank)
    m = int((~c.sponsored[pool]).sum())
    assert len(logged[()]) == m
    assert sorted(logged[()].values()) == pytest.approx([eps / m] * (m - 1) + [1.0 - eps + eps / m])


def test_a_large_freshness_boost_puts_fresh_items_first() -> None:
    c = cands(13)
    config = make_config(
        list_size=20,
        mmr_lambda=1.0,
        freshness_boost=1.0,
        near_duplicate_threshold=1.0,
        max_per_category=20,
        max_per_brand=20,
    )
    ranked = rank(c, config, np.random.default_rng(0))
    fresh = c.fresh[ranked.indices]
    pool, _ = rank_stage(c, pre_rank(c, config.pre_rank)[0], config.rank)
    expected = min(20, int(c.fresh[pool].sum()))
    assert expected > 0
    assert fresh.tolist() == [True] * expected + [False] * (20 - expected)
    plain = msgspec.structs.replace(config.re_rank, freshness_boost=0.0)
    no_boost = rank(c, msgspec.structs.replace(config, re_rank=plain), np.random.default_rng(0))
    assert c.fresh[no_boost.indices[:expected]].sum() < expected


def test_lower_mmr_lambda_gives_more_distinct_categories_on_average() -> None:
    def mean_categories(lam: float) -> float:
        config = make_config(list_size=12, mmr_lambda=lam, max_per_category=12, max_per_brand=12)
        counts = [
            len(set(c.category[rank(c, config, np.random.default_rng(0)).indices].tolist()))
            for c in (cands(100 + s) for s in range(20))
        ]
        return float(np.mean(counts))

    assert mean_categories(0.3) > mean_categories(0.7) > mean_categories(1.0)


# --- output and input contracts ----------------------------------------------------------------


def test_to_shown_items_carries_the_candidate_fields() -> None:
    c = cands(14)
    ranked = rank(c, make_config(list_size=10, exploration_rate=0.2), np.random.default_rng(3))
    items = ranked.to_shown_items(c)
    assert [i.position for i in items] == list(range(10))
    for item, row, pre, rk, mmr, prop in zip(
        items,
        ranked.indices.tolist(),
        ranked.pre_rank_scores,
        ranked.rank_scores,
        ranked.re_rank_scores,
        ranked.propensities,
        strict=True,
    ):
        assert item.item_id == str(c.item_ids[row])
        assert item.category == c.category_names[c.category[row]]
        assert item.style_id == str(c.style_id[row])
        assert item.fresh == bool(c.fresh[row])
        assert item.long_tail == bool(c.long_tail[row])
        assert item.scores == pytest.approx((pre, rk, mmr))
        assert item.propensity == prop
    # The items pass the strict wire decoder (bounds included).
    assert msgspec.json.decode(msgspec.json.encode(items), type=tuple[ShownItem, ...]) == items


def test_an_empty_candidate_set_gives_an_empty_list() -> None:
    c = cands(15, n=0)
    ranked = rank(c, make_config(), np.random.default_rng(0))
    assert len(ranked) == 0
    assert ranked.to_shown_items(c) == ()


def test_misshapen_candidate_sets_are_refused() -> None:
    c = cands(16, n=10)
    with pytest.raises(CandidateError, match="signals"):
        dataclasses.replace(c, signals=c.signals[:, :2])
    with pytest.raises(CandidateError, match="category codes"):
        dataclasses.replace(c, category=c.category + 100)
    with pytest.raises(CandidateError, match="objectives"):
        dataclasses.replace(c, objectives=c.objectives[:, :4])


def test_synthetic_embeddings_are_unit_vectors_with_near_duplicate_colourways() -> None:
    c = cands(17, n=500)
    np.testing.assert_allclose(np.linalg.norm(c.embeddings, axis=1), 1.0, atol=1e-5)
    same_style = c.style_id[:, None] == c.style_id[None, :]
    np.fill_diagonal(same_style, val=False)
    sims = c.embeddings @ c.embeddings.T
    assert sims[same_style].min() > 0.95
    assert np.median(sims[~same_style]) < 0.5


# --- property: any valid config yields a valid list ----------------------------------------------


@st.composite
def valid_configs(draw: st.DrawFn, n: int) -> CascadeConfig:
    names = draw(st.lists(st.sampled_from(SYNTHETIC_SIGNALS), min_size=1, max_size=4, unique=True))
    values = [draw(st.floats(0.0, 100.0)) for _ in names]
    values[draw(st.integers(0, len(names) - 1))] = draw(st.floats(0.01, 100.0))  # at least one > 0
    candidate_cut = draw(st.integers(1, max(1, n + 5)))
    cut = draw(st.integers(1, candidate_cut))
    list_size = draw(st.integers(1, min(cut, 200)))
    positions = draw(st.lists(st.integers(0, list_size - 1), max_size=min(10, list_size), unique=True))
    weight = st.floats(0.0, 100.0)
    objectives = Objectives(
        click=draw(st.floats(0.01, 100.0)),
        conversion=draw(weight),
        dwell=draw(weight),
        return_=draw(weight),
        revenue=draw(weight),
    )
    config = CascadeConfig(
        pre_rank=PreRank(
            fusion_weights=tuple(Signal(k, v) for k, v in zip(names, values, strict=True)),
            candidate_cut=candidate_cut,
        ),
        rank=Rank(
            objective_weights=objectives,
            combination=draw(st.sampled_from(["weighted_sum", "weighted_product"])),
            cut=cut,
        ),
        re_rank=ReRank(
            list_size=list_size,
            mmr_lambda=draw(st.floats(0.0, 1.0)),
            max_per_category=draw(st.integers(1, 10)),
            max_per_brand=draw(st.integers(1, 10)),
            near_duplicate_threshold=draw(st.floats(0.5, 1.0)),
            freshness_boost=draw(st.floats(0.0, 1.0)),
            sponsored_quota=draw(st.integers(0, len(positions))),
            sponsored_positions=tuple(positions),
            exploration_rate=draw(st.floats(0.0, 0.5)),
        ),
    )
    return validate_config(config)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), n=st.integers(0, 60), seed=st.integers(0, 2**32 - 1))
def test_any_valid_config_gives_a_valid_list(data: st.DataObject, n: int, seed: int) -> None:
    c = synthetic_candidates(n, np.random.default_rng(seed), sponsored_rate=0.2, n_brands=5)
    config = data.draw(valid_configs(n))
    ranked = rank(c, config, np.random.default_rng(seed + 1))
    _check_valid(ranked, c, config)
    assert len(ranked.to_shown_items(c)) == len(ranked)
