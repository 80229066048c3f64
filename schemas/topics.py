"""The topic catalogue: every topic the system uses, its partitions and retention."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

DAY_MS: Final = 86_400_000


@dataclass(frozen=True, slots=True)
class TopicSpec:
    """One topic: name, default partition count, retention and cleanup policy."""

    name: str
    partitions: int
    retention_ms: int  # -1 = keep forever
    cleanup_policy: str  # "delete", "compact" or "compact,delete"
    description: str

    def configs(self) -> dict[str, str]:
        """Topic-level configs for CreateTopics."""
        return {"retention.ms": str(self.retention_ms), "cleanup.policy": self.cleanup_policy}


EVENTS: Final = TopicSpec(
    "rectune.events", 8, 7 * DAY_MS, "delete", "impressions, clicks, conversions (envelopes or bare events)"
)
METRICS: Final = TopicSpec(
    "rectune.metrics", 4, 30 * DAY_MS, "delete", "closed metric windows: additive partials per (partition, window, arm)"
)
CONFIG: Final = TopicSpec(
    "rectune.config", 1, -1, "delete", "signed, versioned cascade config changes; total order; full history"
)
DECISIONS: Final = TopicSpec(
    "rectune.decisions", 1, -1, "delete", "every agent step: proposals, critiques, allocations, reads, decisions"
)
ALERTS: Final = TopicSpec(
    "rectune.alerts", 1, 30 * DAY_MS, "delete", "SLO breaches, SRM, guardrail breaches, rollbacks"
)
DLQ: Final = TopicSpec(
    "rectune.dlq", 1, 30 * DAY_MS, "delete", "refused messages and events with reason and source coordinates"
)
REPLAY: Final = TopicSpec(
    "rectune.replay",
    1,
    7 * DAY_MS,
    "delete",
    "sampled control requests replayed under the registered candidates: the Critic's off-policy rows",
)
STREAM_STATE: Final = TopicSpec(
    "rectune.streams.state",
    8,
    7 * DAY_MS,
    "compact,delete",
    "stream worker checkpoints: state + source offset per events partition (one topic per app_id)",
)

CATALOGUE: Final = (EVENTS, METRICS, CONFIG, DECISIONS, ALERTS, DLQ, REPLAY)


def state_topic(app_id: str, partitions: int) -> TopicSpec:
    """The checkpoint topic of one stream worker group (`app_id`).

    One per group: a new group on a broker where another has run must not
    restore that group's checkpoints.
    """
    return TopicSpec(
        f"{STREAM_STATE.name}.{app_id}",
        partitions,
        STREAM_STATE.retention_ms,
        STREAM_STATE.cleanup_policy,
        f"checkpoints of stream worker group {app_id!r}",
    )


def by_name(name: str) -> TopicSpec:
    """Look a topic up by name (KeyError names the unknown topic)."""
    for spec in CATALOGUE:
        if spec.name == name:
            return spec
    msg = f"topic {name!r} is not in the catalogue"
    raise KeyError(msg)
