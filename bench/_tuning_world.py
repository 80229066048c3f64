"""One world of the tuning bench as every method, tool and analysis meets it, and the oracle's view of it.

Why one module: the tuning bench (`bench/tuning.py`), the agents-only variant
tool (`bench/agents_paired.py`), the arm trace (`bench/arm_trace.py`) and the
power calibration (`bench/power_calibration.py`) must all run the agents
loop on the same world, with the same preset, start and budget, and score it
the same way; a figure from one is then comparable with the others'.

- `bench_world(scenario, seed, days)`: the `BenchWorld` (scenario, world,
  budget, start config, preset derived from the scenario's public figures);
  `BenchWorld.run_loop(brain)` runs the real agents loop on it
  (`rectune.simloop.run_simloop`; the offline brain unless one is handed in)
  and `BenchWorld.score` scores a trace as the bench does (`_tuning_score.score`
  with the world's SLO and the agents' conversion margin);
- `oracle_best`: the oracle's offline search, once per (scenario, seed),
  cached on disk under `.cache/tuning/<simulator source hash>/`;
- `TruthCache`: the oracle's view (`World.expected`) per (config, week).
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from _tuning_methods import config_key
from _tuning_score import MethodTrace, Score, Truth, TruthFn, score

from agents.offline_brain import OfflineBrain
from rectune.simloop import SimPreset, SimStep, SimTrace, preset_for, run_simloop
from schemas.config import CascadeConfig, RandomizationUnit, default_config
from schemas.guardrails import Guardrails
from simulator.catalogue import WEEK_S
from simulator.oracle import best_config, meets_slo
from simulator.scenario import Scenario, load_scenario
from simulator.world import World

ROOT: Final = Path(__file__).resolve().parents[1]
CACHE: Final = ROOT / ".cache" / "tuning"
CONVERSION_MARGIN: Final = 0.02  # the agents' non-inferiority margin (rectune.simloop.preset_for)
#: 400 until session 17, when a greedy climb of one-trust-step moves beat the search's best in four seasonal seeds;
#: `best_config` also runs its 400-evaluation search and keeps the better end (never weaker than before)
ORACLE_EVALUATIONS: Final = 1500


# --------------------------------------------------------------------------- the world


@dataclass(frozen=True, slots=True)
class BenchWorld:
    """One (scenario, seed) with its traffic budget, start config and the agents' preset."""

    scenario: Scenario
    world: World
    seed: int
    budget_s: float
    start: CascadeConfig
    preset: SimPreset

    def with_preset(self, preset: SimPreset) -> BenchWorld:
        """The same world under another preset (`bench/agents_paired.py`'s overrides, `arm_trace`'s futility)."""
        return dataclasses.replace(self, preset=preset)

    def run_loop(
        self, brain: OfflineBrain | None = None, progress: Callable[[SimStep], None] | None = None
    ) -> SimTrace:
        """The agents loop over the whole budget (the offline brain `run_simloop` builds, unless `brain`).

        `progress` is called after every simulated step (`bench/_screen.py` keeps its clock with it).
        """
        return asyncio.run(
            run_simloop(
                self.world,
                budget_s=self.budget_s,
                seed=self.seed,
                preset=self.preset,
                start=self.start,
                brain=brain,
                progress=progress,
            )
        )

    def score(self, trace: MethodTrace, truth: TruthFn, reference: CascadeConfig, *, at_s: float) -> Score:
        """`trace` scored as the bench scores every method: against `reference`, with this world's SLO."""
        return score(
            trace,
            truth,
            reference,
            value_at_s=at_s,
            latency_slo_ms=self.scenario.latency_slo_ms,
            conversion_margin=CONVERSION_MARGIN,
        )


def bench_world(scenario_ref: str, seed: int, days: float, unit: RandomizationUnit = "request") -> BenchWorld:
    """Build the world of (`scenario_ref`, `seed`) with a budget of `days` simulated days, from `default_config()`.

    Called once per run by the tuning bench and its tools; `unit` is what every method's experiments randomise
    (`preset_for`'s `randomization_unit`).
    """
    scenario = load_scenario(scenario_ref)
    budget_s = days * 86_400.0
    preset = preset_for(scenario, budget_s, randomization_unit=unit)
    return BenchWorld(scenario, World(scenario, seed=seed), seed, budget_s, default_config(), preset)


# --------------------------------------------------------------------------- the oracle


def _source_hash() -> str:
    digest = hashlib.sha256()
    for path in sorted((ROOT / "simulator").glob("*.py")):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


@dataclass(frozen=True, slots=True)
class OracleBest:
    """The oracle's best config for one world (cached) and the value function it scores with."""

    config: CascadeConfig
    value: float
    start_value: float
    at_s: float


def oracle_best(world: World, seed: int, start: CascadeConfig, at_s: float, evaluations: int) -> OracleBest:
    """`oracle.best_config` once per (scenario, seed); cached on disk under `.cache/tuning/<simulator source hash>/`."""
    result = best_config(
        world,
        start,
        at_s=at_s,
        evaluations=evaluations,
        seed=seed,
        guardrails=Guardrails(),
        cache_dir=CACHE / _source_hash(),
    )
    return OracleBest(result.config, float(result.value), float(result.start_value), at_s)


class TruthCache:
    """`World.expected` per (config, week): the value, p99, conversions and SLO verdict the scorer needs."""

    def __init__(self, world: World) -> None:
        """Keep the world and an empty cache."""
        self.world = world
        self.cache: dict[tuple[bytes, int], Truth] = {}

    def __call__(self, config: CascadeConfig, at_s: float) -> Truth:
        """The oracle's view of `config` at `at_s` (expectations are weekly, so cached per week)."""
        week = int(at_s // WEEK_S)
        key = (config_key(config), week)
        found = self.cache.get(key)
        if found is None:
            e = self.world.expected(config, at_s=week * WEEK_S)
            found = Truth(float(e.north_star), float(e.latency_p99_ms), float(e.conversions), meets_slo(self.world, e))
            self.cache[key] = found
        return found
