"""The tuning benchmark's methods on a simulated world: static, random-search A/B, Optuna TPE A/B, and the agents.

Every method gets the same world, start config, traffic budget and step
(metric window) and returns a `_tuning_score.MethodTrace`:

- `run_static`: the start config all along;
- `run_ab_search` with a `RandomSearch` or `TpeSearch` proposer: sequential
  A/B tests, one challenger against the incumbent at 50/50 for a fixed
  horizon; at the horizon a fixed-horizon two-sided z-test of the north
  star (treatment − control, delta-method variance over user buckets,
  `agents.stats.ratio`) at α; promote when significantly better.  The
  random proposer draws uniformly from the tunable space (`space_box`:
  schema bounds intersected with the guardrails; cuts log-uniform) and
  repairs the cross-field rules; TPE asks an Optuna study over the same
  box and is told each finished test's measured challenger north star;
- `trace_from_sim`: the agents' `rectune.simloop.SimTrace` in the same form.

Pure apart from the world's randomness (seeded numpy generators).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import msgspec
import numpy as np
import optuna
from _tuning_score import MethodTrace, Promotion, ServedArm, Step
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution

from agents.arm_ids import control_arm_id, treatment_arm_id
from agents.brain import ParamChange, ParamSpec, apply_changes, parameter_specs
from agents.experiment import MetricSpec
from agents.stats.distributions import normal_sf
from agents.stats.errors import StatsError
from agents.stats.ratio import compare_sums
from rectune.simloop import CONTROL_ARM, SimTrace, SimWorld
from schemas.config import Allocation, ArmShare, CascadeConfig, RandomizationUnit
from schemas.errors import SchemaError
from schemas.guardrails import Guardrails
from schemas.metrics import ArmTotals

_CUTS = frozenset({"pre_rank.candidate_cut", "rank.cut"})


# --------------------------------------------------------------------------- the search space


@dataclass(frozen=True, slots=True)
class Dimension:
    """One tunable parameter's search range: [low, high] (log scale for cuts) or a list of choices."""

    name: str
    kind: str
    low: float = 0.0
    high: float = 0.0
    log: bool = False
    choices: tuple[str, ...] = ()

    def distribution(self) -> BaseDistribution:
        """The Optuna distribution of this dimension."""
        if self.kind == "choice":
            return CategoricalDistribution(self.choices)
        if self.kind == "int":
            return IntDistribution(int(self.low), int(self.high), log=self.log)
        return FloatDistribution(self.low, self.high)


def _guardrail_limits(name: str, rails: Guardrails) -> tuple[float, float]:
    limits = {
        "pre_rank.candidate_cut": (rails.min_list_size, rails.max_candidate_cut),
        "rank.cut": (rails.min_list_size, rails.max_rank_cut),
        "re_rank.max_per_category": (-math.inf, rails.max_per_category_ceiling),
        "re_rank.exploration_rate": (-math.inf, rails.max_exploration_rate),
        "re_rank.mmr_lambda": (rails.min_mmr_lambda, math.inf),
        "re_rank.list_size": (rails.min_list_size, math.inf),
    }
    return limits.get(name, (-math.inf, math.inf))


def space_box(start: CascadeConfig, rails: Guardrails) -> tuple[Dimension, ...]:
    """Every tunable parameter of `start` with its schema bounds intersected with the guardrails."""
    out = []
    for spec in parameter_specs(start):
        if spec.kind == "choice":
            out.append(Dimension(spec.name, "choice", choices=spec.choices))
            continue
        floor, ceiling = _guardrail_limits(spec.name, rails)
        low = max(spec.lower if spec.lower is not None else -math.inf, floor)
        high = min(spec.upper if spec.upper is not None else math.inf, ceiling)
        out.append(Dimension(spec.name, spec.kind, low, high, log=spec.name in _CUTS and low >= 1.0))
    return tuple(out)


def build_config(start: CascadeConfig, params: Mapping[str, Any], rails: Guardrails) -> CascadeConfig | None:
    """`start` with `params` applied after repairing the cross-field rules; None when it still breaks one.

    Repairs: rank.cut <= candidate_cut, list_size <= rank.cut, list_size
    above every sponsored position.
    """
    values = dict(params)
    if "rank.cut" in values and "pre_rank.candidate_cut" in values:
        values["rank.cut"] = min(int(values["rank.cut"]), int(values["pre_rank.candidate_cut"]))
    positions = start.re_rank.sponsored_positions
    if "re_rank.list_size" in values:
        size = max(int(values["re_rank.list_size"]), max(positions, default=-1) + 1)
        values["re_rank.list_size"] = min(size, int(values.get("rank.cut", start.rank.cut)))
    specs: dict[str, ParamSpec] = {s.name: s for s in parameter_specs(start)}
    changes = [
        ParamChange(name=n, value=round(float(v), 4) if specs[n].kind == "float" else v)
        for n, v in values.items()
        if v != specs[n].current
    ]
    try:
        config = apply_changes(start, changes)
        rails.check(config)
    except SchemaError:
        return None
    return config


