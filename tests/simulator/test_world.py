"""The world: catalogue geometry and turnover, routing as the sidecar routes, totals, simulate vs expected."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec
import numpy as np
import pytest

from agents.stats.ratio import compare_sums
from schemas.config import Allocation, ArmShare, CascadeConfig, default_config
from schemas.metrics import FIELD_INDEX, N_LATENCY_BINS, latency_quantile
from serving_sidecar.assignment import Router, arm_index_for_bucket, assignment_bucket
from serving_sidecar.cascade import rank
from serving_sidecar.holder import ArmConfig, Snapshot
from simulator.catalogue import WEEK_S
from simulator.scenario import Scenario, SimulatorError
from simulator.world import SIGNAL_NAMES, World

HOUR = 3600.0


def _variant(**re_rank: Any) -> CascadeConfig:
    base = default_config()
    return msgspec.structs.replace(base, re_rank=msgspec.structs.replace(base.re_rank, **re_rank))


def test_colourways_are_near_duplicates_and_styles_are_not(small_world: World) -> None:
    items = small_world.catalogue.live(0).items
    emb = items.embeddings.astype(np.float64)
    sims_within, sims_across = [], []
    styles, counts = np.unique(items.style_id, return_counts=True)
    for style in styles[counts > 1][:200]:
        rows = np.flatnonzero(items.style_id == style)
        block = emb[rows] @ emb[rows].T
        sims_within.extend(block[np.triu_indices(rows.size, k=1)].tolist())
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, len(items), size=(2, 2000))
    different = items.style_id[a] != items.style_id[b]
    sims_across = np.sum(emb[a] * emb[b], axis=1)[different]
    assert np.median(sims_within) > 0.95
    assert np.min(sims_within) > 0.85
    assert np.quantile(sims_across, 0.99) < 0.9
    # Several categories, brands; sponsored and fresh items exist; prices positive.
    assert np.unique(items.category).size >= 10
    assert items.sponsored.any() and not items.sponsored.all()
    assert np.all(items.price > 0)


def test_turnover_is_deterministic_per_week_and_matches_the_rate(make_scenario: Callable[..., Scenario]) -> None:
    scenario = make_scenario("apparel_seasonal")
    world = World(scenario, seed=1)
    week0 = set(world.catalogue.live(0).items.item_ids.tolist())
    week1 = world.catalogue.live(1)
    ids1 = set(week1.items.item_ids.tolist())
    retired = 1 - len(week0 & ids1) / len(week0)
    assert retired == pytest.approx(scenario.catalogue.turnover_per_week, abs=0.08)
    arrived = ids1 - week0
    assert arrived and all(week1.fresh[week1.row_of[i]] for i in arrived)
    # Built in another order (week 1 first) by a fresh world of the same seed: identical.
    again = World(scenario, seed=1)
    assert again.catalogue.live(1).items.item_ids.tolist() == week1.items.item_ids.tolist()
    other = World(scenario, seed=2)
    assert other.catalogue.live(1).items.item_ids.tolist() != week1.items.item_ids.tolist() or not np.allclose(
        other.catalogue.live(1).items.price[:10], week1.items.price[:10]
    )


def test_candidates_feed_the_real_cascade_with_the_default_configs_signals(small_world: World) -> None:
    user = small_world.user(7)
    cands = small_world.candidates(user, at_s=0.0)
    assert cands.signal_names == SIGNAL_NAMES
    assert {s.name for s in default_config().pre_rank.fusion_weights} <= set(cands.signal_names)
    assert np.all((cands.objectives >= 0) & np.isfinite(cands.objectives))
    assert np.all(cands.objectives[:, [0, 1, 3]] <= 1)
    ranked = rank(cands, default_config(), np.random.default_rng(0))
    assert 0 < len(ranked) <= default_config().re_rank.list_size


def test_the_fast_path_shows_exactly_what_cascade_rank_shows(small_world: World) -> None:
    config = _variant(exploration_rate=0.0)
    plan = small_world._plan(config, 0)
    for p in (0, 5, 17):
        cands = small_world._week(0).candidates[p]
        shown = rank(cands, config, np.random.default_rng(0)).indices
        assert plan.rows[p, 0, : shown.size].tolist() == shown.tolist()
        assert np.all(plan.rows[p, 0, shown.size :] == -1)


def test_routing_matches_the_sidecars_router(small_world: World) -> None:
    allocation = Allocation(
        experiment_id="e1",
        salt="salt-7",
        arms=(ArmShare("control", 1, 0.7), ArmShare("a", 2, 0.2), ArmShare("b", 3, 0.1)),
    )
    arm_configs = {a.arm_id: ArmConfig(a.arm_id, a.config_version, default_config()) for a in allocation.arms}
    snapshot = Snapshot(version=3, control=arm_configs["control"], allocation=allocation, arms=arm_configs)
    router = Router()
    arms = small_world.arm_indices(allocation)
    ids = [a.arm_id for a in allocation.arms]
    for index in range(0, len(small_world.users), 7):
        uid = small_world.users.user_ids[index]
        assert ids[arms[index]] == router.assign(snapshot, uid).arm_id
        assert arms[index] == arm_index_for_bucket(allocation, assignment_bucket("salt-7", uid))
    assert {ids[i] for i in arms.tolist()} == set(ids)


def test_simulate_splits_requests_by_allocation_and_totals_are_consistent(small_world: World) -> None:
    allocation = Allocation(
        experiment_id="e1", salt="s", arms=(ArmShare("control", 1, 0.75), ArmShare("treat", 2, 0.25))
    )
    configs = {1: default_config(), 2: _variant(mmr_lambda=0.6)}
    rate = small_world.scenario.requests_per_s
    out = small_world.simulate(allocation, configs, start_s=0.0, duration_s=4 * HOUR, rng=np.random.default_rng(3))
    total = sum(t.total("requests") for t in out.values())
    assert total == pytest.approx(rate * 4 * HOUR, rel=5 * (rate * 4 * HOUR) ** -0.5)
    # Each request's arm is an independent draw with P = the request mass of the arm's users.
    arms = small_world.arm_indices(allocation)
    for i, arm in enumerate(allocation.arms):
        share = float(small_world.users.request_p[arms == i].sum())
        got = out[arm.arm_id].total("requests")
        assert abs(got - share * total) < 4.5 * np.sqrt(total * share * (1 - share))
        assert share == pytest.approx(arm.share, abs=0.08)  # users' hashes fill the lanes
    for totals in out.values():
        s = totals.sums
        assert np.all(s[FIELD_INDEX["clicks"]] <= s[FIELD_INDEX["impressions"]])
        assert np.all(s[FIELD_INDEX["conversions"]] <= s[FIELD_INDEX["clicks"]])
        assert np.all(s[FIELD_INDEX["impressions"]] <= 12 * s[FIELD_INDEX["requests"]])
        assert totals.latency_hist.shape == (N_LATENCY_BINS,)
        assert totals.latency_hist.sum() == totals.total("requests")
        assert totals.item_events == totals.total("impressions") + totals.total("clicks") + totals.total("conversions")
        assert totals.windows == 4 * 60  # every minute of the 4 hours saw traffic
        assert totals.total("clicks") > 0 and totals.total("revenue") > 0


def test_a_per_request_allocation_puts_every_users_requests_in_both_arms(small_world: World) -> None:
    """Per request, bucket b holds the same users in both arms: a paired read then drops their propensity."""
    arms = (ArmShare("control", 1, 0.5), ArmShare("t", 1, 0.5))  # an A/A: both arms serve config 1
    reads = {}
    for unit in ("user", "request"):
        allocation = Allocation(experiment_id="e", salt="s", arms=arms, unit=unit)  # type: ignore[arg-type]
        out = small_world.simulate(
            allocation, {1: default_config()}, start_s=0.0, duration_s=24 * HOUR, rng=np.random.default_rng(5)
        )
        c, t = out["control"].sums, out["t"].sums
        requests = FIELD_INDEX["requests"]
        assert c[requests].sum() == pytest.approx(t[requests].sum(), rel=0.05)
        reads[unit] = (
            float(np.corrcoef(c[requests], t[requests])[0, 1]),
            compare_sums(c, t, "clicks", "requests", paired=True).difference_variance,
            compare_sums(c, t, "clicks", "requests").difference_variance,
        )
    corr_user, paired_user, independent_user = reads["user"]
    corr_request, paired_request, independent_request = reads["request"]
    # the same users per bucket: the arms' bucket traffic moves together, and pairing removes most variance
    assert corr_request > 0.9 > corr_user
    assert paired_request < 0.5 * independent_request
    # disjoint users per bucket: pairing has nothing to remove
    assert paired_user == pytest.approx(independent_user, rel=0.5)


def test_simulate_is_deterministic_in_the_rng_and_crosses_weeks(small_world: World) -> None:
    allocation = Allocation(experiment_id="e", salt="s", arms=(ArmShare("control", 1, 1.0),))
    configs = {1: default_config()}

    def run(seed: int) -> np.ndarray:
        out = small_world.simulate(
            allocation, configs, start_s=WEEK_S - HOUR, duration_s=2 * HOUR, rng=np.random.default_rng(seed)
        )
        return out["control"].sums

    assert np.array_equal(run(1), run(1))
    assert not np.array_equal(run(1), run(2))


def test_simulate_agrees_with_expected(small_world: World) -> None:
    """Sample means over a large sample lie within a few standard errors (delta method over user buckets)."""
    config = _variant(exploration_rate=0.05)
    allocation = Allocation(experiment_id="e", salt="s", arms=(ArmShare("control", 1, 1.0),))
    out = small_world.simulate(
        allocation, {1: config}, start_s=0.0, duration_s=12 * HOUR, rng=np.random.default_rng(11), buckets=128
    )["control"]
    exp = small_world.expected(config, at_s=0.0)
    n = out.sums[FIELD_INDEX["requests"]]
    assert n.sum() > 50_000
    for field, value in (
        ("clicks", exp.clicks),
        ("conversions", exp.conversions),
        ("revenue", exp.revenue),
        ("impressions", exp.impressions),
        ("near_duplicates", exp.near_duplicates),
        ("fresh", exp.fresh),
        ("distinct_categories", exp.distinct_categories),
        ("latency_ms", exp.latency_mean_ms),
    ):
        y = out.sums[FIELD_INDEX[field]]
        ratio = y.sum() / n.sum()
        resid = y - ratio * n
        se = np.sqrt(np.sum(resid**2)) / n.sum()
        assert abs(ratio - value) < 4 * se + 1e-9, (field, ratio, value, se)
    p99 = latency_quantile(out.latency_hist, 0.99)
    assert p99 == pytest.approx(exp.latency_p99_ms, rel=0.15)
    assert exp.north_star == pytest.approx(exp.clicks)  # apparel_core: clicks per request


def test_expected_is_deterministic_and_sees_diversity(
    small_world: World, make_scenario: Callable[..., Scenario]
) -> None:
    a = small_world.expected(default_config(), at_s=100.0)
    twin = World(make_scenario(), seed=3)
    assert twin.expected(default_config(), at_s=5.0) == a  # same week, same seed
    collapse = small_world.expected(_variant(near_duplicate_threshold=0.9), at_s=0.0)
    keep = small_world.expected(_variant(near_duplicate_threshold=1.0), at_s=0.0)
    assert collapse.near_duplicates < keep.near_duplicates
    assert collapse.clicks > keep.clicks  # near-duplicates cost clicks
    assert 0 < a.clicks < a.impressions


def test_latency_grows_with_the_candidate_cuts(small_world: World) -> None:
    base = default_config()
    small = msgspec.structs.replace(base, pre_rank=msgspec.structs.replace(base.pre_rank, candidate_cut=200))
    rng = np.random.default_rng(0)
    assert small_world.expected(small, at_s=0.0).latency_p99_ms < small_world.expected(base, at_s=0.0).latency_p99_ms
    draws = np.array([small_world.latency_ms(base, rng) for _ in range(2000)])
    assert np.all(draws > 0)
    exp = small_world.expected(base, at_s=0.0)
    assert np.quantile(draws, 0.99) == pytest.approx(exp.latency_p99_ms, rel=0.1)


def test_bad_arguments_are_refused(small_world: World) -> None:
    allocation = Allocation(experiment_id="e", salt="s", arms=(ArmShare("control", 1, 0.5), ArmShare("t", 9, 0.5)))
    rng = np.random.default_rng(0)
    with pytest.raises(SimulatorError, match=r"configs: has no config for config_version 9"):
        small_world.simulate(allocation, {1: default_config()}, start_s=0.0, duration_s=60.0, rng=rng)
    with pytest.raises(SimulatorError, match=r"at_s: must be a finite time >= 0"):
        small_world.expected(default_config(), at_s=-1.0)
    with pytest.raises(SimulatorError, match=r"duration_s: must be a finite number > 0"):
        small_world.simulate(allocation, {1: default_config()}, start_s=0.0, duration_s=0.0, rng=rng)


def test_users_are_heterogeneous(small_world: World) -> None:
    users = small_world.users
    assert np.unique(users.prototype).size == len(small_world.prototypes)
    assert users.multiplier.std() > 0.2
    assert users.multiplier.mean() == pytest.approx(1.0, abs=0.05)
    # Activity skew: the top 10% of users make a large share of the requests.
    top = np.sort(users.request_p)[::-1][: len(users) // 10].sum()
    assert top > 0.3
    drawn = {small_world.draw_user(np.random.default_rng(i)).cohort for i in range(50)}
    assert drawn <= {c.name for c in small_world.scenario.cohorts}
    assert len(drawn) >= 2
