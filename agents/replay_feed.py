"""The sidecars' exploration replays of one surface, from `rectune.replay` (thin aiokafka adapter).

`ReplayFeed` reads the topic from the beginning (`agents.topic_reader.
TopicReader`, from the last `lookback_ms` on), keeps the newest `max_records` replay records of its surface
and answers the loop's off-policy screen (`agents.loop_driver.ReplaySource`):
`rows(versions, logging_version)` builds each candidate's rows
(`agents.ope_replay.replay_rows`) from what it holds, and `active(now_ms)`
says whether any sidecar replayed this surface lately — the screen waits for
rows only then, so a deployment without replay sampling loses no time.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Iterable, Mapping

from aiokafka.errors import KafkaError

from agents.ope_replay import ReplayRows, replay_rows
from agents.topic_reader import TopicReader
from schemas.replay import ReplayRecord, decode_replay
from schemas.topics import REPLAY

#: A surface counts as replayed when a record of it is at most this old (event time).
ACTIVE_WITHIN_MS = 10 * 60 * 1000
#: How far back a starting feed reads: a screen waits minutes, not days.
LOOKBACK_MS = 60 * 60 * 1000

log = logging.getLogger(__name__)


class ReplayFeed(TopicReader):
    """The newest replay records of one surface, kept up to date by `poll()`."""

    kind = "replay record"

    def __init__(
        self,
        bootstrap: str,
        surface: str,
        *,
        topic: str = REPLAY.name,
        max_records: int = 50_000,
        lookback_ms: int = LOOKBACK_MS,
    ) -> None:
        """Nothing is read until `start()`."""
        super().__init__(bootstrap, topic)
        self.surface = surface
        self.lookback_ms = lookback_ms
        self._since_ms = 0
        self.records: deque[ReplayRecord] = deque(maxlen=max_records)
        self._newest_ms = 0

    async def start(self, now_ms: int | None = None) -> None:
        """Assign the topic and seek to the records of the last `lookback_ms` (not the week the topic keeps).

        A replay only matters while its candidates wait for the screen, so a
        restarted agent reads the recent tail; a broker that cannot look
        offsets up by time leaves the reader at the beginning.
        """
        await super().start()
        self._since_ms = (now_ms if now_ms is not None else int(time.time() * 1000)) - self.lookback_ms
        consumer = self._consumer
        if consumer is None:
            return
        tps = list(consumer.assignment())
        try:
            found = await consumer.offsets_for_times({tp: max(self._since_ms, 0) for tp in tps})
        except (KafkaError, ValueError) as err:
            found, why = {}, str(err)
        else:
            # tansu answers every time lookup with offset 0 and timestamp -1: no lookup at all
            why = "" if all(hit is None or hit.timestamp >= 0 for hit in found.values()) else "no time index"
        if why:
            log.info("replay feed: %s on %s; reading it from the beginning, keeping the last hour", why, self.topic)
            return
        ends = await consumer.end_offsets(tps) if tps else {}
        for tp in tps:
            hit = found.get(tp)
            consumer.seek(tp, hit.offset if hit is not None else ends[tp])

    def _accept(self, value: bytes) -> int:
        """Keep a recent record of this surface (1); other surfaces' and older records are skipped (0)."""
        record = decode_replay(value)
        if record.surface != self.surface or record.event_time_ms < self._since_ms:
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


__all__ = ["ACTIVE_WITHIN_MS", "LOOKBACK_MS", "ReplayFeed"]
