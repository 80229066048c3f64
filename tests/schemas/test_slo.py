"""The always-valid quantile-bound test (`schemas.slo`): validity under looks, power, bad inputs."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from schemas.errors import SchemaError
from schemas.slo import exceedance_test

ALLOWED = 0.01  # a p99 bound
ALPHA = 0.05
LOOK_EVERY = 100  # units between looks: the Online agent reads every step
LOOKS = 200  # 20,000 units per path


def _ever_breached(rate: float, paths: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Per path: whether the test ever breached over the looks, and whether the p99 ever *read* over the bound."""
    rng = np.random.default_rng(seed)
    over = rng.binomial(LOOK_EVERY, rate, size=(paths, LOOKS)).cumsum(axis=1)
    n = LOOK_EVERY * np.arange(1, LOOKS + 1)
    breached = np.zeros(paths, dtype=bool)
    read_over = np.zeros(paths, dtype=bool)
    for j, units in enumerate(n):
        for i in np.flatnonzero(~breached):
            breached[i] = exceedance_test(int(units), int(over[i, j]), allowed=ALLOWED, alpha=ALPHA).breached
        # the rule it replaces: the p99 read off the look is over the bound (more than 1% of units over it)
        read_over |= over[:, j] > ALLOWED * units
    return breached, read_over


def test_continuous_looks_at_the_bound_keep_false_breaches_under_alpha_where_reading_the_p99_does_not() -> None:
    breached, read_over = _ever_breached(ALLOWED, paths=400, seed=1)
    # Ville: P(ever breached) <= alpha at the boundary of H0; 400 paths give a binomial sd of ~0.011 at 0.05
    assert breached.mean() <= ALPHA + 0.03
    # the point-estimate rule looks 200 times: almost every path reads over the bound at some look
    assert read_over.mean() > 0.9


def test_a_quantile_well_over_its_bound_is_caught_and_one_just_over_it_eventually() -> None:
    far, _ = _ever_breached(3 * ALLOWED, paths=100, seed=2)
    near, _ = _ever_breached(1.5 * ALLOWED, paths=100, seed=3)
    assert far.mean() > 0.95
    assert near.mean() > 0.6


def test_three_times_the_allowed_share_breaches_within_a_thousand_requests() -> None:
    assert exceedance_test(1_000, 30, allowed=ALLOWED, alpha=ALPHA).breached
    assert not exceedance_test(1_000, 12, allowed=ALLOWED, alpha=ALPHA).breached  # 1.2%: a p99 reading over it


@given(n=st.integers(min_value=1, max_value=100_000), data=st.data())
def test_more_units_over_the_bound_never_mean_less_evidence(n: int, data: st.DataObject) -> None:
    k = data.draw(st.integers(min_value=0, max_value=n - 1))
    lower = exceedance_test(n, k, allowed=ALLOWED, alpha=ALPHA)
    higher = exceedance_test(n, k + 1, allowed=ALLOWED, alpha=ALPHA)
    assert math.isfinite(lower.log_e) and higher.log_e > lower.log_e


def test_the_decision_line_names_the_counts_and_the_threshold() -> None:
    text = exceedance_test(2_000, 40, allowed=ALLOWED, alpha=ALPHA).describe()
    assert "40 of 2000 requests" in text and "allowed 1%" in text and "breach at 20" in text


@pytest.mark.parametrize(
    ("n", "k", "allowed", "alpha", "field"),
    [
        (10, 11, 0.01, 0.05, "k, n"),
        (10, -1, 0.01, 0.05, "k, n"),
        (10, 1, 0.0, 0.05, "allowed"),
        (10, 1, 0.01, 1.0, "alpha"),
    ],
)
def test_bad_inputs_are_refused_with_the_field_named(n: int, k: int, allowed: float, alpha: float, field: str) -> None:
    with pytest.raises(SchemaError, match=field):
        exceedance_test(n, k, allowed=allowed, alpha=alpha)