class Proposer(Protocol):
    """Gives the next challenger and hears how the last finished test measured it."""

    def propose(self, incumbent: CascadeConfig) -> CascadeConfig:
        """The next challenger."""
        ...

    def tell(self, measured: float | None) -> None:
        """The finished test's measured challenger north star (None: the test did not finish)."""
        ...


class RandomSearch:
    """Uniform draws from `space_box` (cuts log-uniform), repaired; redrawn until valid."""

    def __init__(self, start: CascadeConfig, rails: Guardrails, rng: np.random.Generator) -> None:
        """Keep the space and the generator."""
        self.start, self.rails, self.rng = start, rails, rng
        self.box = space_box(start, rails)

    def _draw(self, dim: Dimension) -> Any:
        if dim.kind == "choice":
            return dim.choices[int(self.rng.integers(len(dim.choices)))]
        if dim.log:
            value = math.exp(self.rng.uniform(math.log(dim.low), math.log(dim.high + 1.0)))
            return min(int(value), int(dim.high))
        if dim.kind == "int":
            return int(self.rng.integers(int(dim.low), int(dim.high) + 1))
        return float(self.rng.uniform(dim.low, dim.high))

    def propose(self, incumbent: CascadeConfig) -> CascadeConfig:
        """A valid uniform draw (the incumbent does not matter to random search)."""
        for _ in range(1_000):
            config = build_config(self.start, {d.name: self._draw(d) for d in self.box}, self.rails)
            if config is not None:
                return config
        msg = "random search: 1000 draws in a row broke a cross-field rule (the repair is incomplete)"
        raise RuntimeError(msg)

    def tell(self, measured: float | None) -> None:
        """Random search learns nothing."""


class TpeSearch:
    """Plain Optuna TPE over `space_box`: ask a challenger, tell its measured north star after the test."""

    def __init__(self, start: CascadeConfig, rails: Guardrails, seed: int) -> None:
        """A fresh in-memory maximising study with a seeded TPE sampler."""
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.start, self.rails = start, rails
        self.box = space_box(start, rails)
        self.distributions = {d.name: d.distribution() for d in self.box}
        self.study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=seed))
        self._pending: optuna.trial.Trial | None = None

    def propose(self, incumbent: CascadeConfig) -> CascadeConfig:
        """The next valid TPE sample (invalid ones are told as failed)."""
        for _ in range(1_000):
            trial = self.study.ask(self.distributions)
            config = build_config(self.start, trial.params, self.rails)
            if config is not None:
                self._pending = trial
                return config
            self.study.tell(trial, state=optuna.trial.TrialState.FAIL)
        msg = "tpe: 1000 asks in a row broke a cross-field rule (the repair is incomplete)"
        raise RuntimeError(msg)

    def tell(self, measured: float | None) -> None:
        """Tell the pending trial its measured value (or fail it)."""
        if self._pending is None:
            return
        if measured is None or not math.isfinite(measured):
            self.study.tell(self._pending, state=optuna.trial.TrialState.FAIL)
        else:
            self.study.tell(self._pending, measured)
        self._pending = None


# --------------------------------------------------------------------------- runs


def _add(acc: dict[str, ArmTotals], window: Mapping[str, ArmTotals]) -> None:
    for arm_id, t in window.items():
        old = acc.get(arm_id)
        acc[arm_id] = (
            t
            if old is None
            else ArmTotals(
                t.surface,
                arm_id,
                old.sums + t.sums,
                old.latency_hist + t.latency_hist,
                old.item_events + t.item_events,
                old.late_item_events + t.late_item_events,
                old.windows + t.windows,
            )
        )


def _requests(window: Mapping[str, ArmTotals]) -> float:
    return sum(t.total("requests") for t in window.values())


