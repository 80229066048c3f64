"""The config storm of the sidecar benchmark: signed allocation changes at a fixed rate.

`bench/sidecar.py` measures the ranker's p99 while configs swap 10 times a
second.  The changes come from here: each one re-points the experiment's
treatment arm at the other of two registered configs (so the served config
really changes for half the users) and continues the version chain from the
head it was given.  All records are signed before the first tick, so a tick
costs one `send_and_wait`; ticks follow an absolute schedule (a late tick is
sent at once and counted, never skipped).

By default the publisher runs in its own process (as the agents would in
production, so the ranker pays only for *receiving* changes, not for producing
them); `bench/sidecar.py --storm-producer thread` runs the same `StormPublisher`
on a thread of the ranker process instead.

Process protocol (one line each way): the parent starts
``python bench/_sidecar_storm.py PLAN_JSON`` with the bench-only keyring spec in
the environment variable `KEYS_ENV`; the child prints ``ready`` once connected;
``go`` starts a storm, ``stop`` ends it and the child answers with one JSON
`StormRound`; ``quit`` (or end of input) exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import threading
import time
from dataclasses import asdict, dataclass
from typing import Final

import msgspec
from aiokafka import AIOKafkaProducer

from rectune.config_log_io import draft
from schemas.config import Allocation, ArmShare
from schemas.config_log import Keyring, encode_change, sign
from schemas.topics import CONFIG

#: Environment variable carrying the bench-only keyring spec (`id:hex`) to the child.
KEYS_ENV: Final = "RECTUNE_BENCH_SIDECAR_KEYS"
#: Records signed ahead of a storm (a storm that outlasts them raises).
_PRESIGNED: Final = 4_000


@dataclass(frozen=True, slots=True)
class StormPlan:
    """Where to publish and what: the head to continue from and the experiment to re-point."""

    bootstrap: str
    key_id: str
    head_version: int
    control_version: int
    arm_versions: tuple[int, int]
    experiment_id: str
    salt: str
    share: float
    rate_per_s: float

    def to_json(self) -> str:
        """The plan as a command-line argument."""
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> StormPlan:
        """Parse `to_json` output."""
        raw = json.loads(text)
        raw["arm_versions"] = tuple(raw["arm_versions"])
        return cls(**raw)


@dataclass(frozen=True, slots=True)
class StormRound:
    """What one storm did: changes sent, versions covered, schedule slips."""

    sent: int
    first_version: int
    last_version: int
    duration_s: float
    max_late_ms: float
    late_ticks: int

    @classmethod
    def from_json(cls, text: str) -> StormRound:
        """Parse the child's answer to ``stop``."""
        return cls(**json.loads(text))


def allocation_change(plan: StormPlan, keyring: Keyring, version: int, treatment_version: int) -> bytes:
    """The signed record of version `version`: treatment arm served by config `treatment_version`."""
    allocation = Allocation(
        experiment_id=plan.experiment_id,
        salt=plan.salt,
        arms=(
            ArmShare("control", plan.control_version, 1.0 - plan.share),
            ArmShare("treatment", treatment_version, plan.share),
        ),
    )
    unsigned = draft("allocation", author="agent:bench-storm", reason="config storm", allocation=allocation)
    change = msgspec.structs.replace(
        unsigned, version=version, parent_version=version - 1, created_ms=int(time.time() * 1000)
    )
    return encode_change(sign(change, keyring))


class StormPublisher:
    """Publishes `plan`'s changes at `plan.rate_per_s` while a storm runs (one asyncio loop)."""

    def __init__(self, plan: StormPlan, keyring: Keyring) -> None:
        self.plan = plan
        self._keyring = keyring
        self._producer: AIOKafkaProducer | None = None
        self._values: list[bytes] = []
        self._next = 0  # index into _values of the next record to send

    async def start(self) -> None:
        """Sign the records ahead and connect (topic metadata fetched, so the first tick is not slow)."""
        first = self.plan.head_version + 1
        arms = self.plan.arm_versions
        # The head serves arm_versions[0]; the first storm change re-points to the other one.
        self._values = [
            allocation_change(self.plan, self._keyring, first + i, arms[(i + 1) % 2]) for i in range(_PRESIGNED)
        ]
        self._producer = AIOKafkaProducer(bootstrap_servers=self.plan.bootstrap, acks="all", linger_ms=0)
        await self._producer.start()
        await self._producer.partitions_for(CONFIG.name)

    @property
    def last_version(self) -> int:
        """Version of the last record sent (the head given, before any)."""
        return self.plan.head_version + self._next

    async def run(self, stop: asyncio.Event) -> StormRound:
        """Send one change per tick until `stop` is set; returns what was sent."""
        producer = self._producer
        if producer is None:
            msg = "StormPublisher.start() first"
            raise RuntimeError(msg)
        period = 1.0 / self.plan.rate_per_s
        begin = time.perf_counter()
        first, sent, late, max_late = self.last_version + 1, 0, 0, 0.0
        while not stop.is_set():
            due = begin + sent * period
            slip = time.perf_counter() - due
            if slip > 0.002:
                late += 1
            max_late = max(max_late, slip)
            if self._next >= len(self._values):
                msg = f"storm outlasted its {_PRESIGNED} presigned records"
                raise RuntimeError(msg)
            await producer.send_and_wait(CONFIG.name, self._values[self._next], partition=0)
            self._next += 1
            sent += 1
            wait = begin + sent * period - time.perf_counter()
            if wait > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), wait)
        return StormRound(
            sent=sent,
            first_version=first,
            last_version=self.last_version,
            duration_s=time.perf_counter() - begin,
            max_late_ms=max(max_late, 0.0) * 1000.0,
            late_ticks=late,
        )

    async def close(self) -> None:
        """Disconnect (idempotent)."""
        producer, self._producer = self._producer, None
        if producer is not None:
            await producer.stop()


async def _serve(plan: StormPlan, keyring: Keyring) -> None:
    publisher = StormPublisher(plan, keyring)
    await publisher.start()
    loop = asyncio.get_running_loop()
    commands: asyncio.Queue[str] = asyncio.Queue()

    def read_stdin() -> None:
        for line in sys.stdin:
            loop.call_soon_threadsafe(commands.put_nowait, line.strip())
        loop.call_soon_threadsafe(commands.put_nowait, "quit")

    threading.Thread(target=read_stdin, name="storm-stdin", daemon=True).start()
    print("ready", flush=True)
    try:
        while (command := await commands.get()) != "quit":
            if command != "go":
                continue
            stop = asyncio.Event()
            task = asyncio.create_task(publisher.run(stop))
            command = await commands.get()
            stop.set()
            print(json.dumps(asdict(await task)), flush=True)
            if command == "quit":
                break
    finally:
        await publisher.close()


def main() -> int:
    """Child-process entry point (see the module docstring)."""
    plan = StormPlan.from_json(sys.argv[1])
    keyring = Keyring.parse(os.environ[KEYS_ENV], plan.key_id)
    asyncio.run(_serve(plan, keyring))
    return 0


if __name__ == "__main__":
    sys.exit(main())
