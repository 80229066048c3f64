"""The agents process for one surface: lease, metrics feed, loop ticks, and the Kafka/Redis adapters.

`AgentRuntime(settings).run(stop)`: every `tick_s` it acquires or renews the
surface's Redis lease (`agents.lease`); only while it holds the lease does
it poll the metrics feed and run one `LoopDriver.tick` (`agents.loop`) with
the lease epoch (fencing: in every decision record, and the state store
writes only while the lease is ours).  A standby process keeps trying and
takes over, from the stored state, once the leader's lease expires.

Adapters here (agents may import only `schemas`, so nothing from `rectune`):
`KafkaConfigWriter` reads `rectune.config` to its end, folds it
(`schemas.config_log.apply`) and appends the next version signed with the
keyring from `RECTUNE_CONFIG_KEYS` / `RECTUNE_CONFIG_KEY_ID`, checked
locally exactly as the sidecars will check it; `KafkaSink` publishes to
`rectune.decisions` and `rectune.alerts`; `RedisApprovals` reads the
experiment ids `rectune approve` added (`approval_key()`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Final, Literal

import msgspec
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError
from redis import asyncio as aioredis

from agents.brain import Brain
from agents.lease import PREFIX, Lease
from agents.loop import AgentLoop, AppendConfig, LoopDriver, LoopSettings, PublishRecord
from agents.metrics_feed import MetricsFeed
from agents.offline_brain import OfflineBrain
from agents.online import OnlineAgent, OnlinePolicy
from agents.skillhub import RedisSkillStore
from agents.state_store import RedisStateStore
from schemas.alerts import Alert, encode_alert
from schemas.config import ConfigError
from schemas.config_log import ConfigChange, Keyring, ServingState, apply, decode_change, encode_change, sign
from schemas.errors import SignatureError
from schemas.topics import ALERTS, CONFIG, DECISIONS, METRICS, TopicSpec

log = logging.getLogger(__name__)
AUTHOR: Final = "rectune-agents"


def approval_key(prefix: str = PREFIX) -> str:
    """The Redis set of approved experiment ids (written by `rectune approve`)."""
    return f"{prefix}:approved"


@dataclass(frozen=True, slots=True)
class RuntimeSettings:
    """What one agents process needs (the CLI builds it from `rectune.settings` and flags)."""

    bootstrap: str
    redis_url: str
    surface: str = "home"
    brain: Literal["offline", "gemini"] = "offline"
    tick_s: float = 5.0
    lease_ttl_ms: int = 15_000
    owner: str = ""
    config_keys: str = ""
    config_key_id: str = ""
    policy: OnlinePolicy | None = None
    loop: LoopSettings = field(default_factory=LoopSettings)

    def keyring(self) -> Keyring:
        """The signing keyring (settings, else RECTUNE_CONFIG_KEYS / RECTUNE_CONFIG_KEY_ID)."""
        keys = self.config_keys or os.environ.get("RECTUNE_CONFIG_KEYS", "")
        key_id = self.config_key_id or os.environ.get("RECTUNE_CONFIG_KEY_ID", "")
        return Keyring.parse(keys, key_id)


def make_brain(settings: RuntimeSettings) -> Brain:
    """The configured brain: offline by default; Gemini when chosen and GEMINI_API_KEY is set."""
    if settings.brain == "gemini":
        from agents.gemini_brain import gemini_brain_from_env

        return gemini_brain_from_env()
    return OfflineBrain(rules=settings.loop.rules)


async def ensure_topics(bootstrap: str, specs: list[TopicSpec]) -> None:
    """Create the topics that are missing (another process may win the race)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [s for s in specs if s.name not in existing]
        if missing:
            with contextlib.suppress(TopicAlreadyExistsError):
                await admin.create_topics(
                    [NewTopic(s.name, s.partitions, 1, topic_configs=s.configs()) for s in missing]
                )
    finally:
        await admin.close()


