"""The loop state in Redis, written only by the lease holder (Lua compare-then-set).

`RedisStateStore(client, surface, lease)` implements `agents.loop.StateStore`:
`load()` returns the saved `LoopState` bytes; `save(data)` writes them only
if the surface's lease key still holds this process's token, in one atomic
script, so a deposed leader can never overwrite its successor's state.
"""

from __future__ import annotations

from typing import Final

from redis import asyncio as aioredis

from agents.lease import PREFIX, Lease

_SAVE: Final = """
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('SET', KEYS[2], ARGV[2]) return 1 end
return 0
"""


def state_key(surface: str, prefix: str = PREFIX) -> str:
    """The Redis key of a surface's loop state."""
    return f"{prefix}:{surface}:state"


class RedisStateStore:
    """Loop state of one surface, fenced by `lease`."""

    def __init__(self, client: aioredis.Redis, lease: Lease, *, prefix: str = PREFIX) -> None:
        """Keep the client and the lease that fences writes."""
        self.client, self.lease = client, lease
        self.key = state_key(lease.surface, prefix)

    async def load(self) -> bytes | None:
        """The saved bytes, or None."""
        data = await self.client.get(self.key)
        return data.encode() if isinstance(data, str) else data

    async def save(self, data: bytes) -> bool:
        """Write `data` if we hold the lease; False (nothing written) otherwise."""
        if not self.lease.token:
            return False
        ok = await self.client.eval(_SAVE, 2, self.lease.key, self.key, self.lease.token, data)
        return bool(ok)
