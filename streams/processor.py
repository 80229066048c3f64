"""Message handling and the checkpoint protocol, with all I/O behind `StreamIO`.

`StreamProcessor` owns one `PartitionAggregator` per assigned source partition
and runs DESIGN.md's effectively-once protocol:

1. a message whose offset the state already holds is skipped;
2. a checkpoint writes (state, next offset, outbox) as ONE record and waits
   for the broker's acknowledgement;
3. only then is the outbox (closed windows, dead letters) published, and
4. only then is the consumer offset committed.

A crash between any two steps replays from the last checkpoint: partials
carry deterministic ids, so a republished partial replaces its copy instead of
adding to it.  The Faust agent (`streams.app`) is a thin adapter that calls
`on_message`; tests drive the same class with in-memory or bare-aiokafka I/O.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Protocol

from schemas.decode import decode_message
from schemas.errors import DecodeError
from streams.aggregate import OutRecord, PartitionAggregator
from streams.checkpoint import encode_checkpoint, restore
from streams.windows import WindowSpec

log = logging.getLogger(__name__)


class StreamIO(Protocol):
    """What the processor needs from the outside world (Kafka, in production)."""

    async def load_checkpoint(self, partition: int) -> bytes | None:
        """Latest checkpoint record of a source partition, or None if it has none."""

    async def write_checkpoint(self, partition: int, data: bytes) -> None:
        """Append a checkpoint and return once the broker acknowledged it."""

    async def publish(self, records: Iterable[OutRecord]) -> None:
        """Publish records and return once the broker acknowledged all of them."""

    async def commit(self, partition: int, next_offset: int) -> None:
        """Commit the consumer group's offset for a source partition."""

    async def seek(self, partition: int, offset: int) -> None:
        """Move the consumer's read position of a source partition."""

    def owns(self, partition: int) -> bool:
        """Whether the consumer is currently assigned this source partition."""


@dataclass(frozen=True, slots=True)
class StreamConfig:
    """Immutable configuration of the stream worker; `build()` makes the processor."""

    topic: str
    spec: WindowSpec = field(default_factory=WindowSpec)
    checkpoint_interval_s: float = 2.0
    idle_close_s: float = 30.0

    def build(self, io: StreamIO) -> StreamProcessor:
        """Make a processor bound to `io` (called once per worker)."""
        return StreamProcessor(self, io)


@dataclass(slots=True)
class _Slot:
    """Per-partition bookkeeping around the aggregator."""

    agg: PartitionAggregator
    lock: asyncio.Lock
    last_seen_s: float
    seen_since_assign: bool = False
    seek_target: int | None = None
    dirty: bool = False
    skipped: int = 0


