"""The arms the serving sidecar's SLO breaker has cut back, from `rectune.alerts` (thin aiokafka adapter).

When the sidecar's breaker (`serving_sidecar.breaker`) opens a treatment
arm, that arm's users are served the control config from the next request
on, but they keep the arm's id: the arm's metrics then mix its own traffic
with control's, its lift is diluted and its latency looks like control's,
so the agents' own guardrail cannot see the breach any more.  The breaker
says so on `rectune.alerts` (kind `slo_breach`, severity `critical`, the
arm's id).  `AlertsFeed` reads that topic from the beginning
(`agents.topic_reader.TopicReader`) and `opened_arms()` (`agents.loop_driver.
BreakerSource`) returns every arm id such an alert named, so the Online agent
rolls the arm back instead of reading, or promoting, a config that broke its
SLO.  Other alerts (the agents' own, control's warnings, resets) are read and
skipped: a reset re-serves the arm's config, but the agents do not take back a
rollback.
"""

from __future__ import annotations

from agents.topic_reader import TopicReader
from schemas.alerts import decode_alert
from schemas.topics import ALERTS


class AlertsFeed(TopicReader):
    """Arm ids a serving breaker opened, kept up to date by `poll()`."""

    kind = "alert"

    def __init__(self, bootstrap: str, *, topic: str = ALERTS.name) -> None:
        """Nothing is read until `start()`."""
        super().__init__(bootstrap, topic)
        self.opened: set[str] = set()

    def _accept(self, value: bytes) -> int:
        """Keep the arm id of a critical `slo_breach` (1); other alerts are skipped (0)."""
        alert = decode_alert(value)
        if alert.kind != "slo_breach" or alert.severity != "critical" or not alert.arm_id:
            return 0
        self.opened.add(alert.arm_id)
        return 1

    async def opened_arms(self) -> frozenset[str]:
        """Every arm id a serving breaker has opened (cut back to control) so far."""
        return frozenset(self.opened)


__all__ = ["AlertsFeed"]
