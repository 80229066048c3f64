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

This module keeps `run_simloop`, the `SimWorld` port and the serving mix;
the preset lives in `rectune.simloop_preset` and the trace's records in
`rectune.simloop_trace` (both re-exported here, `__all__`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from typing import Any, Final, Protocol

import numpy as np
import numpy.typing as npt

from agents.loop import AgentLoop, LoopDriver, LoopState
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
    OnlineAgent,
    baseline_from_totals,
    persistent_share_of,
)
from agents.skillhub import MemorySkillStore
from rectune.simloop_preset import (
    EXPERIMENTS_PER_BUDGET,
    FIRST_STAGE_FRACTION,
    MAX_STEP_S,
    METRIC_WINDOW_S,
    MIN_STEP_S,
    PILOT_STEPS,
    PLANNED_ARMS,
    PRE_PERIOD_FRACTION,
    REFUSALS_BEFORE_RELAXING,
    STEPS_PER_HORIZON,
    SimPreset,
    insight_objective,
    north_star_metric,
    pilot_target_mde,
    preset_for,
)
from rectune.simloop_trace import Promotion, ServedArm, SimStep, SimTrace
from schemas.config import Allocation, ArmShare, CascadeConfig, default_config
from schemas.config_log import Keyring, ServingState
from schemas.metrics import DEFAULT_BUCKETS, ArmTotals, latency_quantile
from serving_sidecar.assignment import ArmTable
from simulator.scenario import Scenario

__all__ = [
    "CONTROL_ARM",
    "EXPERIMENTS_PER_BUDGET",
    "FIRST_STAGE_FRACTION",
    "MAX_STEP_S",
    "METRIC_WINDOW_S",
    "MIN_STEP_S",
    "PILOT_STEPS",
    "PLANNED_ARMS",
    "PRE_PERIOD_FRACTION",
    "REFUSALS_BEFORE_RELAXING",
    "SIM_KEYRING",
    "STEPS_PER_HORIZON",
    "Promotion",
    "ServedArm",
    "SimPreset",
    "SimStep",
    "SimTrace",
    "SimWorld",
    "insight_objective",
    "north_star_metric",
    "pilot_target_mde",
    "preset_for",
    "run_simloop",
    "serving_mix",
]

FloatArray = npt.NDArray[np.float64]

#: The arm id the sidecar stamps when there is no experiment (`serving_sidecar.holder.Snapshot`).
CONTROL_ARM: Final = "control"
#: A keyring for simulations only (the simulated sidecars and agents share it; nothing real is signed with it).
SIM_KEYRING: Final = Keyring.parse("sim:" + "5a" * 16, "sim")


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


def _gate_refusals(records: list[dict[str, Any]], refusals: int) -> tuple[int, float]:
    """(consecutive power-gate refusals after `records`, the MDE the last one said its arms resolve).

    A launch (or a hold for approval) resets the count; a refusal for want of
    candidates does not count (it has no MDE).
    """
    resolvable = math.nan
    for r in records:
        payload = r.get("payload")
        if r.get("kind") not in ("allocation", "decision") or not isinstance(payload, dict):
            continue
        if payload.get("kind") in ("allocate", "hold_for_approval"):
            refusals = 0
        elif payload.get("kind") == "refuse":
            figures = {f.get("name"): f.get("value") for f in payload.get("figures") or []}
            mde = figures.get("mde_relative")
            if isinstance(mde, int | float) and math.isfinite(mde):
                refusals, resolvable = refusals + 1, float(mde)
    return refusals, resolvable


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
    After `REFUSALS_BEFORE_RELAXING` power-gate refusals in a row the
    simulated operator relaxes the target to the MDE the last refusal said
    its arms resolve (recorded in the preset's notes), as one reading the
    refusals would.
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
    pilot_parts: list[FloatArray] = []
    refusals = 0
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
        if index < PILOT_STEPS and CONTROL_ARM in window:
            pilot_parts.append(window[CONTROL_ARM].sums)
        if index == PILOT_STEPS - 1 and target_from_pilot and pilot_arm is not None:
            pilot = baseline_from_totals([pilot_arm], preset.policy.primary, pilot_arm.windows * METRIC_WINDOW_S)
            share = persistent_share_of([pilot_parts], preset.policy.primary)
            if share is not None:  # as the loop's gate plans: the pilot's steps measure the persistent share
                pilot = (pilot[0], dataclasses.replace(pilot[1], persistent_share=share))
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
        refusals, resolvable = _gate_refusals(new_records, refusals)
        if refusals >= REFUSALS_BEFORE_RELAXING and resolvable > preset.policy.target_mde:
            # the operator reads the refusals ("the traffic resolves only ±X%") and accepts what it resolves
            policy = dataclasses.replace(preset.policy, target_mde=resolvable)
            note = f"target MDE relaxed to {100 * resolvable:.3g}% after {refusals} refusals by the power gate"
            preset = dataclasses.replace(preset, policy=policy, notes=(*preset.notes, note))
            loop.online = OnlineAgent(policy)
            refusals = 0
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
