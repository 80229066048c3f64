"""Per-partition aggregation of events into additive metric partials (pure).

`PartitionAggregator` is the whole state of one source partition: the open
windows' per-(arm, bucket) sums, the watermark, the offset of the next message
to read, and an outbox of records (closed windows, dead letters) that must be
published.  The stream worker feeds it messages in offset order, checkpoints
`snapshot()` together with the outbox, publishes the outbox, then clears it, so
a crash anywhere replays from a consistent (state, offset) pair.  No I/O, no
clock: event time comes from the events, "now" is passed in.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Final

import msgspec
import numpy as np

from schemas.dlq import dead_letter
from schemas.errors import DecodeError
from schemas.events import Click, Event, Impression
from schemas.metrics import (
    BUCKET_FIELDS,
    N_FIELDS,
    N_LATENCY_BINS,
    FloatArray,
    IntArray,
    MetricWindow,
    latency_bins,
    sparse_window_arrays,
    user_bucket,
)
from schemas.topics import DLQ, METRICS
from streams.windows import WindowSpec

_json: Final = msgspec.json.Encoder()
#: Rows folded into numpy at once; bounds memory of not-yet-folded events.
FOLD_EVERY_ROWS: Final = 50_000
#: Envelope sequence numbers remembered below each source's highest, per partition.
SEQ_WINDOW: Final = 256
#: Sources remembered per partition (oldest forgotten first).
MAX_SOURCES: Final = 10_000
#: Width of a pending row: the user bucket, then one value per BUCKET_FIELDS entry.
ROW_WIDTH: Final = 1 + N_FIELDS

GroupKey = tuple[int, str, str, str, bool]  # window_start_ms, surface, arm_id, cohort, late


@dataclass(frozen=True, slots=True)
class OutRecord:
    """A record the worker must publish after the checkpoint that holds it."""

    topic: str
    key: bytes
    value: bytes


@dataclass(slots=True)
class Group:
    """Accumulated sums of one (window, surface, arm, cohort[, late]) group."""

    sums: FloatArray
    hist: IntArray
    config_versions: set[int] = field(default_factory=set)
    item_events: int = 0


@dataclass(frozen=True, slots=True)
class Counters:
    """Running totals of what a partition has seen (for progress and tests)."""

    messages: int = 0
    item_events: int = 0
    late_item_events: int = 0
    rejected_messages: int = 0
    rejected_events: int = 0
    windows_closed: int = 0
    duplicate_messages: int = 0


class PartitionAggregator:
    """All stream state of one source partition; owned by one task, never shared."""

    def __init__(self, spec: WindowSpec, topic: str, partition: int) -> None:
        self.spec = spec
        self.topic = topic
        self.partition = partition
        self.next_offset = 0
        self.watermark_ms = -(2**62)
        self.closed_through_ms = -(2**62)
        self.late_seq = 0
        self.counters = Counters()
        self.groups: dict[GroupKey, Group] = {}
        self.outbox: list[OutRecord] = []
        self._bucket_cache: dict[str, int] = {}
        self._rows: list[tuple[float, ...]] = []
        self._row_keys: list[GroupKey] = []
        self._row_versions: list[int] = []
        # Window starts with unfolded or folded on-time data, and whether any late
        # group exists: lets the per-message close check skip scanning rows.
        self._open_starts: set[int] = set()
        self._has_late = False
        # source_id -> (highest seq seen, bitmask of seqs seen in [high - SEQ_WINDOW, high]):
        # a producer retry re-sends an envelope with the same (source_id, seq).
        self.sources: dict[str, tuple[int, int]] = {}

    # -- feeding ---------------------------------------------------------------

    def add_message(self, offset: int, events: Sequence[Event]) -> None:
        """Fold the good events of the message at `offset` (offsets must increase)."""
        spec = self.spec
        closed_through = self.closed_through_ms
        width = spec.width_ms
        buckets = spec.buckets
        cache = self._bucket_cache
        rows = self._rows
        keys = self._row_keys
        versions = self._row_versions
        newest = self.watermark_ms
        open_starts = self._open_starts
        items_total = 0
        late_items = 0
        for event in events:
            t = event.event_time_ms
            start = t - t % width
            late = start + width <= closed_through
            user = event.user_id
            bucket = cache.get(user)
            if bucket is None:
                bucket = user_bucket(user, buckets)
                if len(cache) < 1_000_000:
                    cache[user] = bucket
            if isinstance(event, Impression):
                items = event.items
                n = len(items)
                styles = {item.style_id or item.item_id for item in items}
                cats = {item.category for item in items}
                tail = sum(1 for item in items if item.long_tail)
                fresh = sum(1 for item in items if item.fresh)
                lat = event.ranker_latency_ms
                rows.append(
                    (bucket, 1.0, n, 0.0, 0.0, 0.0, 0.0, lat, lat * lat, len(cats), n - len(styles), tail, fresh)
                )
            elif isinstance(event, Click):
                n = 1
                rows.append((bucket, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 0.0))
            else:
                n = 1
                rev = event.revenue
                rows.append((bucket, 0.0, 0.0, 0.0, 1.0, rev, rev * rev, -1.0, 0.0, 0.0, 0.0, 0.0, 0.0))
            keys.append((start, event.surface, event.arm_id, event.cohort, late))
            versions.append(event.config_version)
            items_total += n
            if late:
                late_items += n
                self._has_late = True
            else:
                open_starts.add(start)
            if t > newest:
                newest = t
        self.watermark_ms = newest
        self.next_offset = offset + 1
        c = self.counters
        self.counters = replace(
            c,
            messages=c.messages + 1,
            item_events=c.item_events + items_total,
            late_item_events=c.late_item_events + late_items,
        )
        if len(rows) >= FOLD_EVERY_ROWS:
            self.fold()

    def is_duplicate(self, source_id: str, seq: int) -> bool:
        """Whether the envelope (source_id, seq) was already folded here; records it if not.

        Called by the stream worker before `add_message`.  A seq further below
        the source's highest than the window cannot be judged and is accepted
        (producers keep at most a few dozen envelopes in flight).
        """
        entry = self.sources.get(source_id)
        if entry is None:
            if len(self.sources) >= MAX_SOURCES:
                del self.sources[next(iter(self.sources))]
            self.sources[source_id] = (seq, 1)
            return False
        high, mask = entry
        if seq > high:
            shift = seq - high
            mask = ((mask << shift) | 1) & ((1 << (SEQ_WINDOW + 1)) - 1) if shift <= SEQ_WINDOW else 1
            self.sources[source_id] = (seq, mask)
            return False
        back = high - seq
        if back > SEQ_WINDOW:
            return False
        bit = 1 << back
        if mask & bit:
            return True
        self.sources[source_id] = (high, mask | bit)
        return False

    def skip_duplicate(self, offset: int) -> None:
        """Advance past a duplicate envelope without folding it."""
        self.next_offset = offset + 1
        c = self.counters
        self.counters = replace(c, messages=c.messages + 1, duplicate_messages=c.duplicate_messages + 1)

    def reject(
        self,
        *,
        offset: int,
        event_index: int | None,
        error: DecodeError,
        payload: bytes,
        seen_ms: int,
    ) -> None:
        """Dead-letter a refused message (`event_index` None) or one event of it."""
        letter = dead_letter(
            topic=self.topic,
            partition=self.partition,
            offset=offset,
            event_index=event_index,
            field=error.field,
            rule=error.rule,
            reason=str(error),
            payload=payload,
            seen_ms=seen_ms,
        )
        key = f"{self.topic}:{self.partition}:{offset}:{event_index}".encode()
        self.outbox.append(OutRecord(DLQ.name, key, _json.encode(letter)))
        c = self.counters
        whole = event_index is None
        self.counters = replace(
            c,
            messages=c.messages + whole,
            rejected_messages=c.rejected_messages + whole,
            rejected_events=c.rejected_events + (not whole),
        )
        if whole:
            self.next_offset = offset + 1

    def fold(self) -> None:
        """Add not-yet-folded rows into the groups' numpy sums (one pass per batch)."""
        if not self._rows:
            return
        index: dict[GroupKey, int] = {}
        gids = np.fromiter(
            (index.setdefault(k, len(index)) for k in self._row_keys), dtype=np.int64, count=len(self._row_keys)
        )
        table = np.asarray(self._rows, dtype=np.float64)
        buckets = self.spec.buckets
        n_groups = len(index)
        cell = gids * buckets + table[:, 0].astype(np.int64)
        sums = np.empty((n_groups, N_FIELDS, buckets), dtype=np.float64)
        for f in range(N_FIELDS):
            sums[:, f, :] = np.bincount(cell, weights=table[:, 1 + f], minlength=n_groups * buckets).reshape(
                n_groups, buckets
            )
        lat = table[:, 7]
        has_lat = lat >= 0.0
        hist = np.bincount(
            gids[has_lat] * N_LATENCY_BINS + latency_bins(lat[has_lat]), minlength=n_groups * N_LATENCY_BINS
        ).reshape(n_groups, N_LATENCY_BINS)
        # revenue rows carry -1 latency as a "no latency" marker: undo it in the sums
        sums[:, BUCKET_FIELDS.index("latency_ms"), :] -= np.bincount(
            cell[~has_lat], weights=lat[~has_lat], minlength=n_groups * buckets
        ).reshape(n_groups, buckets)
        items = np.bincount(gids, weights=table[:, 2] + table[:, 3] + table[:, 4], minlength=n_groups)
        per_group_versions: list[set[int]] = [set() for _ in range(n_groups)]
        for gid, version in zip(gids.tolist(), self._row_versions, strict=True):
            per_group_versions[gid].add(version)
        for key, gid in index.items():
            group = self.groups.get(key)
            if group is None:
                group = Group(np.zeros((N_FIELDS, buckets)), np.zeros(N_LATENCY_BINS, np.int64))
                self.groups[key] = group
            group.sums += sums[gid]
            group.hist += hist[gid]
            group.item_events += int(items[gid])
            group.config_versions |= per_group_versions[gid]
        self._rows.clear()
        self._row_keys.clear()
        self._row_versions.clear()

    # -- closing ---------------------------------------------------------------

    def close_due(self) -> int:
        """Close windows the watermark has passed; returns how many partials went to the outbox."""
        through = max(self.closed_through_ms, self.spec.closed_through(self.watermark_ms))
        return self._close(through)

    def close_all(self) -> int:
        """Close every open window (idle partition / end of stream); later events count as late."""
        ends = [start + self.spec.width_ms for start in self._open_starts]
        through = max([self.closed_through_ms, *ends])
        return self._close(through, flush_late=True)

    def has_open_windows(self) -> bool:
        """Whether any window or late group still waits to be published."""
        return bool(self._open_starts) or self._has_late

    def _close(self, through: int, *, flush_late: bool = False) -> int:
        width = self.spec.width_ms
        due_starts = {s for s in self._open_starts if s + width <= through}
        if not due_starts and not (flush_late and self._has_late):
            self.closed_through_ms = through
            return 0
        self.fold()
        self.closed_through_ms = through
        self._open_starts -= due_starts
        emitted = 0
        late_keys = [k for k in self.groups if k[4]]
        if late_keys:
            self.late_seq += 1
        self._has_late = False
        due = [k for k in self.groups if not k[4] and k[0] in due_starts]
        for key in sorted(set(due) | set(late_keys)):
            group = self.groups.pop(key, None)
            if group is None:
                continue
            self.outbox.append(self._partial(key, group))
            emitted += 1
        self.counters = replace(self.counters, windows_closed=self.counters.windows_closed + emitted)
        return emitted

    def _partial(self, key: GroupKey, group: Group) -> OutRecord:
        start, surface, arm, cohort, late = key
        kind = f"L{self.late_seq}" if late else "F"
        bucket_ids, sums, bins, counts = sparse_window_arrays(group.sums, group.hist)
        digest = hashlib.sha1(_json.encode([surface, arm, cohort]), usedforsecurity=False).hexdigest()[:16]
        window = MetricWindow(
            schema_version=1,
            partial_id=f"{self.topic}/{self.partition}/{start}/{kind}/{digest}",
            source_topic=self.topic,
            source_partition=self.partition,
            window_start_ms=start,
            window_end_ms=start + self.spec.width_ms,
            surface=surface,
            arm_id=arm,
            cohort=cohort,
            config_versions=tuple(sorted(group.config_versions)),
            buckets=self.spec.buckets,
            fields=BUCKET_FIELDS,
            bucket_ids=bucket_ids,
            sums=sums,
            latency_bins=bins,
            latency_counts=counts,
            item_events=group.item_events,
            late=late,
        )
        return OutRecord(METRICS.name, f"{surface}|{arm}".encode(), _json.encode(window))

    def pending(self) -> tuple[list[tuple[float, ...]], list[GroupKey], list[int]]:
        """Rows not yet folded (for the checkpoint codec; do not mutate)."""
        return self._rows, self._row_keys, self._row_versions

    def load_pending(self, rows: list[tuple[float, ...]], keys: list[GroupKey], versions: list[int]) -> None:
        """Put back unfolded rows from a checkpoint (the inverse of `pending`)."""
        self._rows = rows
        self._row_keys = keys
        self._row_versions = versions

    def reopen(self) -> None:
        """Recompute the open-window index after a restore from a checkpoint."""
        keys = [*self.groups, *self._row_keys]
        self._open_starts = {k[0] for k in keys if not k[4]}
        self._has_late = any(k[4] for k in keys)

    def clear_outbox(self, published: int) -> None:
        """Drop the first `published` outbox records once the broker acknowledged them."""
        del self.outbox[:published]
