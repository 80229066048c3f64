"""Arm assignment: deterministic buckets, the lane rule, ramp stability, open arms, no experiment.

Pure unit tests of `serving_sidecar.assignment` (no broker).  The fast
`Router` must always agree with the reference `assign`.
"""

from __future__ import annotations

import hashlib
import itertools
import math
from collections import Counter

import msgspec
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas.config import (
    ASSIGNMENT_BUCKETS,
    Allocation,
    ArmShare,
    CascadeConfig,
    default_config,
    validate_allocation,
)
from schemas.config_log import ConfigChange, Keyring, fold, sign
from serving_sidecar.assignment import (
    ArmTable,
    Assignment,
    BucketHasher,
    Router,
    arm_index_for_bucket,
    assign,
    assignment_bucket,
    treatment_range,
)
from serving_sidecar.errors import SidecarError
from serving_sidecar.holder import ArmConfig, Snapshot

B = ASSIGNMENT_BUCKETS
KEYRING = Keyring.parse("k1:" + "ab" * 16, "k1")
T0_MS = 1_700_000_000_000

salts = st.text(min_size=1, max_size=24)
user_ids = st.text(min_size=1, max_size=40)


def config_for(i: int) -> CascadeConfig:
    """`default_config()` made recognisable by `i` (rank.cut = 100 - i)."""
    base = default_config()
    return msgspec.structs.replace(base, rank=msgspec.structs.replace(base.rank, cut=100 - i))


def make_allocation(treatment_shares: list[float], salt: str = "salt-1") -> Allocation:
    arms = [ArmShare("control", 1, 1.0 - math.fsum(treatment_shares))]
    arms += [ArmShare(f"t{i}", i + 1, share) for i, share in enumerate(treatment_shares, start=1)]
    return validate_allocation(Allocation(experiment_id="exp", salt=salt, arms=tuple(arms)))


def make_snapshot(allocation: Allocation | None, open_arms: frozenset[str] = frozenset()) -> Snapshot:
    """A snapshot whose arm `t{i}` serves config version i + 1 (`config_for(i)`), control version 1."""
    control = ArmConfig("control", 1, config_for(0))
    arms = {"control": control}
    if allocation is not None:
        for arm in allocation.arms[1:]:
            arms[arm.arm_id] = ArmConfig(arm.arm_id, arm.config_version, config_for(arm.config_version - 1))
    return Snapshot(7, control, allocation, arms, frozenset(open_arms))


@st.composite
def allocations(draw: st.DrawFn, max_treatments: int = 5) -> Allocation:
    k = draw(st.integers(0, max_treatments))
    lane = 1.0 / k if k else 1.0
    shares = [draw(st.floats(0.0, lane)) for _ in range(k)]
    return make_allocation(shares, salt=draw(salts))


def expected_range(k: int, i: int, share: float) -> tuple[int, int]:
    """The lane rule written out independently: lane i-1 of K, first round(share*B) buckets, capped at the lane."""
    lane_start = math.floor((i - 1) * B / k)
    lane_end = math.floor(i * B / k)
    return lane_start, lane_start + min(round(share * B), lane_end - lane_start)


# --- buckets --------------------------------------------------------------------------------------


def test_bucket_is_blake2b_of_salt_and_user_mod_b() -> None:
    # Pinned so every process, run and language agrees (no PYTHONHASHSEED dependence).
    digest = hashlib.blake2b(b"exp-7\x00user-42", digest_size=8).digest()
    assert assignment_bucket("exp-7", "user-42") == int.from_bytes(digest, "big") % B
    assert assignment_bucket("exp-7", "user-42") == assignment_bucket("exp-7", "user-42")


@given(salt=salts, user=user_ids)
def test_bucket_in_range_and_hasher_agrees(salt: str, user: str) -> None:
    bucket = assignment_bucket(salt, user)
    assert 0 <= bucket < B
    hasher = BucketHasher(salt, max_cached=4)
    assert hasher(user) == bucket
    assert hasher(user) == bucket  # cached answer is the same


