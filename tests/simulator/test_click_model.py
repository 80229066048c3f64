"""The click model's properties: position decay, crowding, novelty, conversion after click, revenue = price."""

from __future__ import annotations

import numpy as np
import pytest

from schemas.config import default_config
from schemas.events import ShownItem
from serving_sidecar.cascade import rank
from simulator.click_model import (
    click_logit,
    conversion_logit,
    crowding,
    examination,
    list_click_probabilities,
)
from simulator.scenario import load_scenario
from simulator.world import World

SPEC = load_scenario("apparel_core").click_model
L = 8


def _probs(style: list[int], category: list[int], brand: list[int], diversity: float) -> np.ndarray:
    out: np.ndarray = list_click_probabilities(
        SPEC,
        logit=np.full((1, L), -2.0),
        style=np.array([style]),
        category=np.array([category]),
        brand=np.array([brand]),
        valid=np.ones((1, L), dtype=np.bool_),
        diversity=np.array([diversity]),
    )[0]
    return out


def test_examination_decays_with_position_and_falls_off_past_the_fold() -> None:
    exam = examination(30, SPEC)
    assert exam[0] == 1.0
    assert np.all(np.diff(exam) < 0)
    fold = SPEC.fold
    # Past the fold the drop per slot is the extra decay on top of the power law.
    inside = exam[fold - 1] / exam[fold - 2]
    outside = exam[fold] / exam[fold - 1]
    assert outside < inside * SPEC.beyond_fold_decay * 1.01


def test_position_decay_of_click_probabilities() -> None:
    p = _probs(list(range(L)), list(range(L)), list(range(L)), diversity=1.0)
    assert np.all(np.diff(p) < 0)


def test_near_duplicates_earn_fewer_clicks_than_a_diverse_list_of_equal_relevance() -> None:
    diverse = _probs(list(range(L)), list(range(L)), list(range(L)), diversity=1.0)
    # Same relevance per slot, but four colourways of two styles (same category/brand as their style).
    dup_style = [0, 0, 0, 0, 1, 1, 1, 1]
    dups = _probs(dup_style, list(range(L)), list(range(L)), diversity=1.0)
    assert dups.sum() < 0.8 * diverse.sum()
    assert dups[0] == diverse[0]  # the first item has nothing before it
    assert np.all(dups[1:4] < diverse[1:4])


def test_a_one_category_list_loses_attractiveness_in_proportion_to_the_appetite_for_diversity() -> None:
    distinct = list(range(L))
    one_cat = [0] * L
    for appetite in (0.5, 2.0):
        assert (
            _probs(distinct, one_cat, distinct, appetite).sum() < _probs(distinct, distinct, distinct, appetite).sum()
        )
    loss_low = 1 - _probs(distinct, one_cat, distinct, 0.5).sum() / _probs(distinct, distinct, distinct, 0.5).sum()
    loss_high = 1 - _probs(distinct, one_cat, distinct, 2.0).sum() / _probs(distinct, distinct, distinct, 2.0).sum()
    assert loss_high > loss_low > 0
    # Without any appetite for diversity, a one-category list is as good as a varied one.
    assert np.allclose(_probs(distinct, one_cat, distinct, 0.0), _probs(distinct, distinct, distinct, 0.0))


def test_crowding_ignores_padding_slots() -> None:
    valid = np.array([[True, True, False, False]])
    out = crowding(
        SPEC,
        style=np.array([[1, 2, 1, 1]]),
        category=np.array([[0, 1, 0, 0]]),
        brand=np.array([[0, 1, 0, 0]]),
        valid=valid,
        diversity=np.array([1.0]),
    )
    assert out[0, 0] == out[0, 1] == 1.0


