"""Topic administration: create the catalogue's topics on a broker (thin I/O)."""

from __future__ import annotations

import asyncio
import contextlib

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from schemas.topics import CATALOGUE, EVENTS, TopicSpec, state_topic


def catalogue_for(events_partitions: int, app_id: str | None = None) -> list[TopicSpec]:
    """The catalogue with the events partition count applied, plus `app_id`'s state topic."""
    out = [state_topic(app_id, events_partitions)] if app_id else []
    for spec in CATALOGUE:
        if spec is EVENTS:
            spec = TopicSpec(spec.name, events_partitions, spec.retention_ms, spec.cleanup_policy, spec.description)
        out.append(spec)
    return out


async def ensure_topics(bootstrap: str, specs: list[TopicSpec], *, timeout_s: float = 30.0) -> list[str]:
    """Create the topics that do not exist yet; returns the names created.

    Called by `rectune topics`, the worker on start, the demo and test fixtures.
    """
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=int(timeout_s * 1000))
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [s for s in specs if s.name not in existing]
        if missing:
            with contextlib.suppress(TopicAlreadyExistsError):  # another process won the race
                await admin.create_topics(
                    [NewTopic(s.name, s.partitions, 1, topic_configs=s.configs()) for s in missing]
                )
        # Metadata propagates asynchronously; wait until every topic is visible.
        for _ in range(100):
            if {s.name for s in specs} <= set(await admin.list_topics()):
                break
            await asyncio.sleep(0.1)
        return [s.name for s in missing]
    finally:
        await admin.close()


async def partition_count(bootstrap: str, topic: str) -> int:
    """Partitions of an existing topic (0 when it does not exist)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        described = await admin.describe_topics([topic])
    finally:
        await admin.close()
    for entry in described:
        if entry.get("topic") == topic and not entry.get("error_code"):
            return len(entry.get("partitions", []))
    return 0
