"""Settings of every `rectune` process, read from the environment.

One frozen value object; each field has one environment variable (listed in
`ENV_VARS`, which the docker-compose test checks against).  A bad value is
refused with the variable's name and the rule.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Final

from rectune.errors import SettingsError


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything a worker, CLI command or the demo needs to connect and run."""

    bootstrap: str = "127.0.0.1:9092"
    redis_url: str = "redis://127.0.0.1:6379/0"
    events_partitions: int = 8
    window_s: float = 60.0
    allowed_lateness_s: float = 10.0
    buckets: int = 64
    checkpoint_interval_s: float = 2.0
    idle_close_s: float = 30.0
    session_timeout_s: float = 10.0
    app_id: str = "rectune-streams"
    log_level: str = "info"
    engine: str = "faust"
    #: Config signing keys "id:hex,id:hex" (RECTUNE_CONFIG_KEYS); never printed, never defaulted in code.
    config_keys: str = field(default="", repr=False)
    #: Key id new config changes are signed with (RECTUNE_CONFIG_KEY_ID).
    config_key_id: str = ""
    #: Name of this sidecar replica in alerts, envelopes and last-known-good records.
    sidecar_id: str = "sidecar"
    #: `rectune agents`: path of the policy JSON file (Online policy + loop settings); "" = built-in defaults.
    agents_policy: str = ""
    #: `rectune agents`: seconds between loop ticks (each tick renews the lease).
    agents_tick_s: float = 5.0
    #: `rectune agents`: lease time-to-live; a standby takes over this long after a leader dies (> tick).
    agents_lease_ttl_s: float = 15.0


#: Environment variable of each settings field.
ENV_VARS: Final = {f.name: f"RECTUNE_{f.name.upper()}" for f in fields(Settings)}

_RULES: Final = {
    "events_partitions": (1, 1024),
    "buckets": (1, 65_536),
    "window_s": (0.001, 86_400.0),
    "allowed_lateness_s": (0.0, 86_400.0),
    "checkpoint_interval_s": (0.05, 3_600.0),
    "idle_close_s": (0.1, 86_400.0),
    "session_timeout_s": (1.0, 300.0),
    "agents_tick_s": (0.05, 3_600.0),
    "agents_lease_ttl_s": (0.5, 3_600.0),
}


def load_settings(env: Mapping[str, str] | None = None, **overrides: object) -> Settings:
    """Build settings from the environment (or `env`), then apply `overrides`.

    Called by every CLI command.  Raises `SettingsError` naming the variable.
    """
    source = os.environ if env is None else env
    values: dict[str, object] = {}
    for f in fields(Settings):
        var = ENV_VARS[f.name]
        if var not in source:
            continue
        raw = source[var]
        kind = type(getattr(Settings(), f.name))
        try:
            values[f.name] = kind(raw)
        except ValueError as err:
            noun = {int: "an integer", float: "a number"}.get(kind, "a string")
            msg = f"{var}: must be {noun}, got {raw!r}"
            raise SettingsError(msg, hint=f"unset {var} to use the default") from err
    values.update({k: v for k, v in overrides.items() if v is not None})
    settings = Settings(**values)  # type: ignore[arg-type]
    for name, (lo, hi) in _RULES.items():
        value = getattr(settings, name)
        if not lo <= value <= hi:
            msg = f"{ENV_VARS[name]}: must be in [{lo}, {hi}], got {value}"
            raise SettingsError(msg, hint="see rectune/settings.py for every setting")
    if settings.engine not in {"faust", "direct"}:
        msg = f"{ENV_VARS['engine']}: must be 'faust' or 'direct', got {settings.engine!r}"
        raise SettingsError(msg, hint="faust: the Faust app; direct: the same processor on a plain aiokafka consumer")
    if settings.log_level.lower() not in {"debug", "info", "warning", "error"}:
        msg = f"{ENV_VARS['log_level']}: must be one of debug, info, warning, error"
        raise SettingsError(msg)
    return settings
