"""`rectune traffic`: simulated users through the REAL sidecar produce events the stream worker accepts.

The integration test drives the traffic core (`TrafficLoop`) with a real
`Sidecar` on the tansu broker and Redis and the simulator's world, promotes a
config mid-way, and reads `rectune.events` back through the worker's strict
decoder and its aggregator: every event decodes, the counts match what the
loop says it served, the promoted config changes what non-holdout users see,
and the holdout keeps the starting config on its own surface.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import msgspec
import pytest
from aiokafka import AIOKafkaConsumer

from rectune.admin import catalogue_for, ensure_topics
from rectune.config_log_io import append_change, draft
from rectune.errors import RectuneError
from rectune.settings import Settings
from rectune.traffic import (
    HOLDOUT_ARM,
    Holdout,
    TrafficLoop,
    TrafficPlan,
    holdout_surface,
    load_world,
    sidecar_for,
    wall_ms,
)
from schemas.config import default_config
from schemas.config_log import Keyring
from schemas.decode import decode_message
from schemas.events import Click, Conversion, Event, Impression
from schemas.topics import EVENTS
from streams.aggregate import PartitionAggregator
from streams.windows import WindowSpec

KEYS_SPEC = "t1:" + "7e" * 32
KEYS = Keyring.parse(KEYS_SPEC, "t1")


def short_lists(size: int):  # type: ignore[no-untyped-def]
    config = default_config()
    return msgspec.structs.replace(config, re_rank=msgspec.structs.replace(config.re_rank, list_size=size))


async def read_events(bootstrap: str) -> list[tuple[int, Event]]:
    """(partition, event) of every event on rectune.events, via the worker's strict decoder."""
    consumer = AIOKafkaConsumer(EVENTS.name, bootstrap_servers=bootstrap, auto_offset_reset="earliest", group_id=None)
    await consumer.start()
    out: list[tuple[int, Event]] = []
    try:
        while True:
            batch = await consumer.getmany(timeout_ms=1500)
            if not batch:
                return out
            for tp, records in batch.items():
                for record in records:
                    decoded = decode_message(record.value or b"")
                    assert decoded.rejected == (), decoded.rejected
                    out += [(tp.partition, e) for e in decoded.events]
    finally:
        await consumer.stop()


def test_holdout_membership_is_a_stable_salted_share() -> None:
    holdout = Holdout(0.1, "salt-a", "home.holdout", default_config(), 1)
    users = [f"u{i}" for i in range(20_000)]
    members = {u for u in users if holdout.contains(u)}
    assert 0.09 < len(members) / len(users) < 0.11
    assert members == {u for u in users if holdout.contains(u)}  # deterministic
    other = Holdout(0.1, "salt-b", "home.holdout", default_config(), 1)
    overlap = len(members & {u for u in users if other.contains(u)}) / len(members)
    assert overlap < 0.2  # another salt picks other users (independent of the sidecar's salt)
    assert not any(Holdout(0.0, "salt-a", "h", default_config(), 1).contains(u) for u in users[:500])


@pytest.mark.parametrize(
    ("field", "kwargs"),
    [
        ("--rate (requests_per_s): must be in (0, 100000]", {"requests_per_s": 0.0}),
        ("--rate (requests_per_s): must be in (0, 100000]", {"requests_per_s": -5.0}),
        ("--rate (requests_per_s): must be in (0, 100000]", {"requests_per_s": float("nan")}),
        ("--time-scale (time_scale): must be in (0, 1e7]", {"time_scale": -1.0}),
        ("--holdout-share (holdout_share): must be in [0, 0.5)", {"holdout_share": 0.7}),
        ("--duration-s (duration_s): must be > 0", {"duration_s": 0.0}),
        ("stats_every_s: must be in (0, 3600]", {"stats_every_s": 0.0}),
        ("ready_timeout_s: must be in (0, 3600]", {"ready_timeout_s": -1.0}),
    ],
)
def test_a_bad_plan_is_refused_with_its_flag_and_rule(field: str, kwargs: dict[str, float]) -> None:
    with pytest.raises(RectuneError) as err:
        TrafficPlan(**kwargs)  # type: ignore[arg-type]
    assert field in str(err.value) and err.value.hint


