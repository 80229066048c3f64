"""Tracking tokens: the arm and config version a request was served with, carried to its clicks.

The ranker creates one `TrackingToken` per request from the arm assignment
(`TrackingToken.for_arm`), builds the impression with `token.impression(...)`,
and hands `token.encode()` to the page (a compact URL-safe string).  When the
page reports a click or a conversion, `TrackingToken.decode(text)` restores
the token and `token.click(...)` / `token.conversion(...)` build events that
carry the same `arm_id` and `config_version`: attribution needs no join
downstream (DESIGN.md, "Events carry their arm").

Pure: no I/O.  Event ids are deterministic (request id + kind + item + time),
so a click reported twice by the page is recognisable downstream.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, Literal

import msgspec

from schemas.events import (
    SCHEMA_VERSION,
    Attribution,
    Click,
    Conversion,
    EventTimeMs,
    Id,
    Impression,
    ShownItem,
    Version,
)
from schemas.limits import MAX_STR_LEN
from serving_sidecar.errors import SidecarError

TOKEN_FORMAT: Final = 1
#: Longest encoded token accepted by `decode` (five ids of MAX_STR_LEN plus numbers, base64).
MAX_TOKEN_CHARS: Final = 4 * (6 * MAX_STR_LEN + 64) // 3 + 4


class TrackingError(SidecarError):
    """A tracking token string is malformed, tampered with or out of bounds."""


class _Wire(msgspec.Struct, frozen=True, array_like=True, forbid_unknown_fields=True):
    """The token on the wire: a JSON array (no field names), strictly typed."""

    fmt: Literal[1]
    request_id: Id
    user_id: Id
    cohort: Id
    surface: Id
    arm_id: Id
    config_version: Version
    event_time_ms: EventTimeMs


_wire_encoder: Final = msgspec.json.Encoder()
_wire_decoder: Final = msgspec.json.Decoder(_Wire)


def _event_id(*parts: str) -> str:
    """`request:kind[:item:time]`, hashed when it would exceed the id length limit."""
    text = ":".join(parts)
    if len(text) <= MAX_STR_LEN:
        return text
    return "h:" + hashlib.blake2b(text.encode(), digest_size=20).hexdigest()


@dataclass(frozen=True, slots=True)
class TrackingToken:
    """What one request was served with: who, where, which arm and which config version.

    Created by the ranker once per request; every event of that request is
    built from it, so all of them carry the same attribution.
    """

    request_id: str
    user_id: str
    cohort: str
    surface: str
    arm_id: str
    config_version: int
    event_time_ms: int

    @classmethod
    def for_arm(
        cls,
        *,
        request_id: str,
        user_id: str,
        cohort: str,
        surface: str,
        arm_id: str,
        config_version: int,
        event_time_ms: int,
    ) -> TrackingToken:
        """The token of a request served by arm `arm_id` with config `config_version` (validated)."""
        token = cls(request_id, user_id, cohort, surface, arm_id, config_version, event_time_ms)
        # Round-trip through the strict wire type: bounds are checked once, here.
        return cls.decode(token.encode())

    def attribution(self) -> Attribution:
        """The fields every event of this request shares."""
        return Attribution(
            schema_version=SCHEMA_VERSION,
            request_id=self.request_id,
            user_id=self.user_id,
            cohort=self.cohort,
            surface=self.surface,
            arm_id=self.arm_id,
            config_version=self.config_version,
        )

    def impression(
        self, items: Sequence[ShownItem], ranker_latency_ms: float, *, t_ms: int | None = None
    ) -> Impression:
        """The impression of the served list (event time = the request's, unless `t_ms` is given)."""
        at = self.event_time_ms if t_ms is None else t_ms
        return Impression(
            **self.attribution(),
            event_id=_event_id(self.request_id, "imp"),
            event_time_ms=at,
            items=tuple(items),
            ranker_latency_ms=ranker_latency_ms,
        )

    def click(self, item_id: str, position: int, t_ms: int) -> Click:
        """A click on a shown item, attributed to this request's arm and config version."""
        return Click(
            **self.attribution(),
            event_id=_event_id(self.request_id, "clk", item_id, str(t_ms)),
            event_time_ms=t_ms,
            item_id=item_id,
            position=position,
        )

    def conversion(self, item_id: str, revenue: float, t_ms: int) -> Conversion:
        """A purchase following a click, attributed to this request's arm and config version."""
        return Conversion(
            **self.attribution(),
            event_id=_event_id(self.request_id, "cnv", item_id, str(t_ms)),
            event_time_ms=t_ms,
            item_id=item_id,
            revenue=revenue,
        )

    def encode(self) -> str:
        """A compact URL-safe string for the page to carry (not signed: it only attributes)."""
        wire = _Wire(
            TOKEN_FORMAT,
            self.request_id,
            self.user_id,
            self.cohort,
            self.surface,
            self.arm_id,
            self.config_version,
            self.event_time_ms,
        )
        return base64.urlsafe_b64encode(_wire_encoder.encode(wire)).rstrip(b"=").decode("ascii")

    @classmethod
    def decode(cls, text: str) -> TrackingToken:
        """Parse a token string from a page; raises `TrackingError` naming what is wrong."""
        if len(text) > MAX_TOKEN_CHARS:
            msg = f"tracking token: must be at most {MAX_TOKEN_CHARS} characters, got {len(text)}"
            raise TrackingError(msg)
        try:
            raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        except (binascii.Error, ValueError) as err:
            msg = "tracking token: must be URL-safe base64"
            raise TrackingError(msg, hint="pass the string from TrackingToken.encode unchanged") from err
        try:
            wire = _wire_decoder.decode(raw)
        except msgspec.DecodeError as err:
            msg = f"tracking token: {err}"
            raise TrackingError(msg, hint="pass the string from TrackingToken.encode unchanged") from err
        return cls(
            wire.request_id,
            wire.user_id,
            wire.cohort,
            wire.surface,
            wire.arm_id,
            wire.config_version,
            wire.event_time_ms,
        )
