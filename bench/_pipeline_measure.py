"""Timing a consumer group of one or more processes from outside (used by `bench/pipeline.py`).

`watch` polls the group's committed offsets, the group's membership (as the
broker describes it) and every member process's RSS and CPU, and turns them
into one `Result`.  The same rule times every variant, one process or N: the
clock starts at the first poll whose committed offsets show progress (by any
member) and stops when the group's committed offsets reach the ends of the
message set, so a rebalance after the first commit (a member joining late, a
second Faust rebalance) is inside the timed window; process start-up and a
group that formed before its first commit are reported beside it as start-up.

Which partitions each process owned comes from its log (`assigned_partitions`):
the stream worker logs ``partition N assigned`` at info level, the ceiling
variant prints the same, so the benchmark can check that every process of a
group really got work.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, Protocol

import numpy as np
import numpy.typing as npt
import psutil
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

POLL_S: Final = 0.1
#: A rate timed over less than this is flagged (a few commit intervals dominate it).
MIN_TRUSTED_S: Final = 5.0
MB: Final = 1024 * 1024
_ASSIGNED: Final = re.compile(r"partition (\d+) assigned")


@dataclass(slots=True)
class Placement:
    """Where a message set landed: per partition its offsets and cumulative item events."""

    starts: dict[int, int]
    ends: dict[int, int]
    offsets: dict[int, npt.NDArray[np.int64]]
    cum_items: dict[int, npt.NDArray[np.int64]]

    def items_before(self, partition: int, committed: int) -> int:
        """Item events of this set in `partition` at offsets below `committed`."""
        idx = int(np.searchsorted(self.offsets[partition], committed, side="left"))
        return int(self.cum_items[partition][idx])

    def items_done(self, committed: dict[int, int]) -> int:
        """Item events of this set below the committed offsets (all partitions)."""
        return sum(self.items_before(p, committed.get(p, self.starts[p])) for p in self.starts)

    def messages(self) -> int:
        """Messages of this set."""
        return sum(len(o) for o in self.offsets.values())


class Proc(Protocol):
    """What the watcher needs of a variant process."""

    @property
    def pid(self) -> int: ...

    def alive(self) -> bool: ...

    def log_tail(self, max_bytes: int = 4000) -> str: ...


@dataclass(slots=True)
class Result:
    """One variant's measurement (a group of `processes` processes)."""

    name: str
    processes: int
    messages: int
    item_events: int
    events_per_s: float
    messages_per_s: float
    startup_s: float
    measured_s: float
    #: All item events over spawn-to-end: start-up, group join and every rebalance included.
    with_startup_events_per_s: float
    #: Sum over the processes of each one's peak RSS (process tree), in MB.
    peak_rss_mb: float
    #: The largest single process's peak RSS, in MB.
    peak_rss_max_mb: float
    #: CPU seconds (user + system) of each process tree over the timed interval.
    cpu_s_per_process: tuple[float, ...]
    samples: int
    #: Group members the broker listed at the first progress, and the most it listed.
    members_at_first: int
    members_max: int
    #: Seconds after spawn until the group first showed all its members and a stable state.
    group_complete_s: float
    #: Seconds of the timed window during which the group was not stable with all members.
    rebalancing_s: float
    #: Partitions each process logged as assigned (filled in by the caller from the logs).
    assigned: tuple[tuple[int, ...], ...] = ()
    note: str = ""

    @property
    def cpu_s(self) -> float:
        """CPU seconds of all processes over the timed interval."""
        return sum(self.cpu_s_per_process)

    @property
    def events_per_cpu_s(self) -> float:
        """Item events per CPU second of the variant's processes over the timed interval."""
        return self.events_per_s * self.measured_s / self.cpu_s if self.cpu_s > 0 else float("nan")

    @property
    def all_assigned(self) -> bool:
        """True when every process logged at least one assigned partition."""
        return len(self.assigned) == self.processes and all(self.assigned)


def tree_usage(proc: psutil.Process) -> tuple[int, float]:
    """Resident bytes and CPU seconds (user + system) of a process and its descendants."""
    rss = 0
    cpu = 0.0
    try:
        members = [proc, *proc.children(recursive=True)]
    except psutil.Error:
        return rss, cpu
    for p in members:
        with contextlib.suppress(psutil.Error), p.oneshot():
            rss += p.memory_info().rss
            times = p.cpu_times()
            cpu += times.user + times.system
    return rss, cpu


async def committed_offsets(consumer: AIOKafkaConsumer, topic: str, partitions: int) -> dict[int, int]:
    """The group's committed offset of every source partition (partitions without one are left out)."""
    tps = [TopicPartition(topic, p) for p in range(partitions)]
    values = await asyncio.gather(*(consumer.committed(tp) for tp in tps))
    return {tp.partition: v for tp, v in zip(tps, values, strict=True) if v is not None}


async def group_state(admin: AIOKafkaAdminClient, group: str) -> tuple[int, str]:
    """Members and state of `group` as the broker describes it; (-1, "unknown") when it cannot say."""
    try:
        response = await admin.describe_consumer_groups([group])
        described = response[0].groups[0]  # (error_code, group, state, protocol_type, protocol, members, ...)
    except Exception:  # a description is evidence, not a requirement of the measurement
        return -1, "unknown"
    return len(described[5]), str(described[2])