def test_hasher_cache_is_bounded() -> None:
    hasher = BucketHasher("s", max_cached=10)
    for i in range(1_000):
        assert hasher(f"u{i}") == assignment_bucket("s", f"u{i}")
        assert hasher.cached() <= 10
    no_cache = BucketHasher("s", max_cached=0)
    assert no_cache("u1") == assignment_bucket("s", "u1")
    assert no_cache.cached() == 0


def test_salts_decorrelate() -> None:
    users = [f"user-{i}" for i in range(20_000)]
    a = np.array([assignment_bucket("salt-a", u) for u in users], dtype=np.float64)
    b = np.array([assignment_bucket("salt-b", u) for u in users], dtype=np.float64)
    # Independent uniforms: correlation ~ N(0, 1/n); 5 sigma = 0.035.
    assert abs(np.corrcoef(a, b)[0, 1]) < 0.035
    # Joint membership of two 10% treatments is ~1% when independent (binomial, 5 sigma).
    both = int(np.sum((a < 1_000) & (b < 1_000)))
    expected = len(users) * 0.01
    assert abs(both - expected) < 5 * math.sqrt(expected * 0.99)


# --- the lane rule --------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(allocation=allocations())
def test_table_matches_lane_rule_for_every_bucket(allocation: Allocation) -> None:
    table = ArmTable.from_allocation(allocation)
    k = len(allocation.arms) - 1
    owned = Counter(table.arm_index(b) for b in range(B))
    for i in range(1, k + 1):
        start, end = expected_range(k, i, allocation.arms[i].share)
        assert treatment_range(allocation, i) == (start, end) == table.ranges[i]
        assert owned[i] == end - start
        assert abs(table.share_of(i) - allocation.arms[i].share) <= 1.0 / B + 1e-12
    assert owned[0] == B - sum(owned[i] for i in range(1, k + 1))
    assert sum(owned.values()) == B  # every bucket belongs to exactly one arm
    for b in range(0, B, 7):
        assert arm_index_for_bucket(allocation, b) == table.arm_index(b)


@given(allocation=allocations())
def test_treatment_ranges_never_overlap_and_stay_in_their_lane(allocation: Allocation) -> None:
    k = len(allocation.arms) - 1
    ranges = [treatment_range(allocation, i) for i in range(1, k + 1)]
    for i, (start, end) in enumerate(ranges, start=1):
        assert (i - 1) * B // k <= start <= end <= i * B // k
    ordered = sorted(ranges)
    for (_, end), (start, _) in itertools.pairwise(ordered):
        assert end <= start


def test_full_lanes_when_b_is_not_divisible() -> None:
    third = 1.0 / 3.0
    allocation = make_allocation([third, third, third])
    table = ArmTable.from_allocation(allocation)
    assert [table.ranges[i] for i in (1, 2, 3)] == [(0, 3333), (3333, 6666), (6666, 9999)]
    assert table.arm_index(9999) == 0  # the bucket no lane holds whole stays control
    assert allocation.arms[0].share == pytest.approx(0.0, abs=1e-9)


@settings(max_examples=200, deadline=None)
@given(
    salt=salts,
    k=st.integers(1, 5),
    data=st.data(),
    users=st.lists(user_ids, min_size=1, max_size=30),
)
def test_ramp_up_keeps_every_treated_user_in_the_same_arm(
    salt: str, k: int, data: st.DataObject, users: list[str]
) -> None:
    lane = 1.0 / k
    arm = data.draw(st.integers(1, k), label="ramped arm")
    s1, s2 = sorted(data.draw(st.lists(st.floats(0.0, lane), min_size=2, max_size=2), label="shares"))
    others_before = [data.draw(st.floats(0.0, lane)) for _ in range(k)]
    others_after = [data.draw(st.floats(0.0, lane)) for _ in range(k)]
    before = make_allocation([s1 if i == arm else others_before[i - 1] for i in range(1, k + 1)], salt)
    after = make_allocation([s2 if i == arm else others_after[i - 1] for i in range(1, k + 1)], salt)
    table_before, table_after = ArmTable.from_allocation(before), ArmTable.from_allocation(after)
    # Every bucket in the arm at s1 is in the same arm at s2 ...
    for b in range(*table_before.ranges[arm]):
        assert table_after.arm_index(b) == arm
    # ... so every user is too, whatever the other arms did.
    snap_before, snap_after = make_snapshot(before), make_snapshot(after)
    for user in users:
        first = assign(snap_before, user)
        if first.arm_id == f"t{arm}":
            assert assign(snap_after, user).arm_id == first.arm_id


