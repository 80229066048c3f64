"""The sidecars' exploration replays of one surface, from `rectune.replay` (thin aiokafka adapter).

`ReplayFeed` reads the topic from the beginning (`agents.topic_reader.
TopicReader`), keeps the newest `max_records` replay records of its surface
and answers the loop's off-policy screen (`agents.loop_driver.ReplaySource`):
`rows(versions, logging_version)` builds each candidate's rows
(`agents.ope_replay.replay_rows`) from what it holds, and `active(now_ms)`
says whether any sidecar replayed this surface lately — the screen waits for
rows only then, so a deployment without replay sampling loses no time.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping

from agents.ope_replay import ReplayRows, replay_rows
from agents.topic_reader import TopicReader
from schemas.replay import ReplayRecord, decode_replay
from schemas.topics import REPLAY

#: A surface counts as replayed when a record of it is at most this old (event time).
ACTIVE_WITHIN_MS = 10 * 60 * 1000


class ReplayFeed(TopicReader):
    """The newest replay records of one surface, kept up to date by `poll()`."""

    kind = "replay record"

    def __init__(self, bootstrap: str, surface: str, *, topic: str = REPLAY.name, max_records: int = 50_000) -> None:
        """Nothing is read until `start()`."""
        super().__init__(bootstrap, topic)
        self.surface = surface
        self.records: deque[ReplayRecord] = deque(maxlen=max_records)
        self._newest_ms = 0

    def _accept(self, value: bytes) -> int:
        """Keep a record of this surface (1); other surfaces' records are skipped (0)."""
        record = decode_replay(value)
        if record.surface != self.surface:
            return 0
        self.records.append(record)
        self._newest_ms = max(self._newest_ms, record.event_time_ms)
        return 1

    async def active(self, now_ms: int) -> bool:
        """Whether a sidecar replayed this surface within `ACTIVE_WITHIN_MS` of `now_ms`."""
        return self._newest_ms > 0 and now_ms - self._newest_ms <= ACTIVE_WITHIN_MS

    async def rows(self, versions: Iterable[int], logging_version: int) -> Mapping[int, ReplayRows]:
        """Each candidate version's rows from the records `logging_version` (the incumbent) logged."""
        return {v: replay_rows(self.records, v, logging_version) for v in versions}


__all__ = ["ACTIVE_WITHIN_MS", "ReplayFeed"]