def assigned_partitions(log_path: Path) -> tuple[int, ...]:
    """Partitions a process logged as assigned to it (``partition N assigned``), sorted, each once."""
    try:
        text = log_path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return ()
    return tuple(sorted({int(m.group(1)) for m in _ASSIGNED.finditer(text)}))


@dataclass(slots=True)
class _Usage:
    """Per-process peaks and CPU readings collected by `watch` (processes may be added while it runs)."""

    procs: list[psutil.Process] = field(default_factory=list)
    peaks: list[int] = field(default_factory=list)
    cpu_first: list[float] = field(default_factory=list)
    cpu_last: list[float] = field(default_factory=list)
    first_marked: bool = False

    def sample(self, pids: Sequence[int]) -> None:
        for pid in pids[len(self.procs) :]:  # a process started late counts all its CPU from the first poll on
            self.procs.append(psutil.Process(pid))
            self.peaks.append(0)
            self.cpu_last.append(0.0)
            if self.first_marked:
                self.cpu_first.append(0.0)
        for i, ps in enumerate(self.procs):
            rss, cpu = tree_usage(ps)
            self.peaks[i] = max(self.peaks[i], rss)
            self.cpu_last[i] = cpu

    def mark_first(self) -> None:
        self.cpu_first = list(self.cpu_last)
        self.first_marked = True


async def watch(
    name: str,
    bootstrap: str,
    group: str,
    topic: str,
    placement: Placement,
    procs: Sequence[Proc],
    spawned_at: float,
    timeout_s: float,
    expected: int | None = None,
) -> Result:
    """Time a group of processes: items of `placement` below the group's committed offsets, polled every 0.1 s.

    Called by `_pipeline_groups.measure` for every variant.  The rate is (items at
    the last poll − items at the first poll that showed progress) / (time
    between them): start-up and the first commit interval are excluded, both
    ends carry the same commit and poll delays.  Peak RSS is, per process, the
    largest resident size of its tree at any poll, summed over the processes;
    CPU seconds are each tree's over the same interval as the rate.  `procs`
    may grow while this runs (a member started late, `expected` in all); the
    group counts as complete once the broker lists `expected` members, stable.
    """
    expected = expected or len(procs)
    partitions = len(placement.ends)
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await consumer.start()
    await admin.start()
    usage = _Usage()
    start_items = placement.items_done(placement.starts)
    total_items = placement.items_done(placement.ends) - start_items
    first: tuple[float, int] | None = None
    last: tuple[float, int] = (spawned_at, 0)
    members_at_first = members_max = 0
    complete_at: float | None = None
    rebalancing_s = 0.0
    samples = 0
    note = ""
    try:
        while True:
            committed = await committed_offsets(consumer, topic, partitions)
            members, state = await group_state(admin, group)
            now = time.monotonic()
            usage.sample([p.pid for p in procs])
            done_items = placement.items_done(committed) - start_items
            samples += 1
            members_max = max(members_max, members)
            stable = members >= expected and state == "Stable"
            if stable and complete_at is None:
                complete_at = now
            if first is not None and not stable:
                rebalancing_s += now - last[0]
            if done_items > 0 and first is None:
                first = (now, done_items)
                members_at_first = members
                usage.mark_first()
            last = (now, done_items)
            if all(committed.get(p, -1) >= end for p, end in placement.ends.items()):
                break
            for proc in list(procs):
                if not proc.alive():
                    msg = f"{name}: process {proc.pid} exited before finishing; log ends with:\n{proc.log_tail()}"
                    raise RuntimeError(msg)
            if now - spawned_at > timeout_s:
                note = f"timed out after {timeout_s:.0f} s at {done_items}/{total_items} events"
                break
            await asyncio.sleep(POLL_S)
    finally:
        await consumer.stop()
        await admin.close()
    if first is None:
        msg = f"{name}: no progress within {timeout_s:.0f} s; log ends with:\n{procs[0].log_tail()}"
        raise RuntimeError(msg)
    span = last[0] - first[0]
    if span <= 0.0:  # finished within one commit interval: fall back to spawn-to-end
        span = last[0] - spawned_at
        rate = last[1] / span
        usage.cpu_first = [0.0] * len(usage.procs)
        note = note or "finished within one commit interval: rate includes start-up"
    else:
        rate = (last[1] - first[1]) / span
        if span < MIN_TRUSTED_S:
            note = note or f"timed only {span:.1f} s: too short to trust (use more events)"
    messages = placement.messages()
    return Result(
        name=name,
        processes=len(usage.procs),
        messages=messages,
        item_events=total_items,
        events_per_s=rate,
        messages_per_s=rate * messages / max(total_items, 1),
        startup_s=first[0] - spawned_at,
        measured_s=span,
        with_startup_events_per_s=total_items / (last[0] - spawned_at),
        peak_rss_mb=sum(usage.peaks) / MB,
        peak_rss_max_mb=max(usage.peaks) / MB,
        cpu_s_per_process=tuple(b - a for a, b in zip(usage.cpu_first, usage.cpu_last, strict=True)),
        samples=samples,
        members_at_first=members_at_first,
        members_max=members_max,
        group_complete_s=(complete_at - spawned_at) if complete_at is not None else float("nan"),
        rebalancing_s=rebalancing_s,
        note=note,
    )
