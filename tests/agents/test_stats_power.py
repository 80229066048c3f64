"""Power gating: the sequential MDE, its monotonicity, and refusals that say why."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agents.stats.distributions import chi2_ppf, normal_ppf
from agents.stats.errors import StatsError
from agents.stats.power import max_treatments_for, plan_experiment, unit_variance
from agents.stats.ratio import ratio_estimate
from agents.stats.sequential import optimal_mixing_ratio, terminal_boundary

DAY = 86_400.0
BASE = {"baseline": 0.05, "variance_per_unit": 0.02, "units_per_second": 0.05, "horizon_seconds": 14 * DAY}


def test_mde_formula_by_hand() -> None:
    plan = plan_experiment(**BASE)
    n = 0.05 * 14 * DAY / 2
    v = 0.02 / n
    z = terminal_boundary(0.05) + normal_ppf(0.8)
    # δ·b = z·sqrt(v·(1 + (1 + δ)²)) at the reported MDE.
    d = plan.mde_relative
    assert d * 0.05 == pytest.approx(z * math.sqrt(v * (1 + (1 + d) ** 2)), rel=1e-12)
    assert plan.mde_absolute == pytest.approx(d * 0.05)
    assert plan.terminal_variance == pytest.approx(v * (1 + (1 + d) ** 2))
    assert plan.tau2 == pytest.approx(optimal_mixing_ratio(0.05) * plan.terminal_variance)
    assert plan.efficiency == pytest.approx(1.383, abs=2e-3)
    assert plan.feasible and plan.units_per_arm == pytest.approx(n)
    assert plan.reason.startswith("traffic resolves ±") and "14 days with 1 treatment arm" in plan.reason


def test_final_look_boundary_and_mde() -> None:
    # alpha 0.05 split 0.0375 always-valid / 0.0125 final look, 2 arms: the horizon rejects at the smaller |z|.
    plain = plan_experiment(**BASE, treatments=2)
    plan = plan_experiment(**BASE, treatments=2, final_alpha=0.0125)
    fixed = normal_ppf(1.0 - 0.0125 / 4.0)
    assert plan.z_boundary == pytest.approx(min(terminal_boundary(0.0375 / 2), fixed))
    assert plan.z_boundary == pytest.approx(fixed) and fixed < plain.z_boundary
    assert plan.tau2 == pytest.approx(optimal_mixing_ratio(0.0375 / 2) * plan.terminal_variance)
    assert plan.mde_relative < plain.mde_relative and plan.final_alpha == 0.0125
    n = 0.05 * 14 * DAY / 3
    d = plan.mde_relative
    z = fixed + normal_ppf(0.8)
    assert d * 0.05 == pytest.approx(z * math.sqrt(0.02 / n * (1 + (1 + d) ** 2)), rel=1e-12)


@settings(deadline=None)
@given(
    st.floats(min_value=0.01, max_value=10.0),
    st.floats(min_value=1.01, max_value=10.0),
    st.integers(min_value=1, max_value=6),
)
def test_mde_monotone_in_traffic_arms_and_horizon(rate: float, factor: float, arms: int) -> None:
    kw = {**BASE, "units_per_second": rate}
    base = plan_experiment(**kw, treatments=arms).mde_relative
    assert plan_experiment(**{**kw, "units_per_second": rate * factor}, treatments=arms).mde_relative < base
    longer = {**kw, "horizon_seconds": BASE["horizon_seconds"] * factor}
    assert plan_experiment(**longer, treatments=arms).mde_relative < base
    assert plan_experiment(**kw, treatments=arms + 1).mde_relative > base
    assert plan_experiment(**kw, treatments=arms, exposure=1 / factor).mde_relative > base


def test_refuse_cut_and_launch_reasons() -> None:
    thin = plan_experiment(**BASE, treatments=3, target_mde=0.01)
    assert not thin.feasible and thin.max_treatments == 0
    assert thin.reason.startswith("traffic can resolve only ±")
    assert "14 days with 3 treatment arms; target 1%: refuse" in thin.reason
    assert "would need" in thin.reason and thin.horizon_needed_seconds is not None
    # The horizon the plan says it needs does resolve the target.
    longer = plan_experiment(**{**BASE, "horizon_seconds": thin.horizon_needed_seconds}, treatments=3)
    assert longer.mde_relative == pytest.approx(0.01, rel=1e-9)

    one = plan_experiment(**BASE).mde_relative
    three = plan_experiment(**BASE, treatments=3).mde_relative
    target = (one + three) / 2
    cut = plan_experiment(**BASE, treatments=3, target_mde=target)
    assert not cut.feasible and cut.max_treatments in (1, 2) and "cut to" in cut.reason
    assert max_treatments_for(target_mde=target, **BASE) == cut.max_treatments

    ok = plan_experiment(**BASE, target_mde=one * 1.01)
    assert ok.feasible and ok.reason.endswith(": launch")


def test_hopeless_traffic_has_infinite_mde() -> None:
    plan = plan_experiment(**{**BASE, "units_per_second": 1e-9})
    assert math.isinf(plan.mde_relative) and not plan.feasible and "no lift at all" in plan.reason


def test_variance_upper_confidence_limit() -> None:
    point = plan_experiment(**BASE)
    browne = plan_experiment(**BASE, variance_dof=126)
    assert browne.planning_variance == pytest.approx(0.02 * 126 / chi2_ppf(0.2, 126))
    assert browne.variance_per_unit == 0.02
    assert 1.03 < browne.mde_relative / point.mde_relative < 1.08


def test_unit_variance_from_buckets() -> None:
    est = ratio_estimate([3.0, 5.0, 4.0, 6.0], [60.0, 100.0, 70.0, 110.0])
    assert unit_variance(est, 200.0) == pytest.approx(est.variance * 200.0)
    with pytest.raises(StatsError, match="units:"):
        unit_variance(est, 0.0)


@pytest.mark.parametrize(
    ("override", "rule"),
    [
        ({"baseline": 0.0}, "baseline:"),
        ({"horizon_seconds": float("inf")}, "horizon_seconds:"),
        ({"exposure": 1.5}, "exposure:"),
        ({"power": 1.0}, "alpha, power"),
        ({"treatments": 0}, "treatments:"),
        ({"target_mde": -0.1}, "target_mde:"),
        ({"variance_dof": 10.0, "variance_confidence": 1.0}, "variance_confidence:"),
        ({"final_alpha": 0.05}, r"final_alpha: must be in \[0, alpha\)"),
        ({"final_alpha": -0.01}, "final_alpha:"),
    ],
)
def test_bad_inputs(override: dict[str, float], rule: str) -> None:
    with pytest.raises(StatsError, match=rule):
        plan_experiment(**{**BASE, **override})  # type: ignore[arg-type]


def test_persistent_variance_is_projected_to_the_horizon() -> None:
    """φ of a variance measured over W seconds: the plan equals a 1/N plan on σ²·(1 − φ + φ·H/W)."""
    window_s = 2 * DAY
    plain = plan_experiment(**BASE)
    assert plain.persistent_share == 0.0
    same = plan_experiment(**BASE, persistent_share=0.0, variance_window_seconds=window_s)
    assert same.mde_relative == plain.mde_relative
    phi = 0.6
    projected = plan_experiment(**BASE, persistent_share=phi, variance_window_seconds=window_s)
    factor = 1.0 - phi + phi * BASE["horizon_seconds"] / window_s
    by_hand = plan_experiment(**{**BASE, "variance_per_unit": BASE["variance_per_unit"] * factor})
    assert projected.mde_relative == pytest.approx(by_hand.mde_relative, rel=1e-12)
    assert projected.planning_variance == pytest.approx(BASE["variance_per_unit"] * factor)
    assert projected.variance_per_unit == BASE["variance_per_unit"]  # the measured figure is kept as measured
    assert projected.variance_window_seconds == window_s
    # A longer horizon helps less than 1/sqrt(H) when part of the variance persists.
    four_times = {**BASE, "horizon_seconds": 4 * BASE["horizon_seconds"]}
    longer = plan_experiment(**four_times)
    longer_projected = plan_experiment(**four_times, persistent_share=phi, variance_window_seconds=window_s)
    assert longer.mde_relative / plain.mde_relative < 0.55
    assert longer_projected.mde_relative / projected.mde_relative > 0.8


def test_no_horizon_resolves_a_target_below_the_persistent_floor() -> None:
    window_s = 2 * DAY
    kw = {"persistent_share": 0.9, "variance_window_seconds": window_s}
    plan = plan_experiment(**BASE, **kw)
    floor = plan_experiment(**{**BASE, "horizon_seconds": 1e6 * DAY}, **kw)  # about the floor's MDE
    below = plan_experiment(**BASE, target_mde=0.5 * floor.mde_relative, **kw)
    assert not below.feasible and math.isinf(below.horizon_needed_seconds or 0.0)
    assert "more than any horizon" in below.reason
    # A target above the floor: the horizon it needs does resolve it.
    target = 0.5 * (plan.mde_relative + floor.mde_relative)
    needs = plan_experiment(**BASE, target_mde=target, **kw).horizon_needed_seconds
    assert needs is not None and math.isfinite(needs) and needs > BASE["horizon_seconds"]
    at_needed = plan_experiment(**{**BASE, "horizon_seconds": needs}, target_mde=target, **kw)
    assert at_needed.mde_relative == pytest.approx(target, rel=1e-3)


@pytest.mark.parametrize(
    ("override", "rule"),
    [
        ({"persistent_share": 1.5, "variance_window_seconds": DAY}, r"persistent_share: must be in \[0, 1\]"),
        ({"persistent_share": 0.5}, "variance_window_seconds: must be positive"),
        ({"persistent_share": 0.5, "variance_window_seconds": 0.0}, "variance_window_seconds: must be positive"),
    ],
)
def test_bad_persistence_inputs(override: dict[str, float], rule: str) -> None:
    with pytest.raises(StatsError, match=rule):
        plan_experiment(**{**BASE, **override})  # type: ignore[arg-type]
