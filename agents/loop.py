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
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal, Protocol, TypeAlias

import msgspec
import numpy as np

from agents.actor import ActorAgent
from agents.brain import (
    MAX_TITLE_CHARS,
    ArmRegistry,
    Brain,
    CritiqueContext,
    InsightContext,
    MetricReading,
    ParamChange,
    Proposal,
    ProposalContext,
    clip_text,
)
from agents.critic import CriticRules, FailureMemory, FailureRecord, LatencyModel, critique
from agents.diagnostics import diagnostic_values
from agents.experiment import Candidate, Decision, ExperimentPlan, ExperimentState
from agents.insight import ALL_COHORTS, ArmChanges, effect_readings, experiment_insights
from agents.online import OnlineAgent, baseline_from_totals, stage_allocation
from agents.skillhub import SkillStore
from agents.skills import Skill, changed_skills, search_parameters, search_space, skill_notes, update_skills
from agents.stats.ratio import ratio_from_sums
from schemas.alerts import Alert
from schemas.config import Allocation, ArmShare, CascadeConfig, ConfigError
from schemas.config_log import ServingState
from schemas.errors import SignatureError
from schemas.metrics import ArmTotals

log = logging.getLogger(__name__)

SCHEMA_VERSION: Final = 1
RECORD_TYPE: Final = "agent_record"
AUTHOR: Final = "rectune-agents"
Phase: TypeAlias = Literal["idle", "registering", "pending_approval", "running"]
RecordKind: TypeAlias = Literal[
    "proposal", "critique", "allocation", "interim_read", "decision", "insight", "skill", "brain_call"
]
_TREATMENT_ARM: Final = re.compile(r"\.(t\d+|c)$")
#: the power gate never plans on less than this share of the raw variance (a lucky read must not underpower the next)
_MIN_CUPED_RATIO: Final = 0.25
_MAX_READINGS: Final = 64


# --------------------------------------------------------------------------- state


class FailedMoveRec(msgspec.Struct, frozen=True, array_like=True):
    """A persisted `agents.critic.FailedMove`."""

    name: str
    before: float | int | str
    after: float | int | str


class FailureRec(msgspec.Struct, frozen=True, kw_only=True):
    """A persisted `agents.critic.FailureRecord`."""

    moves: tuple[FailedMoveRec, ...]
    reason: str = ""
    experiment_id: str = ""


class BaselineMark(msgspec.Struct, frozen=True, array_like=True):
    """A baseline arm's cumulative totals when the last round ended (`LoopState.baseline_mark`)."""

    arm_id: str
    windows: int
    sums: tuple[float, ...]
    latency_hist: tuple[int, ...]
    buckets: int


class LoopState(msgspec.Struct, frozen=True, kw_only=True):
    """Everything the loop needs between steps (persisted by the `StateStore` as msgpack bytes).

    `experiment` is `ExperimentState.to_bytes()` of the current experiment;
    `candidates` the proposals being registered or tested (arm changes for
    Insight); `registered_after` the config head before registration (a
    candidate's version is the first later version holding its config);
    `pre_version` the head before the first allocation (what a rollback
    restores); `cooldown_until_ms` when the next proposal round may start;
    `baseline_mark` the baseline arms' totals when the last round ended (the
    power gate plans on the incumbent's traffic since then, not on all
    history); `pre_period_until_ms` when the A/A pre-period (if any) ends; `outbox`
    the actions of the step this state results from while they are being
    executed (`LoopDriver`: saved before, cleared after; see `encode_actions`).
    """

    surface: str
    phase: Phase = "idle"
    cycle: int = 0
    experiment: bytes | None = None
    candidates: tuple[Proposal, ...] = ()
    control_version: int = 0
    registered_after: int = 0
    pre_version: int = 0
    cooldown_until_ms: int = 0
    failures: tuple[FailureRec, ...] = ()
    history: tuple[str, ...] = ()
    baseline_mark: tuple[BaselineMark, ...] = ()
    pre_period_until_ms: int = 0
    outbox: bytes | None = None
    cuped_variance_ratio: float = 1.0

    def to_bytes(self) -> bytes:
        """msgpack bytes (exact round trip)."""
        return _state_encoder.encode(self)

    @classmethod
    def from_bytes(cls, data: bytes) -> LoopState:
        """Decode what `to_bytes` wrote."""
        return _state_decoder.decode(data)

    def experiment_state(self) -> ExperimentState | None:
        """The decoded current experiment, if any."""
        return None if self.experiment is None else ExperimentState.from_bytes(self.experiment)