class StreamProcessor:
    """Turns source messages into checkpointed aggregates and published partials."""

    def __init__(self, config: StreamConfig, io: StreamIO) -> None:
        self.config = config
        self.io = io
        self._slots: dict[int, _Slot] = {}
        self._loading: dict[int, asyncio.Future[None]] = {}

    # -- assignment ------------------------------------------------------------

    async def assign(self, partitions: Iterable[int], now_s: float) -> None:
        """Load the latest checkpoint of newly assigned partitions and republish its outbox."""
        await asyncio.gather(*(self._assign_one(p, now_s) for p in set(partitions)))

    async def _assign_one(self, partition: int, now_s: float) -> None:
        if partition in self._slots or partition in self._loading:
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._loading[partition] = future
        try:
            data = await self.io.load_checkpoint(partition)
            if data is None:
                agg = PartitionAggregator(self.config.spec, self.config.topic, partition)
            else:
                agg = restore(data, self.config.spec, self.config.topic, partition)
            self._slots[partition] = _Slot(agg, asyncio.Lock(), now_s)
            log.info("partition %d assigned: resuming at offset %d", partition, agg.next_offset)
            if agg.outbox:
                await self.checkpoint(partition)
        finally:
            del self._loading[partition]
            future.set_result(None)

    async def revoke(self, partitions: Iterable[int]) -> None:
        """Checkpoint and drop partitions this worker no longer owns (called on a rebalance by both engines).

        Every revoked partition is dropped, and every one gets its checkpoint
        attempt, even after one fails: the first failure is raised at the end
        (its new owner replays from the last good checkpoint), later ones logged.
        """
        revoked = [p for p in partitions if p in self._slots]
        try:
            await self._checkpoint_each(revoked)
        finally:
            for partition in revoked:
                self._slots.pop(partition, None)

    def assigned(self) -> list[int]:
        """Partitions whose state this processor holds."""
        return sorted(self._slots)

    def aggregator(self, partition: int) -> PartitionAggregator | None:
        """The live aggregator of a partition (progress displays and tests)."""
        slot = self._slots.get(partition)
        return slot.agg if slot else None

    # -- the hot path ----------------------------------------------------------

    async def on_message(
        self, partition: int, offset: int, payload: bytes | None, timestamp_ms: int, now_s: float
    ) -> None:
        """Handle one source message (called by both engines, in offset order per partition).

        `payload` is the record's value as read, None for a tombstone: the
        decoder refuses it and it is dead-lettered like any malformed message.
        """
        slot = self._slots.get(partition)
        if slot is None:
            loading = self._loading.get(partition)
            if loading is not None:
                await loading
            elif self.io.owns(partition):
                # Messages may flow before the assignment signal reached us.
                await self.assign([partition], now_s)
            else:
                return  # revoked while buffered: its new owner replays it
            slot = self._slots.get(partition)
            if slot is None:
                return
        agg = slot.agg
        if slot.seek_target is not None:
            if offset != slot.seek_target:
                return  # stale buffered message from before our seek
            slot.seek_target = None
        if offset < agg.next_offset:
            slot.skipped += 1
            slot.seen_since_assign = True
            return  # already inside the checkpointed state
        if offset > agg.next_offset and not slot.seen_since_assign:
            # The group's committed offset is ahead of our state (stale checkpoint):
            # go back rather than lose the gap.
            log.warning(
                "partition %d: consumer at offset %d but state resumes at %d; seeking back",
                partition,
                offset,
                agg.next_offset,
            )
            slot.seek_target = agg.next_offset
            slot.seen_since_assign = True
            await self.io.seek(partition, agg.next_offset)
            return
        slot.seen_since_assign = True
        slot.last_seen_s = now_s
        slot.dirty = True
        body = payload or b""  # what a dead letter keeps: nothing, for a tombstone
        try:
            decoded = decode_message(payload)
        except DecodeError as err:
            agg.reject(offset=offset, event_index=None, error=err, payload=body, seen_ms=timestamp_ms)
            return
        if (
            decoded.source_id is not None
            and decoded.seq is not None
            and agg.is_duplicate(decoded.source_id, decoded.seq)
        ):
            agg.skip_duplicate(offset)  # a producer retry: already folded
            return
        agg.add_message(offset, decoded.events)
        for rejected in decoded.rejected:
            agg.reject(
                offset=offset, event_index=rejected.index, error=rejected.error, payload=body, seen_ms=timestamp_ms
            )
        # Closed windows wait in the outbox for the next tick's checkpoint (at most
        # checkpoint_interval_s): checkpointing inline stalled the stream ~100 ms per close.
        agg.close_due()

    # -- checkpoints -----------------------------------------------------------

    async def checkpoint(self, partition: int) -> None:
        """Write state+offset+outbox as one record, then publish the outbox, then commit.

        Called by `tick`, `checkpoint_all`, `assign` and `revoke`.  If any step
        raises, the slot is left dirty and the outbox untouched, so the next
        call redoes all three steps: a second checkpoint record supersedes the
        first, republished partials replace their copies (deterministic ids)
        and a later commit only moves the offset further.  The error is
        re-raised with a note naming the partition and the failed step.
        """
        slot = self._slots.get(partition)
        if slot is None:
            return
        async with slot.lock:
            agg = slot.agg
            data = encode_checkpoint(agg)  # synchronous: a consistent cut of the state
            next_offset = agg.next_offset
            pending = list(agg.outbox)
            # Cleared before the awaits so that messages arriving during them
            # mark the slot dirty again; restored below if this checkpoint fails.
            slot.dirty = False
            step = "write_checkpoint"
            try:
                await self.io.write_checkpoint(partition, data)
                if pending:
                    step = "publish"
                    await self.io.publish(pending)
                    agg.clear_outbox(len(pending))
                step = "commit"
                await self.io.commit(partition, next_offset)
            except Exception as err:
                slot.dirty = True
                err.add_note(
                    f"checkpoint of {self.config.topic}[{partition}] failed at {step} "
                    f"(next offset {next_offset}, {len(pending)} outbox records); "
                    "the partition stays dirty and the next checkpoint retries all of it"
                )
                raise

    async def tick(self, now_s: float) -> None:
        """Periodic duty (Faust timer, direct engine's ticker): idle-close quiet partitions, checkpoint dirty ones.

        A partition whose checkpoint fails does not stop the others from being
        checkpointed; the first failure is raised once all were tried, and the
        failed partitions stay dirty for the caller's next tick.
        """
        due: list[int] = []
        for partition, slot in list(self._slots.items()):
            agg = slot.agg
            idle = now_s - slot.last_seen_s >= self.config.idle_close_s
            if idle and agg.has_open_windows():
                agg.close_all()
                slot.dirty = True
            if slot.dirty or agg.outbox:
                due.append(partition)
        await self._checkpoint_each(due)

    async def checkpoint_all(self) -> None:
        """Checkpoint every partition (clean shutdown of either engine); raises the first failure after trying all."""
        await self._checkpoint_each(list(self._slots))

    async def _checkpoint_each(self, partitions: list[int]) -> None:
        # One partition's broker trouble (e.g. its leader moving) must not hold
        # back the checkpoints of the others.
        first: Exception | None = None
        for partition in partitions:
            try:
                await self.checkpoint(partition)
            except Exception as err:
                if first is None:
                    first = err
                else:  # only the first is raised: do not lose the others
                    log.warning("checkpoint of partition %d failed too", partition, exc_info=True)
        if first is not None:
            raise first
