"""Insight: effects with intervals from synthetic totals with known lifts, insights per cohort, Pareto fronts."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agents.brain import MetricReading, ParamChange
from agents.insight import (
    MAX_FRONT,
    ArmChanges,
    InsightReport,
    TriedConfig,
    cohort_effects,
    dominates,
    effect_readings,
    experiment_insights,
    insight_objective_for,
    metric_effect,
    pareto_front,
    pareto_indices,
    quantile_interval,
    stage_of,
    tried_configs,
    update_front,
)
from agents.skill_search import search_space
from agents.skills import update_skills
from agents.stats.errors import StatsError
from schemas.config import default_config
from schemas.metrics import FIELD_INDEX, N_FIELDS, N_LATENCY_BINS, ArmTotals, latency_bins

BUCKETS = 64


def synthetic_totals(
    rng: np.random.Generator,
    *,
    arm_id: str = "arm",
    users_per_bucket: float = 40.0,
    ctr: float = 0.05,
    ctr_lift: float = 0.0,
    conversion: float = 0.02,
    conversion_lift: float = 0.0,
    categories: float = 5.0,
    diversity_lift: float = 0.0,
    latency_ms: float = 40.0,
    latency_lift: float = 0.0,
    latency: bool = True,
) -> ArmTotals:
    """One arm's totals from heterogeneous users: each user has a CTR and makes several requests.

    The population ratio of each metric is the base value × (1 + lift), exactly, so a lift read
    from these totals has a known truth.
    """
    sums = np.zeros((N_FIELDS, BUCKETS))
    users = rng.poisson(users_per_bucket, size=BUCKETS)
    n_users = int(users.sum())
    bucket_of_user = np.repeat(np.arange(BUCKETS), users)
    requests = 1 + rng.poisson(4.0, size=n_users)
    impressions = 12 * requests
    p_click = rng.beta(2.0, 2.0 * (1 - ctr) / ctr, size=n_users) * (1 + ctr_lift)  # mean ctr·(1+lift)
    clicks = rng.binomial(impressions, np.clip(p_click, 0, 1))
    conversions = rng.binomial(requests, conversion * (1 + conversion_lift))
    revenue = conversions * rng.gamma(4.0, 12.5, size=n_users)  # mean order value 50
    distinct = rng.poisson(requests * categories * (1 + diversity_lift))

    def per_bucket(values: np.ndarray) -> np.ndarray:
        return np.bincount(bucket_of_user, weights=values, minlength=BUCKETS)

    for name, values in (
        ("requests", requests),
        ("impressions", impressions),
        ("clicks", clicks),
        ("conversions", conversions),
        ("revenue", revenue),
        ("distinct_categories", distinct),
    ):
        sums[FIELD_INDEX[name]] = per_bucket(values.astype(float))
    hist = np.zeros(N_LATENCY_BINS, dtype=np.int64)
    if latency:
        samples = latency_ms * (1 + latency_lift) * rng.lognormal(0.0, 0.35, size=int(requests.sum()))
        hist = np.bincount(latency_bins(samples), minlength=N_LATENCY_BINS).astype(np.int64)
    return ArmTotals("home", arm_id, sums, hist, int(impressions.sum()), 0, 1)


# --------------------------------------------------------------------------- effects


def test_known_ctr_lift_is_covered_and_significant() -> None:
    rng = np.random.default_rng(7)
    control = synthetic_totals(rng, users_per_bucket=150)
    treatment = synthetic_totals(rng, users_per_bucket=150, ctr_lift=0.10)
    effect = metric_effect("ctr", control, treatment)
    assert effect.lower < 0.10 < effect.upper
    assert effect.significant and effect.lower > 0
    assert effect.effect == pytest.approx(
        treatment.ratio("clicks", "impressions") / control.ratio("clicks", "impressions") - 1
    )


def test_every_metric_reads_its_known_lift() -> None:
    rng = np.random.default_rng(11)
    control = synthetic_totals(rng, users_per_bucket=200)
    treatment = synthetic_totals(
        rng, users_per_bucket=200, ctr_lift=0.08, conversion_lift=0.0, diversity_lift=-0.05, latency_lift=0.35
    )
    effects, refused = cohort_effects(control, treatment)
    assert refused == ()
    by_metric = {e.metric: e for e in effects}
    assert set(by_metric) == {
        "ctr",
        "clicks_per_request",
        "conversion_rate",
        "revenue_per_request",
        "latency_p99",
        "diversity",
    }
    # clicks scale with the ctr lift at the same impressions per request
    truth = {
        "ctr": 0.08,
        "clicks_per_request": 0.08,
        "conversion_rate": 0.0,
        "revenue_per_request": 0.0,
        "latency_p99": 0.35,
        "diversity": -0.05,
    }
    for metric, lift in truth.items():
        e = by_metric[metric]
        assert e.lower <= lift <= e.upper, (metric, e)
        assert e.level == 0.95
    assert by_metric["ctr"].significant and by_metric["diversity"].significant and by_metric["latency_p99"].significant
    assert not by_metric["conversion_rate"].significant


def test_ctr_interval_coverage_is_nominal() -> None:
    rng = np.random.default_rng(2024)
    covered = 0
    reps = 300
    for _ in range(reps):
        c = synthetic_totals(rng, users_per_bucket=20, latency=False)
        t = synthetic_totals(rng, users_per_bucket=20, ctr_lift=0.05, latency=False)
        e = metric_effect("ctr", c, t)
        covered += e.lower <= 0.05 <= e.upper
    assert 0.91 <= covered / reps <= 0.99


def test_latency_p99_interval_is_conservative_and_at_bin_edges() -> None:
    rng = np.random.default_rng(3)
    samples = 40.0 * rng.lognormal(0.0, 0.35, size=20_000)
    hist = np.bincount(latency_bins(samples), minlength=N_LATENCY_BINS)
    estimate, lower, upper = quantile_interval(hist, 0.99, 0.95)
    true_p99 = 40.0 * math.exp(0.35 * 2.3263478740408408)
    assert lower <= true_p99 <= upper
    assert lower <= estimate <= upper
    with pytest.raises(StatsError, match="empty"):
        quantile_interval(np.zeros(N_LATENCY_BINS), 0.99, 0.95)
    # A few dozen observations cannot bound a p99 from above.
    few = np.zeros(N_LATENCY_BINS, dtype=np.int64)
    few[50] = 30
    assert math.isinf(quantile_interval(few, 0.99, 0.95)[2])


def test_latency_p99_lift_interval_covers_at_least_nominally() -> None:
    rng = np.random.default_rng(99)
    covered, reps = 0, 200
    for _ in range(reps):
        c = rng.lognormal(math.log(40.0), 0.35, size=5_000)
        t = 1.1 * rng.lognormal(math.log(40.0), 0.35, size=5_000)
        hists = [np.bincount(latency_bins(x), minlength=N_LATENCY_BINS) for x in (c, t)]
        sums = np.ones((N_FIELDS, BUCKETS))
        control, treatment = (ArmTotals("home", a, sums, h, 0, 0, 1) for a, h in zip("ct", hists, strict=True))
        e = metric_effect("latency_p99", control, treatment)
        covered += e.lower <= 0.10 <= e.upper
    assert covered / reps >= 0.95  # conservative by construction (√level per arm, outward bin edges)


def test_unreadable_metrics_are_refused_not_raised() -> None:
    rng = np.random.default_rng(5)
    control = synthetic_totals(rng, conversion=0.0, latency=False)  # no conversions, no latency
    treatment = synthetic_totals(rng, latency=False)
    effects, refused = cohort_effects(control, treatment)
    assert {m for m, _ in refused} == {"conversion_rate", "revenue_per_request", "latency_p99"}
    assert {e.metric for e in effects} == {"ctr", "clicks_per_request", "diversity"}
    with pytest.raises(StatsError):
        metric_effect("conversion_rate", control, treatment)
    with pytest.raises(ValueError, match="unknown"):
        metric_effect("bogus", control, treatment)


# --------------------------------------------------------------------------- insights


def test_stage_of() -> None:
    assert stage_of("pre_rank.fusion_weights.popularity") == "pre_rank"
    assert stage_of("rank.objective_weights.click") == "rank"
    assert stage_of("re_rank.mmr_lambda") == "re_rank"
    assert stage_of("pre_rank.candidate_cut") == "routing"
    assert stage_of("rank.cut") == "routing"
    assert stage_of("routing.threshold") == "routing"
    with pytest.raises(ValueError, match="cascade parameter"):
        stage_of("overrides.surface")


def _experiment(rng: np.random.Generator) -> dict[str, dict[str, ArmTotals]]:
    totals: dict[str, dict[str, ArmTotals]] = {}
    for cohort, lift in (("new", 0.12), ("returning", 0.0), ("all", 0.06)):
        totals[cohort] = {
            "control": synthetic_totals(rng, arm_id="control", users_per_bucket=150),
            "t1": synthetic_totals(rng, arm_id="t1", users_per_bucket=150, ctr_lift=lift),
            "t2": synthetic_totals(rng, arm_id="t2", users_per_bucket=150, latency_lift=0.4),
        }
    del totals["returning"]["t2"]  # thin cohort: t2 has no traffic there
    return totals


def test_experiment_insights_per_cohort_parameter_and_metric() -> None:
    rng = np.random.default_rng(17)
    arms = [
        ArmChanges(
            arm_id="t1",
            changes=(ParamChange(name="re_rank.mmr_lambda", value=0.7), ParamChange(name="rank.cut", value=150)),
        ),
        ArmChanges(
            arm_id="t2",
            changes=(
                ParamChange(name="rank.combination", value="weighted_product"),
                ParamChange(name="no.such.param", value=1.0),
            ),
        ),
    ]
    report = experiment_insights(
        experiment_id="exp-1",
        surface="home",
        control_config=default_config(),
        control_arm="control",
        arms=arms,
        totals=_experiment(rng),
        objective="ctr",
        at_ms=1_000,
    )
    ins = {(i.cohort, i.arm_id, i.parameter, i.metric): i for i in report.insights}
    lam = ins[("new", "t1", "re_rank.mmr_lambda", "ctr")]
    assert (lam.stage, lam.direction, lam.before, lam.after) == ("re_rank", "-", 0.8, 0.7)
    assert lam.co_changed == 2 and lam.role == "objective" and lam.verdict == "better" and lam.significant
    assert lam.lower < 0.12 < lam.upper and lam.at_ms == 1_000 and lam.experiment_id == "exp-1"
    cut = ins[("new", "t1", "rank.cut", "ctr")]
    assert (cut.stage, cut.direction) == ("routing", "+")
    assert cut.effect == lam.effect  # shared attribution: same arm, same read
    assert ins[("returning", "t1", "re_rank.mmr_lambda", "ctr")].verdict == "neutral"
    assert ins[("new", "t1", "re_rank.mmr_lambda", "latency_p99")].role == "guardrail"
    combo = ins[("all", "t2", "rank.combination", "latency_p99")]
    assert (combo.direction, combo.after, combo.co_changed) == ("=", "weighted_product", 1)
    assert combo.verdict == "worse"  # latency up is worse
    assert ("returning", "t2", "rank.combination", "ctr") not in ins
    reasons = {(s.cohort, s.arm_id, s.what) for s in report.skipped}
    assert ("returning", "t2", "cohort") in reasons
    assert ("*", "t2", "no.such.param") in reasons
    readings = effect_readings(report)
    assert all(isinstance(r, MetricReading) for r in readings)
    assert {r.name for r in readings} >= {"ctr_lift", "latency_p99_lift"}


def test_experiment_insights_skips_arms_without_effective_change() -> None:
    rng = np.random.default_rng(1)
    report = experiment_insights(
        experiment_id="exp-2",
        surface="home",
        control_config=default_config(),
        control_arm="control",
        arms=[ArmChanges(arm_id="t1", changes=(ParamChange(name="re_rank.mmr_lambda", value=0.8),))],
        totals={"all": {"control": synthetic_totals(rng), "t1": synthetic_totals(rng)}},
        objective="ctr",
        at_ms=0,
    )
    assert report.insights == ()
    assert [s.reason for s in report.skipped] == ["no effective change"]


# --------------------------------------------------------------------------- Pareto


def _cfg(name: str, ctr: float, p99: float, div: float) -> TriedConfig:
    return TriedConfig(config_id=name, metrics=(("ctr", ctr), ("latency_p99", p99), ("diversity", div)))


def test_pareto_front_hand_examples() -> None:
    a = _cfg("a", 0.050, 100.0, 5.0)
    b = _cfg("b", 0.060, 120.0, 5.0)  # more CTR, slower: a trade-off with a
    c = _cfg("c", 0.040, 130.0, 4.0)  # worse than a everywhere
    d = _cfg("d", 0.050, 100.0, 5.0)  # a tie with a: both stay
    e = _cfg("e", 0.050, 100.0, 6.0)  # a with more diversity: dominates a and d
    assert pareto_front([a, b, c, d]) == (a, b, d)
    assert pareto_front([a, b, c, d, e]) == (b, e)
    assert pareto_front([c]) == (c,)
    assert pareto_front([]) == ()
    # senses can be overridden, and the metric set chosen
    assert pareto_front([a, b, c], metrics=("ctr", "latency_p99"), senses={"latency_p99": "max"}) == (b, c)
    with pytest.raises(KeyError):
        pareto_front([TriedConfig(config_id="x", metrics=(("ctr", 0.1),)), a])
    with pytest.raises(ValueError, match="NaN"):
        pareto_indices([[1.0, math.nan], [0.0, 0.0]])


vectors = st.lists(
    st.lists(st.integers(min_value=0, max_value=5).map(float), min_size=3, max_size=3), min_size=1, max_size=25
)


@settings(max_examples=200, deadline=None)
@given(vectors)
def test_pareto_front_property(points: list[list[float]]) -> None:
    front = set(pareto_indices(points))
    assert front  # a finite set always has a non-dominated member
    for i in front:
        assert not any(dominates(points[j], points[i]) for j in range(len(points)))
    for i in set(range(len(points))) - front:
        assert any(dominates(points[j], points[i]) for j in front)


def test_tried_configs_from_a_report_feed_the_front() -> None:
    rng = np.random.default_rng(23)
    report = experiment_insights(
        experiment_id="exp-3",
        surface="home",
        control_config=default_config(),
        control_arm="control",
        arms=[
            ArmChanges(arm_id="t1", changes=(ParamChange(name="re_rank.mmr_lambda", value=0.7),)),
            ArmChanges(arm_id="t2", changes=(ParamChange(name="rank.cut", value=300),)),
        ],
        totals={
            "all": {
                "control": synthetic_totals(rng, users_per_bucket=100),
                "t1": synthetic_totals(rng, users_per_bucket=100, ctr_lift=0.2),
                "t2": synthetic_totals(rng, users_per_bucket=100, ctr_lift=-0.2, latency_lift=0.5),
            }
        },
        objective="ctr",
        at_ms=0,
    )
    tried = tried_configs(report)
    assert [t.config_id for t in tried] == ["exp-3/control", "exp-3/t1", "exp-3/t2"]
    assert {name for name, _ in tried[0].metrics} == {
        "ctr",
        "clicks_per_request",
        "conversion_rate",
        "revenue_per_request",
        "latency_p99",
        "diversity",
    }
    front_ids = [t.config_id for t in pareto_front(tried, metrics=("ctr", "latency_p99"))]
    assert "exp-3/t2" not in front_ids  # less CTR and slower than control
    assert "exp-3/t1" in front_ids


def _report(experiment_id: str, seed: int, lifts: dict[str, float]) -> InsightReport:
    """A report of one experiment whose arms have the given CTR lifts (same latency and diversity)."""
    rng = np.random.default_rng(seed)
    totals = {"control": synthetic_totals(rng, users_per_bucket=100)}
    totals.update({arm: synthetic_totals(rng, users_per_bucket=100, ctr_lift=lift) for arm, lift in lifts.items()})
    return experiment_insights(
        experiment_id=experiment_id,
        surface="home",
        control_config=default_config(),
        control_arm="control",
        arms=[ArmChanges(arm_id=a, changes=(ParamChange(name="re_rank.mmr_lambda", value=0.7),)) for a in lifts],
        totals={"all": totals},
        objective="ctr",
        at_ms=0,
    )


def test_the_running_front_accumulates_over_experiments_and_drops_dominated_configs() -> None:
    first, compared = update_front((), _report("exp-1", 5, {"t1": 0.3, "t2": -0.3}), "ctr")
    assert compared == ("ctr", "latency_p99", "diversity")
    assert first, "the first experiment's non-dominated arms form the front"
    assert all({"ctr", "latency_p99", "diversity"} <= {name for name, _ in p.metrics} for p in first)
    for point in first:  # nothing on the front is beaten everywhere by another point
        others = [q for q in first if q is not point]
        assert not any(
            q.value("ctr") >= point.value("ctr")
            and q.value("latency_p99") <= point.value("latency_p99")
            and q.value("diversity") >= point.value("diversity")
            and q.metrics != point.metrics
            for q in others
        )
    second, _ = update_front(first, _report("exp-2", 6, {"t1": 0.8}), "ctr")
    ids = [p.config_id for p in second]
    assert ids[0] == "exp-2/t1"  # ranked by the objective: the +80% arm leads
    assert len(second) <= MAX_FRONT
    everything = [*first, *tried_configs(_report("exp-2", 6, {"t1": 0.8}))]
    assert set(ids) == {p.config_id for p in pareto_front(everything, metrics=("ctr", "latency_p99", "diversity"))}


def test_the_running_front_stays_put_when_the_objective_was_not_read() -> None:
    first, _ = update_front((), _report("exp-1", 5, {"t1": 0.3}), "ctr")
    unchanged, _ = update_front(first, _report("exp-2", 6, {"t1": 0.1}), "no_such_metric")
    assert unchanged == first


def test_insights_feed_the_skillhub() -> None:
    rng = np.random.default_rng(17)
    report = experiment_insights(
        experiment_id="exp-1",
        surface="home",
        control_config=default_config(),
        control_arm="control",
        arms=[ArmChanges(arm_id="t1", changes=(ParamChange(name="re_rank.mmr_lambda", value=0.7),))],
        totals={c: {a: t for a, t in by_arm.items() if a != "t2"} for c, by_arm in _experiment(rng).items()},
        objective="ctr",
        at_ms=1_000,
    )
    skills, changes = update_skills([], report.insights, now_ms=2_000)
    assert {(s.cohort, s.pattern.parameter, s.pattern.direction) for s in skills} == {
        ("new", "re_rank.mmr_lambda", "-"),
        ("all", "re_rank.mmr_lambda", "-"),
    }  # "returning" saw no significant lift: no skill
    assert {c.kind for c in changes} == {"created"}
    (dim,) = search_space(skills, "home", "returning", incumbent=default_config())  # pooled skill applies
    assert dim.preferred == "-" and dim.upper == 0.8


def test_insight_objective_is_the_primary_when_known_and_ctr_otherwise() -> None:
    assert insight_objective_for("clicks_per_request") == "clicks_per_request"
    assert insight_objective_for("conversion_rate") == "conversion_rate"
    assert insight_objective_for("dwell_per_session") == "ctr"


# --------------------------------------------------------------------------- CUPED


def returning_arm(rng: np.random.Generator, arm_id: str, lift: float) -> tuple[ArmTotals, ArmTotals]:
    """(pre-period totals, experiment totals) of one arm whose buckets' users keep their click propensity."""
    propensity = rng.gamma(4.0, 0.0125, BUCKETS)  # clicks per impression, persistent per bucket (mean 0.05)
    out = []
    for scale in (1.0, 1.0 + lift):
        sums = np.zeros((N_FIELDS, BUCKETS))
        sums[FIELD_INDEX["requests"]] = rng.poisson(3_000.0, BUCKETS)
        sums[FIELD_INDEX["impressions"]] = 10.0 * sums[FIELD_INDEX["requests"]]
        sums[FIELD_INDEX["clicks"]] = rng.poisson(sums[FIELD_INDEX["impressions"]] * propensity * scale)
        out.append(ArmTotals("home", arm_id, sums, np.zeros(N_LATENCY_BINS, np.int64), 0, 0, 1))
    return out[0], out[1]


