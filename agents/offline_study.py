"""The offline brain's Optuna study of one propose call: Skillhub hints, warm-start evidence and the sampler.

What lives here: `SamplerChoice` (re-exported by `agents.offline_brain`),
`skill_hints` (the Skillhub notes that narrow the search box),
`warm_start_evidence` (past readings resolved to trials) and `build_study`
(the seeded sampler and the study warm-started with those trials).

- *Skillhub notes* narrow the box (`parse_skill_note`; the note grammar and
  how a hint narrows a box are in `agents.skill_hints`, the box itself in
  `agents.offline_space`): a direction or a range for one parameter of the
  note's stage; a note with a confidence below `min_confidence` is ignored.
- *Warm start*: on a cold start (no past trial in the box) the Skillhub's
  notes seed the study (`skill_seeds`: the incumbent moved to the narrowed
  box's edge in each note's direction, enqueued); otherwise the context's `metrics` readings for the configured
  objectives (`Objective`, default maximise "ctr"), taken for the brain's
  `cohort` ("" = overall), the last reading per (arm, metric) winning.  An arm
  is resolved to a config by the brain's `config_of` (a control name: the
  incumbent; a `proposal_id` the brain proposed earlier, or an arm registered
  with `register_arm`); other arms are ignored.  Each resolved arm becomes a
  completed trial (`study.add_trial(create_trial(...))`) when its values lie in
  the current search box (a trial outside it cannot share the box's
  distributions; it is counted, not used).
- *Sampler*: TPE (`TPESampler(seed=...)`, multivariate, constant liar so a
  batch spreads out) by default.  When readings hold two or more of the
  configured objectives (multi-objective readings), NSGA-II
  (`NSGAIISampler(seed=..., population_size=...)`) over those objectives;
  past trials are assigned to generations of `population_size` in reading
  order, so a warm start of at least one population breeds from the past.
  `sampler="tpe"` / `"nsga2"` forces one.  The seed of call i is derived from
  (brain seed, i), so the same seed and sequence of contexts give the same asks.

Who calls it: `agents.offline_brain.OfflineBrain.propose_sync`, once per call,
before it asks the study for candidates.  Pure: no I/O, storage in memory only.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal, TypeAlias

import numpy as np
import optuna

from agents.brain import ParamSpec, ProposalContext, SkillNote
from agents.offline_space import _contains, _Dimension, _param_value, _values
from agents.offline_text import Objective, _Evidence, _Trial
from agents.skill_hints import SkillHint, parse_skill_note
from schemas.config import CascadeConfig

SamplerChoice: TypeAlias = Literal["auto", "tpe", "nsga2"]


def skill_hints(
    skills: Sequence[SkillNote], specs: Mapping[str, ParamSpec], min_confidence: float
) -> dict[str, tuple[SkillHint, ...]]:
    """The parsed Skillhub notes per parameter, those below `min_confidence` left out."""
    found: dict[str, list[SkillHint]] = {}
    for note in skills:
        hint = parse_skill_note(note, specs)
        if hint is not None and hint.confidence >= min_confidence:
            found.setdefault(hint.parameter, []).append(hint)
    return {name: tuple(items) for name, items in found.items()}


def warm_start_evidence(
    context: ProposalContext,
    dimensions: Mapping[str, _Dimension],
    *,
    objectives: Sequence[Objective],
    cohort: str,
    sampler_choice: SamplerChoice,
    config_of: Callable[[str], CascadeConfig | None],
) -> _Evidence:
    """The past trials of the context's readings that lie in the search box (see the module docstring)."""
    names = {o.name for o in objectives}
    by_arm: dict[str, dict[str, float]] = {}
    for reading in context.metrics:
        if reading.cohort != cohort or reading.name not in names or not math.isfinite(reading.value):
            continue
        by_arm.setdefault(reading.arm, {})[reading.name] = float(reading.value)  # the last reading wins
    unknown = 0
    resolved: list[tuple[str, CascadeConfig, dict[str, float]]] = []
    for arm, values in by_arm.items():
        config = config_of(arm)
        if config is None:
            unknown += 1
            continue
        resolved.append((arm, config, values))
    present = tuple(o for o in objectives if any(o.name in values for _, _, values in resolved))
    if sampler_choice == "tpe" or not present:
        present = present[:1] or tuple(objectives[:1])
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


