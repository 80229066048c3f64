"""The interleaving probe (`bench/interleave_probe.py`): the team-draft merge and the credit it reads."""

from __future__ import annotations

import importlib
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
ip: Any = importlib.import_module("interleave_probe")
tw: Any = importlib.import_module("_tuning_world")

ranked = st.lists(st.integers(0, 30), min_size=1, max_size=12, unique=True)


@settings(max_examples=200, deadline=None)
@given(a=ranked, b=ranked, seed=st.integers(0, 2**16))
def test_a_team_draft_merge_keeps_each_teams_order_and_takes_turns(a: list[int], b: list[int], seed: int) -> None:
    rows, team = ip.team_draft(np.array(a), np.array(b), np.random.default_rng(seed))
    assert rows.size == team.size
    assert len(set(rows.tolist())) == rows.size, "no item is shown twice"
    for side, source in ((0, a), (1, b)):
        mine = [int(r) for r, t in zip(rows, team, strict=True) if t == side]
        assert all(r in source for r in mine)
        assert mine == sorted(mine, key=source.index), "a team adds its items in its own rank order"
    assert rows.size == min(len(a), len(b)), "the merge is as long as the shorter list"
    if set(a).isdisjoint(b):
        assert abs(int((team == 0).sum()) - int((team == 1).sum())) <= 1, "the team behind picks next"


def test_merging_a_list_with_itself_shows_it_unchanged_with_coin_flipped_teams() -> None:
    a = np.arange(10)
    teams = []
    for seed in range(200):
        rows, team = ip.team_draft(a, a.copy(), np.random.default_rng(seed))
        assert rows.tolist() == a.tolist()
        assert abs(int(team.sum()) - 5) <= 1
        teams.append(team[0])
    assert 60 <= sum(teams) <= 140, "the first pick is a fair coin"


def test_a_config_interleaved_with_itself_earns_no_credit_and_a_one_sided_list_earns_all() -> None:
    bw = tw.bench_world("apparel_thin", 0, 1.0)
    plan = bw.world._plan(bw.start, 0)
    merged = ip.merged_plans(bw.world, plan, plan, 0, 8, 0)
    d = ip.credits(bw.world, merged, 50_000, 0)
    se = float(d.std(ddof=1)) / math.sqrt(d.size)
    assert abs(float(d.mean())) < 4 * se, "identical lists: neither team is preferred"
    assert float(d.std()) > 0
    only_b = ip.Merged(merged.rows, merged.team, np.where(merged.team == 1, merged.click_p, 0.0))
    assert (ip.credits(bw.world, only_b, 5_000, 0) >= 0).all(), "clicks only on B's items credit only B"


def test_the_summary_counts_only_moves_clear_in_truth_and_in_the_probes_own_read() -> None:
    def read(lift: float, credit: float, se: float = 0.001) -> Any:
        return ip.MoveRead("p", 1, lift, credit, 1.0, se, credit * 10, 2.8 * lift / 0.02)

    reads = [
        read(0.03, 0.01),
        read(0.02, -0.01),
        read(-0.01, -0.02),
        read(-0.02, 0.02),
        read(0.001, -0.5),  # too small a true lift
        read(0.05, 0.001),  # the probe's own read is within noise
    ]
    s = ip.summary(reads)
    assert s["moves"] == 6
    assert s["clear_moves"] == 4
    assert s["sign_agreement"] == 2 / 4
    assert (s["gains"], s["gains_passed"], s["losses"], s["losses_passed"]) == (2, 1, 2, 1)
    assert reads[0].factor == (0.1 / (2.8 * 0.03 / 0.02)) ** 2
