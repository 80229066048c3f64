"""The tuning benchmark's scoring (`bench/_tuning_score.py`) on hand-made traces with a hand-made oracle."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import msgspec
import pytest

from schemas.config import CascadeConfig, default_config


def _load() -> ModuleType:
    path = Path(__file__).resolve().parents[2] / "bench" / "_tuning_score.py"
    spec = importlib.util.spec_from_file_location("_tuning_score", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["_tuning_score"] = module  # dataclasses resolve their module by name
    spec.loader.exec_module(module)
    return module


ts = _load()


def cfg(mmr: float) -> CascadeConfig:
    base = default_config()
    return msgspec.structs.replace(base, re_rank=msgspec.structs.replace(base.re_rank, mmr_lambda=mmr))


START, GOOD, BEST, BAD, SLOW = cfg(0.8), cfg(0.7), cfg(0.6), cfg(0.9), cfg(0.5)
# value per request; latency; conversions per request.  Time-dependent: after day 1 everything is worth +0.01.
# The SLO is 50 ms (SLOW breaks it): `score`'s default `latency_slo_ms` below, and the truth's `meets_slo`.
SLO_MS = 50.0
TABLE = {0.8: (0.10, 20.0, 0.010), 0.7: (0.11, 20.0, 0.010), 0.6: (0.12, 25.0, 0.010), 0.9: (0.09, 20.0, 0.009)}
TABLE[0.5] = (0.115, 80.0, 0.010)


def truth(config: CascadeConfig, at_s: float) -> Any:
    value, latency, conversions = TABLE[config.re_rank.mmr_lambda]
    return ts.Truth(value + (0.01 if at_s >= 86_400.0 else 0.0), latency, conversions, latency <= SLO_MS)


def step(start_s: float, requests: float, *served: tuple[str, CascadeConfig, float]) -> Any:
    return ts.Step(start_s, 3_600.0, requests, tuple(ts.ServedArm(k, c, s) for k, c, s in served))


def score(trace: Any, **kw: float) -> Any:
    args = {"value_at_s": 0.0, "latency_slo_ms": SLO_MS, "conversion_margin": 0.05, **kw}
    return ts.score(trace, truth, BEST, **args)


def test_static_run_regret_is_requests_times_the_gap() -> None:
    trace = ts.MethodTrace(
        method="static",
        start=START,
        final=START,
        steps=(step(0.0, 1000.0, ("inc", START, 1.0)), step(90_000.0, 500.0, ("inc", START, 1.0))),
    )
    s = score(trace)
    # gap 0.02 at both times (the drift moves both configs alike)
    assert s.cum_regret == pytest.approx(1500.0 * 0.02)
    assert s.oracle_share == pytest.approx(0.0)
    assert (s.experiments, s.promotions, s.regressions_shipped, s.guardrail_breaches) == (0, 0, 0, 0)
    assert s.requests == 1500.0 and s.final_value == pytest.approx(0.10)


def test_mixed_steps_promotions_regressions_and_breaches() -> None:
    trace = ts.MethodTrace(
        method="m",
        start=START,
        final=GOOD,
        steps=(
            step(0.0, 1000.0, ("e1.c", START, 0.5), ("e1.t1", BAD, 0.5)),  # BAD: conversions 0.009 < 0.95 × 0.010
            step(3_600.0, 1000.0, ("e2.c", START, 0.5), ("e2.t1", GOOD, 0.25), ("e2.t2", SLOW, 0.25)),
            step(7_200.0, 2000.0, ("inc", GOOD, 1.0)),
            step(10_800.0, 1000.0, ("e3.c", GOOD, 0.9), ("e3.t1", SLOW, 0.1)),  # the same config, another arm
        ),
        promotions=(ts.Promotion(7_200.0, START, GOOD), ts.Promotion(9_000.0, GOOD, BAD)),
        experiments=3,
        rollbacks=1,
    )
    s = score(trace)
    expected = (
        1000.0 * (0.12 - 0.095)
        + 1000.0 * (0.12 - (0.5 * 0.10 + 0.25 * 0.11 + 0.25 * 0.115))
        + 2000.0 * (0.12 - 0.11)
        + 1000.0 * (0.12 - (0.9 * 0.11 + 0.1 * 0.115))
    )
    assert s.cum_regret == pytest.approx(expected)
    assert s.oracle_share == pytest.approx(0.5)  # (0.11 - 0.10) / (0.12 - 0.10)
    assert s.regressions_shipped == 1  # GOOD -> BAD shipped a worse config
    # e1.t1 (BAD, 0.09 < START's 0.10) is the one arm not better than its incumbent, and BAD was promoted;
    # the controls serve their incumbent's config and are no treatment arms
    assert (s.null_arms, s.null_arms_promoted) == (1, 1)
    assert s.guardrail_breaches == 3  # e1.t1 (conversions), e2.t2 and e3.t1 (latency)
    assert (s.experiments, s.promotions, s.rollbacks) == (3, 2, 1)


def test_looser_margin_and_slo_count_fewer_breaches() -> None:
    trace = ts.MethodTrace(
        method="m",
        start=START,
        final=START,
        steps=(
            step(0.0, 10.0, ("c", START, 0.5), ("t", BAD, 0.5)),
            step(10.0, 10.0, ("c", START, 0.5), ("s", SLOW, 0.5)),
        ),
    )
    assert score(trace).guardrail_breaches == 2
    assert score(trace, conversion_margin=0.2, latency_slo_ms=100.0).guardrail_breaches == 0


def test_null_arms_are_judged_in_the_week_they_start_and_aa_arms_are_left_out() -> None:
    """GOOD is worth more than START at any time; BAD never; an A/A arm serving START is no treatment."""
    trace = ts.MethodTrace(
        method="m",
        start=START,
        final=START,
        steps=(
            step(0.0, 10.0, ("inc", START, 0.8), ("e1.pre.t1", START, 0.1), ("e1.t2", BAD, 0.1)),
            step(90_000.0, 10.0, ("inc", START, 0.8), ("e2.t1", GOOD, 0.1), ("e1.t2", BAD, 0.1)),
        ),
        promotions=(ts.Promotion(90_000.0, START, GOOD),),
    )
    s = score(trace)
    assert (s.null_arms, s.null_arms_promoted) == (1, 0)  # e1.t2 only, counted once; GOOD's promotion is no null's


def test_no_oracle_lift_gives_nan_share_and_bad_inputs_are_refused() -> None:
    trace = ts.MethodTrace(method="m", start=BEST, final=BEST, steps=(step(0.0, 1.0, ("c", BEST, 1.0)),))
    assert math.isnan(score(trace).oracle_share)
    broken = ts.MethodTrace(method="m", start=START, final=START, steps=(step(0.0, 1.0, ("c", START, 0.7)),))
    with pytest.raises(ValueError, match="shares must sum to 1"):
        score(broken)
    with pytest.raises(ValueError, match="conversion_margin"):
        score(trace, conversion_margin=1.5)


def final_only(final: CascadeConfig) -> Any:
    """A run that served START and ended with `final` as the incumbent."""
    return ts.MethodTrace(method="m", start=START, final=final, steps=(step(0.0, 10.0, ("inc", START, 1.0)),))


def test_a_final_incumbent_over_the_slo_is_flagged_and_counted_but_its_share_is_kept() -> None:
    slow, good = score(final_only(SLOW)), score(final_only(GOOD))
    assert not slow.final_meets_slo and good.final_meets_slo
    assert slow.oracle_share == pytest.approx(0.75)  # (0.115 - 0.10) / (0.12 - 0.10): unchanged by the SLO
    assert score(final_only(START)).final_meets_slo
    assert ts.finals_over_slo([slow, good, slow]) == 2
    assert ts.finals_over_slo([good]) == 0


def test_the_tuning_summary_counts_finals_over_the_slo_per_method(capsys: pytest.CaptureFixture[str]) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
    tuning: Any = importlib.import_module("tuning")
    good, slow = score(final_only(GOOD)), score(final_only(SLOW))
    runs = [
        tuning.RunResult(
            "tiny", seed, {"static": good, "random": good, "tpe": good, "agentic": final}, {}, {}, 0.12, {}, ("n",)
        )
        for seed, final in enumerate((slow, good, slow))
    ]
    summary = tuning.summarise(runs)
    counts = {m: summary["tiny"][m]["finals_over_slo"] for m in ("static", "random", "tpe", "agentic")}
    assert counts == {"static": 0, "random": 0, "tpe": 0, "agentic": 2}
    assert {*tuning.FIGURES, "oracle_share_sd"} <= set(summary["tiny"]["agentic"])  # the existing keys stay
    tuning.print_table(summary, runs)
    agentic_row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("agentic"))
    assert agentic_row.endswith("2/3")


def test_mean_sd_and_incumbent_path() -> None:
    assert ts.mean_sd([1.0, 3.0]) == (2.0, pytest.approx(math.sqrt(2.0)))
    assert ts.mean_sd([4.0, math.nan]) == (4.0, 0.0)
    assert all(math.isnan(v) for v in ts.mean_sd([math.nan]))
    trace = ts.MethodTrace(
        method="m",
        start=START,
        final=GOOD,
        steps=(step(0.0, 1.0, ("c", START, 1.0)), step(86_400.0, 1.0, ("c", GOOD, 1.0))),
    )
    days, values = ts.incumbent_path(trace, truth)
    assert days == [0.0, 1.0] and values == pytest.approx([0.10, 0.12])
