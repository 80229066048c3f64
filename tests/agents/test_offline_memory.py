"""The offline brain's memory: what resolves, what is recalled, what must not be proposed again."""

from __future__ import annotations

import pytest

from agents.brain import MetricReading, ParamChange, ProposalContext, apply_changes
from agents.offline_memory import BrainMemory
from agents.offline_space import _freeze
from schemas.config import default_config

INC = default_config()
A = apply_changes(INC, [ParamChange(name="re_rank.mmr_lambda", value=0.7)])
B = apply_changes(INC, [ParamChange(name="re_rank.mmr_lambda", value=0.75)])


def _context(*arms: str) -> ProposalContext:
    return ProposalContext(
        surface="home", incumbent=INC, metrics=tuple(MetricReading(name="ctr", value=0.1, arm=a) for a in arms)
    )


def test_own_proposals_are_remembered_until_news_and_served_configs_for_good() -> None:
    memory = BrainMemory(16)
    memory.proposed("p-a", A)
    memory.proposed("p-b", B)
    assert memory.config_of("p-a") == A
    assert memory.remembered() == {_freeze(A), _freeze(B)}
    memory.served("exp.t1", B)
    memory.recall(_context("exp.t1"))  # news: exp.t1's first read
    assert memory.remembered() == {_freeze(B)}
    memory.recall(_context("exp.t1"))  # the same arm again is no news
    memory.proposed("p-a", A)
    assert memory.remembered() == {_freeze(A), _freeze(B)}


def test_recall_prepends_older_readings_the_context_no_longer_carries() -> None:
    memory = BrainMemory(16)
    memory.recall(_context("x", "y"))
    recalled = memory.recall(_context("y"))
    assert [r.arm for r in recalled.metrics] == ["x", "y"]


def test_every_map_is_bounded() -> None:
    memory = BrainMemory(2)
    for index in range(4):
        memory.served(f"arm-{index}", apply_changes(INC, [ParamChange(name="re_rank.list_size", value=10 + index)]))
    assert memory.config_of("arm-0") is None and memory.config_of("arm-3") is not None
    assert len(memory.remembered()) == 2
    assert [r.arm for r in memory.recall(_context("a", "b", "c")).metrics] == ["a", "b", "c"]
    assert [r.arm for r in memory.recall(_context()).metrics] == ["b", "c"]
    with pytest.raises(ValueError, match="size"):
        BrainMemory(0)
