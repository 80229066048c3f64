"""Two agents processes for one surface on a real broker (tansu) and a real Redis: one leader, fail-over."""

from __future__ import annotations

import asyncio
import time
import uuid

import msgspec
import numpy as np
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from redis import asyncio as aioredis

from agents.brain import Proposal, ProposalContext
from agents.loop import LoopSettings, LoopState
from agents.offline_brain import OfflineBrain
from agents.runtime import AgentRuntime, RuntimeSettings
from agents.state_store import state_key
from rectune.admin import ensure_topics
from rectune.config_log_io import append_change, draft
from schemas.config import default_config
from schemas.config_log import Keyring
from schemas.metrics import BUCKET_FIELDS, FIELD_INDEX, N_FIELDS, MetricWindow, sparse_window_arrays
from schemas.topics import ALERTS, CONFIG, DECISIONS, METRICS

KEYS = "k1:" + "cd" * 16


def _window(surface: str) -> bytes:
    sums = np.zeros((N_FIELDS, 8))
    sums[FIELD_INDEX["requests"]] = 500.0
    sums[FIELD_INDEX["impressions"]] = 6000.0
    sums[FIELD_INDEX["clicks"]] = 300.0 + np.arange(8)
    hist = np.zeros(122, np.int64)
    ids, packed, bins, counts = sparse_window_arrays(sums, hist)
    window = MetricWindow(
        schema_version=1,
        partial_id="p0",
        source_topic="rectune.events",
        source_partition=0,
        window_start_ms=0,
        window_end_ms=60_000,
        surface=surface,
        arm_id="base",
        cohort="all",
        config_versions=(1,),
        buckets=8,
        fields=BUCKET_FIELDS,
        bucket_ids=ids,
        sums=packed,
        latency_bins=bins,
        latency_counts=counts,
        item_events=6300,
    )
    return msgspec.json.encode(window)


async def _records(bootstrap: str) -> list[dict[str, object]]:
    tp = TopicPartition(DECISIONS.name, 0)
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False)
    await consumer.start()
    try:
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)
        batch = await consumer.getmany(tp, timeout_ms=500)
        return [msgspec.json.decode(r.value) for r in batch.get(tp, []) if r.value]
    finally:
        await consumer.stop()


