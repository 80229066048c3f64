"""Arm assignment: `hash(salt, user or request) -> bucket -> arm`, deterministic and ramp-stable (pure).

Who calls what:

- the ranker's request path calls `Router.assign(holder.snapshot(), user_id, request_id)`
  once per request (the fast path: a bounded per-salt bucket cache and a
  per-snapshot table of ready-made `Assignment`s, no lock);
- tests, tools and other processes that must agree with the sidecar (the
  simulator, offline analysis) call the pure reference functions
  `assignment_bucket`, `arm_index_for_bucket` and `assign`.

The bucket is `blake2b(salt + "\\x00" + user_id, digest_size=8)` read as a
big-endian unsigned integer, modulo `ASSIGNMENT_BUCKETS` (10 000): the same in
every process, run and language (it does not depend on `PYTHONHASHSEED`).
Different salts give independent buckets, so experiments do not share users
systematically.  An allocation whose `unit` is `request` hashes the request id
instead (`assignment_key`), so each request is assigned on its own.

The lane rule (`schemas.config.validate_allocation`): with K treatment arms,
treatment arm i (1-based, `allocation.arms[i]`) owns lane i-1, the buckets
`[(i-1)*B//K, i*B//K)`, and takes the first `round(share*B)` of them (capped at
the lane's width).  Control (`arms[0]`) takes every other bucket.  Raising a
treatment's share therefore only adds buckets after the ones it already has: a
user in treatment at 5% is still in it at 25% (ramp stability).  Stability
holds while the salt and the number of treatment arms stay the same; changing
either reshuffles users, as it should for a new experiment.
"""

from __future__ import annotations

import hashlib
from bisect import bisect_right
from dataclasses import dataclass
from typing import Final

from schemas.config import ASSIGNMENT_BUCKETS, Allocation, CascadeConfig
from serving_sidecar.errors import SidecarError
from serving_sidecar.holder import ArmConfig, Snapshot

#: Default bound of the per-salt `user_id -> bucket` cache of a `Router`.
DEFAULT_MAX_CACHED_USERS: Final = 65_536
_HINT: Final = "build snapshots with Snapshot.from_state so every allocation arm has a config"