def test_with_pre_period_covariates_a_ratio_is_read_cuped_adjusted_and_narrower() -> None:
    rng = np.random.default_rng(20261126)
    pre_c, control = returning_arm(rng, "e.c", 0.0)
    pre_t, treatment = returning_arm(rng, "e.t1", 0.06)
    raw = metric_effect("ctr", control, treatment)
    adjusted = metric_effect("ctr", control, treatment, covariates=(pre_c, pre_t))
    # the pre-period explains the buckets' persistent propensities: a much narrower interval around the truth
    assert adjusted.upper - adjusted.lower < 0.5 * (raw.upper - raw.lower)
    assert adjusted.lower < 0.06 < adjusted.upper
    assert adjusted.significant
    # a pair of covariates the fit cannot use (no traffic) falls back to the raw read
    empty = ArmTotals("home", "e.c", np.zeros((N_FIELDS, BUCKETS)), np.zeros(N_LATENCY_BINS, np.int64), 0, 0, 1)
    assert metric_effect("ctr", control, treatment, covariates=(empty, empty)) == raw
    report = experiment_insights(
        experiment_id="e",
        surface="home",
        control_config=default_config(),
        control_arm="e.c",
        arms=[ArmChanges(arm_id="e.t1", changes=(ParamChange(name="re_rank.mmr_lambda", value=0.65),))],
        totals={"all": {"e.c": control, "e.t1": treatment}},
        objective="ctr",
        metrics=("ctr",),
        at_ms=0,
        covariates={"all": {"e.c": pre_c, "e.t1": pre_t}},
    )
    (insight,) = report.insights
    assert (insight.lower, insight.upper) == (adjusted.lower, adjusted.upper)
