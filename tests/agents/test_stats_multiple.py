"""Holm's step-down correction: a hand example and its defining properties."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agents.stats.errors import StatsError
from agents.stats.multiple import holm


def test_hand_example() -> None:
    # Sorted: 0.005·4 = 0.02, 0.01·3 = 0.03, 0.03·2 = 0.06, max(0.06, 0.04·1) = 0.06.
    result = holm([0.01, 0.04, 0.03, 0.005], alpha=0.05)
    assert result.adjusted == pytest.approx((0.03, 0.06, 0.06, 0.02))
    assert result.reject == (True, False, False, True)
    assert result.p_values == (0.01, 0.04, 0.03, 0.005)


def test_single_test_is_unadjusted_and_ties_are_stable() -> None:
    assert holm([0.03]).adjusted == (0.03,)
    tied = holm([0.02, 0.02, 0.5])
    assert tied.adjusted == pytest.approx((0.06, 0.06, 0.5))


@settings(deadline=None)
@given(st.lists(st.floats(min_value=0.0, max_value=1.0), min_size=1, max_size=20), st.floats(0.001, 0.2))
def test_properties(ps: list[float], alpha: float) -> None:
    result = holm(ps, alpha)
    m = len(ps)
    for p, adj, rej in zip(ps, result.adjusted, result.reject, strict=True):
        assert p <= adj + 1e-15 and adj <= min(1.0, m * p) + 1e-15  # between raw and Bonferroni
        assert rej == (adj <= alpha)
    order = sorted(range(m), key=lambda i: ps[i])
    adjusted_sorted = [result.adjusted[i] for i in order]
    assert adjusted_sorted == sorted(adjusted_sorted)  # monotone in the p-value order
    # Step-down: Holm rejects at least whatever Bonferroni rejects.
    assert all(r for p, r in zip(ps, result.reject, strict=True) if m * p <= alpha)


def test_bad_inputs() -> None:
    with pytest.raises(StatsError, match="p_values: need"):
        holm([])
    with pytest.raises(StatsError, match="p_values: each"):
        holm([0.5, 1.5])
    with pytest.raises(StatsError, match="alpha"):
        holm([0.5], alpha=0.0)
