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


def brain() -> Any:
    return tc.OracleGuidedBrain(value, seed=0, rules=CriticRules())


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


def test_max_changes_allow_list_and_no_repeat() -> None:
    b = brain()
    context = ProposalContext(surface="home", incumbent=START, k=3, max_changes=1)
    first = b.propose_sync(context)
    assert [moved(p) for p in first] == [
        {"re_rank.near_duplicate_threshold"},
        {"re_rank.max_per_category"},
        {"re_rank.mmr_lambda"},
    ]
    assert b.propose_sync(context) == []  # each was proposed once; nothing else helps
    only = ProposalContext(surface="home", incumbent=START, k=3, max_changes=3, parameters=("re_rank.mmr_lambda",))
    assert [moved(p) for p in brain().propose_sync(only)] == [{"re_rank.mmr_lambda"}]
