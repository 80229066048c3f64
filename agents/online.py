"""The Online agent's decision logic: a pure state machine that runs one A/B experiment per surface.

Who calls what and why:

- the agents runtime, after the Critic, calls `OnlineAgent.plan` with the
  surviving candidates (configs already registered on `rectune.config`),
  the incumbent version, a traffic estimate and baseline statistics of the
  primary metric (`baseline_from_totals` computes both from recent totals
  of the incumbent).  The power gate decides: launch, cut arms, or refuse;
- `rectune approve EXPERIMENT` makes the runtime call `OnlineAgent.approve`
  on an experiment held for approval;
- on every merged metrics update the runtime calls `OnlineAgent.step` with
  the experiment's cumulative per-arm totals (`schemas.metrics.ArmTotals`,
  all windows since the experiment started, keyed by arm id) and, when it
  has them, pre-period totals of the same users (CUPED);
- each call returns the next `ExperimentState` (persisted in Redis via
  `ExperimentState.to_bytes`) and the `Decision`s to publish on
  `rectune.decisions` (allocations to write as config changes, alerts for
  `rectune.alerts`).  Nothing here does I/O or reads a clock: time is
  `now_ms`, so every path is reproducible in tests and after a restart.

One `step`, in this order (the first that ends the experiment wins):

1. **SRM** (`agents.stats.srm.srm_buckets`): per-bucket requests of every
   arm since the current SRM window opened, against the shares the sidecar
   actually serves (the lane rule rounds shares to 1/10 000).  The window
   opens `settle_s` after each allocation change, so traffic still served
   or aggregated under the previous allocation is not judged against the
   new one.  p < 0.001 → halt: everyone back to control, alert `srm`.
2. **Guardrails**, per active treatment arm: latency p99 from its histogram
   against the SLO; conversion and revenue non-inferiority (the always-valid
   confidence sequence on the log ratio vs control: its upper end below
   log(1 − margin) → breach); diversity floor (the confidence sequence on
   the arm's mean distinct categories per list entirely below the floor).
   Breach → rollback of that arm only (its lane goes to 0; the other lanes
   stay put), alert `guardrail_breach`.
3. **Primary read**: delta-method difference treatment − control over user
   buckets (CUPED-adjusted when pre-period covariates exist), folded into
   each arm's mixture SPRT (`SequentialState`, τ² fixed at launch by the
   power plan); Holm across all treatment arms of the experiment on the
   always-valid p-values.  Holm rejection with a negative estimate → stop
   the loser; a confidence sequence entirely below the planned absolute MDE
   → stop for futility; a positive rejection → winner.
4. **Stage logic**: at the final stage, once its dwell and minimum samples
   are met, promote the winner (the largest estimated difference if there
   are several); every treatment arm ended → stop; horizon reached → stop,
   the incumbent stays; otherwise ramp to the next stage once the current
   stage's dwell and minimum samples are met.

Futility costs power: it stops an arm whose confidence sequence excludes
the MDE, which at a true lift of exactly the MDE happens with probability
at most α (asymptotically).  Guardrail tests use τ from their own scale
(`guardrail_tau2`: the margin, or `diversity_resolution`), so they are
most sensitive to harms of about twice the margin; a much noisier read
(a 1% stage) widens their sequences a lot.

Honest limits: the primary read pools all stages, so a metric that drifts
in time while the shares ramp biases the comparison (Simpson); the SRM
check is repeated at every step against a fixed 0.001 threshold (not a
sequential SRM test); guardrail tests are not corrected across arms or
metrics (more rollbacks, never fewer); the latency p99 is accurate to one
histogram bin (~12%).  Pure: numpy and `agents.stats` only.
"""

from __future__ import annotations

import hashlib
import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal

import msgspec
import numpy as np
import numpy.typing as npt

from agents.experiment import (
    CTR,
    ArmRead,
    ArmSpec,
    ArmState,
    Candidate,
    Decision,
    DecisionKind,
    ExperimentError,
    ExperimentPlan,
    ExperimentState,
    Figure,
    GuardrailRead,
    GuardrailSpec,
    MetricSpec,
    PowerFigures,
    PrePeriod,
    ReadPoint,
    Snapshot,
    Status,
    Verdict,
)
from agents.stats.cuped import CupedFit, cuped_ratio
from agents.stats.distributions import normal_ppf
from agents.stats.errors import StatsError
from agents.stats.multiple import holm
from agents.stats.power import PowerPlan, plan_experiment
from agents.stats.ratio import Comparison, compare, ratio_from_sums
from agents.stats.sequential import SequentialState, optimal_mixing_ratio
from agents.stats.srm import HALT_P, SrmResult, srm_buckets
from schemas.config import ASSIGNMENT_BUCKETS, Allocation, ArmShare, ConfigError, validate_allocation
from schemas.metrics import FIELD_INDEX, N_FIELDS, N_LATENCY_BINS, ArmTotals, latency_quantile

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
    """

    value: float
    variance_per_request: float
    variance_dof: float | None = None


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
        Baseline(num / den, float(np.mean(per_request)), dof),
    )


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
    `max_treatments` caps the arms before the gate looks.
    """

    surface: str
    primary: MetricSpec = CTR
    target_mde: float = 0.02
    stages: tuple[float, ...] = (0.01, 0.05, 0.25, 0.5)
    min_dwell_s: float | tuple[float, ...] = 86_400.0
    min_stage_requests: float | tuple[float, ...] = 5_000.0
    horizon_s: float = 14 * 86_400.0
    alpha: float = 0.05
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

    def __post_init__(self) -> None:
        """Refuse a policy that cannot run (names the field and the rule)."""
        bad: list[str] = []
        s = self.stages
        if not s or any(not 0.0 < v < 1.0 for v in s) or any(b <= a for a, b in itertools.pairwise(s)):
            bad.append(f"stages={s}: strictly increasing total treatment shares in (0, 1)")
        if not (0.0 < self.alpha < 1.0 and 0.0 < self.power < 1.0 and 0.0 < self.srm_threshold < 1.0):
            bad.append("alpha, power, srm_threshold: in (0, 1)")
        if not (self.target_mde > 0.0 and self.horizon_s > 0.0 and self.max_treatments >= 1):
            bad.append("target_mde > 0, horizon_s > 0, max_treatments >= 1")
        if not (0.0 <= self.min_read_bucket_fraction <= 1.0 and self.max_history >= 0 and self.settle_s >= 0.0):
            bad.append("min_read_bucket_fraction in [0, 1], max_history >= 0, settle_s >= 0")
        if bad:
            msg = f"OnlinePolicy: invalid {'; '.join(bad)}"
            raise ExperimentError(msg)
        _per_stage("min_dwell_s", self.min_dwell_s, len(s))
        _per_stage("min_stage_requests", self.min_stage_requests, len(s))


# --------------------------------------------------------------------------- pure helpers


