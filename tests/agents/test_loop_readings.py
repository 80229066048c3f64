"""What the brain reads (`agents.loop_readings`): an experiment's arms come CUPED-adjusted when its A/A covers them."""

from __future__ import annotations

import math

import numpy as np
import pytest

from agents.brain import MetricReading
from agents.loop_readings import _cuped_readings, _ratio_reading, brain_readings
from agents.loop_state import LoopInput
from agents.online import OnlinePolicy
from agents.stats.cuped import cuped_ratio
from agents.stats.ratio import named_rows, paired_comparison
from schemas.config_log import ServingState
from schemas.metrics import FIELD_INDEX, N_FIELDS, N_LATENCY_BINS, ArmTotals

BUCKETS = 64
RNG_SEED = 20261126


def arm_totals(arm: str, requests: np.ndarray, clicks: np.ndarray) -> ArmTotals:
    sums = np.zeros((N_FIELDS, BUCKETS), dtype=np.float64)
    sums[FIELD_INDEX["requests"]] = requests
    sums[FIELD_INDEX["impressions"]] = 10.0 * requests
    sums[FIELD_INDEX["clicks"]] = clicks
    return ArmTotals("home", arm, sums, np.zeros(N_LATENCY_BINS, np.int64), 0, 0, 1)


def returning_users(lift: float = 0.0) -> dict[str, ArmTotals]:
    """Experiment `e1` (control, one treatment) and its A/A pre-period: each bucket's users keep their propensity."""
    rng = np.random.default_rng(RNG_SEED)
    out: dict[str, ArmTotals] = {}
    for suffix, effect in (("c", 0.0), ("t1", lift)):
        propensity = rng.gamma(4.0, 0.125, BUCKETS)  # clicks per request, persistent per bucket (mean 0.5)
        for arm, scale in ((f"e1.pre.{suffix}", 1.0), (f"e1.{suffix}", 1.0 + effect)):
            requests = rng.poisson(400.0, BUCKETS).astype(np.float64)
            out[arm] = arm_totals(arm, requests, rng.poisson(requests * propensity * scale).astype(np.float64))
    out["control"] = arm_totals("control", np.full(BUCKETS, 100.0), np.full(BUCKETS, 50.0))
    return out


def readings_of(totals: dict[str, ArmTotals]) -> dict[str, MetricReading]:
    inp = LoopInput(totals=totals, serving=ServingState(), now_ms=0)
    out = brain_readings(OnlinePolicy(surface="home"), inp)
    return {r.arm: r for r in out if r.name == "ctr"}


def test_an_experiments_arms_are_read_as_the_online_agent_reads_them() -> None:
    totals = returning_users(lift=0.05)
    got = readings_of(totals)

    def ctr(arm: str) -> tuple[np.ndarray, np.ndarray]:
        return totals[arm].sums[FIELD_INDEX["clicks"]], totals[arm].sums[FIELD_INDEX["impressions"]]

    fit = cuped_ratio([ctr("e1.c"), ctr("e1.t1")], [ctr("e1.pre.c"), ctr("e1.pre.t1")])
    for arm, fitted in zip(("e1.c", "e1.t1"), fit.arms, strict=True):
        reading = got[arm]
        raw = _ratio_reading("ctr", "clicks", "impressions", arm, totals[arm])
        assert raw is not None and raw.lower is not None and raw.upper is not None
        assert reading.value == pytest.approx(fitted.value)
        assert reading.upper - reading.lower == pytest.approx(2 * 1.959963984540054 * math.sqrt(fitted.variance))
        # persistent propensities: the pre-period explains most of the between-bucket variance
        assert reading.upper - reading.lower < 0.6 * (raw.upper - raw.lower)
    # the incumbent's own arm has no pre-period: read raw
    assert got["control"].value == pytest.approx(0.05)


def test_without_a_pre_period_for_every_arm_the_experiment_is_read_raw() -> None:
    totals = returning_users()
    del totals["e1.pre.t1"]
    got = readings_of(totals)
    for arm in ("e1.c", "e1.t1"):
        assert got[arm] == _ratio_reading("ctr", "clicks", "impressions", arm, totals[arm])
    arms = sorted((a, t) for a, t in totals.items() if ".pre." not in a)
    assert _cuped_readings("ctr", "clicks", "impressions", arms, LoopInput(totals, ServingState(), 0)) == {}


def test_a_per_request_experiment_gives_the_brain_the_paired_reads_standard_error() -> None:
    """Both arms hold the same buckets' users: t/c − 1 read as independent must carry the paired variance."""
    rng = np.random.default_rng(RNG_SEED)
    propensity = rng.gamma(4.0, 0.125, BUCKETS)  # the same users in every arm
    totals: dict[str, ArmTotals] = {}
    for arm, scale in (("e1.c", 1.0), ("e1.t1", 1.03), ("e1.t2", 0.98)):
        requests = rng.poisson(400.0, BUCKETS).astype(np.float64)
        totals[arm] = arm_totals(arm, requests, rng.poisson(requests * propensity * scale).astype(np.float64))
    inp = LoopInput(totals=totals, serving=ServingState(), now_ms=0)
    policy = OnlinePolicy(surface="home", randomization_unit="request")
    got = {r.arm: r for r in brain_readings(policy, inp) if r.name == "ctr"}
    control = got["e1.c"]
    for arm in ("e1.t1", "e1.t2"):
        want = paired_comparison(
            named_rows(totals["e1.c"].sums, "clicks", "impressions"),
            named_rows(totals[arm].sums, "clicks", "impressions"),
        )
        reading = got[arm]
        assert reading.value == pytest.approx(want.treatment) and control.value == pytest.approx(want.control)
        # `agents.ascent.arm_effects` adds the two readings' squared relative standard errors
        rel = [(r.upper - r.lower) / (2 * 1.959963984540054 * r.value) for r in (reading, control)]
        assert math.hypot(*rel) == pytest.approx(math.sqrt(want.log_ratio_variance), rel=1e-9)
        raw = _ratio_reading("ctr", "clicks", "impressions", arm, totals[arm])
        assert raw is not None and raw.lower is not None and raw.upper is not None
        assert reading.upper - reading.lower < 0.5 * (raw.upper - raw.lower)