def assignment_bucket(salt: str, user_id: str) -> int:
    """The user's assignment bucket in `[0, ASSIGNMENT_BUCKETS)` under `salt` (reference form, uncached)."""
    digest = hashlib.blake2b(f"{salt}\x00{user_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % ASSIGNMENT_BUCKETS


def treatment_range(allocation: Allocation, arm_index: int) -> tuple[int, int]:
    """The `[start, end)` buckets treatment `allocation.arms[arm_index]` (index >= 1) holds under the lane rule."""
    k = len(allocation.arms) - 1
    if not 1 <= arm_index <= k:
        msg = f"arm_index: must name a treatment arm in [1, {k}], got {arm_index}"
        raise ValueError(msg)
    lane_start = (arm_index - 1) * ASSIGNMENT_BUCKETS // k
    lane_end = arm_index * ASSIGNMENT_BUCKETS // k
    # round() is monotone in the share, so a ramp never drops a bucket; the cap absorbs
    # shares of exactly 1/K when B/K is not a whole number of buckets.
    width = min(max(round(allocation.arms[arm_index].share * ASSIGNMENT_BUCKETS), 0), lane_end - lane_start)
    return lane_start, lane_start + width


def arm_index_for_bucket(allocation: Allocation, bucket: int) -> int:
    """Index into `allocation.arms` of the arm that owns `bucket` (0 = control); reference form, no table."""
    if not 0 <= bucket < ASSIGNMENT_BUCKETS:
        msg = f"bucket: must be in [0, {ASSIGNMENT_BUCKETS}), got {bucket}"
        raise ValueError(msg)
    for i in range(1, len(allocation.arms)):
        start, end = treatment_range(allocation, i)
        if start <= bucket < end:
            return i
    return 0


@dataclass(frozen=True, slots=True)
class ArmTable:
    """An allocation's lane rule, precomputed: the non-empty treatment ranges sorted by start.

    Built once per snapshot by `Router` (and by `assign`); `arm_index` is a
    bisect over at most 15 starts.  `ranges[i]` is the `[start, end)` of
    `allocation.arms[i]` for treatments; `ranges[0]` (control) is `(0, 0)`
    because control holds the complement, not one range.
    """

    arm_ids: tuple[str, ...]
    ranges: tuple[tuple[int, int], ...]
    starts: tuple[int, ...]
    ends: tuple[int, ...]
    owners: tuple[int, ...]

    @classmethod
    def from_allocation(cls, allocation: Allocation) -> ArmTable:
        """Precompute the bucket ranges of every treatment arm of `allocation`."""
        ranges = [(0, 0)] + [treatment_range(allocation, i) for i in range(1, len(allocation.arms))]
        live = sorted((start, end, i) for i, (start, end) in enumerate(ranges) if i > 0 and end > start)
        return cls(
            arm_ids=tuple(a.arm_id for a in allocation.arms),
            ranges=tuple(ranges),
            starts=tuple(s for s, _, _ in live),
            ends=tuple(e for _, e, _ in live),
            owners=tuple(i for _, _, i in live),
        )

    def arm_index(self, bucket: int) -> int:
        """Index of the arm owning `bucket` (0 = control); same answer as `arm_index_for_bucket`."""
        j = bisect_right(self.starts, bucket) - 1
        if j >= 0 and bucket < self.ends[j]:
            return self.owners[j]
        return 0

    def share_of(self, arm_index: int) -> float:
        """The fraction of buckets arm `arm_index` actually holds (control: the remainder)."""
        if arm_index == 0:
            held = sum(e - s for s, e in zip(self.starts, self.ends, strict=True))
            return 1.0 - held / ASSIGNMENT_BUCKETS
        start, end = self.ranges[arm_index]
        return (end - start) / ASSIGNMENT_BUCKETS


@dataclass(frozen=True, slots=True)
class Assignment:
    """Which arm a request belongs to and what it is served.

    `arm_id` is always the arm the user is *assigned* to by the allocation.
    `config_version` / `config` are what is actually *served*.  They differ in
    one case only: when the SLO breaker has opened the user's arm
    (`served_control_because_open=True`), the user keeps their `arm_id` but is
    served the control config, and `config_version` is the control version.
    Events are stamped with `arm_id` and `config_version`, so randomisation
    stays intact (the arm's population never changes) and analysis sees the
    breaker's effect: rows of the arm with the control version are the cut-back
    traffic.  Record latency under `arm_id` too (see `serving_sidecar.breaker`).

    `bucket` is the assignment bucket, or None when there is no experiment
    (no allocation: everyone is control and no hash is computed).
    """

    arm_id: str
    config_version: int
    config: CascadeConfig
    bucket: int | None
    served_control_because_open: bool = False


def _arm_config(snapshot: Snapshot, arm_id: str) -> ArmConfig:
    arm = snapshot.arms.get(arm_id)
    if arm is None:
        msg = f"snapshot.arms: has no config for allocation arm {arm_id!r}"
        raise SidecarError(msg, hint=_HINT)
    return arm


def _assignment_for(snapshot: Snapshot, arm_id: str, index: int, bucket: int) -> Assignment:
    control = snapshot.control
    if index == 0:
        return Assignment(control.arm_id, control.config_version, control.config, bucket)
    if arm_id in snapshot.open_arms:
        return Assignment(arm_id, control.config_version, control.config, bucket, served_control_because_open=True)
    arm = _arm_config(snapshot, arm_id)
    return Assignment(arm_id, arm.config_version, arm.config, bucket)


def _control_only(snapshot: Snapshot) -> Assignment:
    control = snapshot.control
    return Assignment(control.arm_id, control.config_version, control.config, None)


def assignment_key(allocation: Allocation, user_id: str, request_id: str | None) -> str:
    """What `allocation` hashes: the user id, or the request id when its `unit` is `request`.

    Called by `assign` and `Router.assign`; a per-request allocation without a
    request id is refused (hashing the user instead would silently turn it
    back into a per-user experiment while the agents read it as paired).
    """
    if allocation.unit == "user":
        return user_id
    if not request_id:
        msg = f"request_id: allocation {allocation.experiment_id} randomises requests (unit 'request'), got none"
        raise SidecarError(msg, hint="pass the request's id (Sidecar.begin makes one when the caller has none)")
    return request_id


def assign(snapshot: Snapshot, user_id: str, request_id: str | None = None) -> Assignment:
    """The assignment of a request under `snapshot` (reference path: hashes and builds the table every call).

    No allocation -> control, `bucket=None`.  Control bucket -> control.
    Treatment bucket of an open arm -> control config under the assigned
    `arm_id` (see `Assignment`).  The bucket is the user's, or the request's
    when the allocation's unit is `request` (`assignment_key`).  Same result
    as `Router.assign`, just slower.
    """
    allocation = snapshot.allocation
    if allocation is None:
        return _control_only(snapshot)
    bucket = assignment_bucket(allocation.salt, assignment_key(allocation, user_id, request_id))
    index = ArmTable.from_allocation(allocation).arm_index(bucket)
    return _assignment_for(snapshot, allocation.arms[index].arm_id, index, bucket)


class BucketHasher:
    """`assignment_bucket` for one salt, with the salt's hash state precomputed and a bounded cache.

    The cache maps `user_id -> bucket`; when it reaches `max_cached` entries it
    is emptied (a crude but O(1), lock-free bound: dict get/set/clear are
    atomic under the GIL, and a lost entry only costs a recomputation).
    """

    __slots__ = ("_max", "_prefix", "cache", "salt")

    def __init__(self, salt: str, max_cached: int = DEFAULT_MAX_CACHED_USERS) -> None:
        self.salt = salt
        self._prefix = hashlib.blake2b(f"{salt}\x00".encode(), digest_size=8)
        self.cache: dict[str, int] = {}
        self._max = max(max_cached, 0)

    def __call__(self, user_id: str) -> int:
        """The bucket of `user_id`: equal to `assignment_bucket(self.salt, user_id)`."""
        bucket = self.cache.get(user_id)
        return self.miss(user_id) if bucket is None else bucket

    def miss(self, user_id: str) -> int:
        """Hash `user_id` and remember it (what `__call__` does when the cache has no entry)."""
        bucket = self.uncached(user_id)
        cache = self.cache
        if self._max:
            if len(cache) >= self._max:
                cache.clear()
            cache[user_id] = bucket
        return bucket

    def uncached(self, key: str) -> int:
        """The bucket of `key` without touching the cache (request ids: each is seen once)."""
        h = self._prefix.copy()
        h.update(key.encode())
        return int.from_bytes(h.digest(), "big") % ASSIGNMENT_BUCKETS

    def cached(self) -> int:
        """How many users are cached now (always <= max_cached)."""
        return len(self.cache)


class _Route:
    """Everything `Router.assign` needs for one snapshot; `by_bucket` fills lazily (idempotent, race-safe).

    `fixed` is the control-only assignment served when there is no allocation;
    `per_request` is the allocation when it hashes request ids (`Allocation.unit`), else None.
    """

    __slots__ = ("by_bucket", "fixed", "hasher", "per_request", "snapshot", "table")

    def __init__(self, snapshot: Snapshot, hasher: BucketHasher | None) -> None:
        self.snapshot = snapshot
        allocation = snapshot.allocation
        self.per_request = allocation if allocation is not None and allocation.unit == "request" else None
        self.fixed = _control_only(snapshot)
        self.table = ArmTable.from_allocation(allocation) if allocation is not None else None
        self.hasher = hasher
        self.by_bucket: list[Assignment | None] = [None] * (ASSIGNMENT_BUCKETS if allocation is not None else 0)
        if self.table is not None:
            for arm_id in self.table.arm_ids[1:]:
                _arm_config(snapshot, arm_id)  # fail at build, not on some later request

    def build(self, bucket: int) -> Assignment:
        table = self.table
        if table is None:
            return self.fixed
        index = table.arm_index(bucket)
        made = _assignment_for(self.snapshot, table.arm_ids[index], index, bucket)
        self.by_bucket[bucket] = made
        return made


class Router:
    """The sidecar's assignment fast path; one per process, shared by all request threads.

    `assign(snapshot, user_id)` keeps a route for the last snapshot it saw
    (compared by identity, so a swap invalidates it for free): the `ArmTable`,
    and up to `ASSIGNMENT_BUCKETS` ready `Assignment`s built on first use.  The
    `BucketHasher` (and its user cache) survives swaps while the salt stays
    the same.  No lock: the route is replaced by one reference assignment, and
    two threads that rebuild it at once build equal routes.  The route of the
    snapshot before is kept too, so requests still in flight on it during a
    swap do not make the threads rebuild in turn; any other snapshot gets a
    fresh route (tens of microseconds).  Results always match the snapshot
    passed in.
    """

    __slots__ = ("_max_cached", "_previous", "_route")

    def __init__(self, max_cached_users: int = DEFAULT_MAX_CACHED_USERS) -> None:
        self._max_cached = max_cached_users
        self._route: _Route | None = None
        self._previous: _Route | None = None

    def assign(self, snapshot: Snapshot, user_id: str, request_id: str | None = None) -> Assignment:
        """The assignment of a request under exactly `snapshot` (same answer as `assign`).

        Per-request allocations hash `request_id` and skip the user cache.
        """
        route = self._route
        if route is None or route.snapshot is not snapshot:
            route = self._route_for(snapshot)
        hasher = route.hasher
        if hasher is None:
            return route.fixed
        bucket: int | None
        if route.per_request is not None:
            bucket = hasher.uncached(assignment_key(route.per_request, user_id, request_id))
        else:
            bucket = hasher.cache.get(user_id)
            if bucket is None:
                bucket = hasher.miss(user_id)
        made = route.by_bucket[bucket]
        return made if made is not None else route.build(bucket)

    def table(self, snapshot: Snapshot) -> ArmTable | None:
        """The precomputed table for `snapshot` (None without an allocation); for dashboards and tests."""
        route = self._route
        if route is None or route.snapshot is not snapshot:
            route = self._route_for(snapshot)
        return route.table

    def _route_for(self, snapshot: Snapshot) -> _Route:
        previous = self._previous
        if previous is not None and previous.snapshot is snapshot:
            return previous
        allocation = snapshot.allocation
        current = self._route
        hasher: BucketHasher | None = None
        if allocation is not None:
            old = current.hasher if current is not None else None
            hasher = (
                old
                if old is not None and old.salt == allocation.salt
                else BucketHasher(allocation.salt, self._max_cached)
            )
        route = _Route(snapshot, hasher)
        self._previous = current
        self._route = route
        return route
