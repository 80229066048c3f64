"""The embedded sidecar end to end on the real broker and Redis: serve, stamp, ramp, break."""

from __future__ import annotations

import time

import msgspec
import numpy as np
from aiokafka import AIOKafkaConsumer

from rectune.admin import catalogue_for, ensure_topics
from rectune.config_log_io import append_change, draft
from schemas.alerts import Alert
from schemas.config import Allocation, ArmShare, default_config
from schemas.config_log import Keyring
from schemas.decode import decode_message
from schemas.events import Impression
from serving_sidecar.breaker import SloRule
from serving_sidecar.candidates import synthetic_candidates
from serving_sidecar.sidecar import SidecarConfig

KEYS = Keyring.parse("k1:" + "5a" * 16, "k1")


def with_list_size(size: int):  # type: ignore[no-untyped-def]
    config = default_config()
    return msgspec.structs.replace(config, re_rank=msgspec.structs.replace(config.re_rank, list_size=size))


async def read_all(bootstrap: str, topic: str) -> list[bytes]:
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", group_id=None)
    await consumer.start()
    try:
        out: list[bytes] = []
        while True:
            batch = await consumer.getmany(timeout_ms=1500)
            if not batch:
                return out
            out += [r.value for rs in batch.values() for r in rs if r.value is not None]
    finally:
        await consumer.stop()