def test_an_unknown_scenario_is_refused_with_a_hint() -> None:
    with pytest.raises(RectuneError, match="--scenario no-such-world") as err:
        load_world("no-such-world", 0)
    assert err.value.hint


async def test_traffic_through_the_real_sidecar_makes_events_the_worker_accepts(
    tansu_broker: str, redis_url: str, tmp_path: Path
) -> None:
    await ensure_topics(tansu_broker, catalogue_for(2))
    await append_change(
        tansu_broker,
        draft("config", author="person:test", reason="start", config=default_config(), activate=True),
        KEYS,
    )
    settings = Settings(bootstrap=tansu_broker, redis_url=redis_url, config_keys=KEYS_SPEC, config_key_id="t1")
    plan = TrafficPlan(requests_per_s=400.0, holdout_share=0.2, seed=3, source_id="test-ranker")
    world = load_world("apparel_core", seed=3)
    sidecar = sidecar_for(plan, settings, float(world.scenario.latency_slo_ms))
    sidecar.start()
    try:
        assert sidecar.wait_ready(20.0)
        snapshot = sidecar.holder.snapshot()
        assert snapshot is not None
        holdout = Holdout(0.2, plan.holdout_salt, holdout_surface("home"), snapshot.control.config, 1)
        loop = TrafficLoop(plan, world, sidecar, holdout, wall_ms)
        served = sum(loop.step(t) for t in (0.25, 0.5, 0.75, 1.0))  # a quarter second's worth per step
        assert served == loop.counts.requests == 400
        # Promote shorter lists: the sidecar hot-swaps, the holdout must not move.
        await append_change(
            tansu_broker,
            draft("config", author="agent:test", reason="promote", config=short_lists(8), activate=True),
            KEYS,
        )
        deadline = time.monotonic() + 20
        while sidecar.consumer.applied_version != 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert sidecar.consumer.applied_version == 2
        served += sum(loop.step(t) for t in (1.25, 1.5))
        assert served == loop.counts.requests == 600
    finally:
        sidecar.stop()
    counts = loop.counts
    assert sidecar.events.stats().dropped == 0 and sidecar.events.stats().lost == 0

    events = await read_events(tansu_broker)
    impressions = [e for _, e in events if isinstance(e, Impression)]
    assert len(impressions) == counts.requests
    assert (
        sum(len(e.items) for e in impressions) + sum(1 for _, e in events if isinstance(e, Click | Conversion))
        == counts.item_events
    )
    assert sum(1 for _, e in events if isinstance(e, Click)) == counts.clicks > 0
    by_arm = Counter((e.surface, e.arm_id, e.config_version) for e in impressions)
    longest: dict[tuple[str, str, int], int] = {}
    for e in impressions:  # a list may end early (caps and near-duplicate collapse can exhaust the pool)
        key = (e.surface, e.arm_id, e.config_version)
        longest[key] = max(longest.get(key, 0), len(e.items))
    held = {k: n for k, n in by_arm.items() if k[1] == HOLDOUT_ARM}
    assert set(held) == {("home.holdout", HOLDOUT_ARM, 1)}  # frozen on the starting config
    assert set(by_arm) - set(held) == {("home", "control", 1), ("home", "control", 2)}  # the promotion reached users
    assert longest == {("home.holdout", HOLDOUT_ARM, 1): 12, ("home", "control", 1): 12, ("home", "control", 2): 8}
    assert 0.1 < sum(held.values()) / counts.requests < 0.3
    assert counts.holdout_requests == sum(held.values())
    # Clicks point at items that were shown, at their position, with the impression's attribution.
    shown = {(imp.request_id, item.item_id, item.position) for imp in impressions for item in imp.items}
    clicks = [e for _, e in events if isinstance(e, Click)]
    assert all((c.request_id, c.item_id, c.position) in shown for c in clicks)

    # The worker's own aggregator folds all of it: nothing rejected, every item event counted.
    aggregators = {p: PartitionAggregator(WindowSpec(5_000, 1_000, 64), EVENTS.name, p) for p in (0, 1)}
    for offset, (partition, event) in enumerate(events):
        aggregators[partition].add_message(offset, [event])
    totals = [a.counters for a in aggregators.values()]
    assert sum(c.item_events for c in totals) == counts.item_events
    assert sum(c.rejected_events + c.rejected_messages for c in totals) == 0
