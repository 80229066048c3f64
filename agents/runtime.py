"""The agents process for one surface: lease, metrics feed, loop ticks, and the Kafka/Redis adapters.

`AgentRuntime(settings).run(stop)`: every `tick_s` it acquires or renews the
surface's Redis lease (`agents.lease`); only while it holds the lease does
it poll the metrics feed and run one `LoopDriver.tick` (`agents.loop`) with
the lease epoch (fencing: in every decision record, and the state store
writes only while the lease is ours).  A task beside the loop renews the
lease every third of its TTL (`Lease.keep_alive`), so a tick that outlasts
the TTL — a slow brain call — keeps it.  A standby process keeps trying and
takes over, from the stored state, once the leader's lease expires (at once
when the leader stopped cleanly: it releases the lease).

This module keeps the process (`RuntimeSettings`, `make_brain`,
`ensure_topics`, `AgentRuntime`); the rest lives beside it and is
re-exported from here (`__all__`), so callers import `agents.runtime` only.
Adapters (agents may import only `schemas`, so nothing from `rectune`):

- `agents.runtime_kafka` — `KafkaConfigWriter` (appends to `rectune.config`
  exactly once, confirmed; `ConfigRaceError` when another writer took the
  version first) and `KafkaSink` (`rectune.decisions` and `rectune.alerts`,
  one terse log line per record);
- `agents.runtime_records` — their pure half: `fold_config_log` (the config
  log folded as every sidecar folds it, `ConfigLogView`, `action_id_of`),
  `decision_line` and `decode_record`;
- `RedisApprovals` / `approve` (in `agents.state_store`): approvals bound to
  one held experiment instance.

The policy (`OnlinePolicy` and the loop's `LoopSettings`) comes from a JSON
file (`load_policy`, `rectune agents --policy PATH`, in
`agents.runtime_policy`), refused with the field and the rule when invalid.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Final, Literal

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError
from redis import asyncio as aioredis

from agents.alerts_feed import AlertsFeed
from agents.brain import Brain
from agents.lease import Lease
from agents.loop import AgentLoop, LoopDriver, LoopSettings
from agents.metrics_feed import MetricsFeed
from agents.offline_brain import offline_brain_for
from agents.online import OnlineAgent, OnlinePolicy
from agents.replay_feed import ReplayFeed
from agents.runtime_kafka import AUTHOR, ConfigRaceError, KafkaConfigWriter, KafkaSink
from agents.runtime_policy import LOOP_FIELDS, ONLINE_FIELDS, PolicyError, load_policy, parse_policy
from agents.runtime_records import ConfigLogView, action_id_of, decision_line, decode_record, fold_config_log
from agents.skillhub import RedisSkillStore
from agents.state_store import RedisApprovals, RedisStateStore
from schemas.config_log import CONFIG_KEY_ID_ENV, CONFIG_KEYS_ENV, Keyring, keyring_from_env
from schemas.guardrails import Guardrails
from schemas.topics import ALERTS, CONFIG, DECISIONS, METRICS, REPLAY, TopicSpec

__all__ = [
    "AUTHOR",
    "LOOP_FIELDS",
    "ONLINE_FIELDS",
    "AgentRuntime",
    "ConfigLogView",
    "ConfigRaceError",
    "KafkaConfigWriter",
    "KafkaSink",
    "PolicyError",
    "RuntimeSettings",
    "action_id_of",
    "decision_line",
    "decode_record",
    "ensure_topics",
    "fold_config_log",
    "load_policy",
    "make_brain",
    "parse_policy",
]

log = logging.getLogger(__name__)

#: Where `RuntimeSettings.keyring` reads the signing keys when the settings leave them empty.
KEYS_ENV: Final = CONFIG_KEYS_ENV
KEY_ID_ENV: Final = CONFIG_KEY_ID_ENV


# --------------------------------------------------------------------------- settings


@dataclass(frozen=True, slots=True)
class RuntimeSettings:
    """What one agents process needs (the CLI builds it from `rectune.settings`, flags and the policy file)."""

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
    guardrails: Guardrails = field(default_factory=Guardrails)

    def keyring(self) -> Keyring:
        """The signing keyring (settings, else RECTUNE_CONFIG_KEYS / RECTUNE_CONFIG_KEY_ID).

        Called by `AgentRuntime.__init__`, before any I/O.  Raises `ConfigError`
        whose field names the environment variable (and the bad entry) and the rule.
        """
        keys = self.config_keys or os.environ.get(KEYS_ENV, "")
        key_id = self.config_key_id or os.environ.get(KEY_ID_ENV, "")
        return keyring_from_env(keys, key_id)


def make_brain(settings: RuntimeSettings) -> Brain:
    """The configured brain: offline by default; Gemini when chosen and GEMINI_API_KEY is set.

    Called by `AgentRuntime.__init__` (no I/O); raises `ValueError` naming
    GEMINI_API_KEY when the Gemini brain is chosen without it (the CLI checks
    that first, `rectune.agents_cli.require_brain_key`).
    """
    if settings.brain == "gemini":
        from agents.gemini_brain import gemini_brain_from_env

        return gemini_brain_from_env()
    return offline_brain_for(settings.policy or OnlinePolicy(surface=settings.surface), settings.loop.rules)


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


# --------------------------------------------------------------------------- the process


class AgentRuntime:
    """One agents process for one surface (see the module docstring)."""

    def __init__(self, settings: RuntimeSettings, brain: Brain | None = None) -> None:
        """Build nothing that does I/O until `run`; refuse missing signing keys or brain key here, before any."""
        self.settings = settings
        self.keyring = settings.keyring()
        self.brain = brain if brain is not None else make_brain(settings)
        self.lease: Lease | None = None
        self.ticks = 0
        self.last_error = ""

    async def run(self, stop: asyncio.Event) -> None:
        """Run until `stop` is set; releases the lease on the way out (a standby takes over at once)."""
        s, keyring = self.settings, self.keyring
        await ensure_topics(s.bootstrap, [CONFIG, DECISIONS, ALERTS, METRICS, REPLAY])
        client = aioredis.from_url(s.redis_url)
        lease = self.lease = Lease(client, s.surface, s.owner, ttl_ms=s.lease_ttl_ms)
        producer = AIOKafkaProducer(bootstrap_servers=s.bootstrap, acks="all")
        feed = MetricsFeed(s.bootstrap, s.surface)
        breaker = AlertsFeed(s.bootstrap)
        replay = ReplayFeed(s.bootstrap, s.surface)
        skills = RedisSkillStore(s.redis_url, client=client)
        policy = s.policy or OnlinePolicy(surface=s.surface)
        store = RedisStateStore(client, lease)
        writer = KafkaConfigWriter(s.bootstrap, producer, keyring, guardrails=s.guardrails)
        driver = LoopDriver(
            AgentLoop(self.brain, OnlineAgent(policy), s.loop),
            config=writer,
            sink=KafkaSink(producer),
            store=store,
            metrics=feed,
            skills=skills,
            approvals=RedisApprovals(client, store),
            breaker=breaker,
            replay=replay,
        )
        await producer.start()
        await feed.start()
        await breaker.start()
        await replay.start()
        leading = False
        beating = asyncio.create_task(lease.keep_alive(stop))
        try:
            while not stop.is_set():
                held = await lease.acquire()
                if held != leading:
                    leading = held
                    log.info(
                        "%s %s the lease of %s (epoch %d)",
                        lease.owner,
                        "holds" if held else "lost",
                        s.surface,
                        lease.epoch,
                    )
                if held:
                    await feed.poll(timeout_ms=50)
                    await breaker.poll(timeout_ms=50)
                    await replay.poll(timeout_ms=50)
                    try:
                        await driver.tick(int(time.time() * 1000), lease.epoch)
                        self.ticks += 1
                    except Exception as err:  # one bad tick must not kill the loop: its intent (if any) is kept
                        self.last_error = f"{type(err).__name__}: {err}"
                        log.exception("agents tick failed")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), s.tick_s)
        finally:
            beating.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await beating
            await lease.release()
            await writer.close()
            await feed.stop()
            await breaker.stop()
            await replay.stop()
            await producer.stop()
            await client.aclose()
            log.info("agents %s stopped (lease released)", s.surface)