def test_ramp_5_to_25_percent_keeps_users() -> None:
    users = [f"u{i}" for i in range(20_000)]
    at5 = make_snapshot(make_allocation([0.05]))
    at25 = make_snapshot(make_allocation([0.25]))
    treated5 = {u for u in users if assign(at5, u).arm_id == "t1"}
    treated25 = {u for u in users if assign(at25, u).arm_id == "t1"}
    assert treated5 <= treated25
    assert len(treated5) > 0.04 * len(users)
    assert len(treated25) > 0.24 * len(users)


def test_shares_match_allocation_within_binomial_tolerance() -> None:
    snapshot = make_snapshot(make_allocation([0.1, 0.2, 0.05]))
    router = Router()
    n = 100_000
    counts = Counter(router.assign(snapshot, f"user-{i}").arm_id for i in range(n))
    for arm in snapshot.allocation.arms if snapshot.allocation else ():
        p = arm.share
        assert abs(counts[arm.arm_id] - n * p) < 5 * math.sqrt(n * p * (1 - p)), (arm.arm_id, counts)


def test_bucket_out_of_range_and_bad_arm_index_are_refused() -> None:
    allocation = make_allocation([0.1])
    with pytest.raises(ValueError, match="bucket"):
        arm_index_for_bucket(allocation, B)
    with pytest.raises(ValueError, match="bucket"):
        arm_index_for_bucket(allocation, -1)
    with pytest.raises(ValueError, match="arm_index"):
        treatment_range(allocation, 0)


# --- assign ---------------------------------------------------------------------------------------


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(allocation=allocations(), users=st.lists(user_ids, min_size=1, max_size=20), data=st.data())
def test_router_agrees_with_reference_assign(allocation: Allocation, users: list[str], data: st.DataObject) -> None:
    arm_ids = [a.arm_id for a in allocation.arms]
    open_arms = frozenset(data.draw(st.sets(st.sampled_from(arm_ids)), label="open arms"))
    snapshot = make_snapshot(allocation, open_arms)
    router = Router(max_cached_users=8)
    for user in users * 2:
        assert router.assign(snapshot, user) == assign(snapshot, user)


def test_open_arm_serves_control_but_keeps_the_assigned_arm() -> None:
    allocation = make_allocation([0.3, 0.3])
    closed = make_snapshot(allocation)
    opened = closed.with_open_arms(frozenset({"t1"}))
    router = Router()
    seen: Counter[str] = Counter()
    for i in range(3_000):
        user = f"u{i}"
        before, after = router.assign(closed, user), router.assign(opened, user)
        assert after == assign(opened, user)
        assert after.arm_id == before.arm_id and after.bucket == before.bucket
        seen[after.arm_id] += 1
        if before.arm_id == "t1":
            assert after.config is closed.control.config
            assert after.config_version == closed.control.config_version == 1
            assert after.served_control_because_open
            assert not before.served_control_because_open
            assert before.config_version == 2
        else:
            assert after == before  # control and t2 untouched
    assert seen["t1"] > 0 and seen["t2"] > 0 and seen["control"] > 0


def test_opening_control_changes_nothing() -> None:
    snapshot = make_snapshot(make_allocation([0.5]))
    opened = snapshot.with_open_arms(frozenset({"control"}))
    for i in range(500):
        a = assign(opened, f"u{i}")
        assert not a.served_control_because_open
        assert a == assign(snapshot, f"u{i}")


def test_no_allocation_is_control_for_everyone() -> None:
    snapshot = make_snapshot(None)
    router = Router()
    for user in ("a", "b", "user-99"):
        for got in (assign(snapshot, user), router.assign(snapshot, user)):
            assert got == Assignment("control", 1, snapshot.control.config, None)
    assert router.table(snapshot) is None


