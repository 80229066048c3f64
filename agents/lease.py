"""A Redis lease: one active agents loop per surface, however many processes run (fencing by epoch).

`Lease(client, surface, owner)`: `acquire()` does `SET key token NX PX ttl`
with a fresh epoch (`INCR` of the surface's epoch counter), so every new
holder has a strictly larger epoch; `renew()` extends the TTL only while the
key still holds our token (Lua compare-and-pexpire); `release()` deletes it
only if it is ours (compare-and-del).  A process whose renew fails has lost
the lease and must stop acting; the epoch goes into every decision record and
the state store writes only while the lease key holds our token.

`keep_alive(stop)` renews every third of the TTL in a task of its own, so a
loop step that outlasts the TTL (a slow brain call with its retries) does
not lose the lease half-way: without it, every step longer than the TTL
would have its fenced writes refused and its work dropped, again and again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from typing import Final

from redis import asyncio as aioredis

PREFIX: Final = "rectune:agents"
log = logging.getLogger(__name__)

_RENEW: Final = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""
_RELEASE: Final = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def lease_key(surface: str, prefix: str = PREFIX) -> str:
    """The Redis key of a surface's lease."""
    return f"{prefix}:{surface}:lease"


class Lease:
    """One process's claim on a surface's loop (see the module docstring)."""

    def __init__(
        self, client: aioredis.Redis, surface: str, owner: str = "", *, ttl_ms: int = 5_000, prefix: str = PREFIX
    ) -> None:
        """`owner` names the process in the token (a random id when empty)."""
        self.client, self.surface, self.ttl_ms = client, surface, ttl_ms
        self.owner = owner or uuid.uuid4().hex[:12]
        self.key = lease_key(surface, prefix)
        self.epoch_key = f"{prefix}:{surface}:epoch"
        self.token = ""
        self.epoch = 0

    @property
    def held(self) -> bool:
        """True while we believe we hold the lease (after acquire/renew succeeded)."""
        return bool(self.token)

    async def acquire(self) -> bool:
        """Try to take the lease; True when we hold it now (renews if we already did)."""
        if self.token:
            return await self.renew()
        epoch = int(await self.client.incr(self.epoch_key))
        token = f"{self.owner}:{epoch}"
        if await self.client.set(self.key, token, nx=True, px=self.ttl_ms):
            self.token, self.epoch = token, epoch
            return True
        return False

    async def renew(self) -> bool:
        """Extend the TTL if the lease is still ours; on failure we no longer hold it."""
        if not self.token:
            return False
        ok = await self.client.eval(_RENEW, 1, self.key, self.token, str(self.ttl_ms))
        if not ok:
            self.token, self.epoch = "", 0
        return bool(ok)

    async def keep_alive(self, stop: asyncio.Event) -> None:
        """Renew the lease every third of its TTL while we hold it, until `stop` is set.

        Run as a task beside the loop by `agents.runtime.AgentRuntime.run`;
        the loop's own acquire each tick stays the way to take the lease.
        A failed renew clears our token (see `renew`), which the loop's next
        acquire and the fenced writes then see.
        """
        interval_s = self.ttl_ms / 3000.0
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval_s)
            if stop.is_set() or not self.token:
                continue
            epoch = self.epoch
            try:
                if not await self.renew():
                    log.warning("lease of %s lost (epoch %d): another process holds it now", self.surface, epoch)
            except Exception as err:  # a Redis hiccup: the next beat or the loop's acquire tries again
                log.warning("lease of %s not renewed: %s", self.surface, type(err).__name__)

    async def release(self) -> None:
        """Give the lease up if it is still ours."""
        if self.token:
            await self.client.eval(_RELEASE, 1, self.key, self.token)
        self.token, self.epoch = "", 0
