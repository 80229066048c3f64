"""Turn the lift model's directions into vetted candidates for the offline brain (pure, no I/O).

`ascent_candidates` fits `agents.ascent.fit_effects` on the past arms the
context's readings describe, then builds the greedy candidate (posterior
mean; only once some evidence exists) and Thompson candidates (posterior
draws) until `AscentSettings.candidates` are found.  Each direction becomes
one trust step (`agents.diagnostics.step_toward`), clipped to the brain's
search box (Skillhub ranges included; a range that excludes the incumbent's
value forces a move into it).  A candidate that breaks the Critic's diversity
floor first gets a companion `list_size` move that restores it, else is
retried at half a step, then dropped — the brain builds candidates the Critic
will keep instead of wasting an arm slot.  Steps the guard model (conversion
reads) shows to be costly are never taken.  Each candidate is vetted with
`vet_in_context` and the brain's repeat check.  Called by
`agents.offline_candidates.ascent_round` (for `OfflineBrain.propose_sync`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from agents.ascent import (
    AscentSettings,
    Direction,
    EffectModel,
    arm_effects,
    ascent_moves,
    fit_effects,
    harmful_directions,
)
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
    parameter_specs,
    proposal_id_for,
    vet_in_context,
)
from agents.critic import CriticRules, diversity_problems
from agents.diagnostics import step_toward
from schemas.config import CascadeConfig
from schemas.errors import SchemaError

_LIST_SIZE = "re_rank.list_size"


@dataclass(frozen=True, slots=True)
class AscentInputs:
    """What the brain hands in: objective metric, arm → config resolver, Skillhub prior, draws and repeat check."""

    metric: str
    config_of: Callable[[str], CascadeConfig | None]
    prior_mean: Mapping[str, float]
    rng: np.random.Generator
    repeat_reason: Callable[[CascadeConfig, Sequence[Proposal]], str]
    cohort: str = ""
    #: the brain's search box per parameter (trust region ∩ guardrails ∩ Skillhub); None = the trust box
    boxes: Mapping[str, tuple[float, float]] | None = None
    #: per parameter, why its box is narrower (quoted in rationales)
    box_notes: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class _Frame:
    """One propose call's fixed inputs: the movable specs, the Critic's rules, the context, model and brain inputs."""

    specs: Mapping[str, ParamSpec]
    rules: CriticRules
    context: ProposalContext
    model: EffectModel
    inputs: AscentInputs


def _in_box(spec: ParamSpec, value: ParamValue, box: tuple[float, float] | None) -> ParamValue | None:
    """`value` clipped into `box` (rounded towards the box), None when that leaves it where it is."""
    if box is None or isinstance(value, str):
        return value
    low, high = box
    if spec.kind == "int":
        low, high = math.ceil(low - 1e-9), math.floor(high + 1e-9)
    clipped = min(max(float(value), low), high)
    out: ParamValue = round(clipped) if spec.kind == "int" else clipped
    return None if out == spec.current else out


def _step(
    spec: ParamSpec, rules: CriticRules, context: ProposalContext, inputs: AscentInputs, sign: int, fraction: float
) -> ParamValue | None:
    value = step_toward(spec, rules.trust, context.guardrails, sign, fraction)
    if value is None:
        return None
    box = None if inputs.boxes is None else inputs.boxes.get(spec.name)
    moved = _in_box(spec, value, box)
    if moved is None or isinstance(moved, str) or isinstance(spec.current, str):
        return moved
    return moved if (float(moved) - float(spec.current)) * sign > 0.0 else None


def _forced(specs: Mapping[str, ParamSpec], inputs: AscentInputs) -> list[ParamChange]:
    """Moves into the box for parameters the Skillhub narrowed to a range that excludes their value."""
    out: list[ParamChange] = []
    for name, (low, high) in (inputs.boxes or {}).items():
        spec = specs.get(name)
        if spec is None or isinstance(spec.current, str) or low <= float(spec.current) <= high:
            continue
        value = _in_box(spec, spec.current, (low, high))
        if value is not None:
            out.append(
                ParamChange(
                    name=name,
                    value=value,
                    hypothesis=clip_text(
                        f"move {name} {spec.current} -> {value}: into the Skillhub's range", MAX_HYPOTHESIS_CHARS
                    ),
                    rationale=clip_text(
                        inputs.box_notes.get(name, "the search box excludes the incumbent's value"), MAX_RATIONALE_CHARS
                    ),
                )
            )
    return out


def _changes(
    frame: _Frame, directions: Sequence[Direction], fraction: float, how: str, drawn: bool
) -> list[ParamChange]:
    specs, rules, context, model, inputs = frame.specs, frame.rules, frame.context, frame.model, frame.inputs
    out = _forced(specs, inputs)
    forced = {c.name for c in out}
    for direction in directions:
        if len(out) >= context.max_changes:
            break
        spec = specs[direction.name]
        value = None if spec.name in forced else _step(spec, rules, context, inputs, direction.sign, fraction)
        if value is None:
            continue
        verb = "raise" if direction.sign > 0 else "lower"
        mean, sd = model.effect(direction.name), model.sd(direction.name)
        why = (
            f"{how}; effect per trust step {100 * mean:+.2g}% (posterior sd {100 * sd:.2g}%) "
            f"from {model.arms} past arm(s)"
        )
        if spec.name in inputs.box_notes:
            why += f"; {inputs.box_notes[spec.name]}"
        out.append(
            ParamChange(
                name=spec.name,
                value=value,
                hypothesis=clip_text(
                    f"{verb} {spec.name} {spec.current} -> {value}: the lift model expects "
                    f"{100 * direction.sign * mean * fraction + 0.0:+.2g}% on the objective for this step"
                    + (f" (the posterior draw: {100 * direction.gain * fraction:+.2g}%)" if drawn else ""),
                    MAX_HYPOTHESIS_CHARS,
                ),
                rationale=clip_text(why, MAX_RATIONALE_CHARS),
            )
        )
    return out if len(out) > len(forced) else []


def _floor_companion(
    config: CascadeConfig, specs: Mapping[str, ParamSpec], rules: CriticRules, context: ProposalContext
) -> ParamChange | None:
    """A `re_rank.list_size` raise that restores the diversity floor a raised `max_per_category` broke.

    The floor counts ceil(list_size / max_per_category) categories, so a
    longer list keeps it; only within the list size's trust box (None if out
    of reach, or when the list size may not move).
    """
    spec = specs.get(_LIST_SIZE)
    if spec is None:
        return None
    re_rank = (config.for_surface(context.surface) if context.surface else config).re_rank
    needed = (rules.diversity.min_categories_per_list - 1) * re_rank.max_per_category + 1
    _, high = rules.trust.box(spec)
    if needed <= re_rank.list_size or needed > high:
        return None
    return ParamChange(
        name=_LIST_SIZE,
        value=needed,
        hypothesis=clip_text(
            f"raise {_LIST_SIZE} {spec.current} -> {needed} with max_per_category {re_rank.max_per_category}: "
            "keeps the guaranteed categories per list",
            MAX_HYPOTHESIS_CHARS,
        ),
        rationale=clip_text(
            f"companion move: the Critic's diversity floor needs ceil(list_size / max_per_category) >= "
            f"{rules.diversity.min_categories_per_list}",
            MAX_RATIONALE_CHARS,
        ),
    )


def _with_companion(changes: Sequence[ParamChange], companion: ParamChange, max_changes: int) -> list[ParamChange]:
    """`changes` plus `companion` (replacing a change of the same path, else the last one when full)."""
    kept = [c for c in changes if c.name != companion.name]
    if len(kept) >= max_changes:
        kept = kept[: max_changes - 1]
    return [*kept, companion]


def _vet(
    changes: Sequence[ParamChange], rules: CriticRules, context: ProposalContext
) -> tuple[list[ParamChange], CascadeConfig, list[str]] | str:
    try:
        effective, config = vet_in_context(context, changes)
    except SchemaError as err:
        return f"{err.field}: {err.rule}"
    return list(effective), config, diversity_problems(config, context.incumbent, rules.diversity, context.surface)


def _build(
    frame: _Frame, directions: Sequence[Direction], how: str, drawn: bool
) -> tuple[list[ParamChange], CascadeConfig] | str:
    """Vetted changes and config for `directions` (a full step, else half a step), or why there are none."""
    reason = "no parameter can step that way"
    for fraction in (1.0, 0.5):
        changes = _changes(frame, directions, fraction, how, drawn)
        if not changes:
            continue
        vetted = _vet(changes, frame.rules, frame.context)
        if isinstance(vetted, str):
            reason = vetted
            continue
        effective, config, problems = vetted
        companion = _floor_companion(config, frame.specs, frame.rules, frame.context) if problems else None
        if companion is not None:
            grown = _with_companion(effective, companion, frame.context.max_changes)
            repaired = _vet(grown, frame.rules, frame.context)
            if not isinstance(repaired, str):
                effective, config, problems = repaired
        if problems:
            reason = problems[0]
            continue
        return effective, config
    return reason


def ascent_candidates(
    context: ProposalContext, rules: CriticRules, settings: AscentSettings, inputs: AscentInputs
) -> tuple[list[Proposal], tuple[str, ...]]:
    """Up to `settings.candidates` proposals along the lift model's directions, and a note per attempt."""
    wanted = min(settings.candidates, context.k)
    if wanted <= 0:
        return [], ()
    allowed = frozenset(context.parameters)
    specs = {s.name: s for s in parameter_specs(context.incumbent) if not allowed or s.name in allowed}
    if inputs.boxes is not None:
        specs = {name: spec for name, spec in specs.items() if name in inputs.boxes or spec.kind == "choice"}
    movable = {
        name: frozenset(sign for sign in (-1, 1) if _step(spec, rules, context, inputs, sign, 1.0) is not None)
        for name, spec in specs.items()
    }
    names = tuple(name for name, signs in movable.items() if signs)
    if not names:
        return [], ("ascent: no parameter can move",)
    effects = arm_effects(
        context.metrics,
        metric=inputs.metric,
        config_of=inputs.config_of,
        trust=rules.trust,
        cohort=inputs.cohort,
        origin=context.incumbent,
    )
    model = fit_effects(
        effects, names, prior_sd=settings.prior_sd, prior_mean=inputs.prior_mean, drift_sd=settings.drift_sd
    )
    blocked = _guard_blocked(context, rules, settings, inputs, names)
    if blocked:
        movable = {name: frozenset(s for s in signs if (name, s) not in blocked) for name, signs in movable.items()}
    frame = _Frame(specs, rules, context, model, inputs)
    out: list[Proposal] = []
    ranked = sorted(names, key=lambda n: -abs(model.effect(n)))[:4]
    top = ", ".join(f"{n} {100 * model.effect(n):+.2g}% (sd {100 * model.sd(n):.2g})" for n in ranked)
    notes: list[str] = [f"ascent: model from {model.arms} past arm(s) over {len(names)} parameters; largest: {top}"]
    if blocked:
        harm = ", ".join(f"{n} {'up' if s > 0 else 'down'}" for n, s in sorted(blocked))
        notes.append(f"ascent: not proposed, known to cost {settings.guard_metric}: {harm}")
    seen: set[tuple[tuple[str, int], ...]] = set()
    plans: list[tuple[str, np.random.Generator | None]] = []
    if model.arms:
        plans.append(("steepest ascent on the posterior mean", None))
    plans.extend(("Thompson draw from the lift model", inputs.rng) for _ in range(wanted * settings.draws))
    for how, rng in plans:
        if len(out) >= wanted:
            break
        directions = ascent_moves(model, movable, max_changes=context.max_changes, rng=rng, z_min=settings.z_min)
        key = tuple((d.name, d.sign) for d in directions)
        if not directions or key in seen:
            continue
        seen.add(key)
        built = _build(frame, directions, how, drawn=rng is not None)
        if isinstance(built, str):
            notes.append(f"ascent ({how}): refused, {built}")
            continue
        changes, config = built
        reason = inputs.repeat_reason(config, out)
        if reason:
            notes.append(f"ascent ({how}): not proposed, {reason}")
            continue
        pid = proposal_id_for(changes)
        # the posterior mean of the move, not the draw that chose it (a draw from a wide prior overstates), and its
        # posterior sd: the mean is the largest of many noisy step gains, so it reads high (BENCHMARKS.md, session 18)
        gain, sd = model.move([(d.name, float(d.sign)) for d in directions])
        moved = ", ".join(f"{c.name.split('.', 1)[-1]} -> {c.value}" for c in changes)
        title = clip_text(
            f"offline ascent ({100 * gain + 0.0:+.2g}% ± {100 * sd:.2g}% expected): {moved}", MAX_TITLE_CHARS
        )
        out.append(Proposal(proposal_id=pid, title=title, changes=tuple(changes), config=config))
        notes.append(f"ascent ({how}): proposed {pid}")
    return out, tuple(notes)


def _guard_blocked(
    context: ProposalContext, rules: CriticRules, settings: AscentSettings, inputs: AscentInputs, names: Sequence[str]
) -> frozenset[tuple[str, int]]:
    """The steps the guardrail metric's model shows to cost more than half its margin (none without reads)."""
    if settings.guard_metric is None:
        return frozenset()
    metric = settings.guard_metric
    effects = arm_effects(
        context.metrics,
        metric=metric,
        config_of=inputs.config_of,
        trust=rules.trust,
        cohort=inputs.cohort,
        origin=context.incumbent,
    )
    if not effects:
        return frozenset()
    guard = fit_effects(effects, names, prior_sd=settings.prior_sd, drift_sd=settings.drift_sd)
    return harmful_directions(guard, settings.guard_margin)


def skill_prior(directions: Mapping[str, Sequence[tuple[int, float]]], prior_sd: float) -> dict[str, float]:
    """Prior means from Skillhub directions: (sign, confidence) pairs → Σ sign·confidence·`prior_sd`, per path."""
    out: dict[str, float] = {}
    for name, items in directions.items():
        total = sum(sign * confidence * prior_sd for sign, confidence in items if math.isfinite(confidence))
        if total:
            out[name] = total
    return out
