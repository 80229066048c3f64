"""The Redis lease on a real Redis: one holder, larger epochs for every new holder, and a heartbeat that keeps it
through work longer than its TTL."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest
from redis import asyncio as aioredis

from agents.lease import Lease


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    redis = aioredis.from_url(redis_url)
    yield redis
    await redis.aclose()


def _prefix() -> str:
    return f"t{uuid.uuid4().hex[:8]}"


async def test_one_holder_and_every_new_holder_has_a_larger_epoch(client: aioredis.Redis) -> None:
    prefix = _prefix()
    a, b = (Lease(client, "home", owner, ttl_ms=5_000, prefix=prefix) for owner in ("a", "b"))
    assert await a.acquire() and a.held and a.epoch > 0
    assert not await b.acquire() and not b.held
    assert await a.acquire()  # renews
    first = a.epoch
    await a.release()
    assert not a.held and await b.acquire() and b.epoch > first


async def test_keep_alive_holds_the_lease_through_work_longer_than_its_ttl(client: aioredis.Redis) -> None:
    # Two leaders, each busy for four TTLs after acquiring: only the one with a heartbeat still holds its lease.
    ttl_ms = 300
    outcomes = {}
    for beating in (False, True):
        prefix = _prefix()
        leader, standby = (
            Lease(client, "home", "leader", ttl_ms=ttl_ms, prefix=prefix),
            Lease(client, "home", "standby", ttl_ms=ttl_ms, prefix=prefix),
        )
        assert await leader.acquire()
        epoch = leader.epoch
        stop = asyncio.Event()
        task = asyncio.create_task(leader.keep_alive(stop)) if beating else None
        await asyncio.sleep(4 * ttl_ms / 1000)  # a slow step: no acquire in between
        taken = await standby.acquire()
        outcomes[beating] = (taken, await client.get(leader.key) == f"leader:{epoch}".encode(), leader.epoch == epoch)
        stop.set()
        if task is not None:
            await task
    assert outcomes[False][0]  # without the heartbeat the standby took over
    assert outcomes[True] == (False, True, True)  # with it, the leader holds the same lease (same epoch) throughout


async def test_keep_alive_notices_a_lost_lease(client: aioredis.Redis) -> None:
    prefix = _prefix()
    lease = Lease(client, "home", "a", ttl_ms=300, prefix=prefix)
    assert await lease.acquire()
    stop = asyncio.Event()
    task = asyncio.create_task(lease.keep_alive(stop))
    await client.set(lease.key, "intruder:99", px=5_000)  # someone else holds it now
    await asyncio.sleep(0.3)  # a beat is every 100 ms
    assert not lease.held and lease.epoch == 0
    assert await client.get(lease.key) == b"intruder:99"  # a lost lease is never renewed over its new holder
    stop.set()
    await task