def wait(predicate, timeout_s: float = 20.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not predicate() and time.monotonic() < deadline:
        time.sleep(0.05)
    return bool(predicate())


async def test_sidecar_serves_stamps_ramps_and_breaks(tansu_broker: str, redis_url: str) -> None:
    await ensure_topics(tansu_broker, catalogue_for(2))
    await append_change(
        tansu_broker,
        draft("config", author="person:test", reason="start", config=default_config(), activate=True),
        KEYS,
    )
    await append_change(
        tansu_broker, draft("config", author="agent:actor", reason="shorter lists", config=with_list_size(8)), KEYS
    )
    sidecar = SidecarConfig(
        bootstrap=tansu_broker,
        keyring=KEYS,
        source_id="ranker-e2e",
        redis_url=redis_url,
        slo_rules=(SloRule(max_ms=40.0, quantile=0.99, window_s=30.0, min_samples=50),),
        breaker_interval_s=0.2,
    ).build()
    sidecar.start()
    try:
        assert sidecar.wait_ready(20.0)
        assert wait(lambda: sidecar.consumer.applied_version == 2)
        rng = np.random.default_rng(0)
        candidates = synthetic_candidates(5_000, rng)
        request = sidecar.begin("u-1", surface="home", cohort="new")
        ranked = sidecar.rank(request, candidates, rng)
        impression = sidecar.finish(request, ranked.to_shown_items(candidates), latency_ms=12.0)
        assert request.assignment.arm_id == "control" and len(impression.items) == 12

        allocation = Allocation(
            experiment_id="exp-1",
            salt="s1",
            arms=(ArmShare("control", 1, 0.5), ArmShare("short", 2, 0.5)),
        )
        await append_change(
            tansu_broker, draft("allocation", author="agent:online", reason="A/B", allocation=allocation), KEYS
        )
        assert wait(lambda: sidecar.consumer.applied_version == 3)
        served: dict[str, set[int]] = {}
        for i in range(400):
            req = sidecar.begin(f"user-{i}", surface="home", cohort="new")
            ranked = sidecar.rank(req, candidates, rng)
            served.setdefault(req.assignment.arm_id, set()).add(len(ranked.indices))
            sidecar.finish(req, ranked.to_shown_items(candidates), latency_ms=10.0)
        assert served == {"control": {12}, "short": {8}}
        assert sidecar.holder.snapshot().open_arms == frozenset()  # type: ignore[union-attr]
        # Now the treatment arm turns slow: its p99 breaches the 40 ms SLO.
        for i in range(400):
            req = sidecar.begin(f"user-{i}", surface="home", cohort="new")
            ranked = sidecar.rank(req, candidates, rng)
            slow = req.assignment.arm_id == "short" and not req.assignment.served_control_because_open
            sidecar.finish(req, ranked.to_shown_items(candidates), latency_ms=90.0 if slow else 10.0)
        assert wait(lambda: "short" in sidecar.holder.snapshot().open_arms)  # type: ignore[union-attr]
        cut = sidecar.begin("user-1", surface="home", cohort="new")
        treated = [
            f"user-{i}"
            for i in range(400)
            if sidecar.begin(f"user-{i}", surface="home", cohort="new").assignment.arm_id == "short"
        ]
        after = sidecar.begin(treated[0], surface="home", cohort="new")
        assert after.assignment.served_control_because_open and after.config.re_rank.list_size == 12
        assert cut.config.re_rank.list_size == 12
    finally:
        sidecar.stop()

    events = [e for value in await read_all(tansu_broker, "rectune.events") for e in decode_message(value).events]
    assert events and all(isinstance(e, Impression) for e in events)
    assert {e.arm_id for e in events} == {"control", "short"}
    assert {(e.arm_id, e.config_version) for e in events} <= {("control", 1), ("short", 2), ("short", 1)}
    assert {len(e.items) for e in events if isinstance(e, Impression) and e.config_version == 2} == {8}
    alerts = [msgspec.json.decode(v, type=Alert) for v in await read_all(tansu_broker, "rectune.alerts")]
    breach = [a for a in alerts if a.kind == "slo_breach" and a.arm_id == "short"]
    assert len(breach) == 1 and breach[0].severity == "critical"


async def test_sampled_control_requests_are_replayed_to_the_agents_feed(tansu_broker: str) -> None:
    """Sidecar → `rectune.replay` → the agents' `ReplayFeed`, on the real broker: rows per registered candidate."""
    from agents.ope_replay import harm_estimate
    from agents.replay_feed import ReplayFeed
    from serving_sidecar.replay import ReplaySettings

    await ensure_topics(tansu_broker, catalogue_for(2))
    start = default_config()
    start = msgspec.structs.replace(start, re_rank=msgspec.structs.replace(start.re_rank, exploration_rate=0.1))
    await append_change(
        tansu_broker, draft("config", author="person:test", reason="start", config=start, activate=True), KEYS
    )
    candidate = msgspec.structs.replace(start, re_rank=msgspec.structs.replace(start.re_rank, mmr_lambda=0.7))
    await append_change(
        tansu_broker, draft("config", author="agent:actor", reason="more diverse", config=candidate), KEYS
    )
    sidecar = SidecarConfig(
        bootstrap=tansu_broker,
        keyring=KEYS,
        source_id="ranker-replay",
        replay=ReplaySettings(sample_rate=0.5, attribution_s=0.0),
    ).build()
    sidecar.start()
    clicked: set[str] = set()
    try:
        assert sidecar.wait_ready(20.0)
        assert wait(lambda: sidecar.consumer.applied_version == 2)
        assert [v for v, _ in sidecar.holder.snapshot().pending] == [2]  # type: ignore[union-attr]
        rng = np.random.default_rng(4)
        candidates = synthetic_candidates(3_000, rng)
        for i in range(200):
            request = sidecar.begin(f"user-{i % 50}", surface="home", cohort="new", request_id=f"req-{i}")
            ranked = sidecar.rank(request, candidates, rng)
            items = ranked.to_shown_items(candidates)
            sidecar.finish(request, items, latency_ms=5.0)
            if i % 3 == 0:
                sidecar.emit(request.click(items[1].item_id, items[1].position, request.token.event_time_ms + 1))
                clicked.add(request.token.request_id)
        sampled = sidecar.replay.stats().sampled  # type: ignore[union-attr]
    finally:
        sidecar.stop()
    assert 70 <= sampled <= 130, "about half of the 200 requests"
    feed = ReplayFeed(tansu_broker, "home")
    await feed.start()
    try:
        assert await feed.poll(timeout_ms=500) > 0  # every record was flushed when the sidecar stopped
        records = list(feed.records)
    finally:
        await feed.stop()
    assert len(records) == sampled
    assert all(r.config_version == 1 and [t.config_version for t in r.targets] == [2] for r in records)
    assert {r.request_id for r in records if any(s.clicked for s in r.slots)} == clicked & {
        r.request_id for r in records
    }
    assert all(r.slots[1].clicked for r in records if r.request_id in clicked)
    assert all(0.0 < s.propensity <= 1.0 for r in records for s in r.slots)
    late = ReplayFeed(tansu_broker, "home")  # an agent starting two hours later reads only the last hour
    await late.start(now_ms=records[-1].event_time_ms + 2 * 3_600_000)
    try:
        await late.poll(timeout_ms=500)
        assert not late.records
    finally:
        await late.stop()
    rows = (await feed.rows([2], 1))[2]
    assert rows.requests == sampled and rows.rows == 12 * sampled
    estimate = harm_estimate(rows)
    assert estimate is not None and estimate.rows == rows.rows