_state_encoder: Final = msgspec.msgpack.Encoder()
_state_decoder: Final = msgspec.msgpack.Decoder(LoopState)


def _cuped_ratio(decisions: Sequence[Decision], last: float) -> float:
    """The median Var(adjusted)/Var(raw) of these decisions' CUPED reads, floored at `_MIN_CUPED_RATIO`; else `last`.

    The power gate plans the next experiment on it: what the A/A covariates
    removed on this surface is the best guess of what they will remove next.
    """
    ratios = sorted(
        r.variance_ratio
        for d in decisions
        for r in d.reads
        if r.cuped and r.variance_ratio is not None and math.isfinite(r.variance_ratio)
    )
    if not ratios:
        return last
    return min(1.0, max(_MIN_CUPED_RATIO, ratios[len(ratios) // 2]))


def pre_period_arm(plan: ExperimentPlan, arm_id: str) -> str:
    """The A/A pre-period arm of experiment arm `arm_id` (`<exp>.c` → `<exp>.pre.c`, `<exp>.t1` → `<exp>.pre.t1`).

    CUPED needs each arm's pre-period sums *of its own users* per metric
    bucket; the metric windows cannot split earlier traffic by a future arm,
    so the loop serves an A/A allocation first with the experiment's salt:
    same users per arm, every arm on the incumbent, arm ids from here.  Their
    merged totals are then passed to `OnlineAgent.step` as `pre_period`.
    """
    return f"{plan.experiment_id}.pre{arm_id.removeprefix(plan.experiment_id)}"


def pre_period_allocation(plan: ExperimentPlan) -> Allocation:
    """The A/A allocation of the pre-period: the final stage's lanes, every arm serving the incumbent.

    Lanes fill from their start, so a treatment arm's users at any stage are
    among its final-stage users: the covariates cover every user it will see.
    """
    final = stage_allocation(plan, plan.final_stage, [True] * len(plan.treatments))
    return Allocation(
        experiment_id=plan.experiment_id,
        salt=plan.salt,
        arms=tuple(ArmShare(pre_period_arm(plan, a.arm_id), plan.control.config_version, a.share) for a in final.arms),
    )


# --------------------------------------------------------------------------- actions


@dataclass(frozen=True, slots=True)
class PublishRecord:
    """A record for `rectune.decisions` (already JSON-ready)."""

    record: dict[str, Any]

    def to_json(self) -> bytes:
        """The record value."""
        return msgspec.json.encode(self.record)


@dataclass(frozen=True, slots=True)
class PublishAlert:
    """An alert for `rectune.alerts`."""

    alert: Alert


@dataclass(frozen=True, slots=True)
class AppendConfig:
    """A config change to append as the next version (signed by the writer).

    `action_id` is set by `LoopDriver` when it saves the step's intent; a
    writer that finds an accepted change carrying it on the log already
    (a replay after a crash) returns that version instead of appending again.
    """

    kind: Literal["config", "allocation", "rollback"]
    reason: str
    config: CascadeConfig | None = None
    activate: bool = False
    allocation: Allocation | None = None
    restores_version: int | None = None
    proposal_id: str | None = None
    action_id: str = ""


@dataclass(frozen=True, slots=True)
class UpsertSkills:
    """Skillhub entries to store."""

    skills: tuple[Skill, ...]


Action: TypeAlias = PublishRecord | PublishAlert | AppendConfig | UpsertSkills


@dataclass(frozen=True, slots=True)
class LoopInput:
    """What one step sees: merged per-arm totals of the surface, the serving state, skills, approvals, time."""

    totals: Mapping[str, ArmTotals]
    serving: ServingState
    now_ms: int
    skills: Sequence[Skill] = ()
    approved: frozenset[str] = frozenset()
    epoch: int = 0


@dataclass(frozen=True, slots=True)
class LoopSettings:
    """How the loop runs (policy knobs that are not the Online agent's).

    `k` candidates per round; `cooldown_s` between rounds; `window_s` the
    metric window length (baseline duration = windows × window_s);
    `min_baseline_requests` of incumbent traffic before proposing;
    `pre_period_s` > 0 runs an A/A pre-period first (see `pre_period_arm`).
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
        experiment = state.experiment_state() if isinstance(self.brain, ArmRegistry) else None
        if experiment is None or not isinstance(self.brain, ArmRegistry):
            return
        plan = experiment.plan
        for arm in (plan.control, *plan.treatments):
            config = inp.serving.configs.get(arm.config_version)
            if config is not None:
                self.brain.register_arm(arm.arm_id, config)

    # ---- records

    def _record(
        self, inp: LoopInput, kind: RecordKind, experiment_id: str, payload: Any, state: LoopState
    ) -> PublishRecord:
        body = msgspec.to_builtins(payload)
        key = f"{self.surface}|{state.cycle}|{kind}|{experiment_id}|{msgspec.json.encode(body).decode()}"
        return PublishRecord(
            {
                "type": RECORD_TYPE,
                "schema_version": SCHEMA_VERSION,
                "record_id": hashlib.sha256(key.encode()).hexdigest()[:16],
                "surface": self.surface,
                "experiment_id": experiment_id,
                "kind": kind,
                "cycle": state.cycle,
                "epoch": inp.epoch,
                "at_ms": inp.now_ms,
                "payload": body,
            }
        )

    # ---- idle: propose + critique

    def _failures(self, state: LoopState) -> FailureMemory:
        from agents.critic import FailedMove  # local: keeps the import list short

        return FailureMemory(
            records=tuple(
                FailureRecord(
                    moves=tuple(FailedMove(m.name, m.before, m.after) for m in f.moves),
                    reason=f.reason,
                    experiment_id=f.experiment_id,
                )
                for f in state.failures
            )
        )

    def _metrics(self, inp: LoopInput) -> tuple[MetricReading, ...]:
        """The brain's readings (at most 64): each arm's primary metric (the Online policy's, e.g. ctr) for the
        warm start, then each arm's diagnostics (`agents.diagnostics.diagnostic_values`: near_duplicate_share,
        categories_per_list, fresh_share, long_tail_share; NaN left out), incumbent arms before experiment arms,
        so the diagnostic rules and a model brain see how the served lists look."""
        metric = self.online.policy.primary
        out = []
        arms = sorted(inp.totals.items())
        for arm_id, totals in arms:
            value = totals.ratio(metric.numerator, metric.denominator)
            if value == value:  # not NaN
                # the 95% interval (delta method over user buckets) lets a brain weigh the read
                lower, upper = ratio_from_sums(totals.sums, metric.numerator, metric.denominator).interval()
                finite = math.isfinite(lower) and math.isfinite(upper)
                out.append(
                    MetricReading(
                        name=metric.name,
                        value=value,
                        lower=lower if finite else None,
                        upper=upper if finite else None,
                        arm=arm_id,
                    )
                )
        for arm_id, totals in sorted(arms, key=lambda item: (bool(_TREATMENT_ARM.search(item[0])), item[0])):
            out.extend(MetricReading(name=n, value=v, arm=arm_id) for n, v in diagnostic_values(totals).items())
        return tuple(out[:_MAX_READINGS])

    async def _propose(self, state: LoopState, inp: LoopInput, out: list[Action]) -> LoopState:
        s = self.settings
        if inp.now_ms < state.cooldown_until_ms or not self._baseline_arms(inp, state):
            return state
        incumbent = inp.serving.control
        assert incumbent is not None  # noqa: S101 - checked by step
        cycle = state.cycle + 1
        state = msgspec.structs.replace(state, cycle=cycle)
        exp_tag = f"{self.surface}-round{cycle}"
        space = search_space(inp.skills, self.surface, incumbent=incumbent)
        context = ProposalContext(
            surface=self.surface,
            incumbent=incumbent,
            k=s.k,
            metrics=self._metrics(inp),
            skills=tuple(skill_notes(inp.skills, self.surface)),
            parameters=search_parameters(space),
            max_changes=s.max_changes,
            guardrails=s.rules.guardrails,
        )
        result = await self.actor.propose(context)
        payload: dict[str, Any] = {}
        if not result.proposals and context.parameters:
            # The Skillhub's space can be exhausted (its parameters cannot move any further in their direction
            # within the trust region): search every parameter rather than stall the surface.
            payload["widened_from"] = list(context.parameters)
            context = msgspec.structs.replace(context, parameters=())
            result = await self.actor.propose(context)
        payload = {
            "proposals": [
                {"proposal_id": p.proposal_id, "title": p.title, "changes": p.changes} for p in result.proposals
            ],
            "dropped": [{"index": d.index, "reason": d.reason} for d in result.dropped],
            "usage": result.usage,
            **payload,
        }
        out.append(self._record(inp, "proposal", exp_tag, payload, state))
        verdicts_brain = []
        if result.proposals:
            try:
                verdicts_brain = await self.brain.critique(
                    CritiqueContext(surface=self.surface, incumbent=incumbent, candidates=result.proposals)
                )
            except Exception as err:  # a brain must not raise; if one does, it only loses its say
                log.warning("brain critique raised %s", type(err).__name__)
        verdicts = critique(
            result.proposals,
            incumbent,
            s.rules,
            latency_model=s.latency,
            failures=self._failures(state),
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
        mark = tuple(
            BaselineMark(
                a,
                t.windows,
                tuple(np.asarray(t.sums, dtype=np.float64).ravel().tolist()),
                tuple(np.asarray(t.latency_hist, dtype=np.int64).tolist()),
                t.sums.shape[1],
            )
            for a, t in sorted(inp.totals.items())
            if not _TREATMENT_ARM.search(a)
        )
        return msgspec.structs.replace(
            state,
            phase="idle",
            experiment=None,
            candidates=(),
            cooldown_until_ms=inp.now_ms + int(self.settings.cooldown_s * 1000),
            baseline_mark=mark,
        )

    def _baseline_arms(self, inp: LoopInput, state: LoopState) -> list[ArmTotals]:
        """The incumbent's (non-experiment arms') totals since the last round ended (`LoopState.baseline_mark`).

        Cumulative totals since the metrics topic began mix earlier incumbents,
        and with returning users their variance per request grows with the
        history's length (user effects do not average out), so a gate fed all
        history refuses ever more; the traffic since the last round is recent
        and of the current incumbent only.
        """
        marks = {m.arm_id: m for m in state.baseline_mark}
        arms = []
        for a, t in inp.totals.items():
            if _TREATMENT_ARM.search(a):
                continue
            m = marks.get(a)
            if m is not None and m.buckets == t.sums.shape[1] and len(m.sums) == t.sums.size:
                t = ArmTotals(
                    t.surface,
                    a,
                    t.sums - np.asarray(m.sums, dtype=np.float64).reshape(t.sums.shape),
                    t.latency_hist - np.asarray(m.latency_hist, dtype=np.int64),
                    t.item_events,
                    t.late_item_events,
                    t.windows - m.windows,
                )
            arms.append(t)
        return [t for t in arms if t.total("requests") >= self.settings.min_baseline_requests and t.windows > 0]

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
        state = msgspec.structs.replace(
            state, experiment=exp.to_bytes(), cuped_variance_ratio=_cuped_ratio(decisions, state.cuped_variance_ratio)
        )
        if not exp.terminal:
            return state
        state = await self._learn(state, exp, arms, inp, out)
        return self._cool(state, inp)

    def _emit(self, state: LoopState, inp: LoopInput, decisions: Sequence[Decision], out: list[Action]) -> None:
        by_id = {p.proposal_id: p for p in state.candidates}
        for d in decisions:
            kind: RecordKind = (
                "interim_read"
                if d.kind == "interim_read"
                else "allocation"
                if d.kind in ("allocate", "ramp", "hold_for_approval")
                else "decision"
            )
            out.append(self._record(inp, kind, d.experiment_id, msgspec.json.decode(d.to_json()), state))
            if d.alert is not None:
                out.append(
                    PublishAlert(
                        Alert(
                            schema_version=1,
                            kind=d.alert,
                            severity=d.severity,
                            source=AUTHOR,
                            message=clip_text("; ".join(d.reasons) or d.kind, 4000),
                            at_ms=inp.now_ms,
                            surface=self.surface,
                            arm_id=d.arm_id,
                            config_version=d.config_version,
                        )
                    )
                )
            reason = clip_text(f"{d.decision_id} {d.kind}: {'; '.join(d.reasons)}", 3900)
            if d.kind == "promote" and d.proposal_id in by_id:
                out.append(
                    AppendConfig(
                        kind="config",
                        reason=reason,
                        config=by_id[d.proposal_id].config,
                        activate=True,
                        proposal_id=d.proposal_id,
                    )
                )
                out.append(AppendConfig(kind="allocation", reason=reason))
            elif d.kind == "rollback" and (
                d.ends_experiment or (d.allocation is not None and all(a.share == 0.0 for a in d.allocation.arms[1:]))
            ):
                out.append(AppendConfig(kind="rollback", reason=reason, restores_version=state.pre_version))
            elif d.ends_experiment:
                out.append(AppendConfig(kind="allocation", reason=reason))
            elif d.allocation is not None:
                out.append(AppendConfig(kind="allocation", reason=reason, allocation=d.allocation))

    # ---- learn

    async def _learn(
        self, state: LoopState, exp: ExperimentState, arms: Mapping[str, ArmTotals], inp: LoopInput, out: list[Action]
    ) -> LoopState:
        control = inp.serving.configs.get(exp.plan.control.config_version) or inp.serving.control
        assert control is not None  # noqa: S101 - checked by step
        by_id = {p.proposal_id: p for p in state.candidates}
        arm_changes = [
            ArmChanges(arm_id=t.arm_id, changes=by_id[t.proposal_id].changes)
            for t in exp.plan.treatments
            if t.proposal_id in by_id
        ]
        report = experiment_insights(
            experiment_id=exp.experiment_id,
            surface=self.surface,
            control_config=control,
            control_arm=exp.plan.control.arm_id,
            arms=arm_changes,
            totals={ALL_COHORTS: arms},
            objective=self.settings.objective,
            at_ms=inp.now_ms,
        )
        narrative = None
        changes: tuple[ParamChange, ...] = tuple(c for a in arm_changes for c in a.changes)[:64]
        try:
            narrative = await self.brain.summarise(
                InsightContext(
                    surface=self.surface,
                    experiment_id=exp.experiment_id,
                    decision=exp.status,
                    changes=changes,
                    effects=effect_readings(report)[:32],
                )
            )
        except Exception as err:  # a brain must not raise; the statistical report stands alone
            log.warning("brain summarise raised %s", type(err).__name__)
        out.append(
            self._record(
                inp,
                "insight",
                exp.experiment_id,
                {
                    "status": exp.status,
                    "outcome": exp.outcome,
                    "insights": report.insights,
                    "skipped": report.skipped,
                    "summary": narrative,
                },
                state,
            )
        )
        updated, skill_changes = update_skills(inp.skills, report.insights, inp.now_ms)
        touched = changed_skills(updated, skill_changes)
        if touched:
            out.append(UpsertSkills(touched))
        out.append(self._record(inp, "skill", exp.experiment_id, {"changes": skill_changes}, state))
        failures = state.failures
        if exp.status in ("stopped_loser", "rolled_back"):
            for a in arm_changes:
                arm = exp.arm(a.arm_id)
                if arm.status in ("stopped_loser", "rolled_back", "stopped_futile"):
                    rec = FailureRecord.from_changes(
                        control, a.changes, reason=arm.reason[:200], experiment_id=exp.experiment_id
                    )
                    failures = (
                        *failures,
                        FailureRec(
                            moves=tuple(FailedMoveRec(m.name, m.before, m.after) for m in rec.moves),
                            reason=rec.reason,
                            experiment_id=rec.experiment_id,
                        ),
                    )
        history = (*state.history, f"{exp.experiment_id}:{exp.status}")[-50:]
        return msgspec.structs.replace(state, failures=failures[-100:], history=history)


# --------------------------------------------------------------------------- I/O protocols and the driver


class ConfigWriter(Protocol):
    """The config topic: its folded head, and appending one change against it."""

    async def head(self) -> ServingState:
        """The serving state after every change on the topic."""
        ...

    async def append(self, action: AppendConfig, epoch: int) -> int:
        """Append `action` as the next version (signed); returns that version."""
        ...


class DecisionSink(Protocol):
    """`rectune.decisions` and `rectune.alerts`."""

    async def publish(self, record: PublishRecord) -> None:
        """Publish one decision record."""
        ...

    async def alert(self, alert: Alert) -> None:
        """Publish one alert."""
        ...


class StateStore(Protocol):
    """Where `LoopState` lives between steps (conditional on the lease)."""

    async def load(self) -> bytes | None:
        """The saved state bytes, if any."""
        ...

    async def save(self, data: bytes) -> bool:
        """Save; False when this process no longer holds the lease (nothing written)."""
        ...


class MetricsSource(Protocol):
    """Cumulative merged per-arm totals of the surface."""

    async def totals(self) -> Mapping[str, ArmTotals]:
        """arm id → totals."""
        ...


class ApprovalSource(Protocol):
    """Experiment ids a human approved (`rectune approve`)."""

    async def approved(self) -> frozenset[str]:
        """The approved ids."""
        ...


class LoopDriver:
    """One tick of I/O around `AgentLoop.step`: load → read → step → save the intent → execute → save."""

    def __init__(
        self,
        loop: AgentLoop,
        *,
        config: ConfigWriter,
        sink: DecisionSink,
        store: StateStore,
        metrics: MetricsSource,
        skills: SkillStore,
        approvals: ApprovalSource | None = None,
    ) -> None:
        """Keep the loop and its ports."""
        self.loop, self.config, self.sink, self.store = loop, config, sink, store
        self.metrics, self.skills, self.approvals = metrics, skills, approvals

    async def tick(self, now_ms: int, epoch: int = 0) -> tuple[LoopState, list[Action]]:
        """Run one step and execute its actions, exactly once across crashes (called by the runtime every tick).

        The next state is saved first *with its actions* (`LoopState.outbox`,
        the intent: a lease-fenced write, so a deposed leader acts on
        nothing), then the actions run, then the state is saved without them.
        A tick that finds an outbox (the process died in between, or an action
        failed) executes that outbox again instead of stepping: records and
        alerts may repeat (same `record_id`), config appends do not (each
        carries an `action_id` the writer finds on the log).  A config change
        the writer refuses (`ConfigError`, `SignatureError`) abandons the
        intent: the state before it is restored and the error raised, so the
        next tick steps again from there.
        """
        raw = await self.store.load()
        state = LoopState.from_bytes(raw) if raw else self.loop.initial_state()
        if state.outbox is not None:
            box = _outbox_decoder.decode(state.outbox)
            prior = LoopState.from_bytes(box.prior)
            actions = decode_actions(box.actions)
            done = msgspec.structs.replace(state, outbox=None)
            await self._execute(actions, epoch, prior)
            await self.store.save(done.to_bytes())
            return done, actions
        inp = LoopInput(
            totals=await self.metrics.totals(),
            serving=await self.config.head(),
            now_ms=now_ms,
            skills=await self.skills.load_all(),
            approved=await self.approvals.approved() if self.approvals is not None else frozenset(),
            epoch=epoch,
        )
        new_state, actions = await self.loop.step(state, inp)
        if actions:
            key = hashlib.sha256(new_state.to_bytes() + str(now_ms).encode()).hexdigest()[:16]
            actions = [
                dataclasses.replace(a, action_id=f"{key}.{i}") if isinstance(a, AppendConfig) else a
                for i, a in enumerate(actions)
            ]
            box = Outbox(prior=state.to_bytes(), actions=encode_actions(actions))
            intent = msgspec.structs.replace(new_state, outbox=_outbox_encoder.encode(box))
            if not await self.store.save(intent.to_bytes()):
                log.warning("loop state not saved (lease lost?): the step's %d actions are dropped", len(actions))
                return state, []
            await self._execute(actions, epoch, state)
        if new_state != state or actions:
            await self.store.save(new_state.to_bytes())
        return new_state, actions

    async def _execute(self, actions: Sequence[Action], epoch: int, prior: LoopState) -> None:
        for action in actions:
            if isinstance(action, PublishRecord):
                await self.sink.publish(action)
            elif isinstance(action, PublishAlert):
                await self.sink.alert(action.alert)
            elif isinstance(action, AppendConfig):
                try:
                    await self.config.append(action, epoch)
                except (ConfigError, SignatureError):
                    await self.store.save(prior.to_bytes())  # abandon the intent (see `tick`)
                    raise
            else:
                await self.skills.upsert_many(action.skills)


# --------------------------------------------------------------------------- the outbox (a step's intent)


class Outbox(msgspec.Struct, frozen=True, array_like=True):
    """A step's actions while they execute (`LoopState.outbox`), and the state before the step."""

    prior: bytes
    actions: tuple[tuple[str, Any], ...]


_outbox_encoder: Final = msgspec.msgpack.Encoder()
_outbox_decoder: Final = msgspec.msgpack.Decoder(Outbox)


def encode_actions(actions: Sequence[Action]) -> tuple[tuple[str, Any], ...]:
    """Actions as tagged plain data (`decode_actions` inverts it exactly); `LoopDriver` persists them."""
    out: list[tuple[str, Any]] = []
    for a in actions:
        if isinstance(a, PublishRecord):
            out.append(("record", a.record))
        elif isinstance(a, PublishAlert):
            out.append(("alert", msgspec.to_builtins(a.alert)))
        elif isinstance(a, AppendConfig):
            out.append(("config", msgspec.to_builtins(a)))
        else:
            out.append(("skills", [msgspec.to_builtins(s) for s in a.skills]))
    return tuple(out)


def decode_actions(items: Sequence[tuple[str, Any]]) -> list[Action]:
    """The actions `encode_actions` wrote."""
    out: list[Action] = []
    for tag, body in items:
        if tag == "record":
            out.append(PublishRecord(body))
        elif tag == "alert":
            out.append(PublishAlert(msgspec.convert(body, Alert)))
        elif tag == "config":
            out.append(msgspec.convert(body, AppendConfig))
        elif tag == "skills":
            out.append(UpsertSkills(tuple(msgspec.convert(s, Skill) for s in body)))
        else:
            msg = f"outbox: unknown action tag {tag!r} (expected record, alert, config or skills)"
            raise ValueError(msg)
    return out
