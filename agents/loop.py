"""The agents' experiment loop for one surface: propose → critique → plan → run → decide → learn (pure orchestration).

`AgentLoop.step(state, LoopInput) -> (LoopState, [Action])` is the whole loop.
It reads nothing and writes nothing: the only awaits are the brain's calls
(Actor, Critic, Insight).  What the world must do is returned as `Action`s:

- `PublishRecord` — one JSON record for `rectune.decisions` (`type`
  "agent_record", `schema_version`, `experiment_id`, `kind` one of proposal,
  critique, allocation, interim_read, decision, insight, skill, `payload`,
  and the lease `epoch` that fences a deposed leader);
- `PublishAlert` — an `schemas.alerts.Alert` for `rectune.alerts`;
- `AppendConfig` — a signed config change to append (kind "config" registers
  a candidate, or with `activate` promotes; kind "allocation" sets or ends
  the experiment's allocation; kind "rollback" restores a version).  Only
  candidates the Critic's *rules* kept ever become an `AppendConfig`: a
  brain's answer is data, vetted by the Actor and judged by `agents.critic`;
- `UpsertSkills` — changed Skillhub entries.

Phases (`LoopState.phase`): `idle` (propose + critique; kept candidates are
registered) → `registering` (waits until every registered config is visible
in the serving state, then the Online power gate plans: refuse, hold for
approval, or allocate) → `pending_approval` (until `rectune approve`, and
until the A/A pre-period of `LoopSettings.pre_period_s` ends: its arms'
totals become the CUPED covariates, `pre_period_arm`) →
`running` (`OnlineAgent.step` per tick: interim reads, ramps, stops,
promote / rollback / halt) → learn (Insight + Skill, on the terminal step) →
`idle` again after a cool-down.

`LoopDriver` composes the step with the I/O Protocols (`ConfigWriter`,
`DecisionSink`, `StateStore`, `MetricsSource`, the Skillhub's `SkillStore`):
load state, read totals and the serving head, step, save the step's
intent (`LoopState.outbox`), execute, save: a crash in between replays the
intent instead of stepping again (no second proposal round or allocation).  The
runtime (`agents.runtime`) gives it Kafka/Redis adapters; the tests give it
fakes.  A restarted loop given the saved `LoopState` continues identically.

This module keeps `AgentLoop` (the phase dispatch, the running phase, the
cool-down) and `LoopSettings`; the rest lives beside it and is re-exported
from here (`__all__`), so callers import `agents.loop` only:

- `agents.loop_state` — `LoopState` and its persisted structs, `LoopInput`,
  the `Action` types;
- `agents.loop_driver` — the port Protocols, `LoopDriver`, the `Outbox` and
  `encode_actions` / `decode_actions`;
- `agents.loop_records` — the decision-record constants, `agent_record`,
  decisions → actions (`decision_actions`);
- `agents.loop_baseline` — the power gate's baseline since the last round,
  its two parts (persistent share) and the variance curve the reads
  followed (`curve_points`, `learn_variance_curve`), the A/A pre-period (`pre_period_arm`, `pre_period_allocation`);
- `agents.loop_propose` — the idle phase: one proposal round (propose,
  critique, register the kept candidates; `propose_round`);
- `agents.loop_plan` — the registering and pending-approval phases (the
  power gate's plan, `plan_round`; the approval release, `approve_round`);
- `agents.loop_readings` — the brain's metric readings (`brain_readings`,
  `GUARD_CONVERSION`);
- `agents.loop_learn` — the learning step (Insight + Skill) and the failure memory.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec

from agents.actor import ActorAgent
from agents.brain import ArmRegistry, Brain, MetricReading
from agents.critic import CriticRules, LatencyModel
from agents.experiment import Decision
from agents.loop_baseline import (
    MAX_CURVE_POINTS,
    baseline_marks,
    baseline_since_mark,
    curve_points,
    learn_variance_curve,
    pre_period_allocation,
    pre_period_arm,
    pre_period_totals,
)
from agents.loop_driver import (
    ApprovalSource,
    ConfigWriter,
    DecisionSink,
    LoopDriver,
    LoopStep,
    MetricsSource,
    Outbox,
    StateStore,
    decode_actions,
    encode_actions,
)
from agents.loop_latency import observe_latency
from agents.loop_learn import learn
from agents.loop_plan import approve_round, plan_round
from agents.loop_propose import propose_round
from agents.loop_readings import GUARD_CONVERSION, brain_readings
from agents.loop_records import AUTHOR, RECORD_TYPE, SCHEMA_VERSION, RecordKind, agent_record, decision_actions
from agents.loop_state import (
    Action,
    AppendConfig,
    BaselineMark,
    FailedMoveRec,
    FailureRec,
    LoopInput,
    LoopState,
    Phase,
    PublishAlert,
    PublishRecord,
    UpsertSkills,
)
from agents.online import OnlineAgent
from schemas.metrics import ArmTotals

__all__ = [
    "AUTHOR",
    "GUARD_CONVERSION",
    "RECORD_TYPE",
    "SCHEMA_VERSION",
    "Action",
    "AgentLoop",
    "AppendConfig",
    "ApprovalSource",
    "BaselineMark",
    "ConfigWriter",
    "DecisionSink",
    "FailedMoveRec",
    "FailureRec",
    "LoopDriver",
    "LoopInput",
    "LoopSettings",
    "LoopState",
    "LoopStep",
    "MetricsSource",
    "Outbox",
    "Phase",
    "PublishAlert",
    "PublishRecord",
    "RecordKind",
    "StateStore",
    "UpsertSkills",
    "decode_actions",
    "encode_actions",
    "pre_period_allocation",
    "pre_period_arm",
]


@dataclass(frozen=True, slots=True)
class LoopSettings:
    """How the loop runs (policy knobs that are not the Online agent's).

    `k` candidates per round, each moving at most `max_changes` parameters
    (4: a joint move of four parameters is larger than one of three, so a
    read resolves it more often, and it teaches the Actor's lift model about
    more parameters per arm; on the tuning bench's worlds, agents only, 3 → 4
    cut the seasonal world's regret by 9% over 30 seeds and left core's and
    thin's within 2%; BENCHMARKS.md); `cooldown_s` between rounds; `window_s` the
    metric window length (baseline duration = windows × window_s);
    `min_baseline_requests` of incumbent traffic before proposing;
    `pre_period_s` > 0 runs an A/A pre-period first (see `pre_period_arm`).
    `latency` is the Critic's prior latency model; with `fit_latency` the
    loop refits it before each critique to the p99 its arms showed (arms
    with at least `min_latency_requests` requests; `agents.loop_latency`).
    When sidecars replay this surface (`agents.replay_feed`), the registered
    candidates wait up to `ope_wait_s` for `ope_min_requests` replayed
    requests each before the Critic's off-policy screen (`agents.loop_screen`).
    """

    k: int = 3
    max_changes: int = 4
    cooldown_s: float = 60.0
    window_s: float = 60.0
    min_baseline_requests: float = 1.0
    objective: str = "ctr"
    pre_period_s: float = 0.0
    rules: CriticRules = field(default_factory=CriticRules)
    latency: LatencyModel = field(default_factory=LatencyModel)
    fit_latency: bool = True
    min_latency_requests: float = 1_000.0
    ope_wait_s: float = 300.0
    ope_min_requests: int = 200


# --------------------------------------------------------------------------- the loop


class AgentLoop:
    """One surface's loop: a pure `step` over (state, input) using a brain and the Online agent."""

    def __init__(self, brain: Brain, online: OnlineAgent, settings: LoopSettings | None = None) -> None:
        """Compose the Actor (over `brain`), the Critic rules and the Online agent."""
        self.brain = brain
        self.actor = ActorAgent(brain)
        self.online = online
        self.settings = settings or LoopSettings()
        self.surface = online.policy.surface

    def initial_state(self) -> LoopState:
        """The state of a loop that never ran."""
        return LoopState(surface=self.surface)

    async def step(self, state: LoopState, inp: LoopInput) -> tuple[LoopState, list[Action]]:
        """Advance the loop by one tick; returns the next state and what to do (see the module docstring)."""
        out: list[Action] = []
        if inp.serving.control is None:
            return state, out
        self._register_arms(state, inp)
        if state.phase == "idle":
            state = await propose_round(self, state, inp, out)
        elif state.phase == "registering":
            state = plan_round(self, state, inp, out)
        elif state.phase == "pending_approval":
            state = approve_round(self, state, inp, out)
        elif state.phase == "running":
            state = await self._run(state, inp, out)
        return state, out

    def _register_arms(self, state: LoopState, inp: LoopInput) -> None:
        """Tell a brain that learns from past arms (`ArmRegistry`) which config each running arm serves."""
        brain = self.brain
        if not isinstance(brain, ArmRegistry):
            return
        experiment = state.experiment_state()
        if experiment is None:
            return
        plan = experiment.plan
        for arm in (plan.control, *plan.treatments):
            config = inp.serving.configs.get(arm.config_version)
            if config is not None:
                brain.register_arm(arm.arm_id, config)

    # ---- records

    def record(
        self, inp: LoopInput, kind: RecordKind, experiment_id: str, payload: Any, state: LoopState
    ) -> PublishRecord:
        """One `rectune.decisions` record of this surface (`agents.loop_records.agent_record`); the phases call it."""
        return agent_record(self.surface, inp, kind, experiment_id, payload, state)

    # ---- what the phases share: readings, cool-down, baseline

    def metrics(self, inp: LoopInput) -> tuple[MetricReading, ...]:
        """The brain's readings of `inp` under the Online policy (`agents.loop_readings.brain_readings`)."""
        return brain_readings(self.online.policy, inp)

    def cool(self, state: LoopState, inp: LoopInput) -> LoopState:
        """End the round: back to `idle` after the cool-down, with a new baseline mark (`baseline_marks`)."""
        mark = baseline_marks(inp.totals)
        exp = state.experiment_state()
        promoted = exp is not None and exp.status == "promoted"
        return msgspec.structs.replace(
            state,
            phase="idle",
            experiment=None,
            candidates=(),
            cooldown_until_ms=inp.now_ms + int(self.settings.cooldown_s * 1000),
            baseline_mark=mark,
            baseline_mid=(),
            # a promotion resets it; a restricted round that ends any other way sets it (see `agents.loop_propose`)
            explore_wide=False if promoted else state.explore_wide or state.round_restricted,
            round_restricted=False,
        )

    def baseline_arms(self, inp: LoopInput, state: LoopState) -> list[ArmTotals]:
        """The incumbent's totals since the last round ended (`agents.loop_baseline.baseline_since_mark`)."""
        return baseline_since_mark(inp.totals, state.baseline_mark, self.settings.min_baseline_requests)

    # ---- running

    async def _run(self, state: LoopState, inp: LoopInput, out: list[Action]) -> LoopState:
        exp = state.experiment_state()
        if exp is None:
            return self.cool(state, inp)
        arms = {a: inp.totals[a] for a in exp.plan.arm_ids if a in inp.totals}
        covariates = pre_period_totals(exp.plan, inp.totals)
        complete = len(covariates) == len(exp.plan.arm_ids)
        exp, decisions = self.online.step(
            exp, arms, covariates if complete else None, inp.now_ms, opened=inp.opened_arms
        )
        self.emit(state, inp, decisions, out)
        seen = state.latency_seen
        if self.settings.fit_latency:
            seen = observe_latency(seen, exp.plan, inp.totals, self.settings.min_latency_requests)
        points = state.curve_points
        if exp.started_ms is not None:
            points = (*points, *curve_points(decisions, exp.started_ms, state.curve_reference))[-MAX_CURVE_POINTS:]
        state = msgspec.structs.replace(state, experiment=exp.to_bytes(), curve_points=points, latency_seen=seen)
        if not exp.terminal:
            return state
        state = learn_variance_curve(state)
        state = await learn(self.brain, self.surface, self.settings.objective, state, exp, arms, inp, out)
        return self.cool(state, inp)

    def emit(self, state: LoopState, inp: LoopInput, decisions: Sequence[Decision], out: list[Action]) -> None:
        """Append the Online agent's `decisions` to `out` as records and serving actions (`decision_actions`)."""
        decision_actions(self.surface, state, inp, decisions, out)
