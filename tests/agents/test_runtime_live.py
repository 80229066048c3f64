"""`AgentRuntime` on a real broker (tansu) and a real Redis: SRM halts and guardrail rollbacks end to end.

Metric windows are published as the stream worker publishes them (one
`MetricWindow` partial per arm and window, sparse buckets, a latency
histogram), for the arms the live loop allocated; the runtime reads them
through its `MetricsFeed` and writes to the real topics.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
import numpy as np
import pytest
from aiokafka import AIOKafkaProducer, TopicPartition
from redis import asyncio as aioredis

from agents.brain import Brain
from agents.experiment import ExperimentState, GuardrailSpec
from agents.loop import LoopSettings, LoopState, pre_period_arm
from agents.online import OnlinePolicy, served_shares
from agents.runtime import AgentRuntime, RuntimeSettings
from agents.state_store import state_key
from agents.stats.simulate import TrafficModel, simulate_experiment
from rectune.admin import ensure_topics
from rectune.config_log_io import append_change, draft, read_log, replay
from rectune.kafka_read import read_to_end
from schemas.alerts import decode_alert
from schemas.config import default_config
from schemas.config_log import Keyring
from schemas.metrics import BUCKET_FIELDS, FIELD_INDEX, N_FIELDS, MetricWindow, latency_bins, sparse_window_arrays
from schemas.topics import ALERTS, CONFIG, DECISIONS, METRICS

KEYS = "k1:" + "cd" * 16
KEYRING = Keyring.parse(KEYS, "k1")
BUCKETS = 8
T_WINDOW_MS = 1_767_225_600_000


def window(surface: str, arm_id: str, index: int, requests: float, latency_ms: float = 20.0) -> bytes:
    """One closed-window partial of `arm_id` with `requests` per bucket (CTR 5%), as the worker publishes it."""
    sums = np.zeros((N_FIELDS, BUCKETS))
    sums[FIELD_INDEX["requests"]] = requests
    sums[FIELD_INDEX["impressions"]] = 12.0 * requests
    sums[FIELD_INDEX["clicks"]] = 0.6 * requests + np.arange(BUCKETS)
    sums[FIELD_INDEX["distinct_categories"]] = 5.0 * requests
    hist = np.zeros(122, np.int64)
    hist[int(latency_bins([latency_ms])[0])] = int(requests * BUCKETS)
    ids, packed, bins, counts = sparse_window_arrays(sums, hist)
    start = T_WINDOW_MS + index * 60_000
    return msgspec.json.encode(
        MetricWindow(
            schema_version=1,
            partial_id=f"{arm_id}:{index}",
            source_topic="rectune.events",
            source_partition=index % 4,
            window_start_ms=start,
            window_end_ms=start + 60_000,
            surface=surface,
            arm_id=arm_id,
            cohort="all",
            config_versions=(1,),
            buckets=BUCKETS,
            fields=BUCKET_FIELDS,
            bucket_ids=ids,
            sums=packed,
            latency_bins=bins,
            latency_counts=counts,
            item_events=int(13.6 * requests * BUCKETS),
        )
    )


async def topic(bootstrap: str, name: str) -> list[bytes]:
    records = await read_to_end(bootstrap, [TopicPartition(name, 0)], settle_ms=200)
    return [r.value for r in records if r.value is not None]


async def wait_for(pred: Callable[[], Awaitable[bool]], what: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if await pred():
            return
        await asyncio.sleep(0.2)
    msg = f"timed out waiting for {what}"
    raise AssertionError(msg)


class Live:
    """One surface on the real broker and Redis, its runtime, and a metrics publisher."""

    def __init__(
        self,
        bootstrap: str,
        redis_url: str,
        guardrails: GuardrailSpec,
        *,
        pre_period_s: float = 0.0,
        brain: Brain | None = None,
        loop: LoopSettings | None = None,
        lease_ttl_ms: int = 3_000,
        **kw: Any,
    ) -> None:
        self.bootstrap, self.redis_url = bootstrap, redis_url
        self.surface = f"s{uuid.uuid4().hex[:6]}"
        fields: dict[str, Any] = {
            "stages": (0.1, 0.5),
            "min_dwell_s": 0.0,
            "min_stage_requests": 1e12,  # stays in stage 1: these tests are about halts, rollbacks and reads
            "horizon_s": 3_600.0,
            "target_mde": 0.5,
            "settle_s": 0.0,
            "min_read_requests": 1e12,  # no primary read unless asked: only SRM and guardrails act
            "guardrails": guardrails,
        }
        policy = OnlinePolicy(surface=self.surface, **{**fields, **kw})
        self.runtime = AgentRuntime(
            RuntimeSettings(
                bootstrap=bootstrap,
                redis_url=redis_url,
                surface=self.surface,
                tick_s=0.2,
                lease_ttl_ms=lease_ttl_ms,
                owner="live",
                config_keys=KEYS,
                config_key_id="k1",
                policy=policy,
                loop=loop or LoopSettings(k=1, cooldown_s=3_600.0, pre_period_s=pre_period_s),
            ),
            brain=brain,
        )
        self.redis = aioredis.from_url(redis_url)
        self.producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
        self.stop = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        self.published = 0

    async def start(self, phase: str = "running", base: bytes | None = None) -> ExperimentState:
        await self.launch(base)
        await wait_for(lambda: self.phase_is(phase), f"the loop to reach {phase}")
        exp = (await self.state()).experiment_state()
        assert exp is not None
        return exp

    async def launch(self, base: bytes | None = None) -> None:
        """Seed the config log, publish the incumbent's first window (`base`) and start the runtime (no wait)."""
        await ensure_topics(self.bootstrap, [CONFIG, DECISIONS, ALERTS, METRICS])
        seed = draft("config", author="test", reason="seed", config=default_config(), activate=True)
        await append_change(self.bootstrap, seed, KEYRING)
        await self.producer.start()
        base = base if base is not None else window(self.surface, "base", 0, 500.0)
        await self.producer.send_and_wait(METRICS.name, base, partition=0)
        self.task = asyncio.create_task(self.runtime.run(self.stop))

    async def state(self) -> LoopState:
        raw = await self.redis.get(state_key(self.surface))
        assert raw is not None
        return LoopState.from_bytes(raw)

    async def phase_is(self, phase: str) -> bool:
        """True once the stored state is in `phase` with its step's actions done (no outbox)."""
        raw = await self.redis.get(state_key(self.surface))
        if raw is None:
            return False
        state = LoopState.from_bytes(raw)
        return state.phase == phase and state.outbox is None

    async def publish(self, requests: dict[str, float], latency_ms: dict[str, float] | None = None) -> None:
        self.published += 1
        for arm_id, per_bucket in requests.items():
            lat = (latency_ms or {}).get(arm_id, 20.0)
            value = window(self.surface, arm_id, self.published, per_bucket, lat)
            await self.producer.send_and_wait(METRICS.name, value, partition=self.published % 4)

    async def close(self) -> None:
        self.stop.set()
        if self.task is not None:
            await self.task
        await self.producer.stop()
        await self.redis.aclose()

    async def records(self, experiment_id: str) -> list[dict[str, object]]:
        out = [msgspec.json.decode(v) for v in await topic(self.bootstrap, DECISIONS.name)]
        return [r for r in out if r.get("experiment_id") == experiment_id]


