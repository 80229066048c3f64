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
   against the SLO, breached when the always-valid exceedance test
   (`schemas.slo`, at the guardrails' alpha) shows more than 1%
   of the arm's requests at or over it — a p99 that only reads over the SLO
   holds the arm back from promotion that step (`latency_holds`) but does
   not roll it back; conversion and revenue non-inferiority (the always-valid
   confidence sequence on the log ratio vs control: its upper end below
   log(1 − margin) → breach); diversity floor (the confidence sequence on
   the arm's mean distinct categories per list entirely below the floor).
   Breach → rollback of that arm only (its lane goes to 0; the other lanes
   stay put), alert `guardrail_breach`.
3. **Primary read**: delta-method difference treatment − control over user
   buckets, stratified by allocation period (`ExperimentState.periods`,
   marked with each SRM window: a ramp, a stopped arm or a rollback changes
   every arm's share, and pooled sums would then compare arms served at
   different mixes of time — `agents.stats.ratio.compare_sums`; the
   non-inferiority reads are stratified the same way), CUPED-adjusted when
   pre-period covariates exist and the allocation never changed, folded into
   each arm's mixture SPRT (`SequentialState`, τ² fixed at launch by the
   power plan, at the plan's `sequential_alpha` = α − `final_alpha`); Holm
   across all treatment arms of the experiment on the always-valid
   p-values.  Holm rejection with a negative estimate → stop the loser; a
   confidence sequence entirely below the futility line (`futility_fraction`
   of the planned absolute MDE) → stop for futility; a positive rejection →
   winner.
4. **Stage logic**: at the final stage, once its dwell and minimum samples
   are met, promote the winner (the largest estimated difference if there
   are several); every treatment arm ended → stop; horizon reached → the
   **final look** (when `final_alpha` > 0, at the final stage with its
   minimum samples): one two-sided z-test per open arm on its last read,
   Holm at `final_alpha`, promote the best positive rejection; otherwise
   stop, the incumbent stays.  Else ramp to the next stage once the current
   stage's dwell and minimum samples are met.  The final look and the
   always-valid test share α by the union bound, so the family-wise error
   stays <= α however often the experiment is read.

Futility costs power: it stops an arm whose confidence sequence excludes
the futility line, which at a true lift at or above the MDE happens with
probability at most α (asymptotically), since the line is at most the MDE.
Guardrail tests use τ from their own scale
(`guardrail_tau2`: the margin, or `diversity_resolution`), so they are
most sensitive to harms of about twice the margin; a much noisier read
(a 1% stage) widens their sequences a lot.

Honest limits: a period's first `settle_s` is counted in the period before
it (the mark is taken with the SRM snapshot); a per-user read with CUPED
drops CUPED once the allocation changed (CUPED pools the periods); Insight
and the brain's readings still read pooled totals; the SRM
check is repeated at every step against a fixed 0.001 threshold (not a
sequential SRM test); guardrail tests are not corrected across arms or
metrics (more rollbacks, never fewer); the latency p99 is accurate to one
histogram bin (~12%), and its test counts requests from the first bin edge
at or above the SLO (50.12 ms for a 50 ms SLO).  Pure: numpy and `agents.stats` only.

Layout: this module keeps `OnlineAgent` (plan, approve, step) and re-exports
the public names of its parts — `agents.online_policy` (inputs, policy),
`agents.online_ramp` (ramp and allocation helpers), `agents.online_reads`
(step arrays, decision log, guardrail tests), `agents.online_plan` (power
gate, plan, launch), `agents.online_guard` (SRM, guardrails),
`agents.online_primary` (primary read) and `agents.online_stage` (ramp,
promote, end).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from collections.abc import Set as AbstractSet

import msgspec

from agents.experiment import (
    ArmState,
    Candidate,
    Decision,
    ExperimentError,
    ExperimentState,
)
from agents.online_guard import _guardrails, _srm, latency_holds
from agents.online_plan import _gate, _launch, _plan_figures, _plan_struct, _refused, power_plan
from agents.online_policy import (
    Baseline,
    OnlinePolicy,
    TrafficEstimate,
    _per_stage,
    baseline_from_totals,
    persistent_share_of,
)
from agents.online_primary import _read
from agents.online_ramp import (
    _experiment_id,
    _pct,
    _span,
    guardrail_tau2,
    ramp_exposure,
    served_shares,
    stage_allocation,
    stage_fractions,
)
from agents.online_reads import _Arrays, _Log, _pre_period
from agents.online_stage import _advance, _end_if_horizon
from agents.stats.errors import StatsError
from schemas.metrics import ArmTotals

# --------------------------------------------------------------------------- the agent


def _needed_note(arms: int, needed_s: float | None) -> str:
    """How long the refused arms would need, or that no horizon would do (a persistent variance above the target)."""
    if needed_s is None:
        return ""
    if not math.isfinite(needed_s):
        return f"; no horizon would do for {arms} arm(s): the variance that persists is above the target's"
    return f"; {arms} arm(s) would need about {_span(needed_s)}"


def _persistent_note(baseline: Baseline) -> str:
    """What the gate's decision says about the persistent variance it planned on (empty when there is none)."""
    if baseline.persistent_share <= 0.0:
        return ""
    return (
        f"; planned with {100.0 * baseline.persistent_share:.0f}% of the variance persistent "
        "(returning users: that part does not shrink with a longer horizon)"
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
        stub_plan = _plan_struct(self.policy, experiment_id, incumbent_version, kept, dwell, min_requests, now_ms)
        if not kept:
            state = ExperimentState(plan=stub_plan, status="refused", ended_ms=now_ms, outcome="no usable candidate")
            log = _Log(state, now_ms)
            log.add("refuse", [*notes, "refuse: no usable candidate to test"], 0)
            return None, log.out

        try:
            fractions = stage_fractions(p.stages, dwell, p.horizon_s)
            gate, requested = _gate(self.policy, len(kept), traffic, baseline, fractions)
        except (ExperimentError, StatsError) as err:
            return _refused(stub_plan, [*notes, f"refuse: cannot plan the experiment ({err})"], now_ms)

        if gate is None:
            one = power_plan(self.policy, 1, traffic, baseline, fractions)
            needed = requested.horizon_needed_seconds
            reason = (
                f"power gate: refuse — with {len(kept)} treatment arm(s) the traffic resolves only "
                f"±{_pct(requested.mde_relative)} in {_span(p.horizon_s)}, target {_pct(p.target_mde)}; "
                f"even 1 arm resolves only ±{_pct(one.mde_relative)}"
                + _needed_note(len(kept), needed)
                + _persistent_note(baseline)
            )
            plan = _plan_struct(
                self.policy,
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
            return _refused(plan, [*notes, reason], now_ms)

        arms = kept[: gate.treatments]
        if gate.treatments < len(kept):
            dropped = ", ".join(c.proposal_id for c in kept[gate.treatments :])
            notes.append(
                f"power gate: cut from {len(kept)} to {gate.treatments} treatment arm(s) — with {len(kept)} the "
                f"traffic resolves only ±{_pct(requested.mde_relative)} in {_span(p.horizon_s)} against a target "
                f"of {_pct(p.target_mde)}; with {gate.treatments} it resolves ±{_pct(gate.mde_relative)}; "
                f"dropped {dropped}" + _persistent_note(baseline)
            )
        else:
            notes.append(
                f"power gate: launch — traffic resolves ±{_pct(gate.mde_relative)} in {_span(p.horizon_s)} with "
                f"{gate.treatments} treatment arm(s) over the ramp, target {_pct(p.target_mde)}"
                + _persistent_note(baseline)
            )
        plan = _plan_struct(
            self.policy,
            experiment_id,
            incumbent_version,
            arms,
            dwell,
            min_requests,
            now_ms,
            gate,
            requested,
            traffic,
            notes[-1],
        )
        state = ExperimentState(
            plan=plan,
            status="pending_approval",
            arms=tuple(ArmState(arm_id=t.arm_id) for t in plan.treatments),
        )
        figures = _plan_figures(plan)
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
        return _launch(state, now_ms, notes, figures)

    # ------------------------------------------------------------------ approve

    def approve(
        self, state: ExperimentState, now_ms: int, *, reason: str = "approved: releasing the held allocation"
    ) -> tuple[ExperimentState, list[Decision]]:
        """Release a held experiment (approval, or the loop's pre-period): allocate stage 0 now (horizon starts now)."""
        if state.status != "pending_approval":
            msg = f"approve: {state.plan.experiment_id} is {state.status}, not pending_approval"
            raise ExperimentError(msg)
        return _launch(state, now_ms, [reason], _plan_figures(state.plan))

    # ------------------------------------------------------------------ step

    def step(
        self,
        state: ExperimentState,
        totals_by_arm: Mapping[str, ArmTotals],
        pre_period: Mapping[str, ArmTotals] | None,
        now_ms: int,
        *,
        opened: AbstractSet[str] = frozenset(),
    ) -> tuple[ExperimentState, list[Decision]]:
        """Advance a running experiment with its cumulative per-arm totals (see the module doc for the order).

        `totals_by_arm` maps arm ids of this experiment to their totals since
        the experiment started (missing arms count as no traffic);
        `pre_period`, when given, maps the same arm ids to pre-period totals
        of each arm's own users and replaces the stored covariates; `opened`
        are arm ids the serving sidecar's SLO breaker cut back to control (an
        active one is rolled back: its reads would mix in control's traffic).
        A state that is not running is returned unchanged with no decisions.
        """
        if state.status != "running" or state.allocation is None:
            return state, []
        plan = state.plan
        data = _Arrays(plan, totals_by_arm)
        if pre_period is not None:
            state = msgspec.structs.replace(state, pre_period=_pre_period(plan, pre_period))
        log = _Log(state, now_ms)
        if not data.any:
            state = _end_if_horizon(state, log, [], now_ms)
            return msgspec.structs.replace(state, seq=log.seq), log.out

        # 1. SRM
        state, halted = _srm(state, data, log, now_ms)
        if halted:
            return msgspec.structs.replace(state, seq=log.seq), log.out

        # 2. guardrails
        state, guard_reads = _guardrails(state, data, log, now_ms, opened)

        # 3. primary read, Holm, losers and futility
        state, reads, winners = _read(state, data, log, now_ms, guard_reads)

        # 4. stage logic (an arm whose p99 reads over the SLO is not promoted this step)
        state = _advance(state, data, log, now_ms, winners, reads, held=latency_holds(guard_reads))
        return msgspec.structs.replace(state, seq=log.seq), log.out


__all__ = [
    "Baseline",
    "OnlineAgent",
    "OnlinePolicy",
    "TrafficEstimate",
    "baseline_from_totals",
    "guardrail_tau2",
    "persistent_share_of",
    "power_plan",
    "ramp_exposure",
    "served_shares",
    "stage_allocation",
    "stage_fractions",
]
