"""Distribution functions without scipy: checked against closed forms and published quantiles."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agents.stats.distributions import (
    beta_inc,
    chi2_ppf,
    chi2_sf,
    f_sf,
    gamma_q,
    normal_cdf,
    normal_ppf,
    normal_sf,
)
from agents.stats.errors import StatsError


def test_normal_known_values() -> None:
    assert normal_cdf(0.0) == pytest.approx(0.5)
    assert normal_ppf(0.975) == pytest.approx(1.959963984540054, abs=1e-13)
    assert normal_ppf(0.8) == pytest.approx(0.8416212335729143, abs=1e-13)
    assert normal_ppf(1e-10) == pytest.approx(-6.361340902404056, abs=1e-10)
    assert normal_sf(10.0) == pytest.approx(7.61985302416047e-24, rel=1e-10)


@settings(deadline=None)
@given(st.floats(min_value=1e-12, max_value=1 - 1e-12))
def test_normal_ppf_inverts_cdf(p: float) -> None:
    z = normal_ppf(p)
    target = normal_cdf(z) if p < 0.5 else 1.0 - normal_sf(z)
    assert target == pytest.approx(p, rel=1e-9, abs=1e-15)


def test_chi_square_published_quantiles() -> None:
    assert chi2_sf(3.841458820694124, 1) == pytest.approx(0.05, rel=1e-10)
    assert chi2_sf(10.827566170662733, 1) == pytest.approx(0.001, rel=1e-9)
    assert chi2_sf(11.070497693516351, 5) == pytest.approx(0.05, rel=1e-10)
    assert chi2_sf(0.0, 3) == 1.0
    assert chi2_ppf(0.95, 1) == pytest.approx(3.841458820694124, rel=1e-10)


@settings(deadline=None)
@given(st.integers(min_value=1, max_value=40), st.floats(min_value=0.0, max_value=200.0))
def test_gamma_q_matches_closed_form_for_integer_shape(k: int, x: float) -> None:
    # Q(k, x) = e^{-x} Σ_{j<k} x^j / j! for integer k.
    exact = math.exp(-x) * sum(x**j / math.factorial(j) for j in range(k))
    assert gamma_q(k, x) == pytest.approx(exact, rel=1e-10, abs=1e-300)


@settings(deadline=None)
@given(
    st.floats(min_value=0.2, max_value=50.0),
    st.floats(min_value=0.0, max_value=1.0),
)
def test_beta_inc_matches_closed_form_for_unit_shape(b: float, x: float) -> None:
    # I_x(1, b) = 1 − (1 − x)^b.
    assert beta_inc(1.0, b, x) == pytest.approx(1.0 - (1.0 - x) ** b, rel=1e-10, abs=1e-14)


@settings(max_examples=50, deadline=None)
@given(st.floats(min_value=0.5, max_value=30.0), st.floats(min_value=0.5, max_value=30.0), st.floats(0.01, 0.99))
def test_beta_inc_symmetry(a: float, b: float, x: float) -> None:
    assert beta_inc(a, b, x) == pytest.approx(1.0 - beta_inc(b, a, 1.0 - x), abs=1e-12)


def test_f_matches_t_and_chi_square() -> None:
    # F(1, 10) at t²_{0.975, 10} is 0.05; d2 → ∞ makes d1·F a chi-square.
    assert f_sf(2.228138851986274**2, 1, 10) == pytest.approx(0.05, rel=1e-9)
    assert f_sf(3.0, 2, 1e7) == pytest.approx(chi2_sf(6.0, 2), rel=1e-5)


def test_bad_arguments_name_the_argument() -> None:
    with pytest.raises(StatsError, match="p:"):
        normal_ppf(1.0)
    with pytest.raises(StatsError, match="df:"):
        chi2_sf(1.0, 0)
    with pytest.raises(StatsError, match="df1, df2"):
        f_sf(1.0, 0, 3)


def test_two_sided_p_of_a_fixed_look() -> None:
    from agents.stats.distributions import two_sided_p

    assert two_sided_p(1.959963984540054, 1.0) == pytest.approx(0.05, rel=1e-12)
    assert two_sided_p(-0.3, 0.01) == pytest.approx(two_sided_p(0.3, 0.01)) == pytest.approx(2 * normal_sf(3.0))
    for variance in (0.0, -1.0, math.inf, math.nan):
        assert two_sided_p(0.5, variance) == 1.0
