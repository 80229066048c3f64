"""The Online agent's inputs and policy: traffic estimate, baseline, `OnlinePolicy`.

The runtime builds an `OnlinePolicy` per surface and calls `baseline_from_totals`
before `agents.online.OnlineAgent.plan`; `agents.online` re-exports every public name here.
Pure: numpy and `agents.stats` only.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Final, Literal

import numpy as np
import numpy.typing as npt

from agents.experiment import (
    CTR,
    ExperimentError,
    GuardrailSpec,
    MetricSpec,
)
from agents.stats.errors import StatsError
from agents.stats.persistence import persistence_from_sums
from agents.stats.ratio import ratio_from_sums
from agents.stats.srm import HALT_P
from schemas.config import RandomizationUnit
from schemas.metrics import FIELD_INDEX, ArmTotals

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

_REQUESTS: Final = FIELD_INDEX["requests"]
_NonInferior = Literal["conversion", "revenue"]


# --------------------------------------------------------------------------- inputs and policy


@dataclass(frozen=True, slots=True)
class TrafficEstimate:
    """The surface's traffic the power gate plans on: requests per second at full exposure."""

    requests_per_second: float


@dataclass(frozen=True, slots=True)
class Baseline:
    """The primary metric under the incumbent: its value and variance per request (delta method over buckets).

    `variance_dof` (degrees of freedom of the variance estimate, e.g.
    Σ (buckets − 1) over the pooled arms) makes the power gate plan on the
    variance's upper confidence limit (Browne 1995, see `agents.stats.power`).
    `persistent_share` is the share of the variance that the same users'
    further traffic keeps (`persistent_share_of`) and `window_s` the length
    of the window it was measured on: the gate projects the variance per
    request to the horizon as σ²·(1 − φ + φ·horizon/window).
    """

    value: float
    variance_per_request: float
    variance_dof: float | None = None
    persistent_share: float = 0.0
    window_s: float | None = None

    def paired(self) -> Baseline:
        """The baseline a paired (per-request) read plans on: only the transient share of the variance.

        The persistent share is the users' own propensity, which a paired
        read cancels (both arms hold the same users), so the variance per
        request is σ²·(1 − φ) and nothing grows with the horizon.  With φ
        unmeasured (0) this is the per-user plan, a conservative one.
        Called by `agents.online_plan.power_plan`.
        """
        return replace(
            self, variance_per_request=self.variance_per_request * (1.0 - self.persistent_share), persistent_share=0.0
        )


def baseline_from_totals(
    totals: Sequence[ArmTotals], metric: MetricSpec, seconds: float
) -> tuple[TrafficEstimate, Baseline]:
    """Traffic and baseline from recent incumbent totals (one or more arms serving it) over `seconds`.

    Called by the runtime before `plan` (and by the tests): the variance per
    request is pooled over the given arms as `agents.stats.proofs.pilot_plan`
    does, with Σ (buckets − 1) degrees of freedom.
    """
    if not totals or not seconds > 0.0:
        msg = "totals, seconds: need at least one arm's totals and a positive duration"
        raise ExperimentError(msg)
    per_request, requests, num, den, dof = [], 0.0, 0.0, 0.0, 0.0
    for arm in totals:
        est = ratio_from_sums(arm.sums, metric.numerator, metric.denominator)
        arm_requests = arm.total("requests")
        per_request.append(est.variance * arm_requests)
        requests += arm_requests
        num, den = num + est.numerator_total, den + est.denominator_total
        dof += est.buckets - 1
    return (
        TrafficEstimate(requests / seconds),
        Baseline(num / den, float(np.mean(per_request)), dof, window_s=seconds),
    )


def persistent_share_of(parts: Sequence[Sequence[npt.ArrayLike]], metric: MetricSpec) -> float | None:
    """φ of the incumbent's window from each baseline arm's consecutive parts (fields × buckets sums per part).

    Called by the loop's power gate (`agents.loop_plan`, the window split
    where the round proposed) and `rectune.simloop` (the pilot's steps).
    The mean over arms, as `baseline_from_totals` pools the variance per
    request; None when no arm has two parts with traffic in every one.
    """
    shares = []
    for arm in parts:
        try:
            shares.append(persistence_from_sums(arm, metric.numerator, metric.denominator).share)
        except StatsError:
            continue  # a part without traffic: this arm says nothing about persistence
    return float(np.mean(shares)) if shares else None


def _per_stage(name: str, value: float | tuple[float, ...], stages: int) -> tuple[float, ...]:
    out = (float(value),) * stages if isinstance(value, int | float) else tuple(float(v) for v in value)
    if len(out) != stages or any(not (math.isfinite(v) and v >= 0.0) for v in out):
        msg = f"{name}: need one finite non-negative value per ramp stage ({stages}), got {value!r}"
        raise ExperimentError(msg)
    return out


