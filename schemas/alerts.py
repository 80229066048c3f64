"""Alerts published to `rectune.alerts`: SLO breaches, refused configs, SRM, guardrails, rollbacks."""

from __future__ import annotations

from typing import Annotated, Final, Literal

import msgspec
from msgspec import Meta

from schemas.events import EventTimeMs, Id

AlertKind = Literal[
    "slo_breach", "breaker_reset", "config_refused", "srm", "guardrail_breach", "rollback", "stale_config"
]


class Detail(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One named figure attached to an alert (lists of pairs, not free-form maps)."""

    name: Id
    value: str


class Alert(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, tag_field="type", tag="alert"):
    """Something an operator (or the agents) must know about, with the figures behind it."""

    schema_version: Literal[1]
    kind: AlertKind
    severity: Literal["info", "warning", "critical"]
    source: Id
    message: Annotated[str, Meta(max_length=4000)]
    at_ms: EventTimeMs
    surface: str | None = None
    arm_id: str | None = None
    config_version: int | None = None
    details: tuple[Detail, ...] = ()


_encoder: Final = msgspec.json.Encoder()
_decoder: Final = msgspec.json.Decoder(Alert)


def encode_alert(alert: Alert) -> bytes:
    """An alert as a `rectune.alerts` record value."""
    return _encoder.encode(alert)


def decode_alert(data: bytes) -> Alert:
    """Parse an alert record (tests, dashboards); raises msgspec errors on bad input."""
    return _decoder.decode(data)