async def run_until(live: Live, done: Callable[[LoopState], bool], requests: dict[str, float], **kw: object) -> None:
    """Publish a window per arm every 0.3 s until the stored loop state satisfies `done`."""
    deadline = time.monotonic() + 40.0
    while time.monotonic() < deadline:
        state = await live.state()
        if state.outbox is None and done(state):
            return
        await live.publish(requests, **kw)  # type: ignore[arg-type]
        await asyncio.sleep(0.3)
    msg = f"timed out; last error {live.runtime.last_error!r}, state {await live.state()}"
    raise AssertionError(msg)


async def test_srm_halts_alerts_and_returns_all_traffic_to_control(tansu_broker: str, redis_url: str) -> None:
    live = Live(tansu_broker, redis_url, GuardrailSpec(latency_p99_slo_ms=500.0, min_latency_requests=100))
    try:
        exp = await live.start()
        control, treatment = exp.plan.arm_ids
        assert exp.allocation is not None and served_shares(exp.allocation) == (0.9, 0.1)
        # Half the requests land in the 10% arm: assignment or logging is broken.
        await run_until(live, lambda s: s.phase == "idle", {control: 500.0, treatment: 500.0})
        state = await live.state()
        assert state.history[-1] == f"{exp.experiment_id}:halted_srm"

        decisions = [r["payload"] for r in await live.records(exp.experiment_id) if r["kind"] == "decision"]
        halt = [p for p in decisions if p["kind"] == "halt"]  # type: ignore[index]
        assert len(halt) == 1 and halt[0]["alert"] == "srm" and halt[0]["ends_experiment"]  # type: ignore[index]
        alerts = [decode_alert(v) for v in await topic(tansu_broker, ALERTS.name)]
        srm = [a for a in alerts if a.kind == "srm" and a.surface == live.surface]
        assert len(srm) == 1 and srm[0].severity == "critical"

        history = replay(await read_log(tansu_broker), KEYRING)
        allocations = [e.change for e in history.accepted() if e.change is not None and e.change.kind == "allocation"]
        assert [a.allocation is not None for a in allocations] == [True, False]  # allocated, then everyone to control
        assert history.state.allocation is None and history.state.control_version == 1
        assert all(e.accepted for e in history.entries), "no refused or raced records"
    finally:
        await live.close()


