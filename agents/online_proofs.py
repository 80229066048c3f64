"""The issue's statistical proofs run through the Online agent itself: its power gate, then `step` at every look.

`agents.stats.proofs` reads simulated experiments with vectorised copies of
the agent's read (fast cross-checks); this module drives the real
`agents.online.OnlineAgent` instead, so a change anywhere in its path — the
power plan, Holm, futility, the minimum-traffic gating, the stage logic, the
final look — shows in the proofs:

- `launch`: a fresh A/A pilot of the traffic (the incumbent's recent totals,
  `baseline_from_totals`) goes to `OnlineAgent.plan`; the MDE of a run is
  the `mde_relative` figure of the agent's `allocate` decision (what its
  power gate reported);
- `run_fixed`: every look of a `simulate_experiment` experiment goes to
  `OnlineAgent.step` until the agent ends it (for single-stage policies
  whose split is the model's, `proof_policy`);
- `run_live`: traffic that follows the agent's live allocation look by
  look (users hashed to the sidecar's lanes, `_lane_arms`), for the default
  ramp 1 → 5 → 25 → 50% (`ramped_policy`);
- `agent_aa_study`: A/A runs; a false promotion is the agent promoting an
  arm; the naive per-impression test (`agents.stats.proofs.read_naive`)
  reads the same experiments;
- `agent_lift_study`: a true lift of `mde_multiple` × the MDE the agent
  reported; detection is the agent's `promote` of that arm, the stop time
  the agent's ending decision (`ExperimentState.ended_ms`).

Callers: `tests/agents/test_stats_proofs.py` (test sizes, in `make test`'s
fast lane) and `bench/stats.py` (full sizes).  Pure: numpy, `agents.online`
and `agents.stats`; no I/O, and time is the simulation's (`T0_MS` + look).
It lives next to the agent, not in `agents.stats`, because it depends on the
agent (`agents.stats` must not import `agents.online`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Final

import numpy as np
import numpy.typing as npt

from agents.experiment import Candidate, ExperimentState
from agents.online import Baseline, OnlineAgent, OnlinePolicy, TrafficEstimate, baseline_from_totals, served_shares
from agents.stats.errors import StatsError
from agents.stats.proofs import arm_totals, read_naive, simulated_totals
from agents.stats.simulate import SimulatedExperiment, TrafficModel, simulate_experiment
from schemas.config import ASSIGNMENT_BUCKETS, Allocation
from schemas.metrics import ArmTotals

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

#: When every simulated experiment is planned and launched (2026-01-01T00:00:00Z).
T0_MS: Final = 1_767_225_600_000
#: The incumbent's config version; candidates serve versions 2, 3, ….
INCUMBENT_VERSION: Final = 1
#: The power gate's target: loose, so the gate launches and reports the MDE the traffic resolves.
PROOF_TARGET_MDE: Final = 0.5
_CANDIDATES: Final = tuple(Candidate(proposal_id=f"proof-{i}", config_version=i + 1) for i in range(1, 9))


def proof_policy(model: TrafficModel, base: OnlinePolicy | None = None) -> OnlinePolicy:
    """`base` (default: the shipped `OnlinePolicy`) in one stage at `model`'s split, over `model`'s horizon.

    Called by the tests and `bench/stats.py` for the headline proofs: the
    agent's own reads (α, `final_alpha`, futility, Holm, minimum-traffic
    gating, guardrails) with no ramp, so a `simulate_experiment` of `model`
    is exactly what the agent's allocation serves.  The treatment arms must
    share the traffic equally (the agent splits a stage equally).
    """
    base = base or OnlinePolicy(surface="proofs", target_mde=PROOF_TARGET_MDE)
    treatments = model.shares[1:]
    if any(not math.isclose(s, treatments[0]) for s in treatments):
        msg = f"model.shares: the treatment arms must share equally for the agent's split, got {model.shares}"
        raise StatsError(msg, "use shares like (0.25, 0.25, 0.25, 0.25)")
    return replace(
        base,
        stages=(1.0 - model.shares[0],),
        min_dwell_s=0.0,
        min_stage_requests=0.0,
        horizon_s=model.horizon_seconds,
        max_treatments=max(base.max_treatments, len(treatments)),
    )


def ramped_policy(model: TrafficModel, base: OnlinePolicy | None = None) -> OnlinePolicy:
    """`base`'s ramp (default 1 → 5 → 25 → 50%, a day's dwell per stage) over `model`'s horizon.

    Called for the ramped power check (`agent_lift_study(..., live=True)`).
    The per-stage request minimum is dropped: the default 5,000 requests per
    treatment arm and stage would hold the simulated traffic's 1% stage for
    weeks (about 100 requests a day there), and the proof is about the
    reads, not about that threshold.
    """
    base = base or OnlinePolicy(surface="proofs", target_mde=PROOF_TARGET_MDE)
    return replace(base, min_stage_requests=0.0, horizon_s=model.horizon_seconds)


def pilot_inputs(
    model: TrafficModel, policy: OnlinePolicy, rng: np.random.Generator, *, point_variance: bool = False
) -> tuple[TrafficEstimate, Baseline]:
    """Traffic and baseline from one A/A pilot of `model` (the horizon's length), as the runtime gives `plan`.

    The pilot's totals go through `baseline_from_totals` (pooled over its
    arms, Σ (buckets − 1) degrees of freedom).  With `point_variance`, the
    degrees of freedom are dropped, so the gate plans on the point estimate
    of the variance instead of its upper confidence limit (for comparison).
    """
    pilot = simulate_experiment(model, [0.0] * model.arms, rng)
    totals = simulated_totals(pilot, -1, [f"pilot.{a}" for a in range(model.arms)])
    traffic, baseline = baseline_from_totals(list(totals.values()), policy.primary, model.horizon_seconds)
    return traffic, replace(baseline, variance_dof=None) if point_variance else baseline


@dataclass(frozen=True, slots=True)
class Launch:
    """A running experiment just launched by `OnlineAgent.plan`, with what its power gate reported."""

    state: ExperimentState
    mde_relative: float
    treatment_ids: tuple[str, ...]


def launch(
    agent: OnlineAgent,
    model: TrafficModel,
    rng: np.random.Generator,
    *,
    treatments: int | None = None,
    point_variance: bool = False,
) -> Launch:
    """Gate and launch `treatments` arms (default: `model`'s) with `agent.plan` on a fresh pilot of `model`.

    `mde_relative` is the figure of the agent's `allocate` decision (the
    power gate's report), checked against the frozen plan.  Raises when the
    gate refuses or cuts arms: the proofs need every arm launched.
    """
    k = model.arms - 1 if treatments is None else treatments
    traffic, baseline = pilot_inputs(model, agent.policy, rng, point_variance=point_variance)
    state, decisions = agent.plan(_CANDIDATES[:k], INCUMBENT_VERSION, traffic, baseline, T0_MS)
    if state is None or state.status != "running" or len(state.plan.treatments) != k:
        why = decisions[-1].reasons[-1] if decisions else "no decision"
        msg = f"launch: the Online agent did not launch {k} treatment arm(s): {why}"
        raise StatsError(msg, "raise the policy's target_mde or the model's traffic (users)")
    allocate = decisions[-1]
    mde = allocate.figure("mde_relative")
    if allocate.kind != "allocate" or mde is None or mde != state.plan.power_figures.mde_relative:
        msg = f"launch: the allocate decision's mde_relative {mde} disagrees with the plan's"
        raise StatsError(msg, "the decision figures and the plan must come from the same power plan")
    return Launch(state, mde, tuple(t.arm_id for t in state.plan.treatments))


@dataclass(frozen=True, slots=True)
class AgentRun:
    """How the agent ended one experiment: status, promoted arm (1-based treatment index; 0 none), stop time.

    `stop_fraction` is (ended_ms − started_ms) / horizon from the agent's
    ending decision (1.0 if it never ended); `loser_stops` and `rollbacks`
    count treatment arms stopped as significant losers or rolled back by a
    guardrail; `stage` the ramp stage it ended in (0-based); `looks` the
    steps the agent read.
    """

    status: str
    promoted: int
    stop_fraction: float
    loser_stops: int
    rollbacks: int
    stage: int
    looks: int


def _outcome(state: ExperimentState, looks: int) -> AgentRun:
    plan = state.plan
    horizon_ms = plan.horizon_s * 1000.0
    started = state.started_ms if state.started_ms is not None else T0_MS
    stop = 1.0 if state.ended_ms is None else min(1.0, (state.ended_ms - started) / horizon_ms)
    promoted = next((i for i, a in enumerate(state.arms, start=1) if a.status == "promoted"), 0)
    return AgentRun(
        status=state.status,
        promoted=promoted,
        stop_fraction=stop,
        loser_stops=sum(a.status == "stopped_loser" for a in state.arms),
        rollbacks=sum(a.status == "rolled_back" for a in state.arms),
        stage=state.stage,
        looks=looks,
    )


def run_fixed(
    agent: OnlineAgent, launched: Launch, experiment: SimulatedExperiment, *, cuped: bool = False
) -> AgentRun:
    """Feed every look of `experiment` (arm 0 control, arm i treatment i) to `agent.step` until it ends.

    The experiment's split must be what the launched allocation serves
    (`proof_policy`); with `cuped`, the arms' pre-period clicks and
    impressions go with the first look (the agent's CUPED covariates).
    """
    state = launched.state
    arm_ids = state.plan.arm_ids
    assert state.allocation is not None  # noqa: S101 - launch checked it is running
    served = served_shares(state.allocation)
    realised = experiment.requests[:, -1].sum(axis=-1) / max(float(experiment.requests[:, -1].sum()), 1.0)
    if len(served) != realised.size or np.abs(np.asarray(served) - realised).max() > 0.05:
        msg = f"experiment: its split {np.round(realised, 3).tolist()} is not the allocation's {list(served)}"
        raise StatsError(msg, "simulate with the policy's split (proof_policy), or use run_live for a ramp")
    pre = _pre_period(experiment, arm_ids) if cuped else None
    looks = 0
    for look in range(experiment.clicks.shape[1]):
        now = (state.started_ms or T0_MS) + int(experiment.look_seconds[look] * 1000)
        state, _ = agent.step(state, simulated_totals(experiment, look, arm_ids), pre if look == 0 else None, now)
        looks += 1
        if state.terminal:
            break
    return _outcome(state, looks)


def _pre_period(experiment: SimulatedExperiment, arm_ids: Sequence[str]) -> dict[str, ArmTotals]:
    """Each arm's pre-period clicks and impressions (requests = impressions / items) as totals, for CUPED."""
    items = experiment.impressions[0, -1].sum() / max(float(experiment.requests[0, -1].sum()), 1.0)
    return {
        arm_id: arm_totals(
            arm_id, experiment.pre_impressions[a] / items, experiment.pre_impressions[a], experiment.pre_clicks[a], 1
        )
        for a, arm_id in enumerate(arm_ids)
    }


@dataclass(frozen=True, slots=True)
class _Requests:
    """Every request of one simulated horizon, sorted by look: its user's metric bucket, lane position, propensity."""

    look_starts: IntArray
    bucket: IntArray
    position: IntArray
    propensity: FloatArray


def _draw_requests(model: TrafficModel, rng: np.random.Generator, unit: str) -> _Requests:
    """The users of `agents.stats.simulate.simulate_experiment` (same model), before any arm is assigned.

    Each user (unit "user") or request (unit "request") gets a position in
    the sidecar's `ASSIGNMENT_BUCKETS` (its salted hash), independent of the
    metric bucket; the arm comes later from the allocation live at its look.
    """
    n = model.users
    bucket = rng.integers(0, model.buckets, size=n)
    kappa = model.ctr_concentration
    propensity = rng.beta(model.mean_ctr * kappa, (1.0 - model.mean_ctr) * kappa, size=n)
    extra = model.requests_per_user - 1.0
    rate = rng.gamma(model.activity_shape, extra / model.activity_shape, size=n) if extra > 0.0 else np.zeros(n)
    owner = np.repeat(np.arange(n), 1 + rng.poisson(rate))
    when = rng.random(n)[owner] + model.session_fraction * rng.random(owner.size)
    owner, when = owner[when < 1.0], when[when < 1.0]
    look = np.minimum((when * model.looks).astype(np.int64), model.looks - 1)
    per_user = unit == "user"
    position = rng.integers(0, ASSIGNMENT_BUCKETS, size=n if per_user else owner.size)
    position = position[owner] if per_user else position
    order = np.argsort(look, kind="stable")
    starts = np.searchsorted(look[order], np.arange(model.looks + 1))
    return _Requests(starts.astype(np.int64), bucket[owner][order], position[order], propensity[owner][order])


def _lane_arms(position: IntArray, allocation: Allocation) -> IntArray:
    """Index into `allocation.arms` of the arm serving each assignment position (0 = control).

    Mirrors `serving_sidecar.assignment.treatment_range` (agents may not
    import the sidecar; `agents.online_ramp.served_shares` mirrors the same
    rule): treatment i owns round(share·B) positions from the start of its
    lane of B/K, control the rest, so a ramp only moves control users in.
    """
    k = len(allocation.arms) - 1
    arms = np.zeros(position.size, dtype=np.int64)
    for i, arm in enumerate(allocation.arms[1:], start=1):
        start, end = (i - 1) * ASSIGNMENT_BUCKETS // k, i * ASSIGNMENT_BUCKETS // k
        width = min(max(round(arm.share * ASSIGNMENT_BUCKETS), 0), end - start)
        arms[(position >= start) & (position < start + width)] = i
    return arms


def run_live(
    agent: OnlineAgent,
    launched: Launch,
    model: TrafficModel,
    lifts: Sequence[float],
    rng: np.random.Generator,
) -> AgentRun:
    """Serve `model`'s users by the agent's allocation at each look and step the agent until it ends.

    `lifts[i]` is treatment i's true relative CTR lift (i = 0 the first
    treatment).  A ramp moves users from control to a treatment (the lane
    rule): their earlier traffic stays in control's totals, as in
    production.  Guardrail rows are healthy (`arm_totals`).
    """
    state = launched.state
    plan = state.plan
    if len(lifts) != len(plan.treatments) or any(not math.isfinite(v) or v <= -1.0 for v in lifts):
        msg = f"lifts: need {len(plan.treatments)} finite lifts > −1 (one per treatment), got {list(lifts)}"
        raise StatsError(msg, "pass one lift per launched treatment arm")
    requests = _draw_requests(model, rng, plan.randomization_unit)
    lift = np.asarray([0.0, *lifts])
    arms, b = len(plan.arm_ids), model.buckets
    req_sums, click_sums = np.zeros((arms, b)), np.zeros((arms, b))
    looks = 0
    for look in range(model.looks):
        if state.allocation is None or state.terminal:
            break
        if tuple(a.arm_id for a in state.allocation.arms) != plan.arm_ids:
            msg = f"allocation: arms {[a.arm_id for a in state.allocation.arms]} are not the plan's {plan.arm_ids}"
            raise StatsError(msg, "stage_allocation keeps every arm in plan order; a change there breaks run_live")
        lo, hi = requests.look_starts[look], requests.look_starts[look + 1]
        arm = _lane_arms(requests.position[lo:hi], state.allocation)
        p_click = np.minimum(requests.propensity[lo:hi] * (1.0 + lift[arm]), 1.0)
        clicks = rng.binomial(model.items_per_request, p_click)
        cell = arm * b + requests.bucket[lo:hi]
        req_sums += np.bincount(cell, minlength=arms * b).reshape(arms, b)
        click_sums += np.bincount(cell, weights=clicks, minlength=arms * b).reshape(arms, b)
        totals = {
            arm_id: arm_totals(arm_id, req_sums[a], model.items_per_request * req_sums[a], click_sums[a], look + 1)
            for a, arm_id in enumerate(plan.arm_ids)
        }
        now = (state.started_ms or T0_MS) + int(model.horizon_seconds * 1000 * (look + 1) / model.looks)
        state, _ = agent.step(state, totals, None, now)
        looks += 1
    return _outcome(state, looks)


@dataclass(frozen=True, slots=True)
class AgentAAStudy:
    """A/A outcomes of the agent over `runs` experiments, and of the naive per-impression test on the same data.

    `promotions`: runs the agent promoted an arm (the issue's false
    promotion); `decisions`: runs it promoted or stopped an arm as a
    significant loser; `rollbacks`: runs a guardrail rolled an arm back;
    `cuped_promotions`: the agent again, with the pre-period covariates
    (None when not run); `naive_*`: `read_naive` peeked at every look.
    """

    runs: int
    promotions: int
    decisions: int
    rollbacks: int
    mean_stop_fraction: float
    naive_promotions: int
    naive_decisions: int
    cuped_promotions: int | None
    cuped_decisions: int | None
    mean_mde: float

    @property
    def false_promotion_rate(self) -> float:
        """Share of A/A runs the agent promoted (the issue's headline, must be <= 5%)."""
        return self.promotions / self.runs

    @property
    def naive_false_promotion_rate(self) -> float:
        """Share of the same A/A runs the naive peeked per-impression test promoted (must exceed 5%)."""
        return self.naive_promotions / self.runs


def agent_aa_study(
    policy: OnlinePolicy, model: TrafficModel, runs: int, rng: np.random.Generator, *, cuped: bool = False
) -> AgentAAStudy:
    """`runs` A/A experiments of `model`, each gated on its own pilot by `OnlineAgent.plan` and read by `step`.

    `policy` must serve `model`'s split (`proof_policy`).  With `cuped`, the
    agent reads each experiment a second time with its pre-period.
    """
    if runs < 1:
        msg = f"runs: need at least 1, got {runs}"
        raise StatsError(msg, "pass a positive number of runs")
    agent = OnlineAgent(policy)
    counts = np.zeros(7, dtype=np.int64)
    stops, mdes = [], []
    for _ in range(runs):
        launched = launch(agent, model, rng)
        experiment = simulate_experiment(model, [0.0] * model.arms, rng)
        run = run_fixed(agent, launched, experiment)
        naive = read_naive(experiment, policy.alpha)
        counts[:5] += (
            run.promoted > 0,
            run.promoted > 0 or run.loser_stops > 0,
            run.rollbacks > 0,
            naive.verdict == 1,
            naive.verdict != 0,
        )
        if cuped:
            again = run_fixed(agent, launched, experiment, cuped=True)
            counts[5:] += (again.promoted > 0, again.promoted > 0 or again.loser_stops > 0)
        stops.append(run.stop_fraction)
        mdes.append(launched.mde_relative)
    c = [int(v) for v in counts]
    return AgentAAStudy(
        runs=runs,
        promotions=c[0],
        decisions=c[1],
        rollbacks=c[2],
        mean_stop_fraction=float(np.mean(stops)),
        naive_promotions=c[3],
        naive_decisions=c[4],
        cuped_promotions=c[5] if cuped else None,
        cuped_decisions=c[6] if cuped else None,
        mean_mde=float(np.mean(mdes)),
    )


@dataclass(frozen=True, slots=True)
class AgentLiftStudy:
    """The agent under a true lift of `mde_multiple` × the MDE its gate reported, over `runs` experiments.

    `detections`: runs the agent promoted the lifted arm; `stopped_early`:
    runs it ended the arm as a loser or futile, or rolled it back;
    `mean_stop_fraction`: the agent's ending decision time over the horizon.
    """

    runs: int
    mde_multiple: float
    live: bool
    mean_mde: float
    mde_spread: float
    detections: int
    stopped_early: int
    mean_stop_fraction: float

    @property
    def detection_rate(self) -> float:
        """Share of runs the agent promoted the truly better arm within the horizon (power)."""
        return self.detections / self.runs

    @property
    def saving(self) -> float:
        """1 − mean stop time / horizon (runs the agent never ended count as the full horizon)."""
        return 1.0 - self.mean_stop_fraction


def agent_lift_study(
    policy: OnlinePolicy,
    model: TrafficModel,
    runs: int,
    rng: np.random.Generator,
    *,
    mde_multiple: float = 1.0,
    live: bool = False,
    point_variance: bool = False,
) -> AgentLiftStudy:
    """`runs` experiments whose first treatment's true lift is `mde_multiple` × the MDE the agent reported.

    Each run gates on its own fresh pilot (`launch`), so the claim "a lift
    equal to the reported MDE is detected" is averaged over the pilot's
    estimation noise.  `live` serves the traffic by the agent's allocation
    (`run_live`, for a ramped policy); otherwise `policy` must serve
    `model`'s split (`run_fixed`).
    """
    if runs < 1 or not mde_multiple > 0.0:
        msg = f"runs, mde_multiple: need runs >= 1 and a positive multiple, got {runs}, {mde_multiple}"
        raise StatsError(msg, "pass a positive number of runs and multiple")
    agent = OnlineAgent(policy)
    detections = early = 0
    stops, mdes = [], []
    for _ in range(runs):
        launched = launch(agent, model, rng, point_variance=point_variance)
        lifts = [mde_multiple * launched.mde_relative] + [0.0] * (len(launched.treatment_ids) - 1)
        if live:
            run = run_live(agent, launched, model, lifts, rng)
        else:
            run = run_fixed(agent, launched, simulate_experiment(model, [0.0, *lifts], rng))
        detections += run.promoted == 1
        early += run.promoted == 0 and run.stop_fraction < 1.0
        stops.append(run.stop_fraction)
        mdes.append(launched.mde_relative)
    return AgentLiftStudy(
        runs=runs,
        mde_multiple=mde_multiple,
        live=live,
        mean_mde=float(np.mean(mdes)),
        mde_spread=float(np.std(mdes)),
        detections=detections,
        stopped_early=early,
        mean_stop_fraction=float(np.mean(stops)),
    )
