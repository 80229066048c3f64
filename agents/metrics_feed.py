"""Cumulative per-arm totals of one surface from `rectune.metrics` (thin aiokafka adapter).

`MetricsFeed(bootstrap, surface)` assigns every partition of the metrics topic
and reads from the beginning (no consumer group: each agents process keeps its
own complete view), deduplicates partials by `partial_id` (a partial
republished after a crash replaces its earlier copy, as `rectune metrics`
does) and merges them per arm with `schemas.metrics.merge_by_arm` (and per arm and
cohort for Insight, `cohort_totals`).  `poll()` reads everything published
before it, and a record that is no metric window (undecodable, or a
tombstone) is refused, counted and logged (`agents.topic_reader.TopicReader`);
`totals()` and `cohort_totals()` implement `agents.loop.MetricsSource`.
"""

from __future__ import annotations

from collections.abc import Mapping

import msgspec

from agents.topic_reader import TopicReader
from schemas.metrics import ArmTotals, MetricWindow, merge_by_arm, merge_by_arm_cohort
from schemas.topics import METRICS

_decoder = msgspec.json.Decoder(MetricWindow)


class MetricsFeed(TopicReader):
    """Merged totals of `surface`'s arms, kept up to date by `poll()` (`agents.topic_reader.TopicReader`)."""

    kind = "metric window"

    def __init__(self, bootstrap: str, surface: str, *, topic: str = METRICS.name) -> None:
        """Nothing is read until `start()`."""
        super().__init__(bootstrap, topic)
        self.surface = surface
        self.partials: dict[str, MetricWindow] = {}
        self._cache: dict[str, ArmTotals] | None = None
        self._cohort_cache: dict[str, dict[str, ArmTotals]] | None = None

    def _accept(self, value: bytes) -> int:
        """Keep one window if it is of this surface (1), else 0."""
        window = _decoder.decode(value)
        if window.surface != self.surface:
            return 0
        self.partials[window.partial_id] = window
        self._cache = self._cohort_cache = None
        return 1

    async def totals(self) -> Mapping[str, ArmTotals]:
        """arm id → cumulative merged totals of this surface."""
        if self._cache is None:
            self._cache = {arm: t for (_, arm), t in merge_by_arm(self.partials).items()}
        return self._cache

    async def cohort_totals(self) -> Mapping[str, Mapping[str, ArmTotals]]:
        """cohort → arm id → cumulative merged totals of this surface (Insight's per-cohort reads)."""
        if self._cohort_cache is None:
            out: dict[str, dict[str, ArmTotals]] = {}
            for (_, arm, cohort), t in merge_by_arm_cohort(self.partials).items():
                out.setdefault(cohort, {})[arm] = t
            self._cohort_cache = out
        return self._cohort_cache
