"""Agents-only variant runs (`bench/agents_paired.py`): overrides, the paired summary, and a real short run."""

from __future__ import annotations

import importlib
import json
import math
import sys
from pathlib import Path
from typing import Any

import pytest

from rectune.simloop import preset_for
from schemas.config import default_config
from simulator.scenario import load_scenario
from simulator.world import World

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
ap: Any = importlib.import_module("agents_paired")


def preset() -> Any:
    return preset_for(load_scenario("apparel_thin"), 86_400.0, randomization_unit="request")


def test_an_override_value_is_json_else_a_string() -> None:
    assert ap.parse_override("ascent.z_min=2").value == 2
    assert ap.parse_override("ascent.guard_metric=null").value is None
    assert ap.parse_override("online.primary=ctr").value == "ctr"
    assert ap.parse_override(" loop.k = 4").field == "k"
    assert ap.parse_override("loop.fit_latency=false").text() == "loop.fit_latency=false"


@pytest.mark.parametrize(
    ("text", "names"),
    [("ascent.z_min", "SECTION.FIELD=VALUE"), ("z_min=2", "SECTION.FIELD=VALUE"), ("actor.k=2", "section")],
)
def test_a_malformed_override_is_refused_with_the_rule(text: str, names: str) -> None:
    with pytest.raises(ap.VariantError, match=names):
        ap.parse_override(text)


def test_overrides_reach_the_loop_the_policy_and_the_brain() -> None:
    overrides = [ap.parse_override(t) for t in ("loop.k=4", "online.futility_fraction=0.3", "ascent.z_min=2.5")]
    changed = ap.apply_overrides(preset(), overrides)
    assert changed.settings.k == 4
    assert changed.policy.futility_fraction == 0.3
    assert ap.brain_for(changed, overrides, 0)._ascent.z_min == 2.5
    untouched = ap.apply_overrides(preset(), [])
    assert untouched == preset()


def test_an_unknown_field_or_a_value_the_settings_refuse_names_the_field() -> None:
    with pytest.raises(ap.VariantError, match=r"ascent\.zmin: AscentSettings has no such field"):
        ap.brain_for(preset(), [ap.parse_override("ascent.zmin=2")], 0)
    with pytest.raises(ap.VariantError, match="z_min"):
        ap.brain_for(preset(), [ap.parse_override("ascent.z_min=-1")], 0)


def run(scenario: str, seed: int, lift: float, gain: float, **extra: Any) -> dict[str, Any]:
    return {
        "scenario": scenario,
        "seed": seed,
        "lift": lift,
        "gain": gain,
        "regressions": extra.pop("regressions", 0),
        "promotions": extra.pop("promotions", 1),
        "final_meets_slo": extra.pop("final_meets_slo", True),
        **extra,
    }


def test_the_paired_summary_pairs_by_seed_and_gives_the_difference_with_its_se() -> None:
    a = [run("core", 0, 0.05, 100.0), run("core", 1, 0.07, 300.0), run("core", 2, 0.01, 1.0), run("thin", 0, 0.0, 0.0)]
    b = [run("core", 1, 0.08, 300.0, regressions=1), run("core", 0, 0.08, 200.0, final_meets_slo=False)]
    out = ap.paired_summary(a, b)
    assert list(out) == ["core"]  # thin and core seed 2 have no pair
    core = out["core"]
    assert core["seeds"] == [0, 1]
    assert core["lift_a_pp"] == pytest.approx(6.0)
    assert core["lift_diff_pp"] == pytest.approx(2.0)  # +3 and +1 points
    assert core["lift_diff_se_pp"] == pytest.approx(1.0)  # sd sqrt(2) over sqrt(2) runs
    assert core["gain_ratio"] == pytest.approx(500.0 / 400.0)
    assert core["regressions"] == [0, 1]
    assert core["finals_over_slo"] == [0, 1]
    assert "share_diff" not in core


def test_shares_are_compared_only_when_both_files_carry_them() -> None:
    a = [run("core", 0, 0.05, 1.0, oracle_share=0.5), run("core", 1, 0.05, 1.0, oracle_share=0.6)]
    b = [run("core", 0, 0.06, 1.0, oracle_share=0.55), run("core", 1, 0.06, 1.0, oracle_share=0.75)]
    core = ap.paired_summary(a, b)["core"]
    assert core["share_diff"] == pytest.approx(0.1)
    assert core["share_diff_se"] == pytest.approx(0.05)


