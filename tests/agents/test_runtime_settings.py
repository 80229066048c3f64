"""`AgentRuntime` refuses missing or bad signing keys when it is built, before any I/O, naming the variable."""

from __future__ import annotations

from typing import Any

import pytest

from agents.runtime import AgentRuntime, RuntimeSettings
from schemas.config import ConfigError

KEYS = "k1:" + "ab" * 16


def unreachable(**kw: Any) -> RuntimeSettings:
    """Settings pointing at port 1, where nothing listens: building the runtime there must not touch it."""
    return RuntimeSettings(bootstrap="127.0.0.1:1", redis_url="redis://127.0.0.1:1/0", **kw)


@pytest.fixture(autouse=True)
def no_env_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RECTUNE_CONFIG_KEYS", raising=False)
    monkeypatch.delenv("RECTUNE_CONFIG_KEY_ID", raising=False)


def test_no_signing_keys_is_refused_naming_the_variable() -> None:
    with pytest.raises(ConfigError) as err:
        AgentRuntime(unreachable())
    assert err.value.field == "RECTUNE_CONFIG_KEYS" and "unset or empty" in err.value.rule
    assert "RECTUNE_CONFIG_KEY_ID" in err.value.hint


def test_a_key_id_that_names_no_key_is_refused_naming_its_variable() -> None:
    with pytest.raises(ConfigError) as err:
        AgentRuntime(unreachable(config_keys=KEYS, config_key_id="k2"))
    assert err.value.field == "RECTUNE_CONFIG_KEY_ID (active_key_id)"
    assert err.value.rule == "must name one of the keys ['k1']"


def test_a_malformed_key_is_refused_naming_the_keys_variable_and_the_entry(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RECTUNE_CONFIG_KEYS", "k1:abcd")  # read from the environment when the settings leave it empty
    monkeypatch.setenv("RECTUNE_CONFIG_KEY_ID", "k1")
    with pytest.raises(ConfigError) as err:
        AgentRuntime(unreachable())
    assert err.value.field == "RECTUNE_CONFIG_KEYS (keys[0])" and "at least 16 bytes" in err.value.rule


def test_the_gemini_brain_without_its_key_is_refused_when_built(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GEMINI_API_KEY", raising=False)
    with pytest.raises(ValueError, match="GEMINI_API_KEY is not set"):
        AgentRuntime(unreachable(brain="gemini", config_keys=KEYS, config_key_id="k1"))


def test_good_keys_build_the_keyring_the_runtime_signs_with() -> None:
    runtime = AgentRuntime(unreachable(config_keys=KEYS, config_key_id="k1"))
    assert runtime.keyring.active_key_id == "k1" and runtime.keyring.keys["k1"] == bytes.fromhex("ab" * 16)