async def test_latency_guardrail_breach_rolls_back_with_an_alert(tansu_broker: str, redis_url: str) -> None:
    live = Live(tansu_broker, redis_url, GuardrailSpec(latency_p99_slo_ms=50.0, min_latency_requests=100))
    try:
        exp = await live.start()
        control, treatment = exp.plan.arm_ids
        pre_version = (await live.state()).pre_version
        await run_until(
            live,
            lambda s: s.phase == "idle",
            {control: 900.0, treatment: 100.0},  # the allocation's shares: no SRM
            latency_ms={control: 20.0, treatment: 300.0},
        )
        assert (await live.state()).history[-1] == f"{exp.experiment_id}:rolled_back"

        decisions = [r["payload"] for r in await live.records(exp.experiment_id) if r["kind"] == "decision"]
        rollback = [p for p in decisions if p["kind"] == "rollback"]  # type: ignore[index]
        assert len(rollback) == 1 and rollback[0]["arm_id"] == treatment  # type: ignore[index]
        assert "latency p99" in rollback[0]["reasons"][0]  # type: ignore[index]
        alerts = [decode_alert(v) for v in await topic(tansu_broker, ALERTS.name)]
        breach = [a for a in alerts if a.kind == "guardrail_breach" and a.surface == live.surface]
        assert len(breach) == 1 and breach[0].arm_id == treatment

        history = replay(await read_log(tansu_broker), KEYRING)
        rollbacks = [e.change for e in history.accepted() if e.change is not None and e.change.kind == "rollback"]
        assert len(rollbacks) == 1 and rollbacks[0].restores_version == pre_version
        assert history.state.allocation is None and history.state.control_version == 1
        assert all(e.accepted for e in history.entries)
    finally:
        await live.close()


def sim_window(surface: str, arm_id: str, clicks: Any, impressions: Any) -> bytes:
    """A partial holding simulated per-bucket sums (one id per arm: republishing it replaces it)."""
    buckets = len(clicks)
    sums = np.zeros((N_FIELDS, buckets))
    sums[FIELD_INDEX["impressions"]] = impressions
    sums[FIELD_INDEX["requests"]] = np.asarray(impressions) / 12.0
    sums[FIELD_INDEX["clicks"]] = clicks
    ids, packed, bins, counts = sparse_window_arrays(sums, np.zeros(122, np.int64))
    return msgspec.json.encode(
        MetricWindow(
            schema_version=1,
            partial_id=f"{arm_id}:cumulative",
            source_topic="rectune.events",
            source_partition=0,
            window_start_ms=T_WINDOW_MS,
            window_end_ms=T_WINDOW_MS + 60_000,
            surface=surface,
            arm_id=arm_id,
            cohort="all",
            config_versions=(1,),
            buckets=buckets,
            fields=BUCKET_FIELDS,
            bucket_ids=ids,
            sums=packed,
            latency_bins=bins,
            latency_counts=counts,
            item_events=int(np.sum(impressions) + np.sum(clicks)),
        )
    )


async def test_the_pre_period_reaches_the_online_read_as_cuped_covariates(tansu_broker: str, redis_url: str) -> None:
    live = Live(tansu_broker, redis_url, GuardrailSpec(), pre_period_s=1.0, stages=(0.5,), min_read_requests=100.0)
    try:
        exp = await live.start("pending_approval")
        history = replay(await read_log(tansu_broker), KEYRING)
        aa = history.state.allocation
        assert aa is not None and aa.salt == exp.plan.salt
        pre_arms = [pre_period_arm(exp.plan, a) for a in exp.plan.arm_ids]
        assert [a.arm_id for a in aa.arms] == pre_arms and {a.config_version for a in aa.arms} == {1}
        # What the worker publishes for the A/A arms (the same users before the experiment), then for the experiment.
        sim = simulate_experiment(TrafficModel(ctr_concentration=3.0), [0.0, 0.0], np.random.default_rng(5))
        for arm, pre in enumerate(pre_arms):
            await live.producer.send_and_wait(
                METRICS.name, sim_window(live.surface, pre, sim.pre_clicks[arm], sim.pre_impressions[arm])
            )
        await wait_for(lambda: live.phase_is("running"), "the pre-period to end")
        for arm, arm_id in enumerate(exp.plan.arm_ids):
            await live.producer.send_and_wait(
                METRICS.name, sim_window(live.surface, arm_id, sim.clicks[arm, 40], sim.impressions[arm, 40])
            )

        async def read() -> bool:
            reads = [r for r in await live.records(exp.experiment_id) if r["kind"] == "interim_read"]
            return any(r["payload"]["reads"] for r in reads)  # type: ignore[index]

        await wait_for(read, "a primary read")
        reads = [r["payload"]["reads"] for r in await live.records(exp.experiment_id) if r["kind"] == "interim_read"]  # type: ignore[index]
        first = next(r for r in reads if r)[0]
        assert first["cuped"] is True and 0.0 < first["variance_ratio"] < 0.8, first
    finally:
        await live.close()


@pytest.mark.kafka
async def test_srm_halts_alerts_and_returns_all_traffic_to_control_on_apache_kafka(
    kafka_broker: str, redis_url: str
) -> None:
    """The same loop on the production broker: the agents' feeds once read nothing there (`agents.topic_reader`)."""
    await test_srm_halts_alerts_and_returns_all_traffic_to_control(kafka_broker, redis_url)
