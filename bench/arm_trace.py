"""Per-arm trace of one agents run: each treatment arm's true lift (oracle) next to how the loop ended it.

Why: the tuning bench scores a whole run, so a change to the Online agent or
the Actor shows up only as a share or a regret.  This trace says where it came
from: whether good arms were proposed and then stopped (futility, losers, the
horizon), or never proposed.  It is how BENCHMARKS.md's session-10 finding
was made (futility at the whole MDE stopped arms with true lifts of +1–3% in
apparel_seasonal seed 4 and +8.8% in apparel_thin seed 0).

For one scenario and seed it runs the agents loop as `bench/tuning.py` does
(`rectune.simloop.run_simloop`; with `--ceiling` the oracle-guided Actor of
`bench/_tuning_ceiling.py`) and prints, per experiment, the planned relative
MDE and, per treatment arm, its true relative lift over its control in the
week it started (`World.expected`) and how it ended: the first Online
decision that names the arm (stop_arm, promote, rollback), else how its
experiment ended.  A summary counts arms with a true lift above +1% by how
they ended.  Scoring only: the loop never sees the oracle.

Run: `.venv/bin/python bench/arm_trace.py --scenario apparel_seasonal --seed 4 [--days 28] [--ceiling]
[--futility-fraction 1] [--next-step] [--climb [--bound]]` (`--futility-fraction 1` reproduces the session-9 line).

`--next-step` asks what one more experiment could have gained from where the
run ended: the oracle's value (week 0, as the bench scores; a config over
the SLO is worth 0, as in the oracle's search) of every one-trust-step move
of one parameter from the final incumbent, and of the greedy set of up to
`max_changes` of the best of them, the most a perfect Actor could propose in
one arm.  It prints the share of the oracle's lift the run reached and the
share after that set (BENCHMARKS.md, session 13).

`--climb` runs no loop: it climbs from the starting config with those greedy
sets and no reads at all (each step is the set `--next-step` would print,
applied as if every experiment resolved it), printing each step's true gain
and the share reached.  It separates what the reads cost from what the
one-step moves can reach (BENCHMARKS.md, session 15: in core, a first step
worth +8% and later ones of +1% and less).  With `--bound` it first runs the
agents loop to measure the planned MDE of its one-arm experiments (the
median), then prints beside each step the days of traffic a one-arm
experiment at the loop's reads needs to resolve that step with the planned
power: horizon · (MDE / gain)², since the MDE shrinks as 1/√time.  Their sum
up to the step that passes a share of 0.9 is the traffic a perfect Actor
walking the greedy path would need, against the budget (BENCHMARKS.md,
session 16).  An estimate, not a proof: the loop's reads are always-valid
with a ramp, and another path could have larger steps.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import statistics
import sys
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from _tuning_ceiling import Move, feasible_value, greedy_set, moved, oracle_view, single_moves
from _tuning_world import TruthCache, bench_world

from agents.arm_ids import parse_arm_id
from agents.critic import CriticRules
from agents.offline_brain import offline_brain_kwargs
from rectune.simloop import SimStep, SimTrace
from schemas.config import CascadeConfig, default_config
from simulator.catalogue import WEEK_S
from simulator.oracle import meets_slo
from simulator.world import World

GOOD_LIFT: Final = 0.01  # the summary's line between a good arm and a neutral one
_ENDINGS: Final = ("stop_arm", "promote", "rollback")
#: `endings`' result: arm → its first ending, experiment → its end, experiment → planned relative MDE
Endings = tuple[dict[str, str], dict[str, str], dict[str, float]]


@dataclass(frozen=True, slots=True)
class ArmRow:
    """One treatment arm: its experiment, the versions it and its control served, when it started, how it ended."""

    experiment_id: str
    arm_id: str
    config_version: int
    control_version: int
    start_s: float
    ending: str


def first_arms(steps: Iterable[SimStep]) -> dict[str, tuple[int, int, float]]:
    """Treatment arm id → (config version, control version, start s) at the first step it served.

    A/A pre-period arms (`<experiment>.pre.t<N>`) serve the incumbent and are left out.
    """
    out: dict[str, tuple[int, int, float]] = {}
    for step in steps:
        for arm in step.served:
            name = parse_arm_id(arm.arm_id)
            if name is not None and not (name.is_control or name.pre_period) and arm.arm_id not in out:
                out[arm.arm_id] = (arm.config_version, step.control_version, step.start_s)
    return out


def endings(records: Iterable[Mapping[str, Any]]) -> Endings:
    """From the loop's decision records: arm → its first ending, experiment → its end, experiment → planned MDE.

    An arm's ending is the first stop_arm / promote / rollback naming it; an
    experiment's end the first record that ends it; its MDE the relative MDE
    (`mde_relative`) of its first allocation.
    """
    arm_end: dict[str, str] = {}
    exp_end: dict[str, str] = {}
    mde: dict[str, float] = {}
    for record in records:
        payload = record.get("payload")
        if not isinstance(payload, dict):
            continue
        kind, experiment = payload.get("kind"), payload.get("experiment_id")
        reasons = payload.get("reasons") or [""]
        if kind in _ENDINGS and payload.get("arm_id") and payload["arm_id"] not in arm_end:
            arm_end[payload["arm_id"]] = f"{kind}: {reasons[0]}"
        if payload.get("ends_experiment") and experiment and experiment not in exp_end:
            exp_end[experiment] = f"experiment {kind}: {reasons[0]}"
        if kind == "allocate" and experiment and experiment not in mde:
            for figure in payload.get("figures") or []:
                if figure.get("name") == "mde_relative":
                    mde[experiment] = float(figure["value"])
    return arm_end, exp_end, mde


def arm_rows(steps: Iterable[SimStep], ended: Endings) -> list[ArmRow]:
    """Every treatment arm of a run with how it ended (`first_arms` joined with `endings`), in serving order."""
    arm_end, exp_end, _ = ended
    rows = []
    for arm_id, (version, control, start_s) in first_arms(steps).items():
        name = parse_arm_id(arm_id)
        experiment = arm_id if name is None else name.experiment  # first_arms keeps only parsed arms
        ending = arm_end.get(arm_id) or exp_end.get(experiment) or "still running at the end of the budget"
        rows.append(ArmRow(experiment, arm_id, version, control, start_s, ending))
    return rows


def true_lift(row: ArmRow, value: Callable[[int, float], float]) -> float:
    """The arm's true relative lift over its control in the week it started (`value(config version, week start)`)."""
    week_s = (row.start_s // WEEK_S) * WEEK_S
    return value(row.config_version, week_s) / value(row.control_version, week_s) - 1.0


def summary(lifts: Sequence[tuple[float, str]]) -> Counter[str]:
    """How the arms with a true lift above `GOOD_LIFT` ended (the ending's kind, before its colon)."""
    return Counter(ending.split(":", 1)[0] for lift, ending in lifts if lift > GOOD_LIFT)


def main(argv: Sequence[str] | None = None) -> int:
    """Run one world's agents loop and print the per-arm trace."""
    parser = argparse.ArgumentParser(prog="bench/arm_trace.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenario", default="apparel_seasonal", help="a scenario name or JSON path")
    parser.add_argument("--seed", type=int, default=4, help="world and traffic seed")
    parser.add_argument("--days", type=float, default=28.0, help="simulated days of traffic")
    parser.add_argument("--ceiling", action="store_true", help="the oracle-guided Actor instead of the offline brain")
    parser.add_argument(
        "--futility-fraction", type=float, default=None, help="override the policy's futility line (1: session 9's)"
    )
    parser.add_argument(
        "--next-step", action="store_true", help="the oracle's best one-step moves from the final incumbent"
    )
    parser.add_argument(
        "--climb", action="store_true", help="no loop: climb with the oracle's greedy one-step sets, no reads"
    )
    parser.add_argument(
        "--bound", action="store_true", help="with --climb: the days of traffic each step needs at the loop's reads"
    )
    args = parser.parse_args(argv)
    bw = bench_world(args.scenario, args.seed, args.days)
    world, preset = bw.world, bw.preset
    if args.climb:
        resolution = None
        if args.bound:
            mde, overestimate = loop_mde(bw.run_loop())
            if overestimate:
                print(OVERESTIMATE_NOTE)
            resolution = None if mde is None else Resolution(mde, preset.policy.horizon_s / 86_400.0, args.days)
        for line in climb(world, args.seed, preset.settings.rules, preset.settings.max_changes, resolution=resolution):
            print(line)
        return 0
    if args.futility_fraction is not None:
        policy = dataclasses.replace(preset.policy, futility_fraction=args.futility_fraction)
        preset = dataclasses.replace(preset, policy=policy)
    brain = None
    if args.ceiling:
        from _tuning_ceiling import OracleGuidedBrain

        kwargs = offline_brain_kwargs(preset.policy, preset.settings.rules, seed=args.seed)
        brain = OracleGuidedBrain(oracle_view(world), **kwargs)
    sim = bw.with_preset(preset).run_loop(brain)
    truth = TruthCache(world)  # the tuning bench's weekly oracle cache

    def value(version: int, at_s: float) -> float:
        return truth(sim.configs[version], at_s).value

    ended = endings(sim.records)
    mde = ended[2]
    lifts: list[tuple[float, str]] = []
    experiment = ""
    for row in arm_rows(sim.steps, ended):
        if row.experiment_id != experiment:
            experiment = row.experiment_id
            planned = mde.get(experiment)
            when = f"day {row.start_s / 86_400.0:.1f}"
            print(f"{experiment} ({when}; planned MDE {'n/a' if planned is None else f'{100 * planned:.1f}%'})")
        lift = true_lift(row, value)
        lifts.append((lift, row.ending))
        print(f"  {row.arm_id.removeprefix(row.experiment_id + '.'):<4} true {100 * lift:+6.2f}%  {row.ending[:150]}")
    good = summary(lifts)
    print(f"\n{len(lifts)} treatment arms; with a true lift above +{100 * GOOD_LIFT:g}%: {dict(good) or 'none'}")
    for promotion in sim.promotions:
        print(f"promoted at day {promotion.at_s / 86_400.0:.1f}: v{promotion.old_version} -> v{promotion.new_version}")
    if args.next_step:
        from _tuning_methods import trace_from_sim  # the bench's own reading of the final incumbent

        final = trace_from_sim(sim).final
        print(next_step(world, args.seed, final, preset.settings.rules, preset.settings.max_changes))
    return 0


def _scale(world: World, seed: int) -> tuple[Callable[[CascadeConfig], float], Callable[[float], float]]:
    """(value, share): the oracle's week-0 value of a config (0 over the SLO, as in its search), and a value's share
    of the lift from the starting config to the oracle's best."""
    from _tuning_world import ORACLE_EVALUATIONS, oracle_best

    def value(config: CascadeConfig) -> float:
        e = world.expected(config, at_s=0.0)
        return float(e.north_star) if meets_slo(world, e) else 0.0

    start, best = value(default_config()), oracle_best(world, seed, default_config(), 0.0, ORACLE_EVALUATIONS)
    top = value(best.config)
    return value, lambda v: (v - start) / (top - start)


def _best_set(
    config: CascadeConfig, world: World, rules: CriticRules, max_changes: int
) -> tuple[list[Move], list[Move], float]:
    """(the best single moves, the greedy set of them, its gain) from `config`: the ceiling's first proposal."""
    value_of = feasible_value(oracle_view(world), config)
    moves = single_moves(config, value_of, rules.trust, rules.guardrails)
    chosen, gain = greedy_set(config, value_of, moves, max_changes)
    return moves, chosen, gain


def next_step(world: World, seed: int, final: CascadeConfig, rules: CriticRules, max_changes: int) -> str:
    """What one more arm could gain from `final` (see the module docstring's `--next-step`).

    The arm is the one the ceiling's Actor would propose first from `final`
    (`_tuning_ceiling.single_moves` and `greedy_set`, the oracle at week 0).
    """
    value, share = _scale(world, seed)
    here = value(final)
    moves, chosen, _ = _best_set(final, world, rules, max_changes)
    arm = moved(final, chosen) if chosen else final
    reached = value(arm) if arm is not None else here
    singles = ", ".join(f"{m.name}={m.value} {100 * m.gain:+.2f}%" for m in moves[:6])
    gain = reached / here - 1.0 if here > 0.0 else float("nan")
    return (
        f"next step from the final incumbent: share {share(here):.2f} -> "
        f"{share(reached):.2f} with {{{', '.join(f'{m.name}={m.value}' for m in chosen)}}} "
        f"({100 * gain:+.2f}%); best single steps: {singles}"
    )


@dataclass(frozen=True, slots=True)
class Resolution:
    """What the loop's reads resolve: a one-arm experiment's planned relative MDE over `horizon_days`; the budget."""

    mde: float
    horizon_days: float
    budget_days: float

    def days_for(self, gain: float) -> float:
        """Days a one-arm experiment needs to resolve `gain` with the planned power (the MDE shrinks as 1/√time)."""
        return self.horizon_days * (self.mde / gain) ** 2 if gain > 0.0 else math.inf


def one_arm_mde(steps: Iterable[SimStep], records: Iterable[Mapping[str, Any]]) -> float | None:
    """The median planned relative MDE of a run's experiments with one treatment arm (None without any)."""
    ended = endings(records)
    arms = Counter(row.experiment_id for row in arm_rows(steps, ended))
    planned = sorted(mde for experiment, mde in ended[2].items() if arms.get(experiment) == 1)
    return statistics.median(planned) if planned else None


OVERESTIMATE_NOTE: Final = "no one-arm experiment in the run: the median planned MDE of all of them (an overestimate)"


def loop_mde(sim: SimTrace) -> tuple[float | None, bool]:
    """(the MDE the loop's reads resolve, whether it is the overestimate) from one run of the loop.

    `one_arm_mde` when the run had a one-arm experiment; else the median planned MDE of all its experiments, which
    overstates what one arm needs (flagged); None when it planned none.  Called by `--bound` and
    `bench/interleave_probe.py`.
    """
    mde = one_arm_mde(sim.steps, sim.records)
    if mde is not None:
        return mde, False
    planned = list(endings(sim.records)[2].values())
    return (statistics.median(planned) if planned else None), True


def climb(
    world: World,
    seed: int,
    rules: CriticRules,
    max_changes: int,
    max_steps: int = 60,
    *,
    resolution: Resolution | None = None,
    target_share: float = 0.9,
) -> list[str]:
    """The noiseless climb of `--climb`: one line per step (true gain, share after it, the moves), then the end.

    With `resolution` (`--bound`) each line also gives the days of traffic the
    step needs and the running total, and a last line the total to pass
    `target_share` against the budget.
    """
    value, share = _scale(world, seed)
    config = default_config()
    lines = []
    total_days, reached_at, in_budget = 0.0, None, share(value(config))
    for step in range(1, max_steps + 1):
        _, chosen, gain = _best_set(config, world, rules, max_changes)
        after = moved(config, chosen) if chosen else None
        if after is None:
            break
        config = after
        now = share(value(config))
        moves = ", ".join(f"{m.name}={m.value}" for m in chosen)
        needs = ""
        if resolution is not None:
            days = resolution.days_for(gain)
            total_days += days
            needs = f" (needs {days:.1f} d, {total_days:.1f} d so far)"
            if reached_at is None and now >= target_share:
                reached_at = total_days
            if total_days <= resolution.budget_days:
                in_budget = now
        lines.append(f"step {step:2d}: {100 * gain:+.2f}% true, share {now:.3f}{needs}: {moves}")
    lines.append(f"no one-step set gains from here: share {share(value(config)):.3f} after {len(lines)} step(s)")
    if resolution is not None:
        passed = "never" if reached_at is None else f"after {reached_at:.1f} d"
        lines.append(
            f"at the loop's reads (one-arm MDE {100 * resolution.mde:.2f}% in {resolution.horizon_days:.2f} d): "
            f"share {target_share:g} passed {passed}; budget {resolution.budget_days:g} d, "
            f"share within it {in_budget:.3f}"
        )
    return lines


if __name__ == "__main__":
    sys.exit(main())