def _logit(fresh: bool, novelty: float, log_price_ratio: float = 0.0, sensitivity: float = 1.0) -> float:
    one = np.array([0.0])
    return float(
        click_logit(
            SPEC,
            cosine=np.array([0.5]),
            category_affinity=one,
            appeal=one,
            log_price_ratio=np.array([log_price_ratio]),
            fresh=np.array([fresh]),
            season=one,
            seasonality=0.0,
            click_offset=one,
            price_sensitivity=np.array([sensitivity]),
            novelty=np.array([novelty]),
        )[0]
    )


def test_fresh_items_lift_the_novelty_cohort_more() -> None:
    lift_novelty = _logit(True, 2.0) - _logit(False, 2.0)
    lift_plain = _logit(True, 0.2) - _logit(False, 0.2)
    assert lift_novelty > lift_plain > 0
    assert lift_novelty == pytest.approx(SPEC.freshness * 2.0)


def test_price_sensitive_users_click_and_buy_expensive_items_less() -> None:
    assert _logit(False, 0.0, log_price_ratio=1.0, sensitivity=2.0) < _logit(False, 0.0, 1.0, 0.2)
    assert _logit(False, 0.0, log_price_ratio=1.0) < _logit(False, 0.0, log_price_ratio=-1.0)
    one = np.array([0.0])

    def conv(lpr: float) -> float:
        return float(
            conversion_logit(
                SPEC,
                cosine=one,
                appeal=one,
                log_price_ratio=np.array([lpr]),
                return_risk=one,
                conversion_offset=one,
                price_sensitivity=np.array([1.0]),
            )[0]
        )

    assert conv(1.0) < conv(0.0)


def test_in_a_world_the_novelty_cohort_gains_more_from_fresh_items(small_world: World) -> None:
    """Per prototype, the true logit gain of fresh items is freshness x the prototype's novelty appetite."""
    protos = small_world.prototypes
    cohorts = small_world.scenario.cohorts
    by_cohort = {c.name: protos.novelty[protos.cohort == i].mean() for i, c in enumerate(cohorts)}
    appetite = {c.name: c.novelty_appetite for c in cohorts}
    ordered = sorted(by_cohort, key=lambda name: appetite[name])
    assert by_cohort[ordered[-1]] > by_cohort[ordered[0]]


def test_respond_converts_only_after_a_click_and_revenue_is_the_price(small_world: World) -> None:
    world = small_world
    rng = np.random.default_rng(5)
    week = world.catalogue.live(0)
    clicks = conversions = 0
    for _ in range(300):
        user = world.draw_user(rng)
        cands = world.candidates(user, at_s=10.0)
        ranked = rank(cands, default_config(), rng)
        response = world.respond(user, ranked, cands, at_s=10.0, rng=rng)
        clicked = {item for item, _ in response.clicks}
        positions = dict(response.clicks)
        for item, position in response.clicks:
            assert str(cands.item_ids[ranked.indices[position]]) == item
        for item, revenue in response.conversions:
            assert item in clicked
            assert positions[item] >= 0
            assert revenue == pytest.approx(float(week.items.price[week.row_of[item]]), abs=0.01)
        clicks += len(response.clicks)
        conversions += len(response.conversions)
    assert clicks > conversions > 0


def test_respond_accepts_shown_items_and_refuses_unknown_ones(small_world: World) -> None:
    world = small_world
    rng = np.random.default_rng(6)
    user = world.user(0)
    cands = world.candidates(user, at_s=0.0)
    ranked = rank(cands, default_config(), rng)
    items = ranked.to_shown_items(cands)
    # Same items either way: the same random draws give the same response.
    a = world.respond(user, items, cands, at_s=0.0, rng=np.random.default_rng(1))
    b = world.respond(user, ranked, cands, at_s=0.0, rng=np.random.default_rng(1))
    assert a == b
    ghost = ShownItem(item_id="sku-nowhere", position=0, category="tops", scores=(0.0, 0.0, 0.0))
    with pytest.raises(Exception, match="shown: item 'sku-nowhere' is not on sale"):
        world.respond(user, [ghost], cands, at_s=0.0, rng=rng)
