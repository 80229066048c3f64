"""What `rectune traffic` runs and what it counts: the plan, the counters, one served request, the holdout.

What lives here: `TrafficPlan` (the flags of `rectune traffic`, refused when
they cannot run), `TrafficCounts` (the counters the stats file carries),
`Served` (one request as served), `Holdout` (the salted-hash share of users
kept on the starting config; see "Holdout" in `rectune.traffic`), and the
constants `HOLDOUT_ARM`, `ASSIGNMENT_SPACE` and the `Latency` source type.

Who calls it: the process edge `rectune.traffic` builds the plan and the
holdout and writes the counts to the stats file; the core
`rectune.traffic_loop` adds one `Served` per request to the counts.  Pure
values: no clock, no I/O (`TrafficCounts.to_json` returns the body, the edge
writes it).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

from rectune.demo_view import HOLDOUT
from rectune.errors import RectuneError
from schemas.config import CascadeConfig
from serving_sidecar.assignment import assignment_bucket

__all__ = [
    "ASSIGNMENT_SPACE",
    "HOLDOUT_ARM",
    "Holdout",
    "Latency",
    "Served",
    "TrafficCounts",
    "TrafficPlan",
]

HOLDOUT_ARM: Final = HOLDOUT
ASSIGNMENT_SPACE: Final = 10_000
Latency = Literal["model", "measured"]


@dataclass(frozen=True, slots=True)
class TrafficPlan:
    """What `rectune traffic` runs: scenario, surface, rate, clocks, holdout, latency source, replay sampling.

    `replay_rate` is the share of control requests the sidecar replays under
    the registered candidates for the Critic's off-policy screen
    (`serving_sidecar.replay`); the simulated clicks come at once, so a short
    `replay_attribution_s` joins them all.

    Built by the CLI from flags; the demo passes the same flags.
    """

    scenario: str = "apparel_core"
    surface: str = "home"
    requests_per_s: float = 300.0
    time_scale: float = 3600.0
    holdout_share: float = 0.1
    holdout_salt: str = "rectune-demo-holdout"
    latency: Latency = "model"
    seed: int = 7
    duration_s: float | None = None
    stats_path: Path | None = None
    stats_every_s: float = 1.0
    ready_timeout_s: float = 30.0
    source_id: str = "demo-ranker"
    replay_rate: float = 0.0
    replay_attribution_s: float = 2.0

    def __post_init__(self) -> None:
        """Refuse a plan that cannot run, naming the flag (and field) and the rule.

        Runs whenever a plan is built: by `rectune traffic` from its flags, and
        by `rectune demo` (`rectune.demo_services.demo_traffic_plan`) before it
        starts any service, so a bad rate is refused up front, not by the
        traffic process after the broker, Redis, worker and agents are up.
        A NaN fails every range check.
        """
        bad = []
        if not 0.0 < self.requests_per_s <= 100_000.0:
            bad.append(
                f"--rate (requests_per_s): must be in (0, 100000] requests per second, got {self.requests_per_s}"
            )
        if not 0.0 < self.time_scale <= 1e7:
            rule = "must be in (0, 1e7] simulated seconds per wall second"
            bad.append(f"--time-scale (time_scale): {rule}, got {self.time_scale}")
        if not 0.0 <= self.holdout_share < 0.5:
            bad.append(f"--holdout-share (holdout_share): must be in [0, 0.5), got {self.holdout_share}")
        if self.duration_s is not None and not self.duration_s > 0.0:
            bad.append(f"--duration-s (duration_s): must be > 0 when given, got {self.duration_s}")
        if self.latency not in ("model", "measured"):
            bad.append(f"--latency (latency): must be 'model' or 'measured', got {self.latency!r}")
        if not 0.0 < self.stats_every_s <= 3_600.0:
            bad.append(f"stats_every_s: must be in (0, 3600] seconds, got {self.stats_every_s}")
        if not 0.0 < self.ready_timeout_s <= 3_600.0:
            bad.append(f"ready_timeout_s: must be in (0, 3600] seconds, got {self.ready_timeout_s}")
        if not 0.0 <= self.replay_rate <= 1.0:
            bad.append(f"--replay-rate (replay_rate): must be in [0, 1], got {self.replay_rate}")
        if not 0.0 <= self.replay_attribution_s <= 3_600.0:
            bad.append(f"replay_attribution_s: must be in [0, 3600] seconds, got {self.replay_attribution_s}")
        if bad:
            msg = "traffic plan: " + "; ".join(bad)
            raise RectuneError(msg, hint="see `rectune traffic --help`")


@dataclass(slots=True)
class TrafficCounts:
    """What the traffic process has handed to the sidecar so far (written to the stats file)."""

    requests: int = 0
    holdout_requests: int = 0
    item_events: int = 0
    clicks: int = 0
    conversions: int = 0
    first_ms: int | None = None
    last_ms: int | None = None
    sim_s: float = 0.0
    wall_s: float = 0.0
    by_arm: dict[str, int] = field(default_factory=dict)
    versions: dict[str, int] = field(default_factory=dict)

    def add(self, served: Served) -> None:
        """Count one served request."""
        self.requests += 1
        self.holdout_requests += served.arm_id == HOLDOUT_ARM
        self.item_events += served.item_events
        self.clicks += served.clicks
        self.conversions += served.conversions
        self.first_ms = served.event_time_ms if self.first_ms is None else self.first_ms
        self.last_ms = served.event_time_ms
        self.by_arm[served.arm_id] = self.by_arm.get(served.arm_id, 0) + 1
        key = str(served.config_version)
        self.versions[key] = self.versions.get(key, 0) + 1

    def to_json(self, **extra: Any) -> dict[str, Any]:
        """The stats file's body."""
        body: dict[str, Any] = {
            "requests": self.requests,
            "holdout_requests": self.holdout_requests,
            "item_events": self.item_events,
            "clicks": self.clicks,
            "conversions": self.conversions,
            "first_ms": self.first_ms,
            "last_ms": self.last_ms,
            "sim_s": round(self.sim_s, 3),
            "wall_s": round(self.wall_s, 3),
            "by_arm": dict(sorted(self.by_arm.items())),
            "config_versions": dict(sorted(self.versions.items())),
        }
        body.update(extra)
        return body


@dataclass(frozen=True, slots=True)
class Served:
    """One request as served: its arm and version, and how many item-level events it produced."""

    arm_id: str
    config_version: int
    item_events: int
    clicks: int
    conversions: int
    event_time_ms: int


@dataclass(frozen=True, slots=True)
class Holdout:
    """The holdout arm: who is in it (salted hash) and the frozen config it is served."""

    share: float
    salt: str
    surface: str
    config: CascadeConfig
    config_version: int

    def contains(self, user_id: str) -> bool:
        """True for users in the holdout (independent of the sidecar's salt and the metric buckets)."""
        return self.share > 0.0 and assignment_bucket(self.salt, user_id) < round(self.share * ASSIGNMENT_SPACE)