def test_a_repeated_seed_or_no_common_seed_is_refused() -> None:
    with pytest.raises(ap.VariantError, match="may appear once"):
        ap.paired_summary([run("core", 0, 0.0, 0.0)] * 2, [run("core", 0, 0.0, 0.0)])
    with pytest.raises(ap.VariantError, match=r"B: runs\[0\]\.regressions: missing"):
        ap.paired_summary([run("core", 0, 0.0, 0.0)], [{"scenario": "core", "seed": 0, "lift": 0.0, "gain": 0.0}])
    with pytest.raises(ap.VariantError, match="no \\(scenario, seed\\) in common"):
        ap.paired_summary([run("core", 0, 0.0, 0.0)], [run("core", 1, 0.0, 0.0)])


def test_a_real_short_run_is_scored_and_compares_equal_with_itself(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "base.json"
    argv = ["run", "--seeds", "3:4", "--scenario", "apparel_core", "--days", "3", "--jobs", "1", "--out", str(out)]
    assert ap.main(argv) == 0
    data = json.loads(out.read_text())
    assert data["meta"]["days"] == 3.0
    assert data["meta"]["seeds"] == [3, 4]
    (record,) = data["runs"]
    assert (record["scenario"], record["seed"]) == ("apparel_core", 3)
    world = World(load_scenario("apparel_core"), seed=3)
    assert record["start_value"] == pytest.approx(float(world.expected(default_config(), at_s=0.0).north_star))
    # three days of core traffic ship one winner (a deterministic run): the final incumbent is scored, not the start
    assert record["promotions"] >= 1
    assert record["lift"] > 0.0
    assert record["lift"] == pytest.approx(record["final_value"] / record["start_value"] - 1.0)
    assert record["requests"] > 0.0
    assert math.isfinite(record["gain"])
    assert record["gain"] != 0.0
    assert "oracle_share" not in record
    capsys.readouterr()
    assert ap.main(["compare", str(out), str(out)]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["apparel_core"]["lift_diff_pp"] == 0.0
    assert summary["apparel_core"]["gain_ratio"] == pytest.approx(1.0)
    assert summary["apparel_core"]["seeds"] == [3]


def test_compare_refuses_files_of_different_budgets(tmp_path: Path) -> None:
    for name, days in (("a", 1.0), ("b", 2.0)):
        (tmp_path / f"{name}.json").write_text(json.dumps({"meta": {"days": days}, "runs": []}))
    with pytest.raises(SystemExit):
        ap.main(["compare", str(tmp_path / "a.json"), str(tmp_path / "b.json")])
    (tmp_path / "c.json").write_text("[]")
    with pytest.raises(SystemExit):
        ap.main(["compare", str(tmp_path / "a.json"), str(tmp_path / "c.json")])


def test_with_an_oracle_budget_a_run_records_the_share_of_the_oracles_lift(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tuning_world: Any = importlib.import_module("_tuning_world")
    monkeypatch.setattr(tuning_world, "CACHE", tmp_path)  # the repository's oracle cache stays untouched
    record = ap.run_one("apparel_core", 3, 3.0, [], oracle_evaluations=20)
    assert list(tmp_path.rglob("*.json")), "the search's result is cached where the bench keeps it"
    assert record["oracle_value"] > record["start_value"]
    lift = record["oracle_value"] - record["start_value"]
    assert record["oracle_share"] == pytest.approx((record["final_value"] - record["start_value"]) / lift)
    assert record["oracle_share"] > 0.0
    again = ap.run_one("apparel_core", 3, 3.0, [], oracle_evaluations=20)  # from the cache: the same reference
    assert again["oracle_value"] == record["oracle_value"]
    assert "oracle_value" not in ap.run_one("apparel_thin", 3, 0.5, [])


def test_a_screen_flag_is_parsed_or_refused_with_the_rule() -> None:
    assert ap._screen_settings("6:0.5") == ap.ScreenSettings(pool=6, share_of_horizon=0.5)
    assert ap._screen_settings("8").share_of_horizon == 0.25
    for text in ("9:0.25", "x:0.25", "8:-1"):
        with pytest.raises(ap.VariantError, match="POOL:SHARE"):
            ap._screen_settings(text)