def test_router_follows_swaps_and_keeps_the_salts_cache() -> None:
    router = Router()
    first = make_snapshot(make_allocation([0.1]))
    second = make_snapshot(make_allocation([0.5]))  # same salt: ramp
    other_salt = make_snapshot(make_allocation([0.5], salt="another"))
    users = [f"u{i}" for i in range(2_000)]
    for snapshot in (first, second, first, other_salt, make_snapshot(None), second):
        assert [router.assign(snapshot, u) for u in users] == [assign(snapshot, u) for u in users]
        table = router.table(snapshot)
        if snapshot.allocation is not None:
            assert table == ArmTable.from_allocation(snapshot.allocation)


def test_snapshot_missing_an_arm_config_is_refused() -> None:
    allocation = make_allocation([0.5])
    control = ArmConfig("control", 1, config_for(0))
    broken = Snapshot(3, control, allocation, {"control": control})
    with pytest.raises(SidecarError, match="t1"):
        Router().assign(broken, "anyone")


def test_assign_on_a_snapshot_folded_from_signed_changes() -> None:
    control, treatment = config_for(0), config_for(5)
    allocation = Allocation(
        experiment_id="exp-1",
        salt="exp-1-salt",
        arms=(ArmShare("control", 1, 0.8), ArmShare("fast-rerank", 2, 0.2)),
    )

    def change(version: int, kind: str, **fields: object) -> ConfigChange:
        unsigned = ConfigChange(
            schema_version=1,
            version=version,
            parent_version=version - 1,
            author="test",
            reason="test",
            created_ms=T0_MS + version,
            kind=kind,  # type: ignore[arg-type]
            key_id="k1",
            **fields,  # type: ignore[arg-type]
        )
        return sign(unsigned, KEYRING)

    result = fold(
        [
            change(1, "config", config=control, activate=True),
            change(2, "config", config=treatment),
            change(3, "allocation", allocation=allocation),
        ],
        KEYRING,
    )
    assert not result.refused
    snapshot = Snapshot.from_state(result.state)
    router = Router()
    counts: Counter[tuple[str, int]] = Counter()
    for i in range(5_000):
        got = router.assign(snapshot, f"user-{i}")
        assert got == assign(snapshot, f"user-{i}")
        assert got.config is (treatment if got.arm_id == "fast-rerank" else control)
        counts[(got.arm_id, got.config_version)] += 1
    assert set(counts) == {("control", 1), ("fast-rerank", 2)}
    assert abs(counts[("fast-rerank", 2)] - 1_000) < 5 * math.sqrt(5_000 * 0.2 * 0.8)


# --- per-request allocations ----------------------------------------------------------------------


def test_a_per_request_allocation_spreads_each_users_requests_over_the_arms() -> None:
    allocation = msgspec.structs.replace(make_allocation([0.25, 0.25]), unit="request")
    snapshot = make_snapshot(allocation)
    router = Router()
    for user in ("u1", "u2"):
        seen = Counter(router.assign(snapshot, user, f"{user}-r{i}").arm_id for i in range(4_000))
        # one user, every arm, at the allocation's shares (5 binomial sd)
        for arm in allocation.arms:
            p = arm.share
            assert abs(seen[arm.arm_id] - 4_000 * p) < 5 * math.sqrt(4_000 * p * (1 - p)), seen
    # the bucket is the request's under the salt, whoever the user is; the user cache stays empty
    got = router.assign(snapshot, "someone", "req-7")
    assert got.bucket == assignment_bucket(allocation.salt, "req-7")
    assert got == assign(snapshot, "someone else", "req-7")
    route_hasher = BucketHasher(allocation.salt)
    assert route_hasher.uncached("req-7") == got.bucket and route_hasher.cached() == 0


def test_a_per_user_allocation_ignores_the_request_id() -> None:
    snapshot = make_snapshot(make_allocation([0.5]))
    router = Router()
    arms = {router.assign(snapshot, "u1", f"r{i}").arm_id for i in range(200)}
    assert len(arms) == 1 and arms == {assign(snapshot, "u1").arm_id}


def test_a_per_request_allocation_without_a_request_id_is_refused() -> None:
    snapshot = make_snapshot(msgspec.structs.replace(make_allocation([0.5]), unit="request"))
    for call in (lambda: assign(snapshot, "u1"), lambda: Router().assign(snapshot, "u1")):
        with pytest.raises(SidecarError, match="request_id: allocation exp randomises requests"):
            call()
