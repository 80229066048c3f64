"""The propagation phase of the sidecar benchmark: signed changes timed from send to active.

`bench/sidecar.py` builds one `Sidecar` and calls `measure_propagation` first:
`Chain` prepares each change against the local fold of what was published (so
every record is signed and checked before any timing), `produce_one_at_a_time`
sends them, a `Watcher` thread sees each version go active and `FoldHooks`
split the time into broker + fetch, fold and watcher lag (the module docstring
of `bench/sidecar.py` has the protocol).  `Chain` and `with_re_rank` also build
the configs and the experiment of the later phases, and `wait_version` is how
every phase waits for the sidecar to serve a version.
"""

from __future__ import annotations

import argparse
import asyncio
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

import msgspec
import numpy as np
from _sidecar_stats import FloatArray
from aiokafka import AIOKafkaProducer

from rectune.config_log_io import draft, prepare
from schemas.config import Allocation, ArmShare, CascadeConfig, default_config
from schemas.config_log import ConfigChange, Keyring, ServingState, apply, encode_change
from schemas.guardrails import Guardrails
from schemas.topics import CONFIG
from serving_sidecar.holder import Snapshot
from serving_sidecar.sidecar import Sidecar

SALT: Final = "bench-salt"
CYCLE_EXPERIMENT: Final = "bench-cycle"
WATCH_SLEEP_S: Final = 0.0001


def with_re_rank(config: CascadeConfig, **changes: Any) -> CascadeConfig:
    """`config` with some re-rank fields replaced."""
    return msgspec.structs.replace(config, re_rank=msgspec.structs.replace(config.re_rank, **changes))


# -- instrumentation -----------------------------------------------------------------------


class Watcher:
    """A thread polling `holder.snapshot()`; records when each version is first seen (perf_counter s)."""

    def __init__(self, sidecar: Sidecar, sleep_s: float = WATCH_SLEEP_S) -> None:
        self._sidecar = sidecar
        self._sleep_s = sleep_s
        self.seen: dict[int, float] = {}
        self.ticks: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-watcher", daemon=True)

    def start(self) -> None:
        """Start polling."""
        self._thread.start()

    def stop(self) -> None:
        """Stop polling and join."""
        self._stop.set()
        self._thread.join(5.0)

    def _run(self) -> None:
        holder = self._sidecar.holder
        clock, sleep, ticks, seen = time.perf_counter, time.sleep, self.ticks, self.seen
        last: Snapshot | None = None
        last_version = 0
        while not self._stop.is_set():
            snapshot = holder.snapshot()
            now = clock()
            ticks.append(now)
            if snapshot is not last and snapshot is not None:
                last = snapshot
                for version in range(last_version + 1, snapshot.version + 1):
                    seen.setdefault(version, now)
                last_version = max(last_version, snapshot.version)
            sleep(self._sleep_s)

    def period_us(self) -> FloatArray:
        """Polling periods (µs) over the whole watch."""
        return np.diff(np.asarray(self.ticks, dtype=np.float64)) * 1e6


class FoldHooks:
    """Wraps the consumer's `apply_record` and the holder's `update` to time each record's fold (bench only)."""

    def __init__(self, sidecar: Sidecar) -> None:
        self.fold_start: dict[int, float] = {}  # offset -> when the record reached the fold
        self.swapped: dict[int, float] = {}  # version -> when the holder swapped it in
        consumer, holder = sidecar.consumer, sidecar.holder
        apply_record, update = consumer.apply_record, holder.update

        def timed_apply(offset: int, value: bytes | None) -> bool:
            self.fold_start.setdefault(offset, time.perf_counter())
            return apply_record(offset, value)

        def timed_update(change: Callable[[Snapshot], Snapshot]) -> Snapshot | None:
            new = update(change)
            if new is not None:
                self.swapped.setdefault(new.version, time.perf_counter())
            return new

        consumer.apply_record = timed_apply  # type: ignore[method-assign]
        holder.update = timed_update  # type: ignore[method-assign]


# -- propagation ---------------------------------------------------------------------------


@dataclass(slots=True)
class Chain:
    """The local fold of what we publish: the head the next change is prepared against."""

    keyring: Keyring
    guardrails: Guardrails
    head: ServingState = field(default_factory=ServingState)

    def next(self, change: ConfigChange) -> tuple[int, bytes]:
        """Prepare `change` as the next version (signed, checked as the sidecar will); returns (version, record)."""
        ready = prepare(self.head, change, self.keyring, self.guardrails, int(time.time() * 1000))
        self.head = apply(self.head, ready, self.keyring, self.guardrails)
        return ready.version, encode_change(ready)

    def config(self, config: CascadeConfig, *, activate: bool, reason: str) -> tuple[int, bytes]:
        """A `config` change."""
        return self.next(draft("config", author="agent:bench", reason=reason, config=config, activate=activate))

    def allocation(self, experiment: str, treatment_version: int, share: float = 0.5) -> tuple[int, bytes]:
        """An `allocation` change: control vs `treatment_version` at `share`."""
        allocation = Allocation(
            experiment_id=experiment,
            salt=SALT,
            arms=(
                ArmShare("control", self.head.control_version, 1.0 - share),
                ArmShare("treatment", treatment_version, share),
            ),
        )
        return self.next(draft("allocation", author="agent:bench", reason="a/b", allocation=allocation))

    def rollback(self, version: int) -> tuple[int, bytes]:
        """A `rollback` change restoring `version`."""
        return self.next(draft("rollback", author="agent:bench", reason="rollback", restores_version=version))