@dataclass(frozen=True, slots=True)
class OnlinePolicy:
    """How the Online agent of one surface runs experiments (copied into each plan at launch).

    `stages` are total treatment shares, strictly increasing in (0, 1);
    `min_dwell_s` / `min_stage_requests` are per stage (a scalar applies to
    every stage; requests are each active treatment arm's, within the stage).
    `target_mde` is the relative lift the experiment must resolve within
    `horizon_s` (the power gate refuses or cuts arms otherwise);
    `max_treatments` caps the arms before the gate looks.  `final_alpha` is
    the part of the family-wise `alpha` kept for one fixed-horizon look at
    the horizon (`agents.stats.power` module doc): the always-valid test
    runs at `alpha − final_alpha`, and an arm it has not decided by the
    horizon is promoted if a two-sided z-test on its last read rejects at
    `final_alpha` (Holm across the arms); 0 reads with the always-valid test
    alone.  `futility_fraction` places the futility line: an arm stops as
    futile once its always-valid interval lies below that fraction of the
    planned MDE.  Below 1, because the gate's MDE is what the traffic can
    resolve, not the smallest lift worth shipping: a tuning loop gains from
    any real lift, and an arm at half the MDE still has a fair chance at the
    final look (tuning bench, 20 seeds: 1 → 0.5 lowered the agents' regret
    in the thin and seasonal worlds, BENCHMARKS.md); 0 stops only arms the
    interval shows are not better than control.  `randomization_unit` is
    what the sidecar assigns (`schemas.config.Allocation.unit`): "user" keeps
    each user in one arm; "request" spreads every user's requests over the
    arms, which the reads then pair per user bucket
    (`agents.stats.ratio.paired_comparison`) and the power gate plans
    without the between-user share of the variance (`Baseline.paired`).
    """

    surface: str
    primary: MetricSpec = CTR
    target_mde: float = 0.02
    stages: tuple[float, ...] = (0.01, 0.05, 0.25, 0.5)
    min_dwell_s: float | tuple[float, ...] = 86_400.0
    min_stage_requests: float | tuple[float, ...] = 5_000.0
    horizon_s: float = 14 * 86_400.0
    alpha: float = 0.05
    final_alpha: float = 0.0125
    futility_fraction: float = 0.5
    power: float = 0.8
    variance_confidence: float = 0.8
    max_treatments: int = 4
    guardrails: GuardrailSpec = field(default_factory=lambda: GuardrailSpec(conversion_margin=0.02))
    approval_required: bool = False
    srm_threshold: float = HALT_P
    srm_min_expected_requests: float = 100.0
    settle_s: float = 300.0
    min_read_requests: float = 2_000.0
    min_read_bucket_fraction: float = 0.5
    max_history: int = 1_000
    randomization_unit: RandomizationUnit = "user"

    def __post_init__(self) -> None:
        """Refuse a policy that cannot run (names the field and the rule)."""
        bad: list[str] = []
        s = self.stages
        if not s or any(not 0.0 < v < 1.0 for v in s) or any(b <= a for a, b in itertools.pairwise(s)):
            bad.append(f"stages={s}: strictly increasing total treatment shares in (0, 1)")
        if not (0.0 < self.alpha < 1.0 and 0.0 < self.power < 1.0 and 0.0 < self.srm_threshold < 1.0):
            bad.append("alpha, power, srm_threshold: in (0, 1)")
        elif not 0.0 <= self.final_alpha < self.alpha:
            bad.append(f"final_alpha={self.final_alpha}: in [0, alpha={self.alpha})")
        if self.randomization_unit not in ("user", "request"):
            bad.append(f"randomization_unit={self.randomization_unit!r}: 'user' or 'request'")
        if not 0.0 <= self.futility_fraction <= 1.0:
            bad.append(f"futility_fraction={self.futility_fraction}: in [0, 1]")
        rules = (
            ("target_mde", self.target_mde > 0.0, "> 0"),
            ("horizon_s", self.horizon_s > 0.0, "> 0"),
            ("max_treatments", self.max_treatments >= 1, ">= 1"),
            ("min_read_bucket_fraction", 0.0 <= self.min_read_bucket_fraction <= 1.0, "in [0, 1]"),
            ("max_history", self.max_history >= 0, ">= 0"),
            ("settle_s", self.settle_s >= 0.0, ">= 0"),
        )
        # `not ok` also catches NaN, which every comparison above rejects
        bad.extend(f"{name}={getattr(self, name)!r}: {rule}" for name, ok, rule in rules if not ok)
        if bad:
            msg = f"OnlinePolicy: invalid {'; '.join(bad)}"
            raise ExperimentError(msg)
        _per_stage("min_dwell_s", self.min_dwell_s, len(s))
        _per_stage("min_stage_requests", self.min_stage_requests, len(s))


__all__ = ["Baseline", "OnlinePolicy", "TrafficEstimate", "baseline_from_totals", "persistent_share_of"]
