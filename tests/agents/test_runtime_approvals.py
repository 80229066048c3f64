"""Approvals on a real Redis: bound to one held experiment instance, gone once it is released or ends."""

from __future__ import annotations

import uuid

import msgspec
import pytest
from redis import asyncio as aioredis

from agents.experiment import Candidate, ExperimentState
from agents.lease import Lease
from agents.loop import LoopState
from agents.online import Baseline, OnlineAgent, OnlinePolicy, TrafficEstimate
from agents.state_store import ApprovalError, RedisApprovals, RedisStateStore, approvals_key, approve, state_key

T0 = 1_767_225_600_000


def held_experiment(surface: str) -> ExperimentState:
    agent = OnlineAgent(
        OnlinePolicy(surface=surface, approval_required=True, stages=(0.5,), min_dwell_s=0.0, target_mde=0.5)
    )
    exp, decisions = agent.plan(
        [Candidate(proposal_id="p1", config_version=2)], 1, TrafficEstimate(100.0), Baseline(0.05, 0.05, 1e4), T0
    )
    assert exp is not None and exp.status == "pending_approval", decisions
    return exp


async def test_an_approval_binds_to_the_held_instance_and_never_outlives_it(redis_url: str) -> None:
    prefix = f"t{uuid.uuid4().hex[:8]}"
    client = aioredis.from_url(redis_url)
    try:
        exp = held_experiment("home")
        store = RedisStateStore(client, Lease(client, "home", prefix=prefix), prefix=prefix)
        approvals = RedisApprovals(client, store, prefix=prefix)
        with pytest.raises(ApprovalError, match=f"experiment '{exp.experiment_id}': must be held"):
            await approve(redis_url, exp.experiment_id, now_ms=T0, prefix=prefix)  # nothing held: no pre-approval

        held = LoopState(surface="home", phase="pending_approval", cycle=4, experiment=exp.to_bytes())
        await client.set(state_key("home", prefix), held.to_bytes())
        assert await approvals.approved() == frozenset()
        approval = await approve(redis_url, exp.experiment_id, now_ms=T0 + 5, by="person:ana", prefix=prefix)
        assert (approval.surface, approval.cycle, approval.by) == ("home", 4, "person:ana")
        assert await approvals.approved() == {exp.experiment_id}

        running = msgspec.structs.replace(held, phase="running")  # the loop released it
        await client.set(state_key("home", prefix), running.to_bytes())
        assert await approvals.approved() == frozenset()
        assert await client.hlen(approvals_key(prefix)) == 0, "consumed: removed"

        # The same id held again by a later instance (cycle 9): a left-over approval does not carry over.
        await client.hset(approvals_key(prefix), exp.experiment_id, msgspec.json.encode(approval))
        again = msgspec.structs.replace(held, cycle=9)
        await client.set(state_key("home", prefix), again.to_bytes())
        assert await approvals.approved() == frozenset()
        assert await client.hlen(approvals_key(prefix)) == 0

        # Another surface's approval is not this loop's to judge.
        other = msgspec.structs.replace(approval, surface="search")
        await client.hset(approvals_key(prefix), "exp-other", msgspec.json.encode(other))
        assert await approvals.approved() == frozenset()
        assert await client.hexists(approvals_key(prefix), "exp-other")
    finally:
        await client.aclose()