def _span(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "forever"
    if seconds >= 86_400.0:
        return f"{seconds / 86_400.0:.1f} days"
    if seconds >= 3_600.0:
        return f"{seconds / 3_600.0:.1f} hours"
    return f"{seconds / 60.0:.0f} minutes"


def _pct(relative: float) -> str:
    return f"{100.0 * relative:.2g}%" if math.isfinite(relative) else "no lift at all"


def stage_fractions(stages: Sequence[float], min_dwell_s: Sequence[float], horizon_s: float) -> tuple[float, ...]:
    """Fraction of the horizon spent in each stage when every stage but the last lasts its minimum dwell."""
    early = sum(min_dwell_s[:-1])
    if early >= horizon_s:
        msg = f"min_dwell_s: the ramp's first {len(stages) - 1} stages ({_span(early)}) leave no time in the horizon"
        raise ExperimentError(msg)
    return (*(d / horizon_s for d in min_dwell_s[:-1]), 1.0 - early / horizon_s)


def ramp_exposure(stages: Sequence[float], fractions: Sequence[float], treatments: int) -> float:
    """The `exposure` to give `plan_experiment` so its equal-split model matches the ramp's information.

    Over the ramp, a treatment arm sees m_T = Σ_s f_s·S_s/K of the traffic
    and control m_C = Σ_s f_s·(1 − S_s) (pooled over stages).  The power
    model splits `exposure` equally over K + 1 arms, giving a difference
    variance 2σ²(K + 1)/(e·U); matching σ²(1/m_T + 1/m_C)/U gives
    e = 2(K + 1)/(1/m_T + 1/m_C), capped at 1.  With a last stage of 50%
    and short early stages, e ≈ 1 whatever K.
    """
    m_t = sum(f * s / treatments for f, s in zip(fractions, stages, strict=True))
    m_c = sum(f * (1.0 - s) for f, s in zip(fractions, stages, strict=True))
    return min(1.0, 2.0 * (treatments + 1) / (1.0 / m_t + 1.0 / m_c))


def guardrail_tau2(resolution: float, alpha: float, power: float) -> float:
    """τ² of an always-valid guardrail test centred on effects of size `resolution` (its own scale).

    τ = resolution·sqrt(k*)/(z* + z_power): the mixing scale the power plan
    would choose if `resolution` were the MDE (τ ≈ 0.74 × MDE at α = 0.05,
    power 0.8; `agents.stats.sequential`).
    """
    k = optimal_mixing_ratio(alpha)
    tau = resolution * math.sqrt(k) / (math.sqrt(k + 1.0) + normal_ppf(power))
    return tau * tau


def served_shares(allocation: Allocation) -> tuple[float, ...]:
    """The traffic shares the sidecar actually serves for `allocation` (control first).

    Mirrors `serving_sidecar.assignment.treatment_range` (agents may not
    import the sidecar): treatment i owns round(share·B) buckets of its lane
    of B/K, B = `ASSIGNMENT_BUCKETS`; control takes the rest.
    """
    k = len(allocation.arms) - 1
    out = []
    for i, arm in enumerate(allocation.arms[1:], start=1):
        lane = i * ASSIGNMENT_BUCKETS // k - (i - 1) * ASSIGNMENT_BUCKETS // k
        out.append(min(max(round(arm.share * ASSIGNMENT_BUCKETS), 0), lane) / ASSIGNMENT_BUCKETS)
    return (1.0 - sum(out), *out)


def stage_allocation(plan: ExperimentPlan, stage: int, active: Sequence[bool]) -> Allocation:
    """The allocation of ramp `stage`: each active treatment arm gets stage / K, stopped arms 0, control the rest.

    Stopped arms keep their (empty) place so every other arm's lane stays
    where it was (ramp stability needs a fixed K).
    """
    per = plan.stages[stage] / len(plan.treatments)
    shares = [per if on else 0.0 for on in active]
    arms = (
        ArmShare(plan.control.arm_id, plan.control.config_version, max(0.0, 1.0 - sum(shares))),
        *(ArmShare(t.arm_id, t.config_version, s) for t, s in zip(plan.treatments, shares, strict=True)),
    )
    try:
        return validate_allocation(Allocation(experiment_id=plan.experiment_id, salt=plan.salt, arms=arms))
    except ConfigError as err:  # a bug, not bad input: the plan's stages were validated
        msg = f"allocation: stage {stage} of {plan.experiment_id} is not a valid allocation ({err})"
        raise ExperimentError(msg) from err


def _experiment_id(surface: str, incumbent: int, candidates: Sequence[Candidate], now_ms: int) -> str:
    key = msgspec.json.encode([surface, incumbent, now_ms, [[c.proposal_id, c.config_version] for c in candidates]])
    return "exp-" + hashlib.sha256(key).hexdigest()[:12]


class _Arrays:
    """Dense per-arm arrays of one step's totals, in `plan.arm_ids` order (missing arms are zeros)."""

    def __init__(self, plan: ExperimentPlan, totals: Mapping[str, ArmTotals]) -> None:
        present = [totals[a] for a in plan.arm_ids if a in totals]
        self.any = bool(present)
        shapes = {t.sums.shape for t in present}
        if len(shapes) > 1:
            msg = f"totals: arms of {plan.experiment_id} disagree on the bucket layout {sorted(shapes)}"
            raise ExperimentError(msg)
        shape = shapes.pop() if shapes else (N_FIELDS, 2)
        if shape[0] != N_FIELDS:
            msg = f"totals: sums must be ({N_FIELDS} fields × buckets), got {shape}"
            raise ExperimentError(msg)
        self.buckets = shape[1]
        self.sums: dict[str, FloatArray] = {}
        self.hist: dict[str, IntArray] = {}
        for arm_id in plan.arm_ids:
            t = totals.get(arm_id)
            self.sums[arm_id] = np.zeros(shape) if t is None else np.asarray(t.sums, dtype=np.float64)
            self.hist[arm_id] = (
                np.zeros(N_LATENCY_BINS, np.int64) if t is None else np.asarray(t.latency_hist, dtype=np.int64)
            )

    def requests(self, arm_id: str) -> float:
        return float(self.sums[arm_id][_REQUESTS].sum())


def _readable(sums: FloatArray, plan: ExperimentPlan) -> bool:
    """Enough traffic for the normal approximation behind a delta-method read (requests and non-empty buckets)."""
    row = sums[_REQUESTS]
    return bool(row.sum() >= plan.min_read_requests and (row > 0).mean() >= plan.min_read_bucket_fraction)


# --------------------------------------------------------------------------- the agent


class _Log:
    """Decisions of one call, numbered after the state's last `seq`."""

    def __init__(self, state: ExperimentState, now_ms: int) -> None:
        self.state, self.now_ms, self.seq = state, now_ms, state.seq
        self.out: list[Decision] = []

    def add(self, kind: DecisionKind, reasons: Sequence[str], stage: int, **kw: Any) -> None:
        self.seq += 1
        plan = self.state.plan
        self.out.append(
            Decision(
                decision_id=f"{plan.experiment_id}#{self.seq}",
                seq=self.seq,
                experiment_id=plan.experiment_id,
                surface=plan.surface,
                kind=kind,
                at_ms=self.now_ms,
                stage=stage,
                reasons=tuple(reasons),
                **kw,
            )
        )


class OnlineAgent:
    """The Online agent of one surface: `plan` → (`approve`) → `step`…, each pure (state in, state out).

    Built once by the runtime with the surface's `OnlinePolicy`.  Holds no
    mutable state: everything an experiment needs is in its
    `ExperimentState`, so a standby process that loads the state from Redis
    continues exactly where the last one stopped.
    """

    def __init__(self, policy: OnlinePolicy) -> None:
        """Keep the policy (validated by `OnlinePolicy` itself)."""
        self.policy = policy

    # ------------------------------------------------------------------ plan

    def plan(
        self,
        candidates: Sequence[Candidate],
        incumbent_version: int,
        traffic: TrafficEstimate,
        baseline: Baseline,
        now_ms: int,
        *,
        hold: str | None = None,
    ) -> tuple[ExperimentState | None, list[Decision]]:
        """Power-gate `candidates` against the incumbent and plan the experiment.

        Returns (None, [refuse]) when no candidate is usable; (state, [refuse])
        with status `refused` when the traffic cannot resolve the target MDE
        within the horizon even with one arm; otherwise a running state and
        an `allocate` decision for stage 0, or — with `approval_required`, or
        a `hold` reason (the loop's A/A pre-period) — a `pending_approval`
        state and a `hold_for_approval` decision that `approve` releases.
        When the gate cuts arms, the decision says which and why.
        """
        p = self.policy
        if incumbent_version < 1:
            msg = f"incumbent_version: must be a registered config version (>= 1), got {incumbent_version}"
            raise ExperimentError(msg)
        notes: list[str] = []
        kept: list[Candidate] = []
        for c in candidates:
            if c.config_version < 1:
                notes.append(f"dropped {c.proposal_id}: config version {c.config_version} is not registered")
            elif c.config_version == incumbent_version:
                notes.append(f"dropped {c.proposal_id}: it serves the incumbent version {incumbent_version}")
            elif any(k.config_version == c.config_version or k.proposal_id == c.proposal_id for k in kept):
                notes.append(f"dropped {c.proposal_id}: duplicate of an earlier candidate")
            else:
                kept.append(c)
        if len(kept) > p.max_treatments:
            dropped = ", ".join(c.proposal_id for c in kept[p.max_treatments :])
            notes.append(f"policy allows {p.max_treatments} treatment arms: dropped {dropped}")
            kept = kept[: p.max_treatments]
        experiment_id = _experiment_id(p.surface, incumbent_version, candidates, now_ms)
        dwell = _per_stage("min_dwell_s", p.min_dwell_s, len(p.stages))
        min_requests = _per_stage("min_stage_requests", p.min_stage_requests, len(p.stages))
        stub_plan = self._plan_struct(experiment_id, incumbent_version, kept, dwell, min_requests, now_ms)
        if not kept:
            state = ExperimentState(plan=stub_plan, status="refused", ended_ms=now_ms, outcome="no usable candidate")
            log = _Log(state, now_ms)
            log.add("refuse", [*notes, "refuse: no usable candidate to test"], 0)
            return None, log.out

        try:
            fractions = stage_fractions(p.stages, dwell, p.horizon_s)
            gate, requested = self._gate(len(kept), traffic, baseline, fractions)
        except (ExperimentError, StatsError) as err:
            return self._refused(stub_plan, [*notes, f"refuse: cannot plan the experiment ({err})"], now_ms)

        if gate is None:
            one = self._power(1, traffic, baseline, fractions)
            needed = requested.horizon_needed_seconds
            reason = (
                f"power gate: refuse — with {len(kept)} treatment arm(s) the traffic resolves only "
                f"±{_pct(requested.mde_relative)} in {_span(p.horizon_s)}, target {_pct(p.target_mde)}; "
                f"even 1 arm resolves only ±{_pct(one.mde_relative)}"
                + (f"; {len(kept)} arm(s) would need about {_span(needed)}" if needed is not None else "")
            )
            plan = self._plan_struct(
                experiment_id,
                incumbent_version,
                kept,
                dwell,
                min_requests,
                now_ms,
                requested,
                requested,
                traffic,
                reason,
            )
            return self._refused(plan, [*notes, reason], now_ms)

        arms = kept[: gate.treatments]
        if gate.treatments < len(kept):
            dropped = ", ".join(c.proposal_id for c in kept[gate.treatments :])
            notes.append(
                f"power gate: cut from {len(kept)} to {gate.treatments} treatment arm(s) — with {len(kept)} the "
                f"traffic resolves only ±{_pct(requested.mde_relative)} in {_span(p.horizon_s)} against a target "
                f"of {_pct(p.target_mde)}; with {gate.treatments} it resolves ±{_pct(gate.mde_relative)}; "
                f"dropped {dropped}"
            )
        else:
            notes.append(
                f"power gate: launch — traffic resolves ±{_pct(gate.mde_relative)} in {_span(p.horizon_s)} with "
                f"{gate.treatments} treatment arm(s) over the ramp, target {_pct(p.target_mde)}"
            )
        plan = self._plan_struct(
            experiment_id, incumbent_version, arms, dwell, min_requests, now_ms, gate, requested, traffic, notes[-1]
        )
        state = ExperimentState(
            plan=plan,
            status="pending_approval",
            arms=tuple(ArmState(arm_id=t.arm_id) for t in plan.treatments),
        )
        figures = self._plan_figures(plan)
        if plan.approval_required or hold is not None:
            log = _Log(state, now_ms)
            log.add(
                "hold_for_approval",
                [
                    *notes,
                    *([hold] if hold is not None else []),
                    *(
                        [f"approval required: traffic held until `rectune approve {experiment_id}`"]
                        if plan.approval_required
                        else []
                    ),
                ],
                0,
                figures=figures,
            )
            return msgspec.structs.replace(state, seq=log.seq), log.out
        return self._launch(state, now_ms, notes, figures)

    def _power(
        self, treatments: int, traffic: TrafficEstimate, baseline: Baseline, fractions: Sequence[float]
    ) -> PowerPlan:
        p = self.policy
        return plan_experiment(
            baseline=baseline.value,
            variance_per_unit=baseline.variance_per_request,
            units_per_second=traffic.requests_per_second,
            horizon_seconds=p.horizon_s,
            treatments=treatments,
            alpha=p.alpha,
            power=p.power,
            exposure=ramp_exposure(p.stages, fractions, treatments),
            target_mde=p.target_mde,
            variance_dof=baseline.variance_dof,
            variance_confidence=p.variance_confidence,
        )

    def _gate(
        self, requested_arms: int, traffic: TrafficEstimate, baseline: Baseline, fractions: Sequence[float]
    ) -> tuple[PowerPlan | None, PowerPlan]:
        """(the largest feasible plan with <= `requested_arms` arms, or None; the plan with all of them).

        The exposure depends on K (the ramp splits each stage over the arms),
        so arms are cut one at a time rather than by `max_treatments_for`.
        """
        requested = self._power(requested_arms, traffic, baseline, fractions)
        if requested.feasible:
            return requested, requested
        for k in range(requested_arms - 1, 0, -1):
            candidate = self._power(k, traffic, baseline, fractions)
            if candidate.feasible:
                return candidate, requested
        return None, requested

    def _plan_struct(
        self,
        experiment_id: str,
        incumbent: int,
        arms: Sequence[Candidate],
        dwell: tuple[float, ...],
        min_requests: tuple[float, ...],
        now_ms: int,
        gate: PowerPlan | None = None,
        requested: PowerPlan | None = None,
        traffic: TrafficEstimate | None = None,
        reason: str = "not planned",
    ) -> ExperimentPlan:
        """The frozen plan; `gate` is the plan launched with (or, refused, the one with every arm)."""
        p, g = self.policy, self.policy.guardrails
        guardrails = msgspec.structs.replace(
            g,
            conversion_tau2=0.0
            if g.conversion_margin is None
            else guardrail_tau2(-math.log1p(-g.conversion_margin), g.alpha, p.power),
            revenue_tau2=0.0
            if g.revenue_margin is None
            else guardrail_tau2(-math.log1p(-g.revenue_margin), g.alpha, p.power),
            diversity_tau2=guardrail_tau2(g.diversity_resolution, g.alpha, p.power),
        )
        if gate is None:
            figures = PowerFigures(
                baseline=math.nan,
                variance_per_request=math.nan,
                requests_per_second=math.nan,
                exposure=math.nan,
                treatments_requested=len(arms),
                treatments=0,
                target_mde=p.target_mde,
                mde_relative=math.inf,
                mde_absolute=math.inf,
                tau2=math.nan,
                feasible=False,
                horizon_needed_s=None,
                reason=reason,
            )
        else:
            req = requested or gate
            figures = PowerFigures(
                baseline=gate.baseline,
                variance_per_request=gate.variance_per_unit,
                requests_per_second=math.nan if traffic is None else traffic.requests_per_second,
                exposure=ramp_exposure(p.stages, stage_fractions(p.stages, dwell, p.horizon_s), gate.treatments),
                treatments_requested=req.treatments,
                treatments=gate.treatments if gate.feasible else 0,
                target_mde=p.target_mde,
                mde_relative=gate.mde_relative,
                mde_absolute=gate.mde_absolute,
                tau2=gate.tau2,
                feasible=gate.feasible,
                horizon_needed_s=req.horizon_needed_seconds,
                reason=reason,
            )
        return ExperimentPlan(
            experiment_id=experiment_id,
            surface=p.surface,
            created_ms=now_ms,
            salt=experiment_id,
            control=ArmSpec(arm_id=f"{experiment_id}.c", config_version=incumbent),
            treatments=tuple(
                ArmSpec(arm_id=f"{experiment_id}.t{i}", config_version=c.config_version, proposal_id=c.proposal_id)
                for i, c in enumerate(arms, start=1)
            ),
            stages=p.stages,
            min_dwell_s=dwell,
            min_stage_requests=min_requests,
            horizon_s=p.horizon_s,
            alpha=p.alpha,
            power=p.power,
            primary=p.primary,
            guardrails=guardrails,
            approval_required=p.approval_required,
            tau2=figures.tau2,
            mde_absolute=figures.mde_absolute,
            power_figures=figures,
            srm_threshold=p.srm_threshold,
            srm_min_expected_requests=p.srm_min_expected_requests,
            settle_s=p.settle_s,
            min_read_requests=p.min_read_requests,
            min_read_bucket_fraction=p.min_read_bucket_fraction,
            max_history=p.max_history,
        )

    @staticmethod
    def _plan_figures(plan: ExperimentPlan) -> tuple[Figure, ...]:
        f = plan.power_figures
        return (
            Figure.of("treatments", f.treatments),
            Figure.of("treatments_requested", f.treatments_requested),
            Figure.of("target_mde", f.target_mde),
            Figure.of("mde_relative", f.mde_relative),
            Figure.of("mde_absolute", f.mde_absolute),
            Figure.of("baseline", f.baseline),
            Figure.of("variance_per_request", f.variance_per_request),
            Figure.of("requests_per_second", f.requests_per_second),
            Figure.of("exposure", f.exposure),
            Figure.of("tau2", f.tau2),
            Figure.of("horizon_s", plan.horizon_s),
            Figure.of("horizon_needed_s", math.nan if f.horizon_needed_s is None else f.horizon_needed_s),
            Figure.of("stage_share", plan.stages[0]),
        )

    def _refused(
        self, plan: ExperimentPlan, reasons: Sequence[str], now_ms: int
    ) -> tuple[ExperimentState, list[Decision]]:
        state = ExperimentState(plan=plan, status="refused", ended_ms=now_ms, outcome=reasons[-1])
        log = _Log(state, now_ms)
        log.add("refuse", reasons, 0, figures=self._plan_figures(plan))
        return msgspec.structs.replace(state, seq=log.seq), log.out

    def _launch(
        self, state: ExperimentState, now_ms: int, reasons: Sequence[str], figures: tuple[Figure, ...]
    ) -> tuple[ExperimentState, list[Decision]]:
        plan = state.plan
        allocation = stage_allocation(plan, 0, [True] * len(plan.treatments))
        state = msgspec.structs.replace(
            state,
            status="running",
            stage=0,
            started_ms=now_ms,
            stage_started_ms=now_ms,
            allocation_ms=now_ms,
            allocation=allocation,
            snapshot=None,
            stage_start_requests=(0.0,) * len(plan.arm_ids),
        )
        log = _Log(state, now_ms)
        shares = "/".join(f"{100 * a.share:.3g}%" for a in allocation.arms)
        log.add(
            "allocate",
            [*reasons, f"stage 1/{len(plan.stages)}: control/treatments {shares}"],
            0,
            figures=figures,
            allocation=allocation,
        )
        return msgspec.structs.replace(state, seq=log.seq), log.out

    # ------------------------------------------------------------------ approve

    def approve(
        self, state: ExperimentState, now_ms: int, *, reason: str = "approved: releasing the held allocation"
    ) -> tuple[ExperimentState, list[Decision]]:
        """Release a held experiment (approval, or the loop's pre-period): allocate stage 0 now (horizon starts now)."""
        if state.status != "pending_approval":
            msg = f"approve: {state.plan.experiment_id} is {state.status}, not pending_approval"
            raise ExperimentError(msg)
        return self._launch(state, now_ms, [reason], self._plan_figures(state.plan))

    # ------------------------------------------------------------------ step

    def step(
        self,
        state: ExperimentState,
        totals_by_arm: Mapping[str, ArmTotals],
        pre_period: Mapping[str, ArmTotals] | None,
        now_ms: int,
    ) -> tuple[ExperimentState, list[Decision]]:
        """Advance a running experiment with its cumulative per-arm totals (see the module doc for the order).

        `totals_by_arm` maps arm ids of this experiment to their totals since
        the experiment started (missing arms count as no traffic);
        `pre_period`, when given, maps the same arm ids to pre-period totals
        of each arm's own users and replaces the stored covariates.  A state
        that is not running is returned unchanged with no decisions.
        """
        if state.status != "running" or state.allocation is None:
            return state, []
        plan = state.plan
        data = _Arrays(plan, totals_by_arm)
        if pre_period is not None:
            state = msgspec.structs.replace(state, pre_period=_pre_period(plan, pre_period))
        log = _Log(state, now_ms)
        if not data.any:
            state = self._end_if_horizon(state, log, [], now_ms)
            return msgspec.structs.replace(state, seq=log.seq), log.out

        # 1. SRM
        state, halted = self._srm(state, data, log, now_ms)
        if halted:
            return msgspec.structs.replace(state, seq=log.seq), log.out

        # 2. guardrails
        state, guard_reads = self._guardrails(state, data, log, now_ms)

        # 3. primary read, Holm, losers and futility
        state, reads, winners = self._read(state, data, log, now_ms, guard_reads)

        # 4. stage logic
        state = self._advance(state, data, log, now_ms, winners, reads)
        return msgspec.structs.replace(state, seq=log.seq), log.out

    # ---- 1. SRM

    def _srm(self, state: ExperimentState, data: _Arrays, log: _Log, now_ms: int) -> tuple[ExperimentState, bool]:
        plan, allocation = state.plan, state.allocation
        assert allocation is not None  # noqa: S101 - checked by step
        if state.snapshot is None:
            if state.allocation_ms is not None and now_ms >= state.allocation_ms + plan.settle_s * 1000.0:
                snap = Snapshot(
                    taken_ms=now_ms,
                    requests=tuple(tuple(data.sums[a][_REQUESTS].tolist()) for a in plan.arm_ids),
                    latency=tuple(tuple(data.hist[a].tolist()) for a in plan.arm_ids),
                )
                state = msgspec.structs.replace(state, snapshot=snap)
            return state, False
        base = np.asarray(state.snapshot.requests, dtype=np.float64)
        counts = np.stack([data.sums[a][_REQUESTS] for a in plan.arm_ids])
        if base.shape != counts.shape:
            msg = f"totals: bucket layout changed mid-experiment ({base.shape} → {counts.shape})"
            raise ExperimentError(msg)
        window = counts - base
        if (window < -1e-9).any():
            msg = "totals: cumulative requests decreased since the SRM snapshot (totals must be exact and cumulative)"
            raise ExperimentError(msg)
        window = np.maximum(window, 0.0)
        shares = served_shares(allocation)
        positive = [s for s in shares if s > 0.0]
        if min(positive) * window.sum() < plan.srm_min_expected_requests:
            return state, False
        result: SrmResult = srm_buckets(window, shares, threshold=plan.srm_threshold)
        if not result.halt:
            return state, False
        arms = tuple(
            msgspec.structs.replace(a, status="ended", ended_ms=now_ms, reason="halted: SRM")
            if a.status == "active"
            else a
            for a in state.arms
        )
        control_only = stage_allocation(plan, state.stage, [False] * len(plan.treatments))
        reason = (
            f"{result.reason} over {window.sum():.0f} requests since {state.snapshot.taken_ms}: assignment or "
            "logging is broken and no read of this experiment can be trusted; everyone back to control"
        )
        state = msgspec.structs.replace(
            state, status="halted_srm", arms=arms, allocation=control_only, ended_ms=now_ms, outcome=reason
        )
        log.add(
            "halt",
            [reason],
            state.stage,
            figures=(
                Figure.of("srm_p_value", result.p_value),
                Figure.of("srm_statistic", result.statistic),
                Figure.of("srm_threshold", result.threshold),
                *(
                    Figure.of(f"observed_share.{a}", s)
                    for a, s in zip(plan.arm_ids, result.observed_shares, strict=True)
                ),
                *(
                    Figure.of(f"expected_share.{a}", s)
                    for a, s in zip(plan.arm_ids, result.expected_shares, strict=True)
                ),
            ),
            allocation=control_only,
            ends_experiment=True,
            alert="srm",
            severity="critical",
        )
        return state, True

    # ---- 2. guardrails

    def _guardrails(
        self, state: ExperimentState, data: _Arrays, log: _Log, now_ms: int
    ) -> tuple[ExperimentState, list[GuardrailRead]]:
        plan, g = state.plan, state.plan.guardrails
        control = data.sums[plan.control.arm_id]
        reads: list[GuardrailRead] = []
        arms = list(state.arms)
        for i, arm in enumerate(arms):
            if arm.status != "active":
                continue
            sums = data.sums[arm.arm_id]
            breaches: list[GuardrailRead] = []
            if g.latency_p99_slo_ms is not None:
                breaches += self._latency(state, data, arm.arm_id, g.latency_p99_slo_ms, reads)
            if _readable(sums, plan) and _readable(control, plan):
                checks: tuple[tuple[_NonInferior, float | None, float], ...] = (
                    ("conversion", g.conversion_margin, g.conversion_tau2),
                    ("revenue", g.revenue_margin, g.revenue_tau2),
                )
                for name, margin, tau2 in checks:
                    if margin is None:
                        continue
                    arm, read = _non_inferiority(arm, name, control, sums, margin, tau2, g.alpha)
                    reads.append(read)
                    if read.breached:
                        breaches.append(read)
            if g.diversity_floor is not None and _readable(sums, plan):
                arm, read = _diversity(arm, sums, g.diversity_floor, g.diversity_tau2, g.alpha)
                reads.append(read)
                if read.breached:
                    breaches.append(read)
            if breaches:
                why = "; ".join(_breach_text(b) for b in breaches)
                arm = msgspec.structs.replace(arm, status="rolled_back", ended_ms=now_ms, reason=f"guardrail: {why}")
            arms[i] = arm
        state = msgspec.structs.replace(state, arms=tuple(arms))
        for arm in state.arms:
            if arm.status == "rolled_back" and arm.ended_ms == now_ms:
                state = self._reallocate(state, now_ms)
                spec = _spec(plan, arm.arm_id)
                log.add(
                    "rollback",
                    [f"rollback {arm.arm_id} (config {spec.config_version}, {spec.proposal_id}): {arm.reason}"],
                    state.stage,
                    arm_id=arm.arm_id,
                    config_version=spec.config_version,
                    proposal_id=spec.proposal_id,
                    guardrails=tuple(r for r in reads if r.arm_id == arm.arm_id),
                    allocation=state.allocation,
                    alert="guardrail_breach",
                    severity="warning",
                )
        return state, reads

    def _latency(
        self, state: ExperimentState, data: _Arrays, arm_id: str, slo: float, reads: list[GuardrailRead]
    ) -> list[GuardrailRead]:
        """p99 of the arm since the SRM window opened (the current load), else since the start."""
        g = state.plan.guardrails
        hist = data.hist[arm_id]
        scope = "since start"
        if state.snapshot is not None:
            recent = hist - np.asarray(state.snapshot.latency[state.plan.arm_ids.index(arm_id)], dtype=np.int64)
            if recent.sum() >= g.min_latency_requests:
                hist, scope = recent, "this allocation"
        if hist.sum() < g.min_latency_requests:
            return []
        p99 = latency_quantile(hist, 0.99)
        control = latency_quantile(data.hist[state.plan.control.arm_id], 0.99)
        note = f"{scope}, {int(hist.sum())} requests; control p99 {control:.1f} ms"
        read = GuardrailRead(
            arm_id=arm_id, guardrail="latency_p99", value=p99, bound=None, threshold=slo, breached=p99 > slo, note=note
        )
        reads.append(read)
        return [read] if read.breached else []

    def _reallocate(self, state: ExperimentState, now_ms: int) -> ExperimentState:
        """The current stage's allocation for the arms still active; restarts the SRM window."""
        active = [a.status == "active" for a in state.arms]
        return msgspec.structs.replace(
            state,
            allocation=stage_allocation(state.plan, state.stage, active),
            allocation_ms=now_ms,
            snapshot=None,
        )

    # ---- 3. primary read

    def _read(
        self, state: ExperimentState, data: _Arrays, log: _Log, now_ms: int, guard_reads: list[GuardrailRead]
    ) -> tuple[ExperimentState, list[ArmRead], list[str]]:
        plan = state.plan
        metric = plan.primary
        control_id = plan.control.arm_id
        control = data.sums[control_id]
        notes: list[str] = []
        active = [a for a in state.arms if a.status == "active" and _readable(data.sums[a.arm_id], plan)]
        if not active or not _readable(control, plan):
            if guard_reads:
                log.add(
                    "interim_read",
                    ["guardrails only: too little traffic for a primary read"],
                    state.stage,
                    guardrails=tuple(guard_reads),
                )
            return state, [], []
        comparisons: dict[str, tuple[Comparison, float | None]] = {}
        updated: set[str] = set()
        fit = self._cuped(state, data, [a.arm_id for a in active], notes)
        for i, arm in enumerate(active, start=1):
            try:
                if fit is not None:
                    comparisons[arm.arm_id] = (fit.compare(i, 0), fit.variance_reduction(i, 0))
                else:
                    c = ratio_from_sums(control, metric.numerator, metric.denominator)
                    t = ratio_from_sums(data.sums[arm.arm_id], metric.numerator, metric.denominator)
                    comparisons[arm.arm_id] = (compare(c, t), None)
            except StatsError as err:
                notes.append(f"{arm.arm_id}: no read ({err.message})")
        arms = {a.arm_id: a for a in state.arms}
        tests: dict[str, SequentialState] = {a.arm_id: a.primary for a in state.arms if a.primary is not None}
        for arm_id, (cmp, _) in comparisons.items():
            if not (cmp.difference_variance > 0.0 and math.isfinite(cmp.difference_variance)):
                notes.append(f"{arm_id}: no read (zero variance: too few events)")
                continue
            test = tests.get(arm_id) or SequentialState.start(plan.tau2, plan.alpha)
            tests[arm_id] = test.update(cmp.difference, cmp.difference_variance)
            arms[arm_id] = msgspec.structs.replace(arms[arm_id], primary=tests[arm_id])
            updated.add(arm_id)
        order = [t.arm_id for t in plan.treatments]
        # The family is every treatment arm launched (fixed): ended arms keep their last p, unread ones count as 1.
        adjusted = holm([tests[a].p_value if a in tests else 1.0 for a in order], plan.alpha)
        winners: list[str] = []
        reads: list[ArmRead] = []
        stops: list[tuple[str, str, str]] = []
        history = list(state.history)
        for arm_id, rejected, holm_p in zip(order, adjusted.reject, adjusted.adjusted, strict=True):
            arm = arms[arm_id]
            if arm_id not in updated:
                continue
            seq = tests[arm_id]
            if arm.verdict == 0 and rejected:
                arm = msgspec.structs.replace(arm, verdict=1 if seq.estimate > 0.0 else -1, verdict_ms=now_ms)
            verdict: Verdict = "open"
            if arm.verdict > 0:
                verdict = "winner"
                winners.append(arm_id)
            elif arm.verdict < 0:
                verdict = "loser"
                why = (
                    f"significantly worse than control on {metric.name} (Holm p={holm_p:.3g}, difference "
                    f"{seq.estimate:+.4g}, always-valid CS [{seq.lower:+.4g}, {seq.upper:+.4g}])"
                )
                arm = msgspec.structs.replace(arm, status="stopped_loser", ended_ms=now_ms, reason=why)
                stops.append((arm_id, "loser", why))
            elif seq.upper < plan.mde_absolute:
                verdict = "futile"
                why = (
                    f"futile on {metric.name}: the always-valid CS [{seq.lower:+.4g}, {seq.upper:+.4g}] excludes "
                    f"the planned MDE {plan.mde_absolute:+.4g} (difference {seq.estimate:+.4g})"
                )
                arm = msgspec.structs.replace(arm, status="stopped_futile", ended_ms=now_ms, reason=why)
                stops.append((arm_id, "futile", why))
            arms[arm_id] = arm
            cmp, ratio = comparisons[arm_id]
            reads.append(
                ArmRead(
                    arm_id=arm_id,
                    metric=metric.name,
                    control=cmp.control,
                    treatment=cmp.treatment,
                    difference=cmp.difference,
                    difference_se=cmp.difference_se,
                    lift=None if math.isnan(cmp.lift) else cmp.lift,
                    lower=_fin(seq.lower),
                    upper=_fin(seq.upper),
                    p_value=seq.p_value,
                    holm_p=holm_p,
                    looks=seq.looks,
                    treatment_requests=data.requests(arm_id),
                    control_requests=data.requests(control_id),
                    cuped=ratio is not None,
                    variance_ratio=None if ratio is None else _fin(ratio),
                    verdict=verdict,
                )
            )
            history.append(
                ReadPoint(
                    at_ms=now_ms,
                    stage=state.stage,
                    arm_id=arm_id,
                    estimate=seq.estimate,
                    se=math.sqrt(seq.variance),
                    p_value=seq.p_value,
                    holm_p=holm_p,
                    lower=_fin(seq.lower),
                    upper=_fin(seq.upper),
                )
            )
        if plan.max_history == 0:
            history = []
        elif len(history) > plan.max_history:
            history = history[-plan.max_history :]
        state = msgspec.structs.replace(state, arms=tuple(arms[a.arm_id] for a in state.arms), history=tuple(history))
        summary = [
            f"{r.arm_id}: {metric.name} {r.treatment:.5g} vs {r.control:.5g} (difference {r.difference:+.4g}, "
            f"p={r.p_value:.3g}, Holm p={r.holm_p:.3g}{', CUPED' if r.cuped else ''}) → {r.verdict}"
            for r in reads
        ]
        log.add(
            "interim_read",
            [*summary, *notes] or ["no primary read yet"],
            state.stage,
            reads=tuple(reads),
            guardrails=tuple(guard_reads),
        )
        for arm_id, _, why in stops:
            state = self._reallocate(state, now_ms)
            spec = _spec(plan, arm_id)
            log.add(
                "stop_arm",
                [f"stop {arm_id} ({spec.proposal_id}): {why}"],
                state.stage,
                arm_id=arm_id,
                config_version=spec.config_version,
                proposal_id=spec.proposal_id,
                reads=tuple(r for r in reads if r.arm_id == arm_id),
                allocation=state.allocation,
            )
        return state, reads, winners

    def _cuped(
        self, state: ExperimentState, data: _Arrays, arm_ids: Sequence[str], notes: list[str]
    ) -> CupedFit | None:
        """CUPED fit over control + `arm_ids` when pre-period covariates cover them (None: raw read)."""
        if state.pre_period is None:
            return None
        pre = {p.arm_id: p for p in state.pre_period}
        ids = [state.plan.control.arm_id, *arm_ids]
        if any(a not in pre for a in ids):
            notes.append("CUPED off: pre-period covariates missing for some arms")
            return None
        m = state.plan.primary
        try:
            return cuped_ratio(
                [(data.sums[a][FIELD_INDEX[m.numerator]], data.sums[a][FIELD_INDEX[m.denominator]]) for a in ids],
                [(pre[a].numerator, pre[a].denominator) for a in ids],
            )
        except StatsError as err:
            notes.append(f"CUPED off: {err.message}")
            return None

    # ---- 4. stage logic

    def _advance(
        self,
        state: ExperimentState,
        data: _Arrays,
        log: _Log,
        now_ms: int,
        winners: list[str],
        reads: list[ArmRead],
    ) -> ExperimentState:
        plan = state.plan
        active = [a for a in state.arms if a.status == "active"]
        if not active:
            rolled = any(a.status == "rolled_back" for a in state.arms)
            status: Status = "rolled_back" if rolled else "stopped_loser"
            why = "every treatment arm ended (" + "; ".join(f"{a.arm_id}: {a.status}" for a in state.arms) + ")"
            return self._end(state, log, now_ms, status, "stop", [why, "the incumbent stays"])
        assert state.stage_started_ms is not None  # noqa: S101 - set at launch
        dwell_ok = now_ms - state.stage_started_ms >= plan.min_dwell_s[state.stage] * 1000.0
        stage_requests = min(
            data.requests(a.arm_id) - state.stage_start_requests[plan.arm_ids.index(a.arm_id)] for a in active
        )
        samples_ok = stage_requests >= plan.min_stage_requests[state.stage]
        live_winners = [w for w in winners if state.arm(w).status == "active"]
        if state.stage == plan.final_stage and live_winners and dwell_ok and samples_ok:
            by_id = {r.arm_id: r for r in reads}
            best = max(live_winners, key=lambda a: (by_id[a].difference, by_id[a].lower or -math.inf))
            return self._promote(state, log, now_ms, best, by_id[best], live_winners)
        horizon_ms = (state.started_ms or 0) + plan.horizon_s * 1000.0
        if now_ms >= horizon_ms:
            extra = (
                [f"significant winner(s) {', '.join(live_winners)} not promoted: final stage dwell/samples not met"]
                if live_winners
                else []
            )
            return self._end(
                state,
                log,
                now_ms,
                "stopped_horizon",
                "stop",
                [
                    f"horizon of {_span(plan.horizon_s)} reached without a promotable winner",
                    *extra,
                    "no promotion: the incumbent stays",
                ],
            )
        if state.stage < plan.final_stage and dwell_ok and samples_ok:
            return self._ramp(state, data, log, now_ms, stage_requests)
        return state

    def _ramp(
        self, state: ExperimentState, data: _Arrays, log: _Log, now_ms: int, stage_requests: float
    ) -> ExperimentState:
        plan = state.plan
        assert state.stage_started_ms is not None  # noqa: S101 - set at launch
        dwelt = (now_ms - state.stage_started_ms) / 1000.0
        nxt = state.stage + 1
        state = msgspec.structs.replace(
            state,
            stage=nxt,
            stage_started_ms=now_ms,
            stage_start_requests=tuple(data.requests(a) for a in plan.arm_ids),
        )
        state = self._reallocate(state, now_ms)
        assert state.allocation is not None  # noqa: S101 - just set
        shares = "/".join(f"{100 * a.share:.3g}%" for a in state.allocation.arms)
        log.add(
            "ramp",
            [
                f"stage {nxt}/{len(plan.stages)} done: dwelt {_span(dwelt)} (min {_span(plan.min_dwell_s[nxt - 1])}), "
                f"{stage_requests:.0f} requests per treatment arm (min {plan.min_stage_requests[nxt - 1]:.0f}), "
                f"no guardrail breach",
                f"ramp to stage {nxt + 1}/{len(plan.stages)}: control/treatments {shares}",
            ],
            nxt,
            figures=(
                Figure.of("stage_share", plan.stages[nxt]),
                Figure.of("dwelt_s", dwelt),
                Figure.of("stage_requests", stage_requests),
            ),
            allocation=state.allocation,
        )
        return state

    def _promote(
        self, state: ExperimentState, log: _Log, now_ms: int, best: str, read: ArmRead, winners: list[str]
    ) -> ExperimentState:
        plan = state.plan
        spec = _spec(plan, best)
        arms = tuple(
            msgspec.structs.replace(a, status="promoted", ended_ms=now_ms, reason="promoted")
            if a.arm_id == best
            else (
                msgspec.structs.replace(a, status="ended", ended_ms=now_ms, reason=f"{best} promoted")
                if a.status == "active"
                else a
            )
            for a in state.arms
        )
        others = [w for w in winners if w != best]
        reasons = [
            f"promote {best} ({spec.proposal_id}, config {spec.config_version}): {plan.primary.name} "
            f"{read.treatment:.5g} vs {read.control:.5g}, difference {read.difference:+.4g} "
            f"(always-valid CS [{_num(read.lower)}, {_num(read.upper)}], Holm p={read.holm_p:.3g}) at the final stage "
            f"after {_span((now_ms - (state.started_ms or now_ms)) / 1000.0)} of a {_span(plan.horizon_s)} horizon",
            *([f"also significant, smaller difference: {', '.join(others)}"] if others else []),
        ]
        state = msgspec.structs.replace(
            state, arms=arms, status="promoted", ended_ms=now_ms, outcome=reasons[0], allocation=None
        )
        log.add(
            "promote",
            reasons,
            state.stage,
            arm_id=best,
            config_version=spec.config_version,
            proposal_id=spec.proposal_id,
            reads=(read,),
            figures=(
                Figure.of("difference", read.difference),
                Figure.of("lift", math.nan if read.lift is None else read.lift),
                Figure.of("holm_p", read.holm_p),
                Figure.of("elapsed_s", (now_ms - (state.started_ms or now_ms)) / 1000.0),
            ),
            ends_experiment=True,
        )
        return state

    def _end(
        self, state: ExperimentState, log: _Log, now_ms: int, status: Status, kind: DecisionKind, reasons: list[str]
    ) -> ExperimentState:
        arms = tuple(
            msgspec.structs.replace(a, status="ended", ended_ms=now_ms, reason=reasons[0])
            if a.status == "active"
            else a
            for a in state.arms
        )
        state = msgspec.structs.replace(
            state, arms=arms, status=status, ended_ms=now_ms, outcome=reasons[0], allocation=None
        )
        log.add(kind, reasons, state.stage, ends_experiment=True)
        return state

    def _end_if_horizon(self, state: ExperimentState, log: _Log, reasons: list[str], now_ms: int) -> ExperimentState:
        horizon_ms = (state.started_ms or 0) + state.plan.horizon_s * 1000.0
        if now_ms < horizon_ms:
            return state
        return self._end(
            state,
            log,
            now_ms,
            "stopped_horizon",
            "stop",
            [*reasons, f"horizon of {_span(state.plan.horizon_s)} reached with no traffic read", "the incumbent stays"],
        )


# --------------------------------------------------------------------------- guardrail reads


def _fin(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _num(value: float | None) -> str:
    return "unbounded" if value is None else f"{value:+.4g}"


def _spec(plan: ExperimentPlan, arm_id: str) -> ArmSpec:
    for t in plan.treatments:
        if t.arm_id == arm_id:
            return t
    msg = f"arm_id: {arm_id!r} is not a treatment arm of {plan.experiment_id}"
    raise ExperimentError(msg)


def _breach_text(read: GuardrailRead) -> str:
    if read.guardrail == "latency_p99":
        return f"latency p99 {read.value:.1f} ms > SLO {read.threshold:g} ms ({read.note})"
    if read.guardrail == "diversity":
        return (
            f"diversity {read.value:.3g} distinct categories per list, always-valid upper bound "
            f"{read.bound:.3g} < floor {read.threshold:g}"
        )
    value = "n/a" if read.value is None else f"{100 * read.value:+.2f}%"
    bound = "n/a" if read.bound is None else f"{100 * read.bound:+.2f}%"
    return (
        f"{read.guardrail} lift {value}, always-valid upper bound {bound} < −margin "
        f"{100 * read.threshold:+.2f}% (non-inferiority breached)"
    )


def _non_inferiority(
    arm: ArmState, name: _NonInferior, control: FloatArray, sums: FloatArray, margin: float, tau2: float, alpha: float
) -> tuple[ArmState, GuardrailRead]:
    """Fold one look of the log-ratio test of `name` (conversion or revenue per request) and judge the margin."""
    numerator = "conversions" if name == "conversion" else "revenue"
    test: SequentialState | None = arm.conversion if name == "conversion" else arm.revenue
    quiet = GuardrailRead(arm_id=arm.arm_id, guardrail=name, value=None, bound=None, threshold=-margin, breached=False)
    try:
        cmp = compare(ratio_from_sums(control, numerator, "requests"), ratio_from_sums(sums, numerator, "requests"))
    except StatsError as err:
        return arm, msgspec.structs.replace(quiet, note=err.message)
    if math.isnan(cmp.log_ratio) or not cmp.log_ratio_variance > 0.0:
        return arm, msgspec.structs.replace(quiet, note="no events yet in one arm")
    test = (test or SequentialState.start(tau2, alpha)).update(cmp.log_ratio, cmp.log_ratio_variance)
    arm = (
        msgspec.structs.replace(arm, conversion=test)
        if name == "conversion"
        else msgspec.structs.replace(arm, revenue=test)
    )
    read = msgspec.structs.replace(
        quiet,
        value=_fin(cmp.lift),
        bound=_fin(math.expm1(test.upper)),
        breached=test.upper < math.log1p(-margin),
        note=f"{test.looks} looks",
    )
    return arm, read


def _diversity(
    arm: ArmState, sums: FloatArray, floor: float, tau2: float, alpha: float
) -> tuple[ArmState, GuardrailRead]:
    """Fold one look of the arm's mean distinct categories per list and judge the floor."""
    try:
        est = ratio_from_sums(sums, "distinct_categories", "requests")
    except StatsError as err:
        return arm, GuardrailRead(
            arm_id=arm.arm_id,
            guardrail="diversity",
            value=None,
            bound=None,
            threshold=floor,
            breached=False,
            note=err.message,
        )
    if not est.variance > 0.0:  # every list alike: the mean is known exactly
        return arm, GuardrailRead(
            arm_id=arm.arm_id,
            guardrail="diversity",
            value=est.value,
            bound=est.value,
            threshold=floor,
            breached=est.value < floor,
            note="no variation across buckets",
        )
    test = (arm.diversity or SequentialState.start(tau2, alpha)).update(est.value, est.variance)
    arm = msgspec.structs.replace(arm, diversity=test)
    return arm, GuardrailRead(
        arm_id=arm.arm_id,
        guardrail="diversity",
        value=est.value,
        bound=_fin(test.upper),
        threshold=floor,
        breached=test.upper < floor,
        note=f"{test.looks} looks",
    )


def _pre_period(plan: ExperimentPlan, pre: Mapping[str, ArmTotals]) -> tuple[PrePeriod, ...]:
    m = plan.primary
    out = []
    for arm_id in plan.arm_ids:
        if arm_id in pre:
            sums = np.asarray(pre[arm_id].sums, dtype=np.float64)
            out.append(
                PrePeriod(
                    arm_id=arm_id,
                    numerator=tuple(sums[FIELD_INDEX[m.numerator]].tolist()),
                    denominator=tuple(sums[FIELD_INDEX[m.denominator]].tolist()),
                )
            )
    return tuple(out)


__all__ = [
    "Baseline",
    "OnlineAgent",
    "OnlinePolicy",
    "TrafficEstimate",
    "baseline_from_totals",
    "guardrail_tau2",
    "ramp_exposure",
    "served_shares",
    "stage_allocation",
    "stage_fractions",
]