def propagation_changes(chain: Chain, count: int) -> list[tuple[int, str, bytes]]:
    """`count` changes cycling activate-12 / activate-10 / allocation / rollback: (version, kind, record)."""
    list12, list10 = default_config(), with_re_rank(default_config(), list_size=10)
    out: list[tuple[int, str, bytes]] = []
    v12 = v10 = 0
    while len(out) < count:
        step = len(out) % 4
        if step == 0:
            v12, value = chain.config(list12, activate=True, reason="activate 12-item lists")
            out.append((v12, "activate", value))
        elif step == 1:
            v10, value = chain.config(list10, activate=True, reason="activate 10-item lists")
            out.append((v10, "activate", value))
        elif step == 2:
            version, value = chain.allocation(CYCLE_EXPERIMENT, v12)
            out.append((version, "allocation", value))
        else:
            version, value = chain.rollback(v10)  # ends the experiment: everyone back on 10 items
            out.append((version, "rollback", value))
    return out


@dataclass(frozen=True, slots=True)
class Propagation:
    """Per-change times (ms from t_sent) and the run's facts."""

    kinds: list[str]
    ack_ms: FloatArray
    fold_ms: FloatArray  # t_sent -> the record reached the consumer's fold (broker + fetch)
    swap_ms: FloatArray  # t_sent -> holder swapped (fold included)
    active_ms: FloatArray  # t_sent -> the watcher saw it (the figure)
    timeouts: int
    overlapped: int  # changes sent while an earlier one was not active yet
    watcher_period_us: FloatArray
    duration_s: float


async def produce_one_at_a_time(
    bootstrap: str,
    changes: list[tuple[int, str, bytes]],
    watcher: Watcher,
    args: argparse.Namespace,
    rng: np.random.Generator,
) -> tuple[list[float], list[float], int]:
    """Send each record, wait for it to go active (up to the in-flight cap), pause; returns t_sent, ack times."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=0)
    await producer.start()
    sent: list[float] = []
    acked: list[float] = []
    overlapped = 0
    try:
        await producer.partitions_for(CONFIG.name)
        cap_s = args.inflight_cap_ms / 1000.0
        for i, (version, _, value) in enumerate(changes):
            if i and changes[i - 1][0] not in watcher.seen:
                overlapped += 1
            t_sent = time.perf_counter()
            await producer.send_and_wait(CONFIG.name, value, partition=0)
            acked.append(time.perf_counter())
            sent.append(t_sent)
            # The watcher is a plain thread (no loop coupling that could delay it): poll what it saw.
            while version not in watcher.seen and time.perf_counter() - t_sent < cap_s:  # noqa: ASYNC110
                await asyncio.sleep(0.0002)
            await asyncio.sleep(float(rng.uniform(0.0, args.gap_ms / 1000.0)))
    finally:
        await producer.stop()
    return sent, acked, overlapped


def measure_propagation(
    sidecar: Sidecar, hooks: FoldHooks, chain: Chain, bootstrap: str, args: argparse.Namespace
) -> Propagation:
    """The propagation phase (see the module docstring)."""
    first_offset = chain.head.version  # one record per version, from offset 0: offset = version - 1
    changes = propagation_changes(chain, args.changes)
    watcher = Watcher(sidecar)
    watcher.start()
    begin = time.perf_counter()
    try:
        sent, acked, overlapped = asyncio.run(
            produce_one_at_a_time(bootstrap, changes, watcher, args, np.random.default_rng(args.seed))
        )
        last = changes[-1][0]
        deadline = time.perf_counter() + 10.0
        while last not in watcher.seen and time.perf_counter() < deadline:
            time.sleep(0.001)
    finally:
        watcher.stop()
    duration = time.perf_counter() - begin
    nan = float("nan")
    t0 = np.asarray(sent)
    versions = [v for v, _, _ in changes]
    active = np.asarray([watcher.seen.get(v, nan) for v in versions]) - t0
    swap = np.asarray([hooks.swapped.get(v, nan) for v in versions]) - t0
    fold = np.asarray([hooks.fold_start.get(first_offset + i, nan) for i in range(len(versions))]) - t0
    return Propagation(
        kinds=[k for _, k, _ in changes],
        ack_ms=(np.asarray(acked) - t0) * 1000.0,
        fold_ms=fold * 1000.0,
        swap_ms=swap * 1000.0,
        active_ms=active * 1000.0,
        timeouts=int(np.isnan(active).sum()),
        overlapped=overlapped,
        watcher_period_us=watcher.period_us(),
        duration_s=duration,
    )


def wait_version(sidecar: Sidecar, version: int, timeout_s: float = 30.0) -> None:
    """Block until the sidecar serves `version` (or raise)."""
    deadline = time.monotonic() + timeout_s
    while True:
        snapshot = sidecar.holder.snapshot()
        if snapshot is not None and snapshot.version >= version:
            return
        if time.monotonic() > deadline:
            msg = f"the sidecar did not reach config version {version} within {timeout_s:g} s"
            raise RuntimeError(msg)
        time.sleep(0.002)
