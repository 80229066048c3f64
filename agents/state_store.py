"""The loop state in Redis, written only by the lease holder, and human approvals bound to one held experiment.

`RedisStateStore(client, lease)` implements `agents.loop.StateStore`:
`load()` returns the saved `LoopState` bytes; `save(data)` writes them only
if the surface's lease key still holds this process's token, in one atomic
script, so a deposed leader can never overwrite its successor's state.

Approvals (`rectune approve EXPERIMENT` → `approve`): an approval is recorded
only for an experiment some surface's loop is holding *now*
(`pending_approval`) because its plan requires approval (one waiting only
for its A/A pre-period is refused: the loop releases it by itself), and it
names that instance — surface, cycle and experiment id — in the Redis hash
`approvals_key()`.  `RedisApprovals` (the
loop's `ApprovalSource`) reports an approval only while the surface's loop
is still holding that very instance, and deletes every approval of its
surface that no longer matches (released, ended, or written for another
instance), so an approval never outlives its experiment and a re-used id is
never pre-approved.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import msgspec
from redis import asyncio as aioredis

from agents.lease import PREFIX, Lease
from agents.loop import LoopState

_SAVE: Final = """
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('SET', KEYS[2], ARGV[2]) return 1 end
return 0
"""
# Delete a field only if it still holds the value we judged stale (a fresh approval is never lost).
_DROP: Final = """
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then return redis.call('HDEL', KEYS[1], ARGV[1]) end
return 0
"""


def state_key(surface: str, prefix: str = PREFIX) -> str:
    """The Redis key of a surface's loop state."""
    return f"{prefix}:{surface}:state"


def approvals_key(prefix: str = PREFIX) -> str:
    """The Redis hash experiment id → approved instance (JSON), written by `rectune approve`."""
    return f"{prefix}:approvals"


class RedisStateStore:
    """Loop state of one surface, fenced by `lease`."""

    def __init__(self, client: aioredis.Redis, lease: Lease, *, prefix: str = PREFIX) -> None:
        """Keep the client and the lease that fences writes."""
        self.client, self.lease = client, lease
        self.surface = lease.surface
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


# --------------------------------------------------------------------------- approvals


class ApprovalError(ValueError):
    """An approval that cannot be recorded (the experiment is not held); names the experiment and the rule."""


class Approval(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One recorded approval: the held instance it releases and when it was given."""

    surface: str
    cycle: int
    experiment_id: str
    approved_ms: int
    by: str = ""


@dataclass(frozen=True, slots=True)
class Held:
    """An experiment a surface's loop is holding for approval right now."""

    surface: str
    cycle: int
    experiment_id: str


def waiting_instance(state: LoopState | None) -> tuple[Held, bool] | None:
    """The instance a loop state is holding back, and whether its plan requires approval (pure).

    A loop holds an experiment in phase `pending_approval` for two reasons:
    its plan requires a human approval, or (whether or not it does) the A/A
    pre-period is still running.  Only the first can be approved; `approve`
    uses the flag to say which one an id is waiting for.
    """
    if state is None or state.phase != "pending_approval":
        return None
    exp = state.experiment_state()
    if exp is None or exp.status != "pending_approval":
        return None
    return Held(state.surface, state.cycle, exp.experiment_id), exp.plan.approval_required


def held_instance(state: LoopState | None) -> Held | None:
    """The instance a loop state holds *for approval* (its plan requires one), if any (pure).

    Called by `held_experiments` (what `rectune approve` may approve) and by
    `RedisApprovals.approved` (which approval the loop may act on).  An
    experiment waiting only for its A/A pre-period is not held for approval.
    """
    waiting = waiting_instance(state)
    return waiting[0] if waiting is not None and waiting[1] else None


def _decode_state(raw: object) -> LoopState | None:
    if not isinstance(raw, bytes | str):
        return None
    try:
        return LoopState.from_bytes(raw.encode() if isinstance(raw, str) else raw)
    except (msgspec.ValidationError, msgspec.DecodeError):
        return None


async def waiting_experiments(client: aioredis.Redis, prefix: str = PREFIX) -> list[tuple[Held, bool]]:
    """Every experiment a loop is holding back now, with whether it requires approval, over all surfaces."""
    out: list[tuple[Held, bool]] = []
    async for key in client.scan_iter(match=f"{prefix}:*:state", count=100):
        waiting = waiting_instance(_decode_state(await client.get(key)))
        if waiting is not None:
            out.append(waiting)
    return sorted(out, key=lambda w: (w[0].surface, w[0].experiment_id))


async def held_experiments(client: aioredis.Redis, prefix: str = PREFIX) -> list[Held]:
    """Every experiment held for approval now (its plan requires one), over all surfaces' stored loop states."""
    return [h for h, required in await waiting_experiments(client, prefix) if required]


async def approve(redis_url: str, experiment_id: str, *, now_ms: int, by: str = "", prefix: str = PREFIX) -> Approval:
    """Approve the held instance of `experiment_id` (what `rectune approve` calls); `ApprovalError` if none is held.

    Refused too when the experiment is waiting only for its A/A pre-period
    and its plan does not require approval: the loop releases it by itself.
    """
    client = aioredis.from_url(redis_url)
    try:
        waiting = await waiting_experiments(client, prefix)
        held = [h for h, required in waiting if required]
        match = [h for h in held if h.experiment_id == experiment_id]
        unrequired = [h for h, required in waiting if not required and h.experiment_id == experiment_id]
        if not match and unrequired:
            u = unrequired[0]
            msg = (
                f"experiment {experiment_id!r} ({u.surface}): is not held for approval, its plan does not require "
                "approval (approval_required=false); it is waiting only for its A/A pre-period, "
                "which releases it by itself when it ends"
            )
            raise ApprovalError(msg)
        if not match:
            now = ", ".join(f"{h.experiment_id} ({h.surface})" for h in held) or "none"
            msg = (
                f"experiment {experiment_id!r}: must be held for approval by a running loop to be approved "
                f"(an approval binds to that one instance); held now: {now}"
            )
            raise ApprovalError(msg)
        h = match[0]
        approval = Approval(surface=h.surface, cycle=h.cycle, experiment_id=h.experiment_id, approved_ms=now_ms, by=by)
        await client.hset(approvals_key(prefix), experiment_id, msgspec.json.encode(approval))
        return approval
    finally:
        await client.aclose()


class RedisApprovals:
    """`agents.loop.ApprovalSource` of one surface over `approvals_key()` (see the module docstring)."""

    def __init__(self, client: aioredis.Redis, store: RedisStateStore, *, prefix: str = PREFIX) -> None:
        """Keep the client and the surface's state store (which names the instance being held)."""
        self.client, self.store = client, store
        self.key = approvals_key(prefix)

    async def approved(self) -> frozenset[str]:
        """The held experiment's id when its instance is approved; drops this surface's stale approvals."""
        raw = await self.store.load()
        held = held_instance(_decode_state(raw)) if raw else None
        entries = await self.client.hgetall(self.key)
        out: set[str] = set()
        for name, value in entries.items():
            exp_id = name.decode() if isinstance(name, bytes) else str(name)
            try:
                approval = msgspec.json.decode(value, type=Approval)
            except (msgspec.ValidationError, msgspec.DecodeError):
                continue  # not ours to judge
            if approval.surface != self.store.surface:
                continue
            if held is not None and (approval.cycle, approval.experiment_id) == (held.cycle, held.experiment_id):
                out.add(exp_id)
            else:
                await self.client.eval(_DROP, 1, self.key, name, value)
        return frozenset(out)