def build_study(
    evidence: _Evidence,
    dimensions: Mapping[str, _Dimension],
    *,
    seed: int,
    call_index: int,
    sampler_choice: SamplerChoice,
    n_startup_trials: int,
    population_size: int,
    incumbent: Mapping[str, Any] | None = None,
) -> tuple[optuna.Study, str]:
    """The seeded study of call `call_index`, warm-started with `evidence`, and its sampler's name.

    With no past trial in the box (a cold start: a new process, or a surface
    whose arms the brain cannot resolve) the Skillhub warms it instead: for
    each dimension a note narrowed, most confident first, the study's next
    asks are the `incumbent` moved to the box's edge in the note's direction
    (`skill_seeds`).
    """
    sampler_seed = int(np.random.SeedSequence([seed, call_index]).generate_state(1)[0])
    directions = [o.direction for o in evidence.objectives]
    use_nsga = sampler_choice == "nsga2" or (sampler_choice == "auto" and len(directions) > 1)
    sampler: optuna.samplers.BaseSampler
    if use_nsga:
        sampler = optuna.samplers.NSGAIISampler(seed=sampler_seed, population_size=population_size)
        name = "nsga2"
    else:
        # Optuna 5 defaults: multivariate TPE for one objective, constant liar on (a batch spreads out).
        sampler = optuna.samplers.TPESampler(seed=sampler_seed, n_startup_trials=n_startup_trials, constant_liar=True)
        name = "tpe"
    study = optuna.create_study(directions=directions, sampler=sampler)
    distributions = {name_: dim.distribution for name_, dim in dimensions.items()}
    generation_key = f"{type(sampler).__name__}:generation"
    for index, trial in enumerate(evidence.trials):
        current = _values(trial.config)
        params = {n: _param_value(dim, current.get(n, dim.spec.current)) for n, dim in dimensions.items()}
        attrs: dict[str, Any] = {generation_key: index // population_size} if use_nsga else {}
        study.add_trial(
            optuna.trial.create_trial(
                params=params, distributions=distributions, values=list(trial.values), system_attrs=attrs
            )
        )
    if not evidence.trials and incumbent is not None:
        for params in skill_seeds(dimensions, incumbent):
            study.enqueue_trial(params, skip_if_exists=True)
    return study, name


def skill_seeds(dimensions: Mapping[str, _Dimension], incumbent: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One start point per Skillhub-narrowed dimension: the incumbent with that parameter at the hinted edge.

    Called by `build_study` on a cold start.  A direction "up" takes the
    box's high end, "down" its low end, a range note the middle of the
    (narrowed) box; most confident note first.
    """
    seeds: list[tuple[float, dict[str, Any]]] = []
    for name, dim in dimensions.items():
        if not dim.hints or isinstance(dim.distribution, optuna.distributions.CategoricalDistribution):
            continue
        hint = max(dim.hints, key=lambda h: h.confidence)
        target = {"up": dim.high, "down": dim.low}.get(hint.direction or "", (dim.low + dim.high) / 2.0)
        values = {n: incumbent.get(n, d.spec.current) for n, d in dimensions.items()}
        values[name] = _param_value(dim, target)
        if all(_contains(d, values[n]) for n, d in dimensions.items()):  # a seed outside the box cannot be asked
            seeds.append((hint.confidence, {n: _param_value(d, values[n]) for n, d in dimensions.items()}))
    seeds.sort(key=lambda item: -item[0])
    return [params for _, params in seeds]
