"""The offline brain: `Brain` without a network — Optuna proposes, statistics summarise (no I/O, no key).

Propose.  Each call builds a fresh in-memory Optuna study over the search
space and asks it for `context.k` candidates:

- *Search space*: the tunable parameters (`parameter_specs(incumbent)`)
  restricted to the context's allow-list (`ProposalContext.parameters`; all
  tunables when empty).  Each numeric parameter searches its trust box around
  the incumbent (`agents.critic.TrustRegion.box`: the same step the Critic
  enforces), clipped to its bounds and to the guardrails that bound it
  directly (`max_candidate_cut`, `max_rank_cut`, `max_per_category_ceiling`,
  `max_exploration_rate`, `min_mmr_lambda`, `min_list_size`); cuts search on a
  log scale; a choice searches all its values (if the trust region allows
  choice changes).  Parameters whose box is a single point are left out.
- *Skillhub notes* narrow the box (`parse_skill_note`; the note grammar and
  how a hint narrows a box are in `agents.skill_hints`): a direction or a
  range for one parameter of the note's stage; a note with a confidence below
  `min_skill_confidence` is ignored.
- *Warm start*: the context's `metrics` readings for the configured
  objectives (`Objective`, default maximise "ctr"), taken for the brain's
  `cohort` ("" = overall), the last reading per (arm, metric) winning.  An arm
  is resolved to a config when it is a control name (`control_arms`: the
  incumbent), a `proposal_id` this brain proposed earlier, or registered with
  `register_arm`; other arms are ignored.  Each resolved arm becomes a
  completed trial (`study.add_trial(create_trial(...))`) when its values lie in
  the current search box (a trial outside it cannot share the box's
  distributions; it is counted, not used).
- *Sampler*: TPE (`TPESampler(seed=...)`, multivariate, constant liar so a
  batch spreads out) by default.  When readings hold two or more of the
  configured objectives (multi-objective readings), NSGA-II
  (`NSGAIISampler(seed=..., population_size=...)`) over those objectives;
  past trials are assigned to generations of `population_size` in reading
  order, so a warm start of at least one population breeds from the past.
  `sampler="tpe"` / `"nsga2"` forces one.
- *Diagnostic candidates* come first (`agents.diagnostics`, rules in
  `DiagnosticRules`, at most `max_candidates` per call, default 1): from the
  incumbent's diagnostic readings (control arms, the brain's cohort; finite
  values, the last one wins), e.g. near_duplicate_share >= 0.10 lowers
  `re_rank.near_duplicate_threshold` (and, if enabled, `mmr_lambda`) by one
  trust step.  Each is trimmed to `max_changes`, vetted like a sampled
  candidate, and not proposed when it repeats a config an arm served (read or
  registered) or one this brain proposed since the last news
  (`last_diagnostics` says what the rules did).
- *Ascent candidates* next (`agents.ascent`, `agents.ascent_candidates`;
  `AscentSettings.candidates` per call, default 2): a Bayesian linear model of
  the primary objective's relative lift per trust step, fitted on every past
  treatment arm whose read (with its interval) and whose control's read the
  context holds and whose configs this brain can resolve; Skillhub directions
  set its prior mean.  The greedy candidate steps along the posterior mean
  (once evidence exists), Thompson draws explore; each moves at most
  `max_changes` parameters one trust step (half a step if a full one breaks the
  Critic's diversity floor).  `last_ascent` says what it did.
- The sampler fills the rest of `context.k`; readings that are not
  objectives never enter the study.
- *Each ask* becomes a candidate: floats rounded to 4 decimals (then clipped
  to the box), at most `context.max_changes` changes (the largest moves in
  trust steps are kept, the rest reset to the incumbent), vetted with
  `vet_proposal` (allow-list, guardrails, cross-field rules), and dropped if
  it repeats the incumbent, an earlier candidate, a tried config, or lies
  within `rules.near_duplicate_distance` of the incumbent or an earlier
  candidate.  Up to `attempts_per_candidate` asks per wanted candidate.
- *Text*: per change, a hypothesis from the move and the past-trial slope of
  the primary objective in that parameter, and a rationale naming the
  sampler, the box, the warm start and the Skillhub note used.

Determinism: the sampler seed of call i is derived from (`seed`, i), so two
brains with the same seed given the same sequence of contexts propose the
same candidates, and asking again without news does not repeat itself.
News is the first reading of an arm not seen before; a proposal no arm
served (refused by the Critic, cut by the power gate) may come back after
news, since the reason it was not run may have changed.  A config an arm
served is never proposed again.

Critique returns no verdicts (the Critic's hard rules do the pruning);
summarise builds an `InsightText` from the context's figures (each effect
with its interval: raised / lowered / not resolved).  Optuna's logging is
set to WARNING; storage is in memory only.

This module keeps `OfflineBrain` and `Objective`.  The Skillhub-note parsing
(`SkillHint`, `parse_skill_note`, `Move`) lives in `agents.skill_hints` and
the Optuna search box (`_Dimension`, `_dimension`, `_contains`,
`_param_value`, `_rounded`, `_values`, `_freeze`) in `agents.offline_space`;
the public names are re-exported from here (`__all__`).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Final, Literal, TypeAlias

import numpy as np
import optuna
from optuna.distributions import CategoricalDistribution
from optuna.trial import TrialState

from agents.ascent import AscentSettings
from agents.ascent_candidates import AscentInputs, ascent_candidates, skill_prior
from agents.brain import (
    MAX_HYPOTHESIS_CHARS,
    MAX_RATIONALE_CHARS,
    MAX_TITLE_CHARS,
    CallKind,
    CallOutcome,
    CallRecord,
    CritiqueContext,
    CritiqueVerdict,
    Dropped,
    InsightContext,
    InsightText,
    ParamChange,
    ParamSpec,
    ParamValue,
    Proposal,
    ProposalContext,
    SkillNote,
    Usage,
    clip_text,
    parameter_specs,
    proposal_id_for,
    vet_in_context,
)
from agents.critic import CriticRules, candidate_distance, trust_coordinate
from agents.diagnostics import (
    DiagnosticMove,
    DiagnosticRules,
    diagnostic_moves,
    diagnostic_proposals,
    incumbent_diagnostics,
)
from agents.offline_memory import BrainMemory
from agents.offline_space import _contains, _Dimension, _dimension, _freeze, _param_value, _rounded, _values
from agents.offline_text import (
    Direction,
    Objective,
    _Evidence,
    _fmt,
    _move_text,
    _Trial,
    hypothesis_text,
    insight_summary,
    rationale_text,
)
from agents.online_policy import OnlinePolicy
from agents.skill_hints import Move, SkillHint, parse_skill_note
from schemas.config import CascadeConfig
from schemas.errors import SchemaError

__all__ = [
    "Direction",
    "Move",
    "Objective",
    "OfflineBrain",
    "SamplerChoice",
    "SkillHint",
    "offline_brain_for",
    "parse_skill_note",
]

SamplerChoice: TypeAlias = Literal["auto", "tpe", "nsga2"]

_RECORDS_KEPT: Final = 256


@dataclass(slots=True)
class _Call:
    kind: CallKind
    started: float = field(default_factory=time.monotonic)
    dropped: list[Dropped] = field(default_factory=list)
    error: str = ""


class OfflineBrain:
    """`Brain` with Optuna proposals and statistical summaries (see the module docstring).

    `rules` supplies the trust region and the near-duplicate distance (pass the
    Critic's, so proposals are built to pass it).  `objectives[0]` is the
    primary objective the hypotheses speak of.
    """

    def __init__(
        self,
        *,
        seed: int = 0,
        objectives: Sequence[Objective] = (Objective("ctr"),),
        rules: CriticRules | None = None,
        sampler: SamplerChoice = "auto",
        n_startup_trials: int = 6,
        population_size: int = 8,
        cohort: str = "",
        min_skill_confidence: float = 0.2,
        control_arms: Sequence[str] = ("", "control", "incumbent"),
        memory: int = 4_096,
        attempts_per_candidate: int = 6,
        diagnostics: DiagnosticRules | None = None,
        ascent: AscentSettings | None = None,
    ) -> None:
        if not objectives or len({o.name for o in objectives}) != len(objectives):
            msg = "objectives: at least one, with distinct names"
            raise ValueError(msg)
        if sampler not in ("auto", "tpe", "nsga2"):
            msg = f"sampler: 'auto', 'tpe' or 'nsga2', got {sampler!r}"
            raise ValueError(msg)
        if n_startup_trials < 1 or population_size < 2 or memory < 1 or attempts_per_candidate < 1:
            msg = "n_startup_trials >= 1, population_size >= 2, memory >= 1, attempts_per_candidate >= 1"
            raise ValueError(msg)
        if not 0.0 <= min_skill_confidence <= 1.0:
            msg = f"min_skill_confidence: must be in [0, 1], got {min_skill_confidence!r}"
            raise ValueError(msg)
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self._seed = int(seed)
        self._objectives = tuple(objectives)
        self._rules = rules if rules is not None else CriticRules()
        self._sampler_choice: SamplerChoice = sampler
        self._n_startup = n_startup_trials
        self._population = population_size
        self._cohort = cohort
        self._min_confidence = min_skill_confidence
        self._control = frozenset(control_arms)
        self._attempts = attempts_per_candidate
        self._diagnostics = diagnostics if diagnostics is not None else DiagnosticRules()
        self._ascent = ascent if ascent is not None else AscentSettings()
        self._memory = BrainMemory(memory)
        self._calls = 0
        self._usage = Usage()
        self._records: deque[CallRecord] = deque(maxlen=_RECORDS_KEPT)
        self.last_sampler: str = ""
        self.last_diagnostics: tuple[str, ...] = ()  # what the diagnostic rules did in the last propose call
        self.last_ascent: tuple[str, ...] = ()  # what the lift model did in the last propose call
        self._lock = asyncio.Lock()  # calls run in a worker thread; one at a time keeps the call index deterministic

    # ---- arms (agents.offline_memory)

    def register_arm(self, arm: str, config: CascadeConfig) -> None:
        """Say which config an arm served, so readings for `arm` warm-start the search (never proposed again)."""
        self._memory.served(arm, config)

    def _config_of(self, arm: str, incumbent: CascadeConfig) -> CascadeConfig | None:
        if arm in self._control:
            return incumbent
        return self._memory.config_of(arm)

    # ---- Brain protocol

    async def propose(self, context: ProposalContext) -> list[Proposal]:
        """Up to `context.k` vetted candidates from an Optuna study (run in a worker thread)."""
        async with self._lock:
            return await asyncio.to_thread(self.propose_sync, context)

    async def critique(self, context: CritiqueContext) -> list[CritiqueVerdict]:
        """No verdicts: the Critic's hard rules prune; this brain has no further objection."""
        call = _Call("critique")
        self._finish(call, accepted=0, outcome="ok")
        return []

    async def summarise(self, context: InsightContext) -> InsightText:
        """A statistical summary of the decided experiment's figures."""
        call = _Call("summarise")
        text = self.summarise_sync(context)
        self._finish(call, accepted=1, outcome="ok")
        return text

    def usage(self) -> Usage:
        """Calls so far (no tokens, no cost)."""
        return self._usage

    def last_call(self) -> CallRecord | None:
        """The record of the most recent call."""
        return self._records[-1] if self._records else None

    # ---- propose

    def propose_sync(self, context: ProposalContext) -> list[Proposal]:
        """`propose` without the event loop (deterministic for a seed and a sequence of calls)."""
        call = _Call("propose")
        self.last_diagnostics = ()
        context = self._memory.recall(context)
        call_index = self._calls
        self._calls += 1
        specs = {spec.name: spec for spec in parameter_specs(context.incumbent)}
        wanted = [name for name in (context.parameters or tuple(specs)) if name in specs]
        hints = self._hints(context.skills, specs)
        dimensions = {
            name: dim
            for name in wanted
            if (dim := _dimension(specs[name], self._rules, context.guardrails, hints.get(name, ()))) is not None
        }
        if not dimensions:
            call.error = "no parameter of the search space can move within the trust region and guardrails"
            self._finish(call, accepted=0, outcome="failed")
            return []
        evidence = self._evidence(context, dimensions)
        study, sampler_name = self._study(evidence, dimensions, call_index)
        self.last_sampler = sampler_name
        tried = {_freeze(trial.config) for trial in evidence.trials}
        proposals: list[Proposal] = []
        incumbent_values = _values(context.incumbent)
        distributions = {name: dim.distribution for name, dim in dimensions.items()}
        spec_list = tuple(specs.values())
        remembered = tried | self._memory.remembered()
        proposals.extend(self._diagnostic_proposals(context, specs, remembered, spec_list))
        proposals.extend(
            self._ascent_proposals(context, hints, dimensions, remembered, spec_list, proposals, call_index)
        )
        for attempt in range(context.k * self._attempts):
            if len(proposals) >= context.k:
                break
            trial = study.ask(distributions)
            changes = self._changes(trial.params, dimensions, incumbent_values, context, evidence, sampler_name)
            reason = ""
            try:
                effective, config = vet_in_context(context, changes)
            except SchemaError as err:
                reason = f"{err.field}: {err.rule}"
            else:
                reason = self._repeat_reason(config, context.incumbent, proposals, tried, spec_list)
            if reason:
                study.tell(trial, state=TrialState.FAIL)
                call.dropped.append(Dropped(attempt, clip_text(reason, 400)))
                continue
            pid = proposal_id_for(effective)
            title = clip_text(
                f"offline {sampler_name}: " + ", ".join(_move_text(c, specs) for c in effective), MAX_TITLE_CHARS
            )
            proposals.append(Proposal(proposal_id=pid, title=title, changes=effective, config=config))
        for proposal in proposals:
            self._memory.proposed(proposal.proposal_id, proposal.config)
        outcome: CallOutcome = "ok" if proposals else "malformed"
        if proposals and call.dropped:
            outcome = "partial"
        self._finish(call, accepted=len(proposals), outcome=outcome)
        return proposals

    def _diagnostic_proposals(
        self,
        context: ProposalContext,
        specs: Mapping[str, ParamSpec],
        tried: set[bytes],
        spec_list: Sequence[ParamSpec],
    ) -> list[Proposal]:
        """The diagnostic candidates of this call (`agents.diagnostics.diagnostic_proposals`)."""
        rules = self._diagnostics
        readings = incumbent_diagnostics(context.metrics, control_arms=self._control, cohort=self._cohort)
        moves = diagnostic_moves(
            context.incumbent,
            readings,
            rules=rules,
            trust=self._rules.trust,
            guardrails=context.guardrails,
            allowed=context.parameters,
            objective=self._objectives[0].name,
        )

        def repeat(config: CascadeConfig, earlier: Sequence[Proposal]) -> str:
            return self._repeat_reason(config, context.incumbent, earlier, tried, spec_list)

        def title(move: DiagnosticMove, changes: Sequence[ParamChange]) -> str:
            moved = ", ".join(_move_text(c, specs) for c in changes)
            return clip_text(f"offline diagnostic ({move.describe()}): {moved}", MAX_TITLE_CHARS)

        proposals, self.last_diagnostics = diagnostic_proposals(
            context, moves, wanted=min(rules.max_candidates, context.k), repeat_reason=repeat, title=title
        )
        return proposals

    def _ascent_proposals(
        self,
        context: ProposalContext,
        hints: Mapping[str, Sequence[SkillHint]],
        dimensions: Mapping[str, _Dimension],
        tried: set[bytes],
        spec_list: Sequence[ParamSpec],
        earlier: Sequence[Proposal],
        call_index: int,
    ) -> list[Proposal]:
        """The lift model's candidates of this call (`agents.ascent_candidates`), after the diagnostic ones."""
        settings = self._ascent
        wanted = min(settings.candidates, context.k - len(earlier))
        if wanted <= 0:
            self.last_ascent = ()
            return []
        directions = {
            name: [(1 if h.direction == "up" else -1, h.confidence) for h in items if h.direction is not None]
            for name, items in hints.items()
        }

        def repeat(config: CascadeConfig, mine: Sequence[Proposal]) -> str:
            return self._repeat_reason(config, context.incumbent, [*earlier, *mine], tried, spec_list)

        inputs = AscentInputs(
            metric=self._objectives[0].name,
            config_of=lambda arm: self._config_of(arm, context.incumbent),
            prior_mean=skill_prior(directions, settings.prior_sd),
            rng=np.random.default_rng(np.random.SeedSequence([self._seed, call_index, 0xA5C])),
            repeat_reason=repeat,
            cohort=self._cohort,
            # the same box the sampler searches: a Skillhub-narrowed box binds the ascent too
            boxes={
                name: (dim.low, dim.high)
                for name, dim in dimensions.items()
                if not isinstance(dim.distribution, CategoricalDistribution)
            },
            box_notes={
                name: f"box [{_fmt(dim.low)}, {_fmt(dim.high)}] narrowed by the Skillhub: "
                + "; ".join(hint.describe() for hint in dim.hints)
                for name, dim in dimensions.items()
                if dim.hints
            },
        )
        limited = replace(settings, candidates=wanted)
        proposals, self.last_ascent = ascent_candidates(context, self._rules, limited, inputs)
        return proposals

    def _hints(self, skills: Sequence[SkillNote], specs: Mapping[str, ParamSpec]) -> dict[str, tuple[SkillHint, ...]]:
        found: dict[str, list[SkillHint]] = {}
        for note in skills:
            hint = parse_skill_note(note, specs)
            if hint is not None and hint.confidence >= self._min_confidence:
                found.setdefault(hint.parameter, []).append(hint)
        return {name: tuple(items) for name, items in found.items()}

    def _evidence(self, context: ProposalContext, dimensions: Mapping[str, _Dimension]) -> _Evidence:
        names = {o.name for o in self._objectives}
        by_arm: dict[str, dict[str, float]] = {}
        for reading in context.metrics:
            if reading.cohort != self._cohort or reading.name not in names or not math.isfinite(reading.value):
                continue
            by_arm.setdefault(reading.arm, {})[reading.name] = float(reading.value)  # the last reading wins
        unknown = 0
        resolved: list[tuple[str, CascadeConfig, dict[str, float]]] = []
        for arm, values in by_arm.items():
            config = self._config_of(arm, context.incumbent)
            if config is None:
                unknown += 1
                continue
            resolved.append((arm, config, values))
        present = tuple(o for o in self._objectives if any(o.name in values for _, _, values in resolved))
        if self._sampler_choice == "tpe" or not present:
            present = present[:1] or self._objectives[:1]
        trials: list[_Trial] = []
        outside = 0
        for arm, config, values in resolved:
            if not all(o.name in values for o in present):
                continue
            current = _values(config)
            if not all(_contains(dim, current.get(name, dim.spec.current)) for name, dim in dimensions.items()):
                outside += 1
                continue
            trials.append(_Trial(arm, config, tuple(values[o.name] for o in present)))
        return _Evidence(tuple(trials), present, outside, unknown)

    def _study(
        self, evidence: _Evidence, dimensions: Mapping[str, _Dimension], call_index: int
    ) -> tuple[optuna.Study, str]:
        seed = int(np.random.SeedSequence([self._seed, call_index]).generate_state(1)[0])
        directions = [o.direction for o in evidence.objectives]
        use_nsga = self._sampler_choice == "nsga2" or (self._sampler_choice == "auto" and len(directions) > 1)
        sampler: optuna.samplers.BaseSampler
        if use_nsga:
            sampler = optuna.samplers.NSGAIISampler(seed=seed, population_size=self._population)
            name = "nsga2"
        else:
            # Optuna 5 defaults: multivariate TPE for one objective, constant liar on (a batch spreads out).
            sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=self._n_startup, constant_liar=True)
            name = "tpe"
        study = optuna.create_study(directions=directions, sampler=sampler)
        distributions = {name_: dim.distribution for name_, dim in dimensions.items()}
        generation_key = f"{type(sampler).__name__}:generation"
        for index, trial in enumerate(evidence.trials):
            current = _values(trial.config)
            params = {n: _param_value(dim, current.get(n, dim.spec.current)) for n, dim in dimensions.items()}
            attrs: dict[str, Any] = {generation_key: index // self._population} if use_nsga else {}
            study.add_trial(
                optuna.trial.create_trial(
                    params=params, distributions=distributions, values=list(trial.values), system_attrs=attrs
                )
            )
        return study, name

    def _changes(
        self,
        params: Mapping[str, Any],
        dimensions: Mapping[str, _Dimension],
        incumbent: Mapping[str, ParamValue],
        context: ProposalContext,
        evidence: _Evidence,
        sampler_name: str,
    ) -> list[ParamChange]:
        moves: list[tuple[float, str, ParamValue]] = []
        for name, raw in params.items():
            dim = dimensions[name]
            value = _rounded(dim, raw)
            if value == incumbent[name]:
                continue
            moves.append((abs(trust_coordinate(dim.spec, value, self._rules.trust)), name, value))
        moves.sort(key=lambda m: (-m[0], m[1]))
        kept = sorted(moves[: context.max_changes], key=lambda m: list(dimensions).index(m[1]))
        return [
            ParamChange(
                name=name,
                value=value,
                hypothesis=clip_text(self._hypothesis(dimensions[name], value, evidence), MAX_HYPOTHESIS_CHARS),
                rationale=clip_text(self._rationale(dimensions[name], evidence, sampler_name), MAX_RATIONALE_CHARS),
            )
            for _, name, value in kept
        ]

    def _repeat_reason(
        self,
        config: CascadeConfig,
        incumbent: CascadeConfig,
        proposals: Sequence[Proposal],
        tried: set[bytes],
        specs: Sequence[ParamSpec],
    ) -> str:
        limit = self._rules.near_duplicate_distance
        if _freeze(config) in tried:
            return "repeats a config already tried"
        distance = candidate_distance(config, incumbent, specs, self._rules.trust)
        if distance < limit:
            return f"near-duplicate of the incumbent ({distance:.3f} trust steps < {limit:g})"
        for earlier in proposals:
            distance = candidate_distance(config, earlier.config, specs, self._rules.trust)
            if distance < limit:
                return f"near-duplicate of {earlier.proposal_id} ({distance:.3f} trust steps < {limit:g})"
        return ""

    # ---- text (agents.offline_text)

    def _hypothesis(self, dim: _Dimension, value: ParamValue, evidence: _Evidence) -> str:
        return hypothesis_text(dim, value, evidence, self._objectives[0])

    def _rationale(self, dim: _Dimension, evidence: _Evidence, sampler_name: str) -> str:
        return rationale_text(dim, evidence, sampler_name)

    def summarise_sync(self, context: InsightContext) -> InsightText:
        """The statistical summary of `context` (`agents.offline_text.insight_summary`)."""
        return insight_summary(context)

    # ---- accounting

    def _finish(self, call: _Call, *, accepted: int, outcome: CallOutcome) -> None:
        self._records.append(
            CallRecord(
                kind=call.kind,
                outcome=outcome,
                attempts=1,
                accepted=accepted,
                dropped=tuple(call.dropped),
                error=call.error,
                latency_s=time.monotonic() - call.started,
            )
        )
        self._usage = self._usage.plus(Usage(calls=1, failed_calls=int(outcome in ("failed", "malformed")), requests=1))


def offline_brain_for(policy: OnlinePolicy, rules: CriticRules, *, seed: int = 0) -> OfflineBrain:
    """The offline brain of a loop run under `policy`; `agents.runtime.make_brain` and `rectune.simloop` build it.

    Its objective carries the policy's primary metric name (the loop's readings
    are named so) and its guard model uses the policy's conversion margin (off
    when the policy has none).
    """
    return OfflineBrain(**offline_brain_kwargs(policy, rules, seed=seed))


def offline_brain_kwargs(policy: OnlinePolicy, rules: CriticRules, *, seed: int = 0) -> dict[str, Any]:
    """`offline_brain_for`'s constructor arguments, for a subclass built the same way (the tuning bench's ceiling)."""
    margin = policy.guardrails.conversion_margin
    ascent = AscentSettings(guard_metric=None) if margin is None else AscentSettings(guard_margin=margin)
    return {"seed": seed, "rules": rules, "objectives": (Objective(policy.primary.name),), "ascent": ascent}
