"""The interleaving-screen analysis (`bench/_screen.py`): it holds proposals for its time, then passes gains."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import Any

import pytest

from agents.brain import ProposalContext
from agents.offline_brain import offline_brain_kwargs
from rectune.simloop import SimStep

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
sc: Any = importlib.import_module("_screen")
tw: Any = importlib.import_module("_tuning_world")


def at(t_s: float) -> SimStep:
    return SimStep(index=0, start_s=t_s - 1.0, duration_s=1.0, control_version=1, served=(), phase="idle")


def test_the_screen_answers_nothing_until_it_has_run_then_only_candidates_read_as_gains() -> None:
    bw = tw.bench_world("apparel_core", 0, 1.0)
    kwargs = offline_brain_kwargs(bw.preset.policy, bw.preset.settings.rules, seed=0)
    brain = sc.ScreenedBrain(
        bw.world, horizon_s=4_000.0, screen=sc.ScreenSettings(pool=6, share_of_horizon=0.5), **kwargs
    )
    context = ProposalContext(surface="home", incumbent=bw.start, k=2, guardrails=bw.preset.settings.rules.guardrails)
    brain.tick(at(100.0))
    assert brain.propose_sync(context) == [], "the first call starts a screen"
    assert brain.screens == 1
    brain.tick(at(100.0 + 1_999.0))
    assert brain.propose_sync(context) == [], "the screen runs for half of the 4,000 s horizon"
    brain.tick(at(100.0 + 2_000.0))
    chosen = brain.propose_sync(context)
    assert 1 <= len(chosen) <= 2
    assert brain.passed == len(chosen)
    assert brain.screens >= 1
    assert all(p.config != bw.start for p in chosen)


def test_a_screen_reads_each_candidate_on_its_share_of_the_screens_requests() -> None:
    bw = tw.bench_world("apparel_thin", 0, 1.0)
    kwargs = offline_brain_kwargs(bw.preset.policy, bw.preset.settings.rules, seed=0)
    brain = sc.ScreenedBrain(
        bw.world, horizon_s=10_000.0, screen=sc.ScreenSettings(pool=4, share_of_horizon=0.4), **kwargs
    )
    assert brain._requests == round(bw.scenario.requests_per_s * 4_000.0 / 4)
    with pytest.raises(ValueError, match="pool in"):
        sc.ScreenSettings(pool=9)
    with pytest.raises(ValueError, match="share_of_horizon"):
        sc.ScreenSettings(share_of_horizon=-0.1)


def test_a_free_screen_takes_no_time_and_reads_each_candidate_precisely() -> None:
    bw = tw.bench_world("apparel_core", 0, 1.0)
    kwargs = offline_brain_kwargs(bw.preset.policy, bw.preset.settings.rules, seed=0)
    free = sc.ScreenSettings(pool=4, share_of_horizon=0.0)
    brain = sc.ScreenedBrain(bw.world, horizon_s=4_000.0, screen=free, **kwargs)
    assert brain._requests == sc.FREE_REQUESTS
    context = ProposalContext(surface="home", incumbent=bw.start, k=2, guardrails=bw.preset.settings.rules.guardrails)
    chosen = brain.propose_sync(context)
    assert 1 <= len(chosen) <= 2, "read at once, in the same call"
    assert 1 <= brain.screens <= sc.FREE_TRIES
