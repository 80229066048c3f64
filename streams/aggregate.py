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
from dataclasses import dataclass, field
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
#: Rows folded into numpy at once.  Bounds the not-yet-folded rows every
#: checkpoint carries (~120 bytes each); the fold points depend only on the
#: input sequence, so a restored worker folds exactly where an uninterrupted one does.
FOLD_EVERY_ROWS: Final = 2_048
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


@dataclass(frozen=True, slots=True)
class Pending:
    """Rows not yet folded, as flat machine arrays (what a checkpoint stores verbatim).

    `rows` holds `ROW_WIDTH` float64 per row; `key_ids` and `versions` one
    int64 per row; `key_ids` index `keys`, the distinct group keys in order of
    first appearance since the last fold.
    """

    rows: bytes
    key_ids: bytes
    versions: bytes
    keys: list[GroupKey]


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
        self.groups: dict[GroupKey, Group] = {}
        self.outbox: list[OutRecord] = []
        self._bucket_cache: dict[str, int] = {}
        # Counters as plain ints (the hot path bumps them per message).
        self._messages = 0
        self._item_events = 0
        self._late_item_events = 0
        self._rejected_messages = 0
        self._rejected_events = 0
        self._windows_closed = 0
        self._duplicate_messages = 0
        # Pending (not yet folded) rows: the newest ones as Python lists, appended
        # per event (a row tuple, the index of its group key in `_keys`, its config
        # version); the older `_n_packed` ones as machine arrays (`_pack`), so each
        # row is converted once however many checkpoints carry it before the fold.
        self._rows: list[tuple[float, ...]] = []
        self._row_keys: list[int] = []
        self._row_versions: list[int] = []
        self._keys: list[GroupKey] = []
        self._key_ids: dict[GroupKey, int] = {}
        self._n_packed = 0
        self._packed_rows = bytearray()
        self._packed_keys = bytearray()
        self._packed_versions = bytearray()
        # Window starts with unfolded or folded on-time data, and whether any late
        # group exists: lets the per-message close check skip scanning rows.
        self._open_starts: set[int] = set()
        self._has_late = False
        # source_id -> (highest seq seen, bitmask of seqs seen in [high - SEQ_WINDOW, high]):
        # a producer retry re-sends an envelope with the same (source_id, seq).
        self.sources: dict[str, tuple[int, int]] = {}

    @property
    def counters(self) -> Counters:
        """Running totals of this partition (a snapshot)."""
        return Counters(
            self._messages,
            self._item_events,
            self._late_item_events,
            self._rejected_messages,
            self._rejected_events,
            self._windows_closed,
            self._duplicate_messages,
        )

    @counters.setter
    def counters(self, value: Counters) -> None:
        self._messages = value.messages
        self._item_events = value.item_events
        self._late_item_events = value.late_item_events
        self._rejected_messages = value.rejected_messages
        self._rejected_events = value.rejected_events
        self._windows_closed = value.windows_closed
        self._duplicate_messages = value.duplicate_messages

    # -- feeding ---------------------------------------------------------------

    def add_message(self, offset: int, events: Sequence[Event]) -> None:
        """Fold the good events of the message at `offset` (offsets must increase)."""
        spec = self.spec
        closed_through = self.closed_through_ms
        width = spec.width_ms
        buckets = spec.buckets
        cache = self._bucket_cache
        add_row = self._rows.append
        add_key_id = self._row_keys.append
        add_version = self._row_versions.append
        key_ids = self._key_ids
        keys = self._keys
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
                # One explicit loop: ~30% fewer instructions than four comprehensions.
                styles: set[str] = set()
                cats: set[str] = set()
                add_style = styles.add
                add_cat = cats.add
                tail = 0
                fresh = 0
                for item in items:
                    add_style(item.style_id or item.item_id)
                    add_cat(item.category)
                    if item.long_tail:
                        tail += 1
                    if item.fresh:
                        fresh += 1
                lat = event.ranker_latency_ms
                add_row((bucket, 1.0, n, 0.0, 0.0, 0.0, 0.0, lat, lat * lat, len(cats), n - len(styles), tail, fresh))
            elif isinstance(event, Click):
                n = 1
                add_row((bucket, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 0.0))
            else:
                n = 1
                rev = event.revenue
                add_row((bucket, 0.0, 0.0, 0.0, 1.0, rev, rev * rev, -1.0, 0.0, 0.0, 0.0, 0.0, 0.0))
            key = (start, event.surface, event.arm_id, event.cohort, late)
            key_id = key_ids.get(key)
            if key_id is None:
                key_id = key_ids[key] = len(keys)
                keys.append(key)
            add_key_id(key_id)
            add_version(event.config_version)
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
        self._messages += 1
        self._item_events += items_total
        self._late_item_events += late_items
        if self._n_packed + len(self._row_keys) >= FOLD_EVERY_ROWS:
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
        self._messages += 1
        self._duplicate_messages += 1

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
        if event_index is None:
            self._messages += 1
            self._rejected_messages += 1
            self.next_offset = offset + 1
        else:
            self._rejected_events += 1

    def fold(self) -> None:
        """Add not-yet-folded rows into the groups' numpy sums (one pass per batch)."""
        self._pack()
        n_rows = self._n_packed
        if not n_rows:
            return
        table = np.frombuffer(self._packed_rows, dtype=np.float64).reshape(n_rows, ROW_WIDTH)
        gids = np.frombuffer(self._packed_keys, dtype=np.int64)
        versions = np.frombuffer(self._packed_versions, dtype=np.int64)
        buckets = self.spec.buckets
        n_groups = len(self._keys)
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
        if versions.min() == versions.max():  # the usual case: one config version in the batch
            per_group_versions = [{int(versions[0])}] * n_groups  # only read below
        else:
            per_group_versions = [set(np.unique(versions[gids == gid]).tolist()) for gid in range(n_groups)]
        for gid, key in enumerate(self._keys):
            group = self.groups.get(key)
            if group is None:
                group = Group(np.zeros((N_FIELDS, buckets)), np.zeros(N_LATENCY_BINS, np.int64))
                self.groups[key] = group
            group.sums += sums[gid]
            group.hist += hist[gid]
            group.item_events += int(items[gid])
            group.config_versions |= per_group_versions[gid]
        self._reset_pending()

    def _reset_pending(self) -> None:
        # New objects rather than clearing in place: numpy views may still share the old buffers.
        self._rows = []
        self._row_keys = []
        self._row_versions = []
        self._keys = []
        self._key_ids = {}
        self._n_packed = 0
        self._packed_rows = bytearray()
        self._packed_keys = bytearray()
        self._packed_versions = bytearray()

    def _pack(self) -> None:
        """Move the rows added since the last call from the lists to the packed buffers."""
        if not self._row_keys:
            return
        self._packed_rows += np.asarray(self._rows, dtype=np.float64).tobytes()
        self._packed_keys += np.asarray(self._row_keys, dtype=np.int64).tobytes()
        self._packed_versions += np.asarray(self._row_versions, dtype=np.int64).tobytes()
        self._n_packed += len(self._row_keys)
        self._rows = []
        self._row_keys = []
        self._row_versions = []

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
        self._windows_closed += emitted
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

    def pending(self) -> Pending:
        """Rows not yet folded, as bytes (for the checkpoint codec)."""
        self._pack()
        return Pending(
            bytes(self._packed_rows), bytes(self._packed_keys), bytes(self._packed_versions), list(self._keys)
        )

    def load_pending(self, pending: Pending) -> None:
        """Put back unfolded rows from a checkpoint (the inverse of `pending`; sizes checked by the caller)."""
        self._reset_pending()
        self._keys = list(pending.keys)
        self._key_ids = {key: i for i, key in enumerate(self._keys)}
        self._packed_rows = bytearray(pending.rows)
        self._packed_keys = bytearray(pending.key_ids)
        self._packed_versions = bytearray(pending.versions)
        self._n_packed = len(pending.key_ids) // 8

    def reopen(self) -> None:
        """Recompute the open-window index after a restore from a checkpoint."""
        keys = [*self.groups, *self._keys]
        self._open_starts = {k[0] for k in keys if not k[4]}
        self._has_late = any(k[4] for k in keys)

    def clear_outbox(self, published: int) -> None:
        """Drop the first `published` outbox records once the broker acknowledged them."""
        del self.outbox[:published]
