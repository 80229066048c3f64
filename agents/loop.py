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

This module keeps `AgentLoop` (its phase steps) and `LoopSettings`; the rest
lives beside it and is re-exported from here (`__all__`), so callers import
`agents.loop` only:

- `agents.loop_state` — `LoopState` and its persisted structs, `LoopInput`,
  the `Action` types;
- `agents.loop_driver` — the port Protocols, `LoopDriver`, the `Outbox` and
  `encode_actions` / `decode_actions`;
- `agents.loop_records` — the decision-record constants, `agent_record`,
  decisions → actions (`decision_actions`);
- `agents.loop_baseline` — the power gate's baseline since the last round,
  the CUPED ratio, the A/A pre-period (`pre_period_arm`, `pre_period_allocation`);
- `agents.loop_learn` — the learning step (Insight + Skill) and the failure memory.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import msgspec

from agents.actor import ActorAgent
from agents.brain import (
    MAX_TITLE_CHARS,
    ArmRegistry,
    Brain,
    CritiqueContext,
    MetricReading,
    ProposalContext,
    clip_text,
)
from agents.critic import CriticRules, LatencyModel, critique
from agents.diagnostics import diagnostic_values
from agents.experiment import Candidate, Decision
from agents.loop_baseline import (
    _TREATMENT_ARM,
    _cuped_ratio,
    baseline_marks,
    baseline_since_mark,
    is_pre_period_arm,
    pre_period_allocation,
    pre_period_arm,
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
from agents.loop_latency import latency_model, observe_latency
from agents.loop_learn import failure_memory, learn
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
from agents.online import OnlineAgent, baseline_from_totals
from agents.skill_search import search_parameters, search_space, skill_notes
from agents.stats.ratio import ratio_from_sums
from schemas.config_log import ServingState
from schemas.metrics import ArmTotals

__all__ = [
    "AUTHOR",
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
    "_cuped_ratio",
    "decode_actions",
    "encode_actions",
    "pre_period_allocation",
    "pre_period_arm",
]

log = logging.getLogger(__name__)

_MAX_READINGS: Final = 64


@dataclass(frozen=True, slots=True)
class LoopSettings:
    """How the loop runs (policy knobs that are not the Online agent's).

    `k` candidates per round; `cooldown_s` between rounds; `window_s` the
    metric window length (baseline duration = windows × window_s);
    `min_baseline_requests` of incumbent traffic before proposing;
    `pre_period_s` > 0 runs an A/A pre-period first (see `pre_period_arm`).
    `latency` is the Critic's prior latency model; with `fit_latency` the
    loop refits it before each critique to the p99 its arms showed (arms
    with at least `min_latency_requests` requests; `agents.loop_latency`).
    """

    k: int = 3
    max_changes: int = 3
    cooldown_s: float = 60.0
    window_s: float = 60.0
    min_baseline_requests: float = 1.0
    objective: str = "ctr"
    pre_period_s: float = 0.0
    rules: CriticRules = field(default_factory=CriticRules)
    latency: LatencyModel = field(default_factory=LatencyModel)
    fit_latency: bool = True
    min_latency_requests: float = 1_000.0


# --------------------------------------------------------------------------- the loop


#: the conversion guardrail's ratio as the brain reads it (`agents.insight.METRICS` name, numerator, denominator)
GUARD_CONVERSION: Final = ("conversion_rate", "conversions", "requests")


def _ratio_reading(name: str, numerator: str, denominator: str, arm_id: str, totals: ArmTotals) -> MetricReading | None:
    """One arm's ratio with its 95% interval (delta method over user buckets), None when undefined."""
    value = totals.ratio(numerator, denominator)
    if value != value:  # NaN: no denominator yet
        return None
    lower, upper = ratio_from_sums(totals.sums, numerator, denominator).interval()
    finite = math.isfinite(lower) and math.isfinite(upper)
    return MetricReading(
        name=name, value=value, lower=lower if finite else None, upper=upper if finite else None, arm=arm_id
    )


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
            state = await self._propose(state, inp, out)
        elif state.phase == "registering":
            state = self._plan(state, inp, out)
        elif state.phase == "pending_approval":
            state = self._approve(state, inp, out)
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

    def _record(
        self, inp: LoopInput, kind: RecordKind, experiment_id: str, payload: Any, state: LoopState
    ) -> PublishRecord:
        return agent_record(self.surface, inp, kind, experiment_id, payload, state)

    # ---- idle: propose + critique

    def _metrics(self, inp: LoopInput) -> tuple[MetricReading, ...]:
        """The brain's readings (at most 64), in priority order: the incumbent arms' diagnostics
        (`agents.diagnostics.diagnostic_values`: near_duplicate_share, categories_per_list, fresh_share,
        long_tail_share; NaN left out — the diagnostic rules read them), then each arm's primary metric (the Online
        policy's) with its 95% interval (the brain's warm start and lift model), then the experiment arms'
        diagnostics.  A/A pre-period arms serve the incumbent and are left out.  A brain that needs more history
        than fits keeps it itself (the offline brain remembers every reading it was shown)."""
        metric = self.online.policy.primary
        arms = sorted((a, t) for a, t in inp.totals.items() if not is_pre_period_arm(a))
        incumbent = [(a, t) for a, t in arms if not _TREATMENT_ARM.search(a)]
        experiment = [(a, t) for a, t in arms if _TREATMENT_ARM.search(a)]
        out: list[MetricReading] = []
        for arm_id, totals in incumbent:
            out.extend(MetricReading(name=n, value=v, arm=arm_id) for n, v in diagnostic_values(totals).items())
        ratios = [(metric.name, metric.numerator, metric.denominator)]
        if self.online.policy.guardrails.conversion_margin is not None:
            ratios.append(GUARD_CONVERSION)  # so a brain can learn which moves cost conversions
        for name, numerator, denominator in ratios:
            out.extend(
                r for arm_id, totals in arms if (r := _ratio_reading(name, numerator, denominator, arm_id, totals))
            )
        for arm_id, totals in experiment:
            out.extend(MetricReading(name=n, value=v, arm=arm_id) for n, v in diagnostic_values(totals).items())
        return tuple(out[:_MAX_READINGS])

    async def _propose(self, state: LoopState, inp: LoopInput, out: list[Action]) -> LoopState:
        s = self.settings
        if inp.now_ms < state.cooldown_until_ms:
            return state
        baseline = self._baseline_arms(inp, state)
        if not baseline:
            return state
        incumbent = inp.serving.control
        assert incumbent is not None  # noqa: S101 - checked by step
        cycle = state.cycle + 1
        state = msgspec.structs.replace(state, cycle=cycle)
        exp_tag = f"{self.surface}-round{cycle}"
        space = search_space(inp.skills, self.surface, incumbent=incumbent)
        skill_parameters = search_parameters(space)
        # A round confined to the Skillhub's parameters that ended without a promotion means the skills'
        # directions are spent for now: search every parameter (skills still inform the Actor through their
        # notes) until a promotion changes the incumbent, instead of spending round after round on them.
        widened_why = (
            "the last round in the Skillhub's parameters ended without a promotion"
            if skill_parameters and state.explore_wide
            else ""
        )
        context = ProposalContext(
            surface=self.surface,
            incumbent=incumbent,
            k=s.k,
            metrics=self._metrics(inp),
            skills=tuple(skill_notes(inp.skills, self.surface)),
            parameters=() if widened_why else skill_parameters,
            max_changes=s.max_changes,
            guardrails=s.rules.guardrails,
        )
        result = await self.actor.propose(context)
        widened_from = list(skill_parameters)
        if not result.proposals and context.parameters:
            # The Skillhub's space can be exhausted (its parameters cannot move any further in their direction
            # within the trust region): search every parameter rather than stall the surface.
            context = msgspec.structs.replace(context, parameters=())
            result = await self.actor.propose(context)
            widened_why = "the Skillhub's parameters cannot move any further"
        state = msgspec.structs.replace(state, round_restricted=bool(context.parameters))
        payload: dict[str, Any] = {
            "proposals": [
                {"proposal_id": p.proposal_id, "title": p.title, "changes": p.changes} for p in result.proposals
            ],
            "dropped": [{"index": d.index, "reason": d.reason} for d in result.dropped],
            "usage": result.usage,
        }
        if widened_from and not context.parameters:
            payload["widened_from"] = widened_from
            payload["widened_because"] = widened_why
        out.append(self._record(inp, "proposal", exp_tag, payload, state))
        verdicts_brain = []
        if result.proposals:
            try:
                verdicts_brain = await self.brain.critique(
                    CritiqueContext(surface=self.surface, incumbent=incumbent, candidates=result.proposals)
                )
            except Exception as err:  # a brain must not raise; if one does, it only loses its say
                log.warning("brain critique raised %s", type(err).__name__)
        latency = s.latency
        if s.fit_latency:
            latency = latency_model(
                s.latency,
                state.latency_seen,
                inp.serving.configs,
                incumbent=incumbent,
                baseline=baseline,
                min_requests=s.min_latency_requests,
                surface=self.surface,
            )
        verdicts = critique(
            result.proposals,
            incumbent,
            s.rules,
            latency_model=latency,
            failures=failure_memory(state.failures),
            brain_verdicts=verdicts_brain,
            surface=self.surface,
        )
        out.append(
            self._record(
                inp,
                "critique",
                exp_tag,
                {
                    "verdicts": [
                        {"proposal_id": v.proposal_id, "kept": v.kept, "rule": v.rule, "reasons": list(v.reasons)}
                        for v in verdicts
                    ]
                },
                state,
            )
        )
        kept_ids = {v.proposal_id for v in verdicts if v.kept}
        kept = tuple(p for p in result.proposals if p.proposal_id in kept_ids)
        if not kept:
            out.append(
                self._record(inp, "decision", exp_tag, {"kind": "no_candidate", "reasons": ["critic kept none"]}, state)
            )
            return self._cool(state, inp)
        out.extend(
            AppendConfig(
                kind="config",
                reason=clip_text(f"register candidate {p.proposal_id}: {p.title}", MAX_TITLE_CHARS * 2),
                config=p.config,
                proposal_id=p.proposal_id,
            )
            for p in kept
        )
        return msgspec.structs.replace(
            state,
            phase="registering",
            candidates=kept,
            control_version=inp.serving.control_version,
            registered_after=inp.serving.version,
        )

    def _cool(self, state: LoopState, inp: LoopInput) -> LoopState:
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
            # a promotion resets it; a restricted round that ends any other way sets it (see `_propose`)
            explore_wide=False if promoted else state.explore_wide or state.round_restricted,
            round_restricted=False,
        )

    def _baseline_arms(self, inp: LoopInput, state: LoopState) -> list[ArmTotals]:
        """The incumbent's totals since the last round ended (`agents.loop_baseline.baseline_since_mark`)."""
        return baseline_since_mark(inp.totals, state.baseline_mark, self.settings.min_baseline_requests)

    # ---- registering: plan

    def _versions(self, state: LoopState, serving: ServingState) -> dict[str, int]:
        found: dict[str, int] = {}
        for p in state.candidates:
            for version in sorted(serving.configs):
                if version > state.registered_after and serving.configs[version] == p.config:
                    found[p.proposal_id] = version
                    break
        return found

    def _plan(self, state: LoopState, inp: LoopInput, out: list[Action]) -> LoopState:
        versions = self._versions(state, inp.serving)
        missing = [p for p in state.candidates if p.proposal_id not in versions]
        if missing:  # a crash between registering and planning: register what is not there yet
            return state
        if inp.serving.control_version != state.control_version:
            return self._cool(state, inp)  # the incumbent moved meanwhile (a human change): start over
        baseline_arms = self._baseline_arms(inp, state)
        if not baseline_arms:
            return state
        seconds = max(t.windows for t in baseline_arms) * self.settings.window_s
        traffic, baseline = baseline_from_totals(baseline_arms, self.online.policy.primary, seconds)
        pre_s = self.settings.pre_period_s
        ratio = state.cuped_variance_ratio if pre_s > 0.0 else 1.0
        if ratio < 1.0:
            # the A/A pre-period's covariates will remove this share of the variance, as they did last time
            baseline = dataclasses.replace(baseline, variance_per_request=baseline.variance_per_request * ratio)
        candidates = [
            Candidate(proposal_id=p.proposal_id, config_version=versions[p.proposal_id], title=p.title)
            for p in state.candidates
        ]
        hold = (
            f"A/A pre-period of {pre_s:g} s first: every arm serves the incumbent (same salt, final-stage lanes), "
            "its per-arm bucket sums become the CUPED covariates"
            + (f"; planned on {ratio:.2f}x the raw variance (what CUPED left in the last reads)" if ratio < 1 else "")
            if pre_s > 0.0
            else None
        )
        exp, decisions = self.online.plan(candidates, state.control_version, traffic, baseline, inp.now_ms, hold=hold)
        if hold is not None and exp is not None and exp.status == "pending_approval":
            aa = pre_period_allocation(exp.plan)
            decisions = [
                msgspec.structs.replace(d, allocation=aa) if d.kind == "hold_for_approval" else d for d in decisions
            ]
        state = msgspec.structs.replace(
            state,
            pre_version=inp.serving.version,
            pre_period_until_ms=inp.now_ms + round(pre_s * 1000) if hold is not None else 0,
        )
        self._emit(state, inp, decisions, out)
        if exp is None or exp.terminal:
            return self._cool(state, inp)
        kept = {t.proposal_id for t in exp.plan.treatments}
        state = msgspec.structs.replace(
            state,
            experiment=exp.to_bytes(),
            candidates=tuple(p for p in state.candidates if p.proposal_id in kept),
            phase="running" if exp.status == "running" else "pending_approval",
        )
        return state

    def _approve(self, state: LoopState, inp: LoopInput, out: list[Action]) -> LoopState:
        exp = state.experiment_state()
        if exp is None:
            return self._cool(state, inp)
        if inp.now_ms < state.pre_period_until_ms:
            return state  # the A/A pre-period is still measuring the covariates
        if exp.plan.approval_required and exp.experiment_id not in inp.approved:
            return state
        reason = (
            "approved: releasing the held allocation"
            if exp.plan.approval_required
            else "A/A pre-period over: releasing the first stage"
        )
        exp, decisions = self.online.approve(exp, inp.now_ms, reason=reason)
        self._emit(state, inp, decisions, out)
        return msgspec.structs.replace(state, experiment=exp.to_bytes(), phase="running")

    # ---- running

    async def _run(self, state: LoopState, inp: LoopInput, out: list[Action]) -> LoopState:
        exp = state.experiment_state()
        if exp is None:
            return self._cool(state, inp)
        arms = {a: inp.totals[a] for a in exp.plan.arm_ids if a in inp.totals}
        pre = {a: inp.totals.get(pre_period_arm(exp.plan, a)) for a in exp.plan.arm_ids}
        covariates = {a: t for a, t in pre.items() if t is not None}
        exp, decisions = self.online.step(exp, arms, covariates if len(covariates) == len(pre) else None, inp.now_ms)
        self._emit(state, inp, decisions, out)
        seen = state.latency_seen
        if self.settings.fit_latency:
            seen = observe_latency(seen, exp.plan, inp.totals, self.settings.min_latency_requests)
        state = msgspec.structs.replace(
            state,
            experiment=exp.to_bytes(),
            cuped_variance_ratio=_cuped_ratio(decisions, state.cuped_variance_ratio),
            latency_seen=seen,
        )
        if not exp.terminal:
            return state
        state = await learn(self.brain, self.surface, self.settings.objective, state, exp, arms, inp, out)
        return self._cool(state, inp)

    def _emit(self, state: LoopState, inp: LoopInput, decisions: Sequence[Decision], out: list[Action]) -> None:
        decision_actions(self.surface, state, inp, decisions, out)
