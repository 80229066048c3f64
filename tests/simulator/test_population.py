"""How `simulator.population` splits prototypes and users over the cohorts (`_cohort_counts`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from simulator.population import _cohort_counts
from simulator.scenario import Scenario, SimulatorError, load_scenario, parse_scenario
from simulator.world import World


@st.composite
def shares_and_total(draw: st.DrawFn) -> tuple[list[float], int]:
    """Cohort shares summing to 1 (some of them 0, some tiny) and a total >= the number of positive shares."""
    weights = draw(
        st.lists(
            st.one_of(st.just(0.0), st.floats(1e-4, 1.0), st.floats(1.0, 1e3)),
            min_size=1,
            max_size=8,
        ).filter(lambda w: sum(w) > 0.0)
    )
    shares = [w / sum(weights) for w in weights]
    positives = sum(s > 0.0 for s in shares)
    return shares, draw(st.integers(positives, 5_000))


@given(shares_and_total())
def test_counts_sum_to_the_total_and_every_positive_share_gets_one(case: tuple[list[float], int]) -> None:
    shares, total = case
    counts = _cohort_counts(shares, total, field="population.prototypes")
    assert sum(counts) == total
    assert all(c >= 1 for c, s in zip(counts, shares, strict=True) if s > 0.0)
    assert all(c == 0 for c, s in zip(counts, shares, strict=True) if s == 0.0)


@given(shares_and_total())
def test_counts_stay_within_one_of_the_quota_when_every_quota_is_at_least_one(case: tuple[list[float], int]) -> None:
    """Plain largest-remainder rounding then: each count is its quota rounded down or up."""
    shares, total = case
    if any(0.0 < s * total < 1.0 for s in shares):
        return
    counts = _cohort_counts(shares, total, field="population.prototypes")
    assert all(abs(c - s * total) < 1.0 for c, s in zip(counts, shares, strict=True))


def test_a_tiny_cohort_gets_a_prototype_of_its_own() -> None:
    assert _cohort_counts([0.98, 0.01, 0.01], 50, field="population.prototypes") == [48, 1, 1]
    assert _cohort_counts([0.5, 0.0, 0.5], 3, field="population.prototypes") == [2, 0, 1]


@pytest.mark.parametrize(
    ("name", "prototypes", "users"),
    [
        ("apparel_core", [110, 60, 30], [11_000, 6_000, 3_000]),
        ("apparel_seasonal", [80, 70, 50], [8_000, 7_000, 5_000]),
        ("apparel_thin", [88, 48, 24], [2_200, 1_200, 600]),
    ],
)
def test_the_shipped_scenarios_keep_their_counts(name: str, prototypes: list[int], users: list[int]) -> None:
    scenario = load_scenario(name)
    shares = [c.share for c in scenario.cohorts]
    assert _cohort_counts(shares, scenario.population.prototypes, field="population.prototypes") == prototypes
    assert _cohort_counts(shares, scenario.population.users, field="population.users") == users


def test_fewer_prototypes_than_positive_shares_are_refused() -> None:
    with pytest.raises(SimulatorError, match=r"population\.prototypes: must be >= the number of cohorts") as err:
        _cohort_counts([0.5, 0.25, 0.25], 2, field="population.prototypes")
    assert err.value.field == "population.prototypes"
    assert "share to 0" in err.value.hint


def _with_cohort_shares(
    scenario_dict: Callable[[str], dict[str, Any]], shares: list[float], **population: int
) -> Scenario:
    data = scenario_dict("apparel_core")
    data["catalogue"]["live_styles"] = 400
    data["population"].update(population)
    for cohort, share in zip(data["cohorts"], shares, strict=True):
        cohort["share"] = share
    return parse_scenario(data)


def test_every_users_prototype_is_of_the_users_own_cohort(scenario_dict: Callable[[str], dict[str, Any]]) -> None:
    """0.012 × 50 rounds to 1 (the scenario passes), and plain rounding gave that cohort no prototype."""
    shares = [0.976, 0.012, 0.012]
    world = World(_with_cohort_shares(scenario_dict, shares, prototypes=50, users=1_000), seed=0)
    assert np.bincount(world.prototypes.cohort, minlength=3).tolist() == [48, 1, 1]
    user_cohorts = np.bincount(world.prototypes.cohort[world.users.prototype], minlength=3).tolist()
    assert user_cohorts == _cohort_counts(shares, 1_000, field="population.users") == [976, 12, 12]


def test_a_world_with_fewer_prototypes_than_cohorts_is_refused(
    scenario_dict: Callable[[str], dict[str, Any]],
) -> None:
    third = 0.3333333333
    scenario = _with_cohort_shares(scenario_dict, [third, third, 1.0 - 2 * third], prototypes=2, users=100)
    with pytest.raises(
        SimulatorError, match=r"population\.prototypes: must be >= the number of cohorts .* \(3\), got 2"
    ):
        World(scenario, seed=0)
