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
  choice changes).  Parameters whose box is a single point are left out
  (`agents.offline_space`).  Skillhub notes with enough confidence narrow the
  box (`agents.offline_study.skill_hints`, grammar in `agents.skill_hints`).
- *Warm start and sampler* (`agents.offline_study`): readings of the
  configured objectives (`Objective`, default maximise "ctr") for arms the
  brain resolves (`control_arms`, its own proposal ids, `register_arm`) become
  completed trials; TPE by default, NSGA-II over multi-objective readings
  (`SamplerChoice`: `sampler="tpe"` / `"nsga2"` forces one).
- *Diagnostic candidates* come first, then the lift model's *ascent
  candidates* (`agents.offline_candidates.diagnostic_candidates` /
  `ascent_round`, over `agents.diagnostics` and `agents.ascent_candidates`);
  `last_diagnostics` and `last_ascent` say what they did.
- The sampler fills the rest of `context.k`; readings that are not
  objectives never enter the study.  Each ask becomes a candidate
  (`agents.offline_candidates.sampled_changes`: rounded, at most
  `context.max_changes` changes, the largest moves kept), vetted with
  `vet_proposal` (allow-list, guardrails, cross-field rules), and dropped if it
  repeats the incumbent, an earlier candidate, a tried config, lies within
  `rules.near_duplicate_distance` of the incumbent or an earlier candidate,
  or is predicted over the Critic's latency budget (`skip_reason`).  Up to
  `attempts_per_candidate` asks per wanted candidate.
- *Text*: per change, a hypothesis from the move and the past-trial slope of
  the primary objective in that parameter, and a rationale naming the
  sampler, the box, the warm start and the Skillhub note used
  (`agents.offline_text`).

Determinism: the sampler seed of call i is derived from (`seed`, i), so two
brains with the same seed given the same sequence of contexts propose the
same candidates, and asking again without news does not repeat itself.
News is the first reading of an arm not seen before; a proposal no arm
served (refused by the Critic, cut by the power gate) may come back after
news, since the reason it was not run may have changed.  A config an arm
served is never proposed again (`agents.offline_memory`).

Critique returns no verdicts (the Critic's hard rules do the pruning);
summarise builds an `InsightText` from the context's figures (each effect
with its interval: raised / lowered / not resolved).  Optuna's logging is
set to WARNING; storage is in memory only.

This module keeps `OfflineBrain` (settings, memory, call accounting and the
propose loop) and its factories `offline_brain_for` / `offline_brain_kwargs`.
The Skillhub-note parsing (`SkillHint`, `parse_skill_note`, `Move`) lives in
`agents.skill_hints`, the search box in `agents.offline_space`, the study
(`SamplerChoice`, hints, warm start, sampler) in `agents.offline_study`, the
candidates in `agents.offline_candidates`, `Objective` and the texts in
`agents.offline_text`; the public names are re-exported from here (`__all__`).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import optuna
from optuna.trial import TrialState

from agents.ascent import AscentSettings
from agents.brain import (
    MAX_TITLE_CHARS,
    CallKind,
    CallOutcome,
    CallRecord,
    CritiqueContext,
    CritiqueVerdict,
    Dropped,
    InsightContext,
    InsightText,
    Proposal,
    ProposalContext,
    Usage,
    clip_text,
    parameter_specs,
    proposal_id_for,
    vet_in_context,
)
from agents.critic import CriticRules
from agents.diagnostics import DiagnosticRules
from agents.offline_candidates import ascent_round, diagnostic_candidates, sampled_changes, skip_reason
from agents.offline_memory import BrainMemory
from agents.offline_space import _dimension, _freeze, _values
from agents.offline_study import SamplerChoice, build_study, skill_hints, warm_start_evidence
from agents.offline_text import Direction, Objective, _move_text, insight_summary
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
    "offline_brain_kwargs",
    "parse_skill_note",
]

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
        hints = skill_hints(context.skills, specs, self._min_confidence)
        dimensions = {
            name: dim
            for name in wanted
            if (dim := _dimension(specs[name], self._rules, context.guardrails, hints.get(name, ()))) is not None
        }
        if not dimensions:
            call.error = "no parameter of the search space can move within the trust region and guardrails"
            self._finish(call, accepted=0, outcome="failed")
            return []

        def config_of(arm: str) -> CascadeConfig | None:
            return self._config_of(arm, context.incumbent)

        evidence = warm_start_evidence(
            context,
            dimensions,
            objectives=self._objectives,
            cohort=self._cohort,
            sampler_choice=self._sampler_choice,
            config_of=config_of,
        )
        study, sampler_name = build_study(
            evidence,
            dimensions,
            seed=self._seed,
            call_index=call_index,
            sampler_choice=self._sampler_choice,
            n_startup_trials=self._n_startup,
            population_size=self._population,
            incumbent=_values(context.incumbent),
        )
        self.last_sampler = sampler_name
        tried = {_freeze(trial.config) for trial in evidence.trials}
        proposals: list[Proposal] = []
        incumbent_values = _values(context.incumbent)
        distributions = {name: dim.distribution for name, dim in dimensions.items()}
        spec_list = tuple(specs.values())
        remembered = tried | self._memory.remembered()
        primary = self._objectives[0]
        diagnostic, self.last_diagnostics = diagnostic_candidates(
            context,
            specs,
            remembered,
            spec_list,
            rules=self._rules,
            diagnostics=self._diagnostics,
            control_arms=self._control,
            cohort=self._cohort,
            objective=primary.name,
        )
        proposals.extend(diagnostic)
        ascent, self.last_ascent = ascent_round(
            context,
            hints,
            dimensions,
            remembered,
            spec_list,
            proposals,
            rules=self._rules,
            settings=self._ascent,
            objective=primary.name,
            config_of=config_of,
            seed=self._seed,
            call_index=call_index,
            cohort=self._cohort,
        )
        proposals.extend(ascent)
        for attempt in range(context.k * self._attempts):
            if len(proposals) >= context.k:
                break
            trial = study.ask(distributions)
            changes = sampled_changes(
                trial.params,
                dimensions,
                incumbent_values,
                max_changes=context.max_changes,
                evidence=evidence,
                sampler_name=sampler_name,
                trust=self._rules.trust,
                objective=primary,
            )
            reason = ""
            try:
                effective, config = vet_in_context(context, changes)
            except SchemaError as err:
                reason = f"{err.field}: {err.rule}"
            else:
                reason = skip_reason(config, context, proposals, tried, spec_list, self._rules)
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

    # ---- text (agents.offline_text)

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
