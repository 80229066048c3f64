"""The real agents loop on a simulated world, in one process, on a simulated clock.

`run_simloop(world, budget_s=..., seed=...)` composes what `rectune agents`
composes — `AgentLoop` + `LoopDriver` + `OnlineAgent` + `OfflineBrain` +
the Skillhub — but with the in-memory ports (`agents.memory_ports`) instead
of Kafka and Redis, and a `World` instead of rankers and stream workers.
Each step of `step_s` simulated seconds:

1. the serving state is the config writer's head (what every sidecar folds
   from the config log): the control config and, while an experiment runs,
   its allocation and arm configs; with no allocation everyone is served
   control under the arm id "control", as the sidecar does;
2. `world.simulate(allocation, configs, start_s, duration_s, rng)` draws the
   step's requests and outcomes per arm (routing as `serving_sidecar`'s
   Router does) — the step's closed metric windows;
3. the step is merged into the cumulative per-arm totals
   (`MemoryMetrics.add`), which is what `agents.metrics_feed.MetricsFeed`
   gives the loop: every partial of the surface since the topic began,
   merged per arm id (`windows` counts the windows an arm had traffic in);
4. the driver ticks at the step's end (`now_ms` on the simulated clock):
   proposals, critique, registration, power gate, ramps, decisions and
   learning happen exactly as in production; config changes it appends
   take effect from the next step.

`preset_for(scenario, budget_s)` derives the Online policy and loop settings
from the scenario's traffic rate, north star and latency SLO and from the
budget (never from the world's hidden parameters).  The result is a
`SimTrace`: per step the served mix (arm, config version, share, requests),
the decision kinds, promotions, rollbacks and alerts, plus every config
version and every decision record.  Callers: `bench/tuning.py`, the tests.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

import numpy as np

from agents.critic import CriticRules
from agents.experiment import GuardrailSpec, MetricSpec
from agents.insight import insight_objective_for, ratio_metric_name
from agents.loop import AgentLoop, LoopDriver, LoopSettings, LoopState
from agents.memory_ports import (
    DEFAULT_EPOCH_MS,
    MemoryApprovals,
    MemoryConfigWriter,
    MemoryMetrics,
    MemorySink,
    MemoryStateStore,
)
from agents.offline_brain import OfflineBrain, offline_brain_for
from agents.online import (
    Baseline,
    OnlineAgent,
    OnlinePolicy,
    TrafficEstimate,
    baseline_from_totals,
    power_plan,
)
from agents.skillhub import MemorySkillStore
from schemas.config import Allocation, ArmShare, CascadeConfig, default_config
from schemas.config_log import Keyring, ServingState
from schemas.guardrails import Guardrails
from schemas.metrics import DEFAULT_BUCKETS, ArmTotals, latency_quantile
from serving_sidecar.assignment import ArmTable
from simulator.scenario import Scenario

#: The arm id the sidecar stamps when there is no experiment (`serving_sidecar.holder.Snapshot`).
CONTROL_ARM: Final = "control"
#: A keyring for simulations only (the simulated sidecars and agents share it; nothing real is signed with it).
SIM_KEYRING: Final = Keyring.parse("sim:" + "5a" * 16, "sim")

# Design constants of the preset (see `preset_for`): properties of the method, not of any scenario.
EXPERIMENTS_PER_BUDGET: Final = 10.0  # the horizon lets about this many full-length experiments fit the budget
STEPS_PER_HORIZON: Final = 24  # simulation steps (loop ticks) per experiment horizon
FIRST_STAGE_FRACTION: Final = 0.15  # share of the horizon the first (small) ramp stage lasts at least
PRE_PERIOD_FRACTION: Final = 0.25  # share of the horizon each A/A pre-period (CUPED covariates) lasts
PLANNED_ARMS: Final = 2  # treatment arms an experiment is planned for when the target comes from a pilot
#: Steps of control traffic the pilot measures: as many as the loop's first power gate sees (a step until it
#: proposes, a step until the candidates are registered), so the gate plans on the same kind of baseline.
PILOT_STEPS: Final = 2
MIN_STEP_S: Final = 60.0
MAX_STEP_S: Final = 6 * 3_600.0
#: The stream worker's metric window (`windows` of the totals count these, as the live feed's do).
METRIC_WINDOW_S: Final = 60.0


class SimWorld(Protocol):
    """What the loop needs of `simulator.world.World` (the fast path and the scenario)."""

    @property
    def scenario(self) -> Scenario:
        """The scenario the world was built from."""
        ...

    def simulate(
        self,
        allocation: Allocation,
        configs: Mapping[int, CascadeConfig],
        *,
        start_s: float,
        duration_s: float,
        rng: np.random.Generator,
        surface: str = "home",
        buckets: int = DEFAULT_BUCKETS,
        window_s: float = METRIC_WINDOW_S,
    ) -> dict[str, ArmTotals]:
        """Per-arm totals of the requests in [start_s, start_s + duration_s); `windows` counts `window_s` windows."""
        ...


# --------------------------------------------------------------------------- preset


@dataclass(frozen=True, slots=True)
class SimPreset:
    """Online policy, loop settings and step (one simulate + one tick) of a simulated run, and how they came about."""

    policy: OnlinePolicy
    settings: LoopSettings
    step_s: float
    notes: tuple[str, ...] = ()


def north_star_metric(scenario: Scenario) -> MetricSpec:
    """The scenario's north star as the Online agent's primary metric, named as `agents.insight.METRICS` names it.

    One name for the north star across the Online reads, Insight, the Skillhub
    and the brain's warm start (e.g. `clicks_per_request`); a ratio Insight
    does not know is named `<numerator>_per_<denominator>`.
    """
    numerator, denominator = scenario.north_star
    name = ratio_metric_name(numerator, denominator) or f"{numerator}_per_{denominator}"
    return MetricSpec(name=name, numerator=numerator, denominator=denominator)


def insight_objective(scenario: Scenario) -> str:
    """The Insight/Skill objective for the north star: its `agents.insight.METRICS` name ("ctr" if Insight lacks it)."""
    return insight_objective_for(north_star_metric(scenario).name)


def pilot_target_mde(policy: OnlinePolicy, pilot: tuple[TrafficEstimate, Baseline]) -> float:
    """The relative lift `PLANNED_ARMS` treatment arms resolve over `policy`'s ramp and horizon at a pilot's traffic."""
    traffic, baseline = pilot
    return power_plan(policy, PLANNED_ARMS, traffic, baseline).mde_relative


def preset_for(
    scenario: Scenario,
    budget_s: float,
    *,
    surface: str = "home",
    guardrails: Guardrails | None = None,
    target_mde: float = 0.02,
    pilot: tuple[TrafficEstimate, Baseline] | None = None,
) -> SimPreset:
    """Policy and settings for tuning `scenario`'s surface within `budget_s` of its traffic.

    Derived from the budget and the traffic rate only (not tuned to any
    scenario): the horizon lets `EXPERIMENTS_PER_BUDGET` experiments fit the
    budget; a step (one `World.simulate` call, then one loop tick) is
    horizon / `STEPS_PER_HORIZON` (clamped to [1 min, 6 h]); metric windows
    are the stream worker's 60 s; two ramp stages, 10% then 50% treatment, the
    first lasting at least `FIRST_STAGE_FRACTION` of the horizon and both
    needing the requests a 10% stage collects in that time at the scenario's
    rate (so a thin surface waits for samples, not for the clock); the
    north star is the primary metric, the latency SLO the latency guardrail
    and the Critic's latency budget; conversions are non-inferior within
    2%; each experiment starts with an A/A pre-period of
    `PRE_PERIOD_FRACTION` of the horizon whose per-arm buckets are the CUPED
    covariates (users come back: without it the between-user variance of a
    fixed population stops the read's standard error from shrinking).
    `target_mde` is the relative lift worth finding (the power gate
    refuses or cuts arms when the traffic cannot resolve it in the horizon);
    given a `pilot` (traffic and baseline of the incumbent, measured before
    tuning starts) it is instead the lift the pilot's traffic resolves with
    `PLANNED_ARMS` treatment arms over the ramp in the horizon — the budget
    decides what is worth looking for, and the gate cuts arms if the
    variance turns out larger.
    """
    if not (budget_s > 0.0 and math.isfinite(budget_s)):
        msg = f"budget_s: must be a positive number of simulated seconds, got {budget_s!r}"
        raise ValueError(msg)
    rate = scenario.requests_per_s
    horizon_s = budget_s / EXPERIMENTS_PER_BUDGET
    step_s = min(max(horizon_s / STEPS_PER_HORIZON, MIN_STEP_S), MAX_STEP_S)
    stages = (0.1, 0.5)
    first_dwell_s = max(FIRST_STAGE_FRACTION * horizon_s, step_s)
    min_requests = 0.5 * rate * first_dwell_s * stages[0]
    rails = guardrails if guardrails is not None else Guardrails()
    policy = OnlinePolicy(
        surface=surface,
        primary=north_star_metric(scenario),
        target_mde=target_mde,
        stages=stages,
        min_dwell_s=(first_dwell_s, step_s),
        min_stage_requests=min_requests,
        horizon_s=horizon_s,
        guardrails=GuardrailSpec(latency_p99_slo_ms=scenario.latency_slo_ms, conversion_margin=0.02),
        settle_s=min(300.0, step_s / 2.0),
        min_read_requests=min(2_000.0, max(200.0, min_requests)),
    )
    if pilot is not None:
        target_mde = pilot_target_mde(policy, pilot)
        policy = dataclasses.replace(policy, target_mde=target_mde)
    settings = LoopSettings(
        k=3,
        max_changes=3,
        cooldown_s=step_s,
        window_s=METRIC_WINDOW_S,
        objective=insight_objective(scenario),
        rules=CriticRules(guardrails=rails, latency_budget_ms=scenario.latency_slo_ms),
        pre_period_s=PRE_PERIOD_FRACTION * horizon_s,
    )
    notes = (
        f"horizon {horizon_s / 86_400.0:.3g} d = budget / {EXPERIMENTS_PER_BUDGET:g}",
        f"step {step_s:g} s = horizon / {STEPS_PER_HORIZON} (clamped to [{MIN_STEP_S:g}, {MAX_STEP_S:g}] s)",
        f"stages {stages}, first dwell {first_dwell_s:g} s, {min_requests:.0f} requests per stage at {rate:g} req/s",
        f"target MDE {100 * target_mde:.3g}%"
        + (f" (what {PLANNED_ARMS} arms resolve in the pilot's traffic)" if pilot else ""),
    )
    return SimPreset(policy=policy, settings=settings, step_s=step_s, notes=notes)


# --------------------------------------------------------------------------- serving


def serving_mix(serving: ServingState) -> tuple[Allocation, dict[int, CascadeConfig]]:
    """The allocation and arm configs a sidecar serves for `serving` (no experiment: one "control" arm)."""
    control = serving.control
    if control is None:
        msg = "serving: has no control config yet (append and activate one first)"
        raise ValueError(msg)
    allocation = serving.allocation or Allocation(
        experiment_id=CONTROL_ARM, salt=CONTROL_ARM, arms=(ArmShare(CONTROL_ARM, serving.control_version, 1.0),)
    )
    return allocation, {a.config_version: serving.configs[a.config_version] for a in allocation.arms}


# --------------------------------------------------------------------------- trace


@dataclass(frozen=True, slots=True)
class ServedArm:
    """One arm served during a step: its id, config version, share of users (as routed) and requests drawn."""

    arm_id: str
    config_version: int
    share: float
    requests: float
    latency_p99_ms: float = math.nan


@dataclass(frozen=True, slots=True)
class SimStep:
    """One simulated step (its metric windows) and the loop's tick at its end."""

    index: int
    start_s: float
    duration_s: float
    control_version: int
    served: tuple[ServedArm, ...]
    phase: str
    decisions: tuple[str, ...] = ()
    promoted: tuple[int, ...] = ()
    rollbacks: int = 0
    alerts: tuple[str, ...] = ()

    @property
    def requests(self) -> float:
        """Requests served in the step, over all arms."""
        return sum(a.requests for a in self.served)


@dataclass(frozen=True, slots=True)
class Promotion:
    """A promotion: at the end of step `step`, config `new_version` replaced `old_version` as control."""

    step: int
    at_s: float
    old_version: int
    new_version: int


@dataclass(frozen=True, slots=True)
class SimTrace:
    """Everything a simulated run did (see the module docstring)."""

    scenario: str
    seed: int
    budget_s: float
    preset: SimPreset
    steps: tuple[SimStep, ...]
    configs: Mapping[int, CascadeConfig]
    promotions: tuple[Promotion, ...]
    records: tuple[dict[str, Any], ...]
    alerts: tuple[str, ...]
    final_version: int
    history: tuple[str, ...] = field(default=())

    @property
    def start(self) -> CascadeConfig:
        """The config served before any tuning (version 1)."""
        return self.configs[1]

    @property
    def final(self) -> CascadeConfig:
        """The control config at the end of the budget."""
        return self.configs[self.final_version]

    def decision_kinds(self) -> list[str]:
        """Every decision kind in order (allocate, ramp, promote, stop, rollback, refuse, no_candidate, ...)."""
        return [k for s in self.steps for k in s.decisions]

    def experiments(self) -> int:
        """Experiments that got traffic (an `allocate` decision each)."""
        return self.decision_kinds().count("allocate")

    def rollbacks(self) -> int:
        """Treatment arms rolled back by a guardrail."""
        return sum(s.rollbacks for s in self.steps)


def _served(serving: ServingState, window: Mapping[str, ArmTotals]) -> tuple[ServedArm, ...]:
    allocation, _ = serving_mix(serving)
    table = ArmTable.from_allocation(allocation)
    out = []
    for i, arm in enumerate(allocation.arms):
        totals = window.get(arm.arm_id)
        requests = 0.0 if totals is None else totals.total("requests")
        p99 = math.nan if totals is None else latency_quantile(totals.latency_hist, 0.99)
        out.append(ServedArm(arm.arm_id, arm.config_version, table.share_of(i), requests, p99))
    return tuple(out)


def _decisions(records: list[dict[str, Any]]) -> list[str]:
    out = []
    for r in records:
        payload = r.get("payload")
        if r.get("kind") in ("allocation", "decision") and isinstance(payload, dict) and "kind" in payload:
            out.append(str(payload["kind"]))
    return out


# --------------------------------------------------------------------------- the run


Progress = Callable[[SimStep], None]


async def run_simloop(
    world: SimWorld,
    *,
    budget_s: float,
    seed: int = 0,
    preset: SimPreset | None = None,
    start: CascadeConfig | None = None,
    surface: str = "home",
    brain: OfflineBrain | None = None,
    epoch_ms: int = DEFAULT_EPOCH_MS,
    fit_latency: bool = True,
    target_from_pilot: bool = True,
    progress: Progress | None = None,
) -> SimTrace:
    """Run the agents on `world` for `budget_s` simulated seconds from `start` (default `default_config()`).

    `seed` seeds the traffic draws and the brain.  Every experiment arm is
    registered with an `OfflineBrain` (`register_arm`: arm id → the config it
    serves), so the loop's per-arm readings of the primary metric become the
    brain's past trials.  `fit_latency` is the loop's own
    `LoopSettings.fit_latency`: the Critic's latency model refitted before
    each critique to the p99 the loop's arms showed (`agents.loop_latency`),
    as in `rectune agents`.
    With `target_from_pilot` the first `PILOT_STEPS` steps (control only:
    the loop proposes after the first and plans after the second) are the
    pilot: the Online policy's `target_mde` becomes what `PLANNED_ARMS` arms
    resolve at its traffic (`pilot_target_mde`) before the first power gate.
    """
    preset = preset or preset_for(world.scenario, budget_s, surface=surface)
    if preset.settings.fit_latency != fit_latency:
        preset = dataclasses.replace(preset, settings=dataclasses.replace(preset.settings, fit_latency=fit_latency))
    rules = preset.settings.rules
    writer = MemoryConfigWriter(
        SIM_KEYRING, initial=start or default_config(), guardrails=rules.guardrails, now_ms=epoch_ms
    )
    sink, store, metrics = MemorySink(), MemoryStateStore(), MemoryMetrics(surface)
    brain = brain or offline_brain_for(preset.policy, rules, seed=seed)
    loop = AgentLoop(brain, OnlineAgent(preset.policy), preset.settings)
    driver = LoopDriver(
        loop,
        config=writer,
        sink=sink,
        store=store,
        metrics=metrics,
        skills=MemorySkillStore(),
        approvals=MemoryApprovals(),
    )
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x5EED]))
    steps: list[SimStep] = []
    promotions: list[Promotion] = []
    alerts: list[str] = []
    t = 0.0
    index = 0
    phase = "idle"
    while t < budget_s - 1e-9:
        duration = min(preset.step_s, budget_s - t)
        head = writer.state
        allocation, configs = serving_mix(head)
        window = world.simulate(
            allocation,
            configs,
            start_s=t,
            duration_s=duration,
            rng=rng,
            surface=surface,
            buckets=DEFAULT_BUCKETS,
            window_s=preset.settings.window_s,
        )
        metrics.add(window)
        served = _served(head, window)
        pilot_arm = metrics.current.get(CONTROL_ARM)
        if index == PILOT_STEPS - 1 and target_from_pilot and pilot_arm is not None:
            pilot = baseline_from_totals([pilot_arm], preset.policy.primary, pilot_arm.windows * METRIC_WINDOW_S)
            policy = dataclasses.replace(preset.policy, target_mde=pilot_target_mde(preset.policy, pilot))
            note = (
                f"target MDE {100 * policy.target_mde:.3g}% (what {PLANNED_ARMS} arms resolve at the pilot's traffic)"
            )
            preset = dataclasses.replace(preset, policy=policy, notes=(*preset.notes[:3], note))
            loop.online = OnlineAgent(policy)
        t += duration
        now_ms = epoch_ms + round(t * 1000.0)
        writer.now_ms = now_ms
        seen_records, seen_alerts = len(sink.records), len(sink.alerts)
        state, _ = await driver.tick(now_ms)
        new_records = sink.records[seen_records:]
        kinds = _decisions(new_records)
        step_alerts = tuple(a.kind for a in sink.alerts[seen_alerts:])
        alerts.extend(step_alerts)
        promoted: tuple[int, ...] = ()
        if writer.state.control_version != head.control_version and "promote" in kinds:
            promoted = (writer.state.control_version,)
            promotions.append(Promotion(index, t, head.control_version, writer.state.control_version))
        phase = state.phase
        step = SimStep(
            index=index,
            start_s=t - duration,
            duration_s=duration,
            control_version=head.control_version,
            served=served,
            phase=phase,
            decisions=tuple(kinds),
            promoted=promoted,
            rollbacks=kinds.count("rollback"),
            alerts=step_alerts,
        )
        steps.append(step)
        if progress is not None:
            progress(step)
        index += 1
    final_state = await store.load()
    history: tuple[str, ...] = ()
    if final_state is not None:
        history = LoopState.from_bytes(final_state).history
    return SimTrace(
        scenario=world.scenario.name,
        seed=seed,
        budget_s=budget_s,
        preset=preset,
        steps=tuple(steps),
        configs=dict(writer.state.configs),
        promotions=tuple(promotions),
        records=tuple(sink.records),
        alerts=tuple(alerts),
        final_version=writer.state.control_version,
        history=history,
    )