class KafkaConfigWriter:
    """`agents.loop.ConfigWriter` over `rectune.config`: fold to the head, sign and append the next version."""

    def __init__(self, bootstrap: str, producer: AIOKafkaProducer, keyring: Keyring, *, author: str = AUTHOR) -> None:
        """Keep the producer (started by the runtime) and the keyring."""
        self.bootstrap, self.producer, self.keyring, self.author = bootstrap, producer, keyring, author

    async def _records(self) -> list[bytes]:
        tp = TopicPartition(CONFIG.name, 0)
        consumer = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, group_id=None, enable_auto_commit=False)
        await consumer.start()
        try:
            consumer.assign([tp])
            await consumer.seek_to_beginning(tp)
            end = (await consumer.end_offsets([tp]))[tp]
            out: list[bytes] = []
            while True:  # until the reported end AND an empty fetch (tansu's ListOffsets may lag)
                batch = await consumer.getmany(tp, timeout_ms=200, max_records=10_000)
                records = batch.get(tp, [])
                out.extend(r.value for r in records if r.value is not None)
                if not records and await consumer.position(tp) >= end:
                    return out
        finally:
            await consumer.stop()

    async def head(self) -> ServingState:
        """The folded serving state (refused records are skipped, as every sidecar does)."""
        state = ServingState()
        for value in await self._records():
            try:
                state = apply(state, decode_change(value), self.keyring)
            except (ConfigError, SignatureError):
                continue
        return state

    async def append(self, action: AppendConfig, epoch: int) -> int:
        """Sign `action` as head + 1, check it as the sidecars will, append it; returns its version."""
        head = await self.head()
        now = int(time.time() * 1000)
        change = sign(
            ConfigChange(
                schema_version=1,
                version=head.version + 1,
                parent_version=head.version,
                author=self.author,
                reason=f"[epoch {epoch}] {action.reason}"[:4000],
                created_ms=max(now, head.changed_ms),
                kind=action.kind,
                config=action.config,
                activate=action.activate,
                allocation=action.allocation,
                restores_version=action.restores_version,
                key_id=self.keyring.active_key_id,
            ),
            self.keyring,
        )
        apply(head, change, self.keyring)  # raises before anything is appended
        await self.producer.send_and_wait(CONFIG.name, encode_change(change), partition=0)
        return change.version


class KafkaSink:
    """`agents.loop.DecisionSink` over `rectune.decisions` and `rectune.alerts`."""

    def __init__(self, producer: AIOKafkaProducer) -> None:
        """Keep the producer (started by the runtime)."""
        self.producer = producer

    async def publish(self, record: PublishRecord) -> None:
        """One decision record, keyed by surface."""
        key = str(record.record.get("surface", "")).encode()
        await self.producer.send_and_wait(DECISIONS.name, record.to_json(), key=key)

    async def alert(self, alert: Alert) -> None:
        """One alert."""
        await self.producer.send_and_wait(ALERTS.name, encode_alert(alert))


class RedisApprovals:
    """`agents.loop.ApprovalSource` over the Redis set `approval_key()`."""

    def __init__(self, client: aioredis.Redis) -> None:
        """Keep the client."""
        self.client = client

    async def approved(self) -> frozenset[str]:
        """The approved experiment ids."""
        members = await self.client.smembers(approval_key())
        return frozenset(m.decode() if isinstance(m, bytes) else str(m) for m in members)


async def approve(redis_url: str, experiment_id: str) -> None:
    """Record a human approval of `experiment_id` (what `rectune approve` calls)."""
    client = aioredis.from_url(redis_url)
    try:
        await client.sadd(approval_key(), experiment_id)
    finally:
        await client.aclose()


class AgentRuntime:
    """One agents process for one surface (see the module docstring)."""

    def __init__(self, settings: RuntimeSettings, brain: Brain | None = None) -> None:
        """Build nothing that does I/O until `run`."""
        self.settings = settings
        self.brain = brain if brain is not None else make_brain(settings)
        self.lease: Lease | None = None
        self.ticks = 0
        self.last_error = ""

    async def run(self, stop: asyncio.Event) -> None:
        """Run until `stop` is set; releases the lease on the way out."""
        s = self.settings
        keyring = s.keyring()
        await ensure_topics(s.bootstrap, [CONFIG, DECISIONS, ALERTS, METRICS])
        client = aioredis.from_url(s.redis_url)
        lease = self.lease = Lease(client, s.surface, s.owner, ttl_ms=s.lease_ttl_ms)
        producer = AIOKafkaProducer(bootstrap_servers=s.bootstrap, acks="all")
        feed = MetricsFeed(s.bootstrap, s.surface)
        skills = RedisSkillStore(s.redis_url, client=client)
        policy = s.policy or OnlinePolicy(surface=s.surface)
        driver = LoopDriver(
            AgentLoop(self.brain, OnlineAgent(policy), s.loop),
            config=KafkaConfigWriter(s.bootstrap, producer, keyring),
            sink=KafkaSink(producer),
            store=RedisStateStore(client, lease),
            metrics=feed,
            skills=skills,
            approvals=RedisApprovals(client),
        )
        await producer.start()
        await feed.start()
        try:
            while not stop.is_set():
                if await lease.acquire():
                    await feed.poll(timeout_ms=50)
                    try:
                        await driver.tick(int(time.time() * 1000), lease.epoch)
                        self.ticks += 1
                    except Exception as err:  # one bad tick must not kill the loop; the state was not saved
                        self.last_error = f"{type(err).__name__}: {err}"
                        log.exception("agents tick failed")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), s.tick_s)
        finally:
            await lease.release()
            await feed.stop()
            await producer.stop()
            await client.aclose()


def decode_record(data: bytes) -> dict[str, object]:
    """A `rectune.decisions` agent record as a dict (tests, tools)."""
    out: dict[str, object] = msgspec.json.decode(data)
    return out
