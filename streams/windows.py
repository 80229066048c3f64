"""Tumbling event-time windows and their configuration (pure)."""

from __future__ import annotations

from dataclasses import dataclass

from schemas.metrics import DEFAULT_BUCKETS
from streams.errors import StreamsError


@dataclass(frozen=True, slots=True)
class WindowSpec:
    """How events are cut into windows and buckets.

    `width_ms`: tumbling window width on event time.  `allowed_lateness_ms`: how
    far behind the partition's newest event time a window stays open.
    `buckets`: user buckets per arm (the variance unit); must be the same for
    every worker, since partials are added bucket by bucket.
    """

    width_ms: int = 60_000
    allowed_lateness_ms: int = 10_000
    buckets: int = DEFAULT_BUCKETS

    def __post_init__(self) -> None:
        if self.width_ms < 1:
            msg = f"width_ms: must be >= 1, got {self.width_ms}"
            raise StreamsError(msg, hint="window width in milliseconds, e.g. 60000")
        if self.allowed_lateness_ms < 0:
            msg = f"allowed_lateness_ms: must be >= 0, got {self.allowed_lateness_ms}"
            raise StreamsError(msg, hint="0 closes a window as soon as event time passes its end")
        if not 1 <= self.buckets <= 65_536:
            msg = f"buckets: must be in [1, 65536], got {self.buckets}"
            raise StreamsError(msg, hint="64 to 256 user buckets is typical")

    def start_of(self, event_time_ms: int) -> int:
        """Start of the window holding `event_time_ms`."""
        return event_time_ms - event_time_ms % self.width_ms

    def closed_through(self, watermark_ms: int) -> int:
        """Every window ending at or before this time is closed, given the watermark."""
        return self.start_of(watermark_ms - self.allowed_lateness_ms)
