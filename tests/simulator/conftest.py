"""Small worlds for the simulator tests (the shipped scenarios, shrunk so each test runs in ~a second)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from simulator.scenario import SCENARIO_DIR, Scenario, parse_scenario
from simulator.world import World


def shipped_dict(name: str) -> dict[str, Any]:
    """The raw JSON object of a shipped scenario (tests edit copies of it)."""
    data: dict[str, Any] = json.loads((SCENARIO_DIR / f"{name}.json").read_text(encoding="utf-8"))
    return data


def small_scenario(name: str = "apparel_core", **population: int) -> Scenario:
    """A shipped scenario with fewer styles, prototypes and users (same behaviour, cheaper plans)."""
    data = shipped_dict(name)
    data["catalogue"]["live_styles"] = 400
    data["population"].update({"prototypes": 48, "users": 4_000, **population})
    return parse_scenario(data)


@pytest.fixture(scope="session")
def small_world() -> World:
    return World(small_scenario(), seed=3)


@pytest.fixture(scope="session")
def scenario_dict() -> Any:
    """`shipped_dict` as a fixture (test modules cannot import conftest by name)."""
    return shipped_dict


@pytest.fixture(scope="session")
def make_scenario() -> Any:
    """`small_scenario` as a fixture."""
    return small_scenario