def run_static(
    world: SimWorld, *, start: CascadeConfig, budget_s: float, step_s: float, seed: int, surface: str = "home"
) -> MethodTrace:
    """The start config for the whole budget (the traffic is still drawn, for the regret)."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x5EED]))
    allocation = Allocation(experiment_id=CONTROL_ARM, salt=CONTROL_ARM, arms=(ArmShare(CONTROL_ARM, 1, 1.0),))
    steps = []
    t = 0.0
    while t < budget_s - 1e-9:
        duration = min(step_s, budget_s - t)
        window = world.simulate(allocation, {1: start}, start_s=t, duration_s=duration, rng=rng, surface=surface)
        steps.append(Step(t, duration, _requests(window), (ServedArm(CONTROL_ARM, start, 1.0),)))
        t += duration
    return MethodTrace(method="static", start=start, final=start, steps=tuple(steps))


def two_sided_p(
    control: ArmTotals, treatment: ArmTotals, metric: MetricSpec, *, paired: bool = False
) -> tuple[float, float, float]:
    """(difference treatment − control, its two-sided fixed-horizon p-value, the treatment's value) of `metric`.

    `paired`: the arms hold the same users (a per-request test), read as the agents read one.
    """
    try:
        cmp = compare_sums(control.sums, treatment.sums, metric.numerator, metric.denominator, paired=paired)
    except StatsError:
        return math.nan, 1.0, math.nan
    if not (cmp.difference_variance > 0.0 and math.isfinite(cmp.difference_variance)):
        return cmp.difference, 1.0, cmp.treatment
    z = cmp.difference / math.sqrt(cmp.difference_variance)
    return cmp.difference, 2.0 * normal_sf(abs(z)), cmp.treatment


def run_ab_search(
    world: SimWorld,
    proposer: Proposer,
    *,
    method: str,
    start: CascadeConfig,
    metric: MetricSpec,
    budget_s: float,
    horizon_s: float,
    step_s: float,
    seed: int,
    alpha: float = 0.05,
    surface: str = "home",
    unit: RandomizationUnit = "user",
) -> MethodTrace:
    """Sequential 50/50 A/B tests of the proposer's challengers (see the module docstring).

    `unit` is the allocation's randomisation unit, the agents' (`OnlinePolicy.randomization_unit`): a
    per-request test is read paired, as the agents read theirs, so every method gets the same design.
    """
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x5EED]))
    incumbent = start
    steps: list[Step] = []
    promotions: list[Promotion] = []
    experiments = 0
    t = 0.0
    while t < budget_s - 1e-9:
        challenger = proposer.propose(incumbent)
        experiments += 1
        name = f"ab{experiments}"
        control_id, treatment_id = control_arm_id(name), treatment_arm_id(name, 1)
        allocation = Allocation(
            experiment_id=name,
            salt=f"{name}-{seed}",
            arms=(ArmShare(control_id, 1, 0.5), ArmShare(treatment_id, 2, 0.5)),
            unit=unit,
        )
        configs = {1: incumbent, 2: challenger}
        served = (ServedArm(control_id, incumbent, 0.5), ServedArm(treatment_id, challenger, 0.5))
        totals: dict[str, ArmTotals] = {}
        end = min(t + horizon_s, budget_s)
        finished = t + horizon_s <= budget_s + 1e-9
        while t < end - 1e-9:
            duration = min(step_s, end - t)
            window = world.simulate(allocation, configs, start_s=t, duration_s=duration, rng=rng, surface=surface)
            _add(totals, window)
            steps.append(Step(t, duration, _requests(window), served))
            t += duration
        if not finished or control_id not in totals or treatment_id not in totals:
            proposer.tell(None)
            continue
        difference, p_value, measured = two_sided_p(
            totals[control_id], totals[treatment_id], metric, paired=unit == "request"
        )
        proposer.tell(measured)
        if p_value < alpha and difference > 0.0:
            promotions.append(Promotion(t, incumbent, challenger))
            incumbent = challenger
    return MethodTrace(
        method=method,
        start=start,
        final=incumbent,
        steps=tuple(steps),
        promotions=tuple(promotions),
        experiments=experiments,
    )


def trace_from_sim(trace: SimTrace, method: str = "agentic") -> MethodTrace:
    """The agents' simulated run as a `MethodTrace` (arm keys are the experiment arm ids)."""
    steps = tuple(
        Step(
            s.start_s,
            s.duration_s,
            s.requests,
            tuple(ServedArm(a.arm_id, trace.configs[a.config_version], a.share) for a in s.served),
        )
        for s in trace.steps
    )
    promotions = tuple(
        Promotion(p.at_s, trace.configs[p.old_version], trace.configs[p.new_version]) for p in trace.promotions
    )
    return MethodTrace(
        method=method,
        start=trace.start,
        final=trace.final,
        steps=steps,
        promotions=promotions,
        experiments=trace.experiments(),
        rollbacks=trace.rollbacks(),
    )


def config_key(config: CascadeConfig) -> bytes:
    """A hashable identity of a config (its canonical JSON)."""
    return msgspec.json.encode(config)
