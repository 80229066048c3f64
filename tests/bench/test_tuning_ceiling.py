"""The tuning benchmark's ceiling brain (`bench/_tuning_ceiling.py`) on a known value function."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import Any

from agents.brain import ProposalContext
from agents.critic import CriticRules
from schemas.config import CascadeConfig, default_config

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
tc: Any = importlib.import_module("_tuning_ceiling")

START = default_config()


def value(config: CascadeConfig) -> float:
    """Lower near-duplicate threshold +5%, more per category +3%, mmr down +1%; the first two together only +6%."""
    rr = config.re_rank
    dup = rr.near_duplicate_threshold < START.re_rank.near_duplicate_threshold
    cat = rr.max_per_category > START.re_rank.max_per_category
    mmr = rr.mmr_lambda < START.re_rank.mmr_lambda
    gain = 0.05 * dup + 0.03 * cat + 0.01 * mmr - 0.02 * (dup and cat)
    return 1.0 + gain


def view(config: CascadeConfig) -> tuple[float, bool]:
    """`value`, every config within the SLO."""
    return value(config), True


def brain() -> Any:
    return tc.OracleGuidedBrain(view, seed=0, rules=CriticRules())


def moved(proposal: Any) -> set[str]:
    return {change.name for change in proposal.changes}


def test_sets_are_built_greedily_on_the_joint_value_and_use_disjoint_parameters() -> None:
    proposals = brain().propose_sync(ProposalContext(surface="home", incumbent=START, k=3, max_changes=3))
    assert moved(proposals[0]) == {
        "re_rank.near_duplicate_threshold",
        "re_rank.max_per_category",
        "re_rank.mmr_lambda",
    }  # +5, then +3 joins (+6 together), then mmr (+7)
    assert len(proposals) == 1  # every helpful parameter is used by the first set
    assert value(proposals[0].config) > value(START)


def test_max_changes_allow_list_and_repeats_only_when_nothing_new_helps() -> None:
    b = brain()
    context = ProposalContext(surface="home", incumbent=START, k=3, max_changes=1)
    first = b.propose_sync(context)
    assert [moved(p) for p in first] == [
        {"re_rank.near_duplicate_threshold"},
        {"re_rank.max_per_category"},
        {"re_rank.mmr_lambda"},
    ]
    # each was proposed once and nothing else helps: the best are proposed again rather than nothing
    assert [p.config for p in b.propose_sync(context)] == [p.config for p in first]
    # a set not yet proposed comes before a repeat
    one = ProposalContext(surface="home", incumbent=START, k=1, max_changes=1)
    fresh = brain()
    rounds = [moved(p) for _ in range(4) for p in fresh.propose_sync(one)]
    assert rounds == [
        {"re_rank.near_duplicate_threshold"},
        {"re_rank.max_per_category"},
        {"re_rank.mmr_lambda"},
        {"re_rank.near_duplicate_threshold"},
    ]
    only = ProposalContext(surface="home", incumbent=START, k=3, max_changes=3, parameters=("re_rank.mmr_lambda",))
    assert [moved(p) for p in brain().propose_sync(only)] == [{"re_rank.mmr_lambda"}]


def test_a_config_over_the_slo_is_never_proposed_and_does_not_block_the_others() -> None:
    def slow_duplicates(config: CascadeConfig) -> tuple[float, bool]:
        # lowering the near-duplicate threshold is the best move but breaks the latency SLO in this world
        return value(config), not config.re_rank.near_duplicate_threshold < START.re_rank.near_duplicate_threshold

    b = tc.OracleGuidedBrain(slow_duplicates, seed=0, rules=CriticRules())
    proposals = b.propose_sync(ProposalContext(surface="home", incumbent=START, k=3, max_changes=3))
    assert [moved(p) for p in proposals] == [{"re_rank.max_per_category", "re_rank.mmr_lambda"}]


def test_the_oracle_view_reads_the_north_star_and_the_slo_from_the_world() -> None:
    from simulator.scenario import load_scenario
    from simulator.world import World

    world = World(load_scenario("apparel_thin"), seed=0)
    north_star, feasible = tc.oracle_view(world)(START)
    expected = world.expected(START, at_s=0.0)
    assert north_star == expected.north_star
    assert feasible == (expected.latency_p99_ms <= world.scenario.latency_slo_ms)
