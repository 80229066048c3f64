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
approval, or allocate) → `pending_approval` (until `rectune approve`) →
`running` (`OnlineAgent.step` per tick: interim reads, ramps, stops,
promote / rollback / halt) → learn (Insight + Skill, on the terminal step) →
`idle` again after a cool-down.

`LoopDriver` composes the step with the I/O Protocols (`ConfigWriter`,
`DecisionSink`, `StateStore`, `MetricsSource`, the Skillhub's `SkillStore`):
load state, read totals and the serving head, step, execute, save.  The
runtime (`agents.runtime`) gives it Kafka/Redis adapters; the tests give it
fakes.  A restarted loop given the saved `LoopState` continues identically.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal, Protocol, TypeAlias

import msgspec

from agents.actor import ActorAgent
from agents.brain import (
    MAX_TITLE_CHARS,
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
from agents.experiment import Candidate, Decision, ExperimentState
from agents.insight import ALL_COHORTS, ArmChanges, effect_readings, experiment_insights
from agents.online import OnlineAgent, baseline_from_totals
from agents.skillhub import SkillStore
from agents.skills import Skill, changed_skills, search_parameters, search_space, skill_notes, update_skills
from schemas.alerts import Alert
from schemas.config import Allocation, CascadeConfig
from schemas.config_log import ServingState
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


class LoopState(msgspec.Struct, frozen=True, kw_only=True):
    """Everything the loop needs between steps (persisted by the `StateStore` as msgpack bytes).

    `experiment` is `ExperimentState.to_bytes()` of the current experiment;
    `candidates` the proposals being registered or tested (arm changes for
    Insight); `registered_after` the config head before registration (a
    candidate's version is the first later version holding its config);
    `pre_version` the head before the first allocation (what a rollback
    restores); `cooldown_until_ms` when the next proposal round may start.
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
    """A config change to append as the next version (signed by the writer)."""

    kind: Literal["config", "allocation", "rollback"]
    reason: str
    config: CascadeConfig | None = None
    activate: bool = False
    allocation: Allocation | None = None
    restores_version: int | None = None
    proposal_id: str | None = None


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
    `min_baseline_requests` of incumbent traffic before proposing.
    """

    k: int = 3
    max_changes: int = 3
    cooldown_s: float = 60.0
    window_s: float = 60.0
    min_baseline_requests: float = 1.0
    objective: str = "ctr"
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
        if state.phase == "idle":
            state = await self._propose(state, inp, out)
        elif state.phase == "registering":
            state = self._plan(state, inp, out)
        elif state.phase == "pending_approval":
            state = self._approve(state, inp, out)
        elif state.phase == "running":
            state = await self._run(state, inp, out)
        return state, out

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
        out = []
        for arm_id, totals in sorted(inp.totals.items()):
            ctr = totals.ratio("clicks", "impressions")
            if ctr == ctr:  # not NaN
                out.append(MetricReading(name="ctr", value=ctr, arm=arm_id))
        return tuple(out[:16])

    async def _propose(self, state: LoopState, inp: LoopInput, out: list[Action]) -> LoopState:
        s = self.settings
        if inp.now_ms < state.cooldown_until_ms or not self._baseline_arms(inp):
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
        out.append(
            self._record(
                inp,
                "proposal",
                exp_tag,
                {
                    "proposals": [
                        {"proposal_id": p.proposal_id, "title": p.title, "changes": p.changes} for p in result.proposals
                    ],
                    "dropped": [{"index": d.index, "reason": d.reason} for d in result.dropped],
                    "usage": result.usage,
                },
                state,
            )
        )
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
        return msgspec.structs.replace(
            state,
            phase="idle",
            experiment=None,
            candidates=(),
            cooldown_until_ms=inp.now_ms + int(self.settings.cooldown_s * 1000),
        )

    def _baseline_arms(self, inp: LoopInput) -> list[ArmTotals]:
        arms = [t for a, t in inp.totals.items() if not _TREATMENT_ARM.search(a)]
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
        baseline_arms = self._baseline_arms(inp)
        if not baseline_arms:
            return state
        seconds = max(t.windows for t in baseline_arms) * self.settings.window_s
        traffic, baseline = baseline_from_totals(baseline_arms, self.online.policy.primary, seconds)
        candidates = [
            Candidate(proposal_id=p.proposal_id, config_version=versions[p.proposal_id], title=p.title)
            for p in state.candidates
        ]
        exp, decisions = self.online.plan(candidates, state.control_version, traffic, baseline, inp.now_ms)
        state = msgspec.structs.replace(state, pre_version=inp.serving.version)
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
        if exp.experiment_id not in inp.approved:
            return state
        exp, decisions = self.online.approve(exp, inp.now_ms)
        self._emit(state, inp, decisions, out)
        return msgspec.structs.replace(state, experiment=exp.to_bytes(), phase="running")

    # ---- running

    async def _run(self, state: LoopState, inp: LoopInput, out: list[Action]) -> LoopState:
        exp = state.experiment_state()
        if exp is None:
            return self._cool(state, inp)
        arms = {a: inp.totals[a] for a in exp.plan.arm_ids if a in inp.totals}
        exp, decisions = self.online.step(exp, arms, None, inp.now_ms)
        self._emit(state, inp, decisions, out)
        state = msgspec.structs.replace(state, experiment=exp.to_bytes())
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
    """One tick of I/O around `AgentLoop.step`: load → read → step → execute → save."""

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
        """Run one step and execute its actions; the state is saved only after every action succeeded."""
        raw = await self.store.load()
        state = LoopState.from_bytes(raw) if raw else self.loop.initial_state()
        inp = LoopInput(
            totals=await self.metrics.totals(),
            serving=await self.config.head(),
            now_ms=now_ms,
            skills=await self.skills.load_all(),
            approved=await self.approvals.approved() if self.approvals is not None else frozenset(),
            epoch=epoch,
        )
        new_state, actions = await self.loop.step(state, inp)
        for action in actions:
            if isinstance(action, PublishRecord):
                await self.sink.publish(action)
            elif isinstance(action, PublishAlert):
                await self.sink.alert(action.alert)
            elif isinstance(action, AppendConfig):
                await self.config.append(action, epoch)
            else:
                await self.skills.upsert_many(action.skills)
        if new_state != state:
            await self.store.save(new_state.to_bytes())
        return new_state, actions
