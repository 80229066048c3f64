"""Scenario files: the shipped ones load, and every kind of defect is refused naming its field."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from schemas.metrics import BUCKET_FIELDS
from simulator.scenario import Scenario, SimulatorError, load_scenario, parse_scenario, shipped_scenarios

Edit = Callable[[dict[str, Any]], None]


def test_shipped_scenarios_load_and_are_named_after_their_files() -> None:
    names = shipped_scenarios()
    assert {"apparel_core", "apparel_seasonal"} <= set(names)
    for name in names:
        scenario = load_scenario(name)
        assert isinstance(scenario, Scenario)
        assert scenario.name == name
        assert set(scenario.north_star) <= set(BUCKET_FIELDS)
        assert scenario.latency_slo_ms > 0
        assert scenario.requests_per_s > 0


def test_the_two_main_scenarios_differ_where_the_issue_says() -> None:
    core, seasonal = load_scenario("apparel_core"), load_scenario("apparel_seasonal")
    assert core.catalogue.duplicate_rate > seasonal.catalogue.duplicate_rate  # duplicate-heavy
    assert seasonal.catalogue.turnover_per_week > 2 * core.catalogue.turnover_per_week  # fast turnover
    assert seasonal.drift.taste_per_week > core.drift.taste_per_week  # drift
    novelty = {s.name: max(c.novelty_appetite for c in s.cohorts) for s in (core, seasonal)}
    assert novelty["apparel_seasonal"] > novelty["apparel_core"]  # novelty-seeking cohorts


def test_load_by_path(tmp_path: Path, scenario_dict: Callable[[str], dict[str, Any]]) -> None:
    data = scenario_dict("apparel_core")
    data["name"] = "my_world"
    path = tmp_path / "mine.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    assert load_scenario(path).name == "my_world"
    assert load_scenario(str(path)).name == "my_world"


def _set(path: str, value: Any) -> Edit:
    def edit(data: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node: Any = data
        for key in parents:
            node = node[int(key)] if key.isdigit() else node[key]
        node[int(last) if last.isdigit() else last] = value

    return edit


def _drop(path: str) -> Edit:
    def edit(data: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node: Any = data
        for key in parents:
            node = node[int(key)] if key.isdigit() else node[key]
        del node[last]

    return edit


def _dup_cohort(data: dict[str, Any]) -> None:
    data["cohorts"][1]["name"] = data["cohorts"][0]["name"]


def _dup_category(data: dict[str, Any]) -> None:
    data["catalogue"]["categories"][1]["name"] = data["catalogue"]["categories"][0]["name"]


BAD: list[tuple[str, Edit, str, str]] = [
    # (case, edit, field named in the error, a word of the rule)
    ("unknown top-level key", _set("colour", 1), "colour", "unknown field"),
    ("unknown nested key", _set("catalogue.sizes", [1]), "catalogue.sizes", "unknown field"),
    ("unknown key in a list item", _set("cohorts.0.age", 30), "cohorts[0].age", "unknown field"),
    ("missing key", _drop("latency.base_ms"), "latency.base_ms", "required"),
    ("missing block", _drop("drift"), "drift", "required"),
    ("string for a number", _set("requests_per_s", "fast"), "requests_per_s", "number"),
    ("bool for a number", _set("latency_slo_ms", True), "latency_slo_ms", "number"),
    ("float for an integer", _set("population.users", 10.5), "population.users", "integer"),
    ("number for a bool", _set("cohorts.0.new_users", 1), "cohorts[0].new_users", "true or false"),
    ("number for a string", _set("name", 3), "name", "string"),
    ("object for a list", _set("cohorts", {}), "cohorts", "list"),
    ("list for an object", _set("catalogue", []), "catalogue", "object"),
    ("below range", _set("catalogue.duplicate_rate", -0.1), "catalogue.duplicate_rate", "[0, 1]"),
    ("above range", _set("noise.fresh_bias", 99.0), "noise.fresh_bias", "[-50, 50]"),
    ("zero rate", _set("requests_per_s", 0), "requests_per_s", "must be in"),
    (
        "out of range in a list",
        _set("catalogue.categories.2.return_rate", 0.95),
        "catalogue.categories[2].return_rate",
        "0.9",
    ),
    ("wrong pair length", _set("catalogue.colourway_similarity", [0.9]), "catalogue.colourway_similarity", "2 values"),
    (
        "pair out of order",
        _set("catalogue.colourway_similarity", [0.99, 0.9]),
        "catalogue.colourway_similarity",
        "low <= high",
    ),
    ("empty list", _set("cohorts", []), "cohorts", "empty"),
    ("cohort shares", _set("cohorts.0.share", 0.9), "cohorts", "sum to 1"),
    ("category shares", _set("catalogue.categories.0.share", 0.5), "catalogue.categories", "sum to 1"),
    ("duplicate cohort", _dup_cohort, "cohorts", "distinct"),
    ("duplicate category", _dup_category, "catalogue.categories", "distinct"),
    ("north star field", _set("north_star", ["likes", "requests"]), "north_star[0]", "BUCKET_FIELDS"),
    ("north star ratio of itself", _set("north_star", ["clicks", "clicks"]), "north_star", "differ"),
    ("north star arity", _set("north_star", ["clicks"]), "north_star", "2 values"),
    ("users below prototypes", _set("population.users", 10), "population.users", "prototypes"),
    (
        "favourites above categories",
        _set("population.favourite_categories", 13),
        "population.favourite_categories",
        "12",
    ),
    ("bad name", _set("name", "has space"), "name", "letters"),
    ("null where required", _set("drift.seasonality", None), "drift.seasonality", "number"),
]


@pytest.mark.parametrize(("case", "edit", "field", "rule"), BAD, ids=[b[0] for b in BAD])
def test_bad_fields_are_refused_naming_field_and_rule(
    case: str, edit: Edit, field: str, rule: str, scenario_dict: Callable[[str], dict[str, Any]]
) -> None:
    data = scenario_dict("apparel_core")
    edit(data)
    with pytest.raises(SimulatorError) as info:
        parse_scenario(data)
    err = info.value
    assert err.field == field, case
    assert rule in err.rule, case
    assert str(err).startswith(f"{field}: ")
    assert err.hint


def test_season_peak_may_be_null_but_not_a_string(scenario_dict: Callable[[str], dict[str, Any]]) -> None:
    data = scenario_dict("apparel_core")
    data["catalogue"]["categories"][0]["season_peak_week"] = None
    assert parse_scenario(data).catalogue.categories[0].season_peak_week is None
    data["catalogue"]["categories"][0]["season_peak_week"] = "summer"
    with pytest.raises(SimulatorError, match=r"catalogue\.categories\[0\]\.season_peak_week: must be a number"):
        parse_scenario(data)


def test_file_level_defects(tmp_path: Path, scenario_dict: Callable[[str], dict[str, Any]]) -> None:
    with pytest.raises(SimulatorError, match="no shipped scenario") as info:
        load_scenario("apparel_nowhere")
    assert "apparel_core" in info.value.hint
    bad_json = tmp_path / "bad.json"
    bad_json.write_text("{not json", encoding="utf-8")
    with pytest.raises(SimulatorError, match=r"^\$: must be valid JSON"):
        load_scenario(bad_json)
    dup = tmp_path / "dup.json"
    dup.write_text('{"name": "a", "name": "b"}', encoding="utf-8")
    with pytest.raises(SimulatorError, match="duplicate key") as dup_info:
        load_scenario(dup)
    assert dup_info.value.field == "name"
    nan = tmp_path / "nan.json"
    text = json.dumps(scenario_dict("apparel_core")).replace('"requests_per_s": 3.0', '"requests_per_s": NaN')
    nan.write_text(text, encoding="utf-8")
    with pytest.raises(SimulatorError, match="requests_per_s: must be finite"):
        load_scenario(nan)
    top = tmp_path / "list.json"
    top.write_text("[]", encoding="utf-8")
    with pytest.raises(SimulatorError, match=r"^\$: must be an object"):
        load_scenario(top)
