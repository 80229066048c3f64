"""The loop's off-policy screen (`agents.loop_screen`): registered candidates judged on exploration replays.

In-memory ports (the `Harness` of `test_loop.py`) and a replay source that
serves `schemas.replay.ReplayRecord`s built here, so each test controls
whether the candidate's replayed probabilities lean toward or away from the
clicked items.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np
import pytest
from test_loop import T0, Harness

from agents.loop import LoopDriver
from agents.ope_replay import ReplayRows, harm_estimate, replay_rows
from schemas.replay import SCHEMA_VERSION, ReplayRecord, ReplaySlot, ReplayTarget


class ScriptedReplay:
    """`ReplaySource`: records made by `make` once the candidate's version is known."""

    def __init__(self, *, lean: float | None, requests: int = 600, active: bool = True) -> None:
        self.lean, self.requests, self.is_active = lean, requests, active
        self.asked: list[tuple[tuple[int, ...], int]] = []

    async def active(self, now_ms: int) -> bool:
        return self.is_active

    async def rows(self, versions: Iterable[int], logging_version: int) -> Mapping[int, ReplayRows]:
        wanted = tuple(versions)
        self.asked.append((wanted, logging_version))
        if self.lean is None:
            return {}
        records = [r for v in wanted for r in make(v, logging_version, self.lean, self.requests)]
        return {v: replay_rows(records, v, logging_version) for v in wanted}


def make(version: int, logging_version: int, lean: float, requests: int, seed: int = 5) -> list[ReplayRecord]:
    """One-slot requests: the incumbent logged a "good" item (clicked 50%) or a "bad" one (10%) at 0.5 each.

    The candidate shows the good item with probability 0.5 + `lean` and the
    bad one with 0.5 − `lean`, so a negative lean is a candidate that would
    show the clicked items less often (harm), and the weights have mean 1.
    """
    rng = np.random.default_rng(seed)
    out = []
    for i in range(requests):
        good = bool(rng.random() < 0.5)
        clicked = bool(rng.random() < (0.5 if good else 0.1))
        prob = 0.5 + lean if good else 0.5 - lean
        out.append(
            ReplayRecord(
                schema_version=SCHEMA_VERSION,
                request_id=f"r{i}",
                surface="home",
                cohort="all",
                user_id=f"u{i % 150}",
                arm_id="control",
                config_version=logging_version,
                event_time_ms=T0,
                slots=(ReplaySlot(item_id="good" if good else "bad", position=0, propensity=0.5, clicked=clicked),),
                targets=(ReplayTarget(config_version=version, probabilities=(prob,)),),
            )
        )
    return out


class ScreenedHarness(Harness):
    def __init__(self, replay: ScriptedReplay, **policy_kw: object) -> None:
        self.replay = replay
        super().__init__(**policy_kw)

    def make_driver(self) -> LoopDriver:
        driver = super().make_driver()
        driver.replay = self.replay
        return driver


def off_policy_critiques(h: Harness) -> list[dict[str, object]]:
    return [r for r in h.kinds("critique") if r["payload"].get("stage") == "off_policy"]  # type: ignore[union-attr]


def test_the_rows_weigh_each_slot_by_its_prefix_product() -> None:
    record = make(9, 1, 0.0, 1)[0]
    two = ReplayRecord(
        **{
            **{f: getattr(record, f) for f in record.__struct_fields__},
            "slots": (
                ReplaySlot(item_id="a", position=0, propensity=0.5, clicked=False),
                ReplaySlot(item_id="b", position=1, propensity=0.25, clicked=True),
            ),
            "targets": (ReplayTarget(config_version=9, probabilities=(0.8, 0.1)),),
        }
    )
    rows = replay_rows([two, make(9, 2, 0.0, 1)[0]], 9, 1)  # the second was logged by another incumbent: skipped
    assert rows.requests == 1 and rows.rows == 2
    np.testing.assert_allclose(rows.target, [0.8, 0.08])
    np.testing.assert_allclose(rows.logging, [0.5, 0.125])
    np.testing.assert_allclose(rows.rewards, [0.0, 1.0])
    assert harm_estimate(replay_rows([], 9, 1)) is None


def test_the_estimate_finds_harm_only_when_the_candidate_leans_away_from_clicks() -> None:
    harmful = harm_estimate(replay_rows(make(9, 1, -0.3, 2_000), 9, 1))
    neutral = harm_estimate(replay_rows(make(9, 1, 0.0, 2_000), 9, 1))
    assert harmful is not None and neutral is not None
    assert harmful.reliable and harmful.upper < 0.0
    assert neutral.reliable and neutral.lower <= 0.0 <= neutral.upper
    assert neutral.value == pytest.approx(0.0, abs=1e-12)  # weights 1 on every row: exactly the incumbent


async def test_a_candidate_the_replays_show_harmful_is_dropped_before_any_traffic() -> None:
    h = ScreenedHarness(ScriptedReplay(lean=-0.3))
    state = await h.launch()
    assert [a.kind for a in h.appended] == ["config"], "registered, never allocated"
    assert state.phase == "idle" and not state.candidates
    (record,) = off_policy_critiques(h)
    (verdict,) = record["payload"]["verdicts"]  # type: ignore[index]
    assert verdict["kept"] is False and verdict["rule"] == "ope_harm"
    assert verdict["replayed_requests"] == 600
    assert any("estimated harm" in r for r in verdict["reasons"])
    assert h.kinds("decision")[-1]["payload"]["kind"] == "no_candidate"  # type: ignore[index]
    assert h.config.state.allocation is None
    versions, logging_version = h.replay.asked[-1]
    assert logging_version == h.config.state.control_version and versions == (h.config.changes[1].version,)


async def test_a_candidate_without_shown_harm_goes_on_to_the_power_gate() -> None:
    h = ScreenedHarness(ScriptedReplay(lean=0.2))
    state = await h.launch()
    assert state.phase == "running"
    assert [a.kind for a in h.appended] == ["config", "allocation"]
    (record,) = off_policy_critiques(h)
    (verdict,) = record["payload"]["verdicts"]  # type: ignore[index]
    assert verdict["kept"] is True and verdict["rule"] is None
    assert any(r.startswith("ope_harm: no harm shown") for r in verdict["reasons"])


async def test_the_screen_waits_for_rows_then_keeps_a_candidate_it_cannot_judge() -> None:
    h = ScreenedHarness(ScriptedReplay(lean=None))
    state = await h.launch()
    assert state.phase == "registering" and state.screen_until_ms == T0 + 1000 + 300_000
    assert [a.kind for a in h.appended] == ["config"] and not off_policy_critiques(h)
    state = await h.tick(T0 + 200_000)
    assert state.phase == "registering", "still waiting"
    state = await h.tick(T0 + 302_000)
    assert state.phase == "running" and [a.kind for a in h.appended] == ["config", "allocation"]
    (record,) = off_policy_critiques(h)
    (verdict,) = record["payload"]["verdicts"]  # type: ignore[index]
    assert verdict["kept"] is True
    assert verdict["reasons"] == ["ope_harm: no estimate, 0 replayed request(s) within 300 s"]


async def test_without_replaying_sidecars_the_screen_is_skipped_and_says_nothing() -> None:
    h = ScreenedHarness(ScriptedReplay(lean=-0.3, active=False))
    state = await h.launch()
    assert state.phase == "running" and not off_policy_critiques(h)
    assert not h.replay.asked