async def _wait(pred: object, timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if await pred():  # type: ignore[operator]
            return
        await asyncio.sleep(0.2)
    msg = "timed out"
    raise AssertionError(msg)


async def _seeded_surface(bootstrap: str) -> str:
    """A fresh surface on `bootstrap`: the topics, a signed default config and one metric window."""
    surface = f"s{uuid.uuid4().hex[:6]}"
    await ensure_topics(bootstrap, [CONFIG, DECISIONS, ALERTS, METRICS])
    keyring = Keyring.parse(KEYS, "k1")
    await append_change(
        bootstrap, draft("config", author="test", reason="seed", config=default_config(), activate=True), keyring
    )
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    await producer.send_and_wait(METRICS.name, _window(surface), partition=0)
    await producer.stop()
    return surface


def _settings(bootstrap: str, redis_url: str, surface: str, owner: str, *, lease_ttl_ms: int) -> RuntimeSettings:
    return RuntimeSettings(
        bootstrap=bootstrap,
        redis_url=redis_url,
        surface=surface,
        tick_s=0.3,
        lease_ttl_ms=lease_ttl_ms,
        owner=owner,
        config_keys=KEYS,
        config_key_id="k1",
        loop=LoopSettings(k=1, cooldown_s=0.5),
    )


async def test_one_leader_and_failover_from_stored_state(tansu_broker: str, redis_url: str) -> None:
    surface = await _seeded_surface(tansu_broker)

    a = AgentRuntime(_settings(tansu_broker, redis_url, surface, "a", lease_ttl_ms=1_500))
    b = AgentRuntime(_settings(tansu_broker, redis_url, surface, "b", lease_ttl_ms=1_500))
    stop_a, stop_b = asyncio.Event(), asyncio.Event()
    task_a = asyncio.create_task(a.run(stop_a))

    async def a_leads() -> bool:  # a's start-up (clients, feeds) takes a variable time: b starts once a leads
        return a.lease is not None and a.lease.held

    await _wait(a_leads)
    task_b = asyncio.create_task(b.run(stop_b))
    redis = aioredis.from_url(redis_url)
    try:

        async def two_cycles() -> bool:
            raw = await redis.get(state_key(surface))
            return raw is not None and LoopState.from_bytes(raw).phase == "running"

        try:
            await _wait(two_cycles)
        except AssertionError:
            raise AssertionError(a.last_error, a.ticks, b.ticks, await redis.get(state_key(surface))) from None
        leaders = {r.lease.owner for r in (a, b) if r.lease is not None and r.lease.held}
        assert leaders == {"a"} and b.ticks == 0, (a.last_error, b.last_error)
        records = [r for r in await _records(tansu_broker) if r["surface"] == surface]
        assert records and {r["epoch"] for r in records} == {a.lease.epoch}  # type: ignore[union-attr]
        # "Kill" the leader: stop ticking without releasing the lease; b takes over after the TTL.
        task_a.cancel()
        before = LoopState.from_bytes(await redis.get(state_key(surface)))  # type: ignore[arg-type]
        await redis.set(f"rectune:agents:{surface}:lease", "a:stale", xx=True, px=1_500)

        async def b_leads() -> bool:
            raw = await redis.get(state_key(surface))
            return b.ticks > 0 and raw is not None

        await _wait(b_leads)
        assert b.lease is not None and b.lease.held and b.lease.epoch > 0
        after = LoopState.from_bytes(await redis.get(state_key(surface)))  # type: ignore[arg-type]
        # b continues the stored experiment (same cycle, same experiment): it does not start over
        assert after.cycle == before.cycle and after.phase == "running"
        exp_after, exp_before = after.experiment_state(), before.experiment_state()
        assert exp_after is not None and exp_before is not None
        assert exp_after.experiment_id == exp_before.experiment_id
    finally:
        stop_b.set()
        stop_a.set()
        await asyncio.gather(task_a, task_b, return_exceptions=True)
        await redis.aclose()


class SlowBrain(OfflineBrain):
    """The offline brain, taking `delay_s` over every proposal (a slow LLM call with its retries)."""

    def __init__(self, delay_s: float) -> None:
        super().__init__(seed=1)
        self.delay_s = delay_s
        self.calls = 0

    async def propose(self, context: ProposalContext) -> list[Proposal]:
        self.calls += 1
        await asyncio.sleep(self.delay_s)
        return await super().propose(context)


async def test_a_step_longer_than_the_lease_ttl_keeps_the_lease_and_its_work(tansu_broker: str, redis_url: str) -> None:
    # Without the heartbeat, the lease expired during every proposal, the fenced intent write was refused,
    # and the round was dropped: the loop never left `idle`.
    surface = await _seeded_surface(tansu_broker)
    brain = SlowBrain(delay_s=2.5)
    runtime = AgentRuntime(_settings(tansu_broker, redis_url, surface, "slow", lease_ttl_ms=1_000), brain=brain)
    stop = asyncio.Event()
    task = asyncio.create_task(runtime.run(stop))
    redis = aioredis.from_url(redis_url)
    try:

        async def running() -> bool:
            raw = await redis.get(state_key(surface))
            return raw is not None and LoopState.from_bytes(raw).phase == "running"

        try:
            await _wait(running, timeout_s=30.0)
        except AssertionError:
            raise AssertionError(runtime.last_error, runtime.ticks, brain.calls) from None
        assert brain.calls == 1  # the first round's work was kept, not dropped and redone
        assert runtime.lease is not None and runtime.lease.held
        records = [r for r in await _records(tansu_broker) if r["surface"] == surface]
        assert {r["epoch"] for r in records} == {runtime.lease.epoch}  # one lease throughout
    finally:
        stop.set()
        await asyncio.gather(task, return_exceptions=True)
        await redis.aclose()
