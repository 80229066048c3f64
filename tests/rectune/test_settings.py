"""Settings come from RECTUNE_* variables; bad values are refused by name."""

from __future__ import annotations

import pytest

from rectune.errors import SettingsError
from rectune.settings import ENV_VARS, Settings, load_settings


def test_defaults_and_overrides() -> None:
    assert load_settings({}) == Settings()
    s = load_settings({"RECTUNE_BOOTSTRAP": "h:1", "RECTUNE_BUCKETS": "128", "RECTUNE_WINDOW_S": "30"})
    assert (s.bootstrap, s.buckets, s.window_s) == ("h:1", 128, 30.0)
    assert load_settings({"RECTUNE_BUCKETS": "128"}, buckets=32).buckets == 32


@pytest.mark.parametrize(
    ("var", "value", "needle"),
    [
        ("RECTUNE_BUCKETS", "many", "must be an integer"),
        ("RECTUNE_BUCKETS", "0", "must be in [1, 65536]"),
        ("RECTUNE_WINDOW_S", "-1", "must be in"),
        ("RECTUNE_LOG_LEVEL", "loud", "must be one of"),
        ("RECTUNE_EVENTS_PARTITIONS", "5000", "must be in [1, 1024]"),
    ],
)
def test_bad_values_name_the_variable_and_rule(var: str, value: str, needle: str) -> None:
    with pytest.raises(SettingsError) as info:
        load_settings({var: value})
    assert var in str(info.value) and needle in str(info.value)


def test_every_field_has_a_variable() -> None:
    assert all(v.startswith("RECTUNE_") for v in ENV_VARS.values())
    assert len(set(ENV_VARS.values())) == len(ENV_VARS)
