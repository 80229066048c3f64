"""The offline brain's candidates of one propose call: diagnostic, ascent and sampled, and the repeat check.

What lives here, in the order `agents.offline_brain.OfflineBrain.propose_sync`
uses it (the brain passes its settings in; nothing here keeps state):

- `diagnostic_candidates` (`agents.diagnostics`, rules in `DiagnosticRules`,
  at most `max_candidates` per call, default 1): from the incumbent's
  diagnostic readings (control arms, the brain's cohort; finite values, the
  last one wins), e.g. near_duplicate_share >= 0.10 lowers
  `re_rank.near_duplicate_threshold` (and, if enabled, `mmr_lambda`) by one
  trust step.  Each is trimmed to `max_changes`, vetted like a sampled
  candidate, and not proposed when it repeats a config an arm served (read or
  registered) or one the brain proposed since the last news.  Returns the
  notes the brain keeps as `last_diagnostics`.
- `ascent_round` (`agents.ascent`, `agents.ascent_candidates`;
  `AscentSettings.candidates` per call, default 2): a Bayesian linear model of
  the primary objective's relative lift per trust step, fitted on every past
  treatment arm whose read (with its interval) and whose control's read the
  context holds and whose configs the brain can resolve; Skillhub directions
  set its prior mean, and it moves within the sampler's (Skillhub-narrowed)
  box.  The greedy candidate steps along the posterior mean (once evidence
  exists), Thompson draws explore (seeded from the brain seed and the call
  index); each moves at most `max_changes` parameters one trust step (half a
  step if a full one breaks the Critic's diversity floor).  Returns the notes
  the brain keeps as `last_ascent`.
- `sampled_changes`: one Optuna ask as changes — floats rounded to 4 decimals
  (then clipped to the box), at most `max_changes` changes (the largest moves
  in trust steps are kept, the rest reset to the incumbent), each with a
  hypothesis and a rationale (`agents.offline_text`).
- `skip_reason`: why a vetted config must not be proposed — it repeats a
  tried config, lies within `rules.near_duplicate_distance` (in trust
  steps) of the incumbent or an earlier candidate, or the Critic's latency
  rule as the context carries it (`ProposalContext.latency`) would reject
  it; "" when it may.

Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any

import numpy as np
from optuna.distributions import CategoricalDistribution

from agents.ascent import AscentSettings
from agents.ascent_candidates import AscentInputs, ascent_candidates, skill_prior
from agents.brain import (
    MAX_HYPOTHESIS_CHARS,
    MAX_RATIONALE_CHARS,
    MAX_TITLE_CHARS,
    ParamChange,
    ParamSpec,
    ParamValue,
    Proposal,
    ProposalContext,
    clip_text,
)
from agents.critic import CriticRules, TrustRegion, candidate_distance, trust_coordinate, within_limit
from agents.diagnostics import (
    DiagnosticMove,
    DiagnosticRules,
    diagnostic_moves,
    diagnostic_proposals,
    incumbent_diagnostics,
)
from agents.offline_space import _Dimension, _freeze, _rounded
from agents.offline_text import Objective, _Evidence, _fmt, _move_text, hypothesis_text, rationale_text
from agents.skill_hints import SkillHint
from schemas.config import CascadeConfig


def skip_reason(
    config: CascadeConfig,
    context: ProposalContext,
    proposals: Sequence[Proposal],
    tried: set[bytes],
    specs: Sequence[ParamSpec],
    rules: CriticRules,
) -> str:
    """Why `config` must not be proposed (a tried config, a near-duplicate, over the latency budget), "" when it may.

    Every offline candidate (diagnostic, ascent, sampled) passes through it.
    """
    incumbent = context.incumbent
    limit = rules.near_duplicate_distance
    if _freeze(config) in tried:
        return "repeats a config already tried"
    distance = candidate_distance(config, incumbent, specs, rules.trust)
    if distance < limit:
        return f"near-duplicate of the incumbent ({distance:.3f} trust steps < {limit:g})"
    for earlier in proposals:
        distance = candidate_distance(config, earlier.config, specs, rules.trust)
        if distance < limit:
            return f"near-duplicate of {earlier.proposal_id} ({distance:.3f} trust steps < {limit:g})"
    latency = context.latency
    if latency is not None and not within_limit(latency, config, incumbent, context.surface):
        return f"predicted p99 over the latency budget of {latency.budget_ms:g} ms (the Critic would reject it)"
    return ""


def diagnostic_candidates(
    context: ProposalContext,
    specs: Mapping[str, ParamSpec],
    tried: set[bytes],
    spec_list: Sequence[ParamSpec],
    *,
    rules: CriticRules,
    diagnostics: DiagnosticRules,
    control_arms: frozenset[str],
    cohort: str,
    objective: str,
) -> tuple[list[Proposal], tuple[str, ...]]:
    """The diagnostic candidates of this call (`agents.diagnostics.diagnostic_proposals`) and a note per move."""
    readings = incumbent_diagnostics(context.metrics, control_arms=control_arms, cohort=cohort)
    moves = diagnostic_moves(
        context.incumbent,
        readings,
        rules=diagnostics,
        trust=rules.trust,
        guardrails=context.guardrails,
        allowed=context.parameters,
        objective=objective,
    )

    def repeat(config: CascadeConfig, earlier: Sequence[Proposal]) -> str:
        return skip_reason(config, context, earlier, tried, spec_list, rules)

    def title(move: DiagnosticMove, changes: Sequence[ParamChange]) -> str:
        moved = ", ".join(_move_text(c, specs) for c in changes)
        return clip_text(f"offline diagnostic ({move.describe()}): {moved}", MAX_TITLE_CHARS)

    return diagnostic_proposals(
        context, moves, wanted=min(diagnostics.max_candidates, context.k), repeat_reason=repeat, title=title
    )


def ascent_round(
    context: ProposalContext,
    hints: Mapping[str, Sequence[SkillHint]],
    dimensions: Mapping[str, _Dimension],
    tried: set[bytes],
    spec_list: Sequence[ParamSpec],
    earlier: Sequence[Proposal],
    *,
    rules: CriticRules,
    settings: AscentSettings,
    objective: str,
    config_of: Callable[[str], CascadeConfig | None],
    seed: int,
    call_index: int,
    cohort: str,
) -> tuple[list[Proposal], tuple[str, ...]]:
    """The lift model's candidates of this call (`agents.ascent_candidates`), after the diagnostic ones."""
    wanted = min(settings.candidates, context.k - len(earlier))
    if wanted <= 0:
        return [], ()
    directions = {
        name: [(1 if h.direction == "up" else -1, h.confidence) for h in items if h.direction is not None]
        for name, items in hints.items()
    }

    def repeat(config: CascadeConfig, mine: Sequence[Proposal]) -> str:
        return skip_reason(config, context, [*earlier, *mine], tried, spec_list, rules)

    inputs = AscentInputs(
        metric=objective,
        config_of=config_of,
        prior_mean=skill_prior(directions, settings.prior_sd),
        rng=np.random.default_rng(np.random.SeedSequence([seed, call_index, 0xA5C])),
        repeat_reason=repeat,
        cohort=cohort,
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
    return ascent_candidates(context, rules, limited, inputs)


def sampled_changes(
    params: Mapping[str, Any],
    dimensions: Mapping[str, _Dimension],
    incumbent: Mapping[str, ParamValue],
    *,
    max_changes: int,
    evidence: _Evidence,
    sampler_name: str,
    trust: TrustRegion,
    objective: Objective,
) -> list[ParamChange]:
    """One ask's params as changes: the `max_changes` largest moves in trust steps, with their texts."""
    moves: list[tuple[float, str, ParamValue]] = []
    for name, raw in params.items():
        dim = dimensions[name]
        value = _rounded(dim, raw)
        if value == incumbent[name]:
            continue
        moves.append((abs(trust_coordinate(dim.spec, value, trust)), name, value))
    moves.sort(key=lambda m: (-m[0], m[1]))
    kept = sorted(moves[:max_changes], key=lambda m: list(dimensions).index(m[1]))
    return [
        ParamChange(
            name=name,
            value=value,
            hypothesis=clip_text(hypothesis_text(dimensions[name], value, evidence, objective), MAX_HYPOTHESIS_CHARS),
            rationale=clip_text(rationale_text(dimensions[name], evidence, sampler_name), MAX_RATIONALE_CHARS),
        )
        for _, name, value in kept
    ]
