"""docker-compose.yml only runs real `rectune` commands with real settings."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from rectune.cli import build_parser
from rectune.settings import ENV_VARS, load_settings

ROOT = Path(__file__).resolve().parents[2]


def compose() -> dict[str, Any]:
    data = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert isinstance(data, dict)
    return data


def rectune_services() -> list[tuple[str, dict[str, Any]]]:
    return [(name, svc) for name, svc in compose()["services"].items() if svc.get("build")]


def test_compose_runs_kafka_redis_and_a_worker() -> None:
    services = compose()["services"]
    assert "apache/kafka" in services["kafka"]["image"]
    assert services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert services["redis"]["image"].startswith("redis")
    assert services["worker"]["command"][:2] == ["rectune", "worker"]


@pytest.mark.parametrize(("name", "service"), rectune_services())
def test_every_command_is_a_real_rectune_command(name: str, service: dict[str, Any]) -> None:
    command = service["command"]
    assert command[0] == "rectune", f"{name}: command must start with rectune"
    parser = build_parser()
    try:
        args = parser.parse_args(command[1:])
    except SystemExit as err:  # argparse exits on an unknown command
        pytest.fail(f"{name}: {command} is not a valid rectune command ({err})")
    assert callable(args.handler)


@pytest.mark.parametrize(("name", "service"), rectune_services())
def test_every_variable_is_a_real_setting_with_a_valid_value(name: str, service: dict[str, Any]) -> None:
    env = {k: str(v) for k, v in service.get("environment", {}).items()}
    unknown = sorted(set(env) - set(ENV_VARS.values()))
    assert not unknown, f"{name}: {unknown} are not settings (see rectune/settings.py)"
    load_settings(env)  # raises SettingsError naming the variable if a value breaks a rule


def test_each_worker_group_has_its_own_state_topic() -> None:
    from rectune.admin import catalogue_for

    a = {t.name for t in catalogue_for(4, "group-a")}
    b = {t.name for t in catalogue_for(4, "group-b")}
    assert "rectune.streams.state.group-a" in a and "rectune.streams.state.group-a" not in b
    assert {t.partitions for t in catalogue_for(4, "g") if t.name.startswith("rectune.streams.state")} == {4}
