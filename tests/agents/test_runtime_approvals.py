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
from agents.state_store import (
    Approval,
    ApprovalError,
    Held,
    RedisApprovals,
    RedisStateStore,
    approvals_key,
    approve,
    held_instance,
    state_key,
    waiting_instance,
)

T0 = 1_767_225_600_000


def held_experiment(surface: str, *, approval_required: bool = True, hold: str | None = None) -> ExperimentState:
    agent = OnlineAgent(
        OnlinePolicy(
            surface=surface, approval_required=approval_required, stages=(0.5,), min_dwell_s=0.0, target_mde=0.5
        )
    )
    exp, decisions = agent.plan(
        [Candidate(proposal_id="p1", config_version=2)],
        1,
        TrafficEstimate(100.0),
        Baseline(0.05, 0.05, 1e4),
        T0,
        hold=hold,
    )
    assert exp is not None and exp.status == "pending_approval", decisions
    return exp


def test_only_an_experiment_whose_plan_requires_approval_is_held_for_approval() -> None:
    needs = held_experiment("home", hold="A/A pre-period")
    assert needs.plan.approval_required
    state = LoopState(surface="home", phase="pending_approval", cycle=2, experiment=needs.to_bytes())
    assert held_instance(state) == Held("home", 2, needs.experiment_id)
    assert waiting_instance(state) == (Held("home", 2, needs.experiment_id), True)

    pre_only = held_experiment("home", approval_required=False, hold="A/A pre-period")
    assert not pre_only.plan.approval_required
    state = LoopState(surface="home", phase="pending_approval", cycle=3, experiment=pre_only.to_bytes())
    assert held_instance(state) is None
    assert waiting_instance(state) == (Held("home", 3, pre_only.experiment_id), False)
    assert held_instance(msgspec.structs.replace(state, phase="running")) is None


async def test_an_experiment_waiting_only_for_its_pre_period_cannot_be_approved(redis_url: str) -> None:
    prefix = f"t{uuid.uuid4().hex[:8]}"
    client = aioredis.from_url(redis_url)
    try:
        exp = held_experiment("home", approval_required=False, hold="A/A pre-period")
        state = LoopState(surface="home", phase="pending_approval", cycle=3, experiment=exp.to_bytes())
        await client.set(state_key("home", prefix), state.to_bytes())
        with pytest.raises(ApprovalError) as err:
            await approve(redis_url, exp.experiment_id, now_ms=T0, prefix=prefix)
        message = str(err.value)
        assert f"experiment '{exp.experiment_id}' (home): is not held for approval" in message, message
        assert "does not require approval (approval_required=false)" in message and "A/A pre-period" in message
        assert await client.hlen(approvals_key(prefix)) == 0, "nothing recorded"

        # An approval written for it anyway (an older build) is not reported, and is dropped.
        store = RedisStateStore(client, Lease(client, "home", prefix=prefix), prefix=prefix)
        stale = Approval(surface="home", cycle=3, experiment_id=exp.experiment_id, approved_ms=T0)
        await client.hset(approvals_key(prefix), exp.experiment_id, msgspec.json.encode(stale))
        assert await RedisApprovals(client, store, prefix=prefix).approved() == frozenset()
        assert await client.hlen(approvals_key(prefix)) == 0
    finally:
        await client.aclose()


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
