"""Exploration replay records on `rectune.replay`: what registered candidates would have shown, on logged requests.

The sidecar samples a share of the requests its control arm serves with
exploration on.  For each sampled request it replays every candidate config
registered on the config topic but not yet given traffic through the same
cascade on the same candidate set, and records, per shown slot, the
candidate's probability of putting the logged item there given the logged
earlier slots, beside the logging policy's own propensity.  The clicks of the
request are joined to the slots before the record leaves.

The Critic turns these rows into an off-policy estimate of candidate minus
incumbent (`agents.ope_replay`) before the candidate gets any traffic.

Lists of pairs, not maps, and strict decoding: a record whose target lists do
not match its slots is refused (`ReplayRecord.__post_init__`).
"""

from __future__ import annotations

from typing import Annotated, Final, Literal

import msgspec
from msgspec import Meta

from schemas.events import SCHEMA_VERSION, EventTimeMs, Id, Position, Propensity, Version
from schemas.limits import MAX_ITEMS_PER_IMPRESSION

__all__ = [
    "MAX_REPLAY_TARGETS",
    "SCHEMA_VERSION",
    "ReplayRecord",
    "ReplaySlot",
    "ReplayTarget",
    "decode_replay",
    "encode_replay",
]

#: At most this many candidates are replayed per request (the loop registers k, a handful).
MAX_REPLAY_TARGETS: Final = 16
Probability = Annotated[float, Meta(ge=0.0, le=1.0)]


class ReplaySlot(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One shown slot of a logged request: the item, the logging policy's propensity, and whether it was clicked."""

    item_id: Id
    position: Position
    propensity: Propensity
    clicked: bool = False


class ReplayTarget(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One candidate's per-slot probabilities of the logged items, each given the logged earlier slots."""

    config_version: Version
    probabilities: Annotated[tuple[Probability, ...], Meta(max_length=MAX_ITEMS_PER_IMPRESSION)]


class ReplayRecord(
    msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, tag_field="type", tag="replay"
):
    """One sampled request of the logging (control) arm, with every registered candidate's probabilities."""

    schema_version: Literal[1]
    request_id: Id
    surface: Id
    cohort: Id
    user_id: Id
    arm_id: Id
    config_version: Version
    event_time_ms: EventTimeMs
    slots: Annotated[tuple[ReplaySlot, ...], Meta(min_length=1, max_length=MAX_ITEMS_PER_IMPRESSION)]
    targets: Annotated[tuple[ReplayTarget, ...], Meta(max_length=MAX_REPLAY_TARGETS)]

    def __post_init__(self) -> None:
        for target in self.targets:
            if len(target.probabilities) != len(self.slots):
                msg = (
                    f"targets[version {target.config_version}].probabilities: must have one value per slot "
                    f"({len(self.slots)}), got {len(target.probabilities)}"
                )
                raise ValueError(msg)


_encoder: Final = msgspec.json.Encoder()
_decoder: Final = msgspec.json.Decoder(ReplayRecord)


def encode_replay(record: ReplayRecord) -> bytes:
    """A replay record as a `rectune.replay` record value (the sidecar's replay sink)."""
    return _encoder.encode(record)


def decode_replay(data: bytes) -> ReplayRecord:
    """Parse a `rectune.replay` record (the agents' replay feed); raises `msgspec.ValidationError` on bad input."""
    return _decoder.decode(data)
