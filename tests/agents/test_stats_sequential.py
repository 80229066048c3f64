"""mSPRT: the mixture likelihood ratio, always-valid p-values and confidence sequences."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from agents.stats.errors import StatsError
from agents.stats.sequential import (
    SequentialState,
    always_valid_p_path,
    confidence_radius,
    first_crossing,
    log_likelihood_ratio,
    mixing_variance,
    optimal_mixing_ratio,
    terminal_boundary,
)

ALPHA = 0.05


def _gaussian_paths(rng: np.random.Generator, paths: int, looks: int, theta: float) -> tuple[np.ndarray, np.ndarray]:
    """Cumulative means of N(theta, 1) observations at looks 1..K (variance 1/k): Brownian motion in information."""
    steps = rng.normal(theta, 1.0, size=(paths, looks))
    k = np.arange(1, looks + 1)
    return np.cumsum(steps, axis=1) / k, np.broadcast_to(1.0 / k, (paths, looks)).copy()


def _coverage(est: np.ndarray, var: np.ndarray, tau2: float, theta: float) -> np.ndarray:
    radius = confidence_radius(var, tau2, ALPHA)
    lower = np.maximum.accumulate(est - radius, axis=-1)
    upper = np.minimum.accumulate(est + radius, axis=-1)
    return ((lower < theta) & (theta < upper)).all(axis=-1)


def test_mixing_ratio_and_boundary() -> None:
    k = optimal_mixing_ratio(ALPHA)
    assert k == pytest.approx(2 * math.log(1 / ALPHA) + math.log1p(k), rel=1e-12)
    assert terminal_boundary(ALPHA) == pytest.approx(math.sqrt(k + 1))
    assert 3.0 < terminal_boundary(ALPHA) < 3.1
    # At the horizon, with tau2 = k*·V, Λ = 1/α exactly when |z| = z*.
    v = 2.5e-6
    tau2 = mixing_variance(v, ALPHA)
    z = terminal_boundary(ALPHA)
    assert float(log_likelihood_ratio(z * math.sqrt(v), v, tau2)) == pytest.approx(math.log(1 / ALPHA), rel=1e-10)


def test_log_likelihood_ratio_is_the_normal_mixture() -> None:
    d, v, tau2 = 0.7, 0.09, 0.25
    theta = np.linspace(-6, 6, 200_001)
    prior = np.exp(-(theta**2) / (2 * tau2)) / math.sqrt(2 * math.pi * tau2)
    lr = np.exp((theta * d - theta**2 / 2) / v)
    numeric = float(np.sum(lr * prior) * (theta[1] - theta[0]))
    assert math.exp(float(log_likelihood_ratio(d, v, tau2))) == pytest.approx(numeric, rel=1e-6)


def test_always_valid_under_the_null_with_continuous_peeking() -> None:
    rng = np.random.default_rng(1)
    est, var = _gaussian_paths(rng, 4000, 200, 0.0)
    tau2 = mixing_variance(var[0, -1], ALPHA)
    p = always_valid_p_path(est, var, tau2)
    assert (np.diff(p, axis=1) <= 0).all()
    final = p[:, -1]
    # Ville: P(ever p <= u) <= u; 4000 paths give ±0.35% Monte Carlo error at 5%.
    for u in (0.01, 0.05, 0.2):
        assert float(np.mean(final <= u)) <= u
    # …while a z-test peeked at every look rejects far more often.
    assert float(np.mean((np.abs(est / np.sqrt(var)) >= 1.96).any(axis=1))) > 0.2


def test_confidence_sequence_covers_uniformly_over_time() -> None:
    rng = np.random.default_rng(2)
    theta = 0.3
    est, var = _gaussian_paths(rng, 4000, 200, theta)
    covered = _coverage(est, var, mixing_variance(var[0, -1], ALPHA), theta)
    assert float(covered.mean()) >= 1 - ALPHA


@settings(max_examples=25, deadline=None)
@given(
    theta=st.floats(min_value=-5.0, max_value=5.0),
    scale=st.floats(min_value=1e-3, max_value=1e3),
    ratio=st.floats(min_value=0.05, max_value=50.0),
    seed=st.integers(min_value=0, max_value=2**31),
)
def test_property_confidence_sequence_contains_truth(theta: float, scale: float, ratio: float, seed: int) -> None:
    rng = np.random.default_rng(seed)
    est, var = _gaussian_paths(rng, 600, 60, theta / scale)
    est, var = est * scale, var * scale**2
    covered = _coverage(est, var, ratio * var[0, -1], theta)
    # Miscoverage <= α; allow 3 Monte Carlo standard errors (600 paths) so the property is not flaky.
    assert 1.0 - float(covered.mean()) <= ALPHA + 3 * math.sqrt(ALPHA * (1 - ALPHA) / 600)


reads = st.lists(
    st.tuples(st.floats(min_value=-10.0, max_value=10.0), st.floats(min_value=1e-4, max_value=10.0)),
    min_size=1,
    max_size=30,
)


@settings(max_examples=200, deadline=None)
@given(reads, st.floats(min_value=1e-3, max_value=10.0))
def test_property_state_is_monotone_and_dual(seq: list[tuple[float, float]], tau2: float) -> None:
    state = SequentialState.start(tau2, ALPHA)
    for estimate, variance in seq:
        nxt = state.update(estimate, variance)
        assert nxt.p_value <= state.p_value
        assert nxt.lower >= state.lower and nxt.upper <= state.upper
        assert nxt.looks == state.looks + 1
        if state.verdict:
            assert (nxt.verdict, nxt.verdict_look) == (state.verdict, state.verdict_look)
        state = nxt
    # Duality: p <= α exactly when the running intersection excludes 0 (away from float ties).
    margin = 1e-9 * max(1.0, abs(state.lower), abs(state.upper))
    assume(abs(state.lower) > margin and abs(state.upper) > margin)
    assert state.rejected == (not state.lower < 0.0 < state.upper)
    assert (state.verdict != 0) == state.rejected


def test_state_matches_vectorised_path() -> None:
    rng = np.random.default_rng(3)
    est, var = _gaussian_paths(rng, 1, 50, 0.45)
    tau2 = mixing_variance(var[0, -1], ALPHA)
    path = always_valid_p_path(est[0], var[0], tau2)
    state = SequentialState.start(tau2, ALPHA)
    for k in range(50):
        state = state.update(float(est[0, k]), float(var[0, k]))
        assert state.p_value == pytest.approx(path[k], rel=1e-12)
    first = int(first_crossing(path, ALPHA))
    assert first >= 0 and state.verdict == 1 and state.verdict_look == first + 1
    assert state.lower > 0.0


def test_first_crossing_and_uninformative_looks() -> None:
    assert first_crossing(np.array([1.0, 0.2, 0.04, 0.01]), ALPHA) == 2
    assert first_crossing(np.array([[1.0, 0.5], [0.01, 0.01]]), ALPHA).tolist() == [-1, 0]
    # Looks without variance carry no information: p stays 1 there.
    assert always_valid_p_path(np.array([5.0, 0.0]), np.array([0.0, 1.0]), 1.0).tolist() == [1.0, 1.0]


def test_bad_inputs_are_refused() -> None:
    with pytest.raises(StatsError, match="tau2"):
        SequentialState.start(0.0)
    with pytest.raises(StatsError, match="alpha"):
        SequentialState.start(1.0, alpha=1.5)
    state = SequentialState.start(1.0)
    with pytest.raises(StatsError, match="variance: must be positive"):
        state.update(0.1, 0.0)
    with pytest.raises(StatsError, match="estimate: must be finite"):
        state.update(float("nan"), 1.0)
    with pytest.raises(StatsError, match="terminal_variance"):
        mixing_variance(-1.0, ALPHA)
