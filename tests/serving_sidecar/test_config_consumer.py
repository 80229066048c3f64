"""The sidecar's config consumer on a real broker and a real Redis.

Proves the issue's claims:

- forged, unsigned, wrongly-keyed, out-of-bounds and out-of-order changes are
  refused, alerted on `rectune.alerts` naming the field and rule, and leave
  serving untouched (the holder keeps the very same snapshot object, requests
  keep succeeding, the head does not move: the next good change still chains);
- broker stopped mid-run (Apache Kafka, data survives): serving continues on
  the last config with zero failed requests, and the consumer catches up with
  a change written after the broker returns;
- fresh sidecar with the broker down but Redis up: it serves last-known-good
  at once.

The fold logic itself (refusals, no regression behind last-known-good,
breaker-opened arms) is also tested without a broker through `apply_record`.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import msgspec
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from rectune.admin import ensure_topics
from rectune.apache_kafka import ApacheKafkaBroker
from rectune.config_log_io import append_change, draft, publish_records
from rectune.embedded import free_port, start_tansu
from schemas.alerts import Alert, decode_alert
from schemas.config import Allocation, ArmShare, CascadeConfig, default_config
from schemas.config_log import ConfigChange, Keyring, encode_change, sign
from schemas.guardrails import Guardrails
from schemas.topics import ALERTS, CONFIG
from serving_sidecar.assignment import assign
from serving_sidecar.config_consumer import ConfigConsumer
from serving_sidecar.holder import ConfigHolder, Snapshot
from serving_sidecar.lkg import MemoryLkgStore, RedisLkgStore, decode_lkg
from serving_sidecar.sink import KafkaAlertSink

KEYS = Keyring.parse("k1:" + "5a" * 16, "k1")
FOREIGN = Keyring.parse("k9:" + "77" * 16, "k9")
T0 = 1_767_225_600_000
GUARDRAILS = Guardrails()


def re_rank(config: CascadeConfig, **fields: object) -> CascadeConfig:
    return msgspec.structs.replace(config, re_rank=msgspec.structs.replace(config.re_rank, **fields))


def signed(
    version: int,
    kind: str = "config",
    *,
    parent: int | None = None,
    config: CascadeConfig | None = None,
    activate: bool = False,
    allocation: Allocation | None = None,
    keyring: Keyring = KEYS,
) -> ConfigChange:
    return sign(
        ConfigChange(
            schema_version=1,
            version=version,
            parent_version=version - 1 if parent is None else parent,
            author="tester",
            reason=f"v{version}",
            created_ms=T0 + version,
            kind=kind,  # type: ignore[arg-type]
            config=config,
            activate=activate,
            allocation=allocation,
            key_id="x",
        ),
        keyring,
    )


def split(control: int, treatment: int, experiment: str = "e1") -> Allocation:
    return Allocation(
        experiment_id=experiment,
        salt="salt",
        arms=(ArmShare("control", control, 0.5), ArmShare("t1", treatment, 0.5)),
    )


def good_history() -> list[ConfigChange]:
    """v1 control config, v2 a treatment config, v3 a 50/50 experiment."""
    return [
        signed(1, config=default_config(), activate=True),
        signed(2, config=re_rank(default_config(), list_size=10)),
        signed(3, "allocation", allocation=split(1, 2)),
    ]


def next_good(version: int = 4) -> ConfigChange:
    return signed(version, config=re_rank(default_config(), mmr_lambda=0.6))


#: name -> (record value, expected refused field, expected error type)
BAD: dict[str, tuple[Callable[[], bytes], str, str]] = {
    "forged": (
        lambda: encode_change(msgspec.structs.replace(next_good(), reason="nothing to see")),
        "signature",
        "SignatureError",
    ),
    "unsigned": (
        lambda: encode_change(msgspec.structs.replace(next_good(), signature="")),
        "signature",
        "SignatureError",
    ),
    "wrongly_keyed": (
        lambda: encode_change(signed(4, config=default_config(), keyring=FOREIGN)),
        "key_id",
        "SignatureError",
    ),
    "out_of_bounds_type": (  # list_size 500 > MAX_LIST_SIZE: refused while decoding
        lambda: encode_change(signed(4, config=re_rank(default_config(), list_size=500))),
        "config.re_rank.list_size",
        "ConfigError",
    ),
    "out_of_bounds_rule": (  # list_size 150 > rank.cut 100
        lambda: encode_change(signed(4, config=re_rank(default_config(), list_size=150))),
        "re_rank.list_size",
        "ConfigError",
    ),
    "guardrail": (
        lambda: encode_change(signed(4, config=re_rank(default_config(), exploration_rate=0.3))),
        "re_rank.exploration_rate",
        "ConfigError",
    ),
    "out_of_order_skip": (lambda: encode_change(signed(6, config=default_config())), "version", "ConfigError"),
    "out_of_order_stale_parent": (
        lambda: encode_change(signed(4, parent=2, config=default_config())),
        "version",
        "ConfigError",
    ),
    "unknown_arm_version": (
        lambda: encode_change(signed(4, "allocation", allocation=split(1, 9))),
        "allocation.arms[1].config_version",
        "ConfigError",
    ),
    "undecodable": (lambda: b"{not json", "$", "ConfigError"),
}


class Requests:
    """A thread serving requests from `holder.snapshot()` like the ranker's hot path, counting failures."""

    def __init__(self, holder: ConfigHolder) -> None:
        self.holder = holder
        self.ok = 0
        self.failures: list[str] = []
        self.versions: set[int] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        i = 0
        while not self._stop.is_set():
            i += 1
            try:
                snap = self.holder.snapshot()
                if snap is None:
                    self.failures.append("no snapshot")
                    continue
                served = assign(snap, f"user-{i % 1000}")
                if served.config.re_rank.list_size < 1:
                    self.failures.append("bad config")
                self.versions.add(snap.version)
                self.ok += 1
            except Exception as err:  # a failed request
                self.failures.append(repr(err))
            if i % 50 == 0:
                time.sleep(0.0005)

    def __enter__(self) -> Requests:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


def wait(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.02)


async def await_until(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s} s waiting for {what}")
        await asyncio.sleep(0.02)


async def read_alerts(bootstrap: str) -> list[Alert]:
    tp = TopicPartition(ALERTS.name, 0)
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False)
    await consumer.start()
    try:
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)
        end = (await consumer.end_offsets([tp]))[tp]
        out: list[Alert] = []
        while True:
            records = (await consumer.getmany(tp, timeout_ms=300)).get(tp, [])
            out.extend(decode_alert(r.value) for r in records if r.value is not None)
            if not records and await consumer.position(tp) >= end:
                return out
    finally:
        await consumer.stop()


def same_serving(a: Snapshot | None, b: Snapshot | None) -> bool:
    assert a is not None and b is not None
    return (a.version, a.control, a.allocation, dict(a.arms)) == (b.version, b.control, b.allocation, dict(b.arms))


def detail(alert: Alert, name: str) -> str:
    return next(d.value for d in alert.details if d.name == name)


# -- the fold without a broker (apply_record) ------------------------------------------------


def test_apply_record_refuses_every_bad_kind_and_leaves_the_snapshot_alone() -> None:
    holder = ConfigHolder()
    alerts: list[Alert] = []
    consumer = ConfigConsumer("unused:1", holder, KEYS, GUARDRAILS, MemoryLkgStore(), alerts.append, "sc-unit")
    for offset, change in enumerate(good_history()):
        assert consumer.apply_record(offset, encode_change(change))
    before, swaps = holder.snapshot(), holder.swaps
    for offset, (name, (value, field, error)) in enumerate(BAD.items(), start=3):
        assert not consumer.apply_record(offset, value()), name
        assert holder.snapshot() is before and holder.swaps == swaps, name
        alert = alerts[-1]
        assert (alert.kind, alert.severity, alert.source) == ("config_refused", "critical", "sc-unit")
        assert (detail(alert, "field"), detail(alert, "error"), detail(alert, "offset")) == (field, error, str(offset))
        assert field in alert.message
    assert len(alerts) == len(BAD) and consumer.applied_version == 3
    assert consumer.apply_record(99, encode_change(next_good()))  # the head never moved: v4 still chains
    assert holder.snapshot() is not before and consumer.applied_version == 4


def test_breaker_opened_arms_survive_swaps_of_the_same_experiment_only() -> None:
    holder = ConfigHolder()
    consumer = ConfigConsumer("unused:1", holder, KEYS, GUARDRAILS)
    for offset, change in enumerate(good_history()):
        consumer.apply_record(offset, encode_change(change))
    holder.update(lambda s: s.with_open_arms(frozenset({"t1"})))  # the SLO breaker cut t1 back
    consumer.apply_record(3, encode_change(next_good()))  # unrelated config registration
    snap = holder.snapshot()
    assert snap is not None and snap.version == 4 and snap.open_arms == {"t1"}
    consumer.apply_record(4, encode_change(signed(5, "allocation", allocation=split(1, 4, experiment="e2"))))
    snap = holder.snapshot()
    assert snap is not None and snap.version == 5 and snap.open_arms == frozenset()  # a new experiment starts closed


def test_catching_up_behind_last_known_good_never_regresses_serving() -> None:
    history = good_history()
    store = MemoryLkgStore()
    first = ConfigConsumer("unused:1", ConfigHolder(), KEYS, GUARDRAILS, store)
    for offset, change in enumerate(history):
        first.apply_record(offset, encode_change(change))
    asyncio.run(first._persist())  # what the loop does after each batch
    assert store.version == 3

    holder = ConfigHolder()
    alerts: list[Alert] = []
    fresh = ConfigConsumer("unused:1", holder, KEYS, GUARDRAILS, store, alerts.append)

    async def restore_only() -> None:
        await fresh.start()
        await fresh.stop()

    asyncio.run(restore_only())  # restores LKG; the broker is never reached
    lkg_snapshot = holder.snapshot()
    assert lkg_snapshot is not None and lkg_snapshot.version == 3
    fresh.apply_record(0, encode_change(history[0]))
    fresh.apply_record(1, encode_change(history[1]))
    assert holder.snapshot() is lkg_snapshot  # v1, v2 folded, but serving stays on v3
    fresh._check_stale()
    assert [a.kind for a in alerts] == ["stale_config"]
    fresh.apply_record(2, encode_change(history[2]))
    assert same_serving(holder.snapshot(), lkg_snapshot)


def test_tampered_last_known_good_is_ignored() -> None:
    store = MemoryLkgStore()
    first = ConfigConsumer("unused:1", ConfigHolder(), KEYS, GUARDRAILS, store)
    for offset, change in enumerate(good_history()):
        first.apply_record(offset, encode_change(change))
    asyncio.run(first._persist())
    assert store.data is not None
    decode_lkg(store.data, KEYS, GUARDRAILS)
    store.data = store.data.replace(b'"list_size":10', b'"list_size":11')
    holder = ConfigHolder()

    async def restore_only() -> None:
        fresh = ConfigConsumer("unused:1", holder, KEYS, GUARDRAILS, store)
        await fresh.start()
        await fresh.stop()

    asyncio.run(restore_only())
    assert holder.snapshot() is None


# -- last-known-good in Redis -----------------------------------------------------------------


def test_redis_lkg_never_overwrites_a_newer_record(redis_url: str) -> None:
    store = RedisLkgStore(redis_url, f"test:{uuid.uuid4().hex}")
    try:
        assert store.load() is None
        assert store.save(5, b"five") == "written"
        assert store.save(3, b"three") == "newer_exists"  # a slower replica writing an older fold
        assert store.save(5, b"five again") == "newer_exists"
        assert store.load() == b"five"
        assert store.save(6, b"six") == "written" and store.load() == b"six"
    finally:
        store.close()


def test_redis_down_is_tolerated_and_the_save_retried(redis_url: str) -> None:
    dead = RedisLkgStore(f"redis://127.0.0.1:{free_port()}/0", "test:dead", timeout_s=0.5)
    t = time.perf_counter()
    assert dead.load() is None and dead.save(1, b"x") == "failed"
    assert time.perf_counter() - t < 3.0
    holder = ConfigHolder()
    consumer = ConfigConsumer("unused:1", holder, KEYS, GUARDRAILS, dead)
    for offset, change in enumerate(good_history()):
        consumer.apply_record(offset, encode_change(change))
    asyncio.run(consumer._persist())
    assert consumer.stats().lkg_failures == 1 and holder.snapshot() is not None  # serving is unaffected
    consumer._lkg = live = RedisLkgStore(redis_url, f"test:{uuid.uuid4().hex}")  # Redis is back
    asyncio.run(consumer._persist())
    saved = live.load()
    assert consumer.stats().lkg_saves == 1 and saved is not None and decode_lkg(saved, KEYS).version == 3
    live.close()


# -- real broker, real Redis -------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(BAD))
async def test_refused_changes_are_alerted_and_leave_serving_untouched(
    name: str, tansu_broker: str, redis_url: str
) -> None:
    value, field, error = BAD[name]
    await ensure_topics(tansu_broker, [CONFIG, ALERTS])
    await publish_records(tansu_broker, [encode_change(c) for c in good_history()])
    holder = ConfigHolder()
    alerts = KafkaAlertSink(tansu_broker, "sc-1")
    await alerts.start()
    lkg = RedisLkgStore(redis_url, key_prefix=f"test:{uuid.uuid4().hex}")
    consumer = ConfigConsumer(tansu_broker, holder, KEYS, GUARDRAILS, lkg, alerts.emit, "sc-1")
    await consumer.start()
    try:
        await await_until(lambda: consumer.caught_up.is_set() and consumer.applied_version == 3, 20, "v3")
        before, swaps = holder.snapshot(), holder.swaps
        with Requests(holder) as requests:
            await publish_records(tansu_broker, [value()])
            await await_until(lambda: consumer.stats().refused == 1, 20, "the refusal")
            await asyncio.sleep(0.2)
            assert holder.snapshot() is before and holder.swaps == swaps
            assert requests.versions == {3} and not requests.failures and requests.ok > 0
            saved = lkg.load()
            assert saved is not None and decode_lkg(saved, KEYS, GUARDRAILS).version == 3
            # The head did not move: the next good change chains onto v3 and is served.
            await publish_records(tansu_broker, [encode_change(next_good())])
            await await_until(lambda: consumer.applied_version == 4, 20, "v4")
        assert not requests.failures
        assert holder.snapshot() is not before and consumer.stats().refused == 1
        assert await alerts.drain(10)
        found = [a for a in await read_alerts(tansu_broker) if a.kind == "config_refused"]
        assert len(found) == 1, found
        alert = found[0]
        assert (alert.severity, alert.source) == ("critical", "sc-1")
        assert (detail(alert, "field"), detail(alert, "error"), detail(alert, "offset")) == (field, error, "3")
        assert detail(alert, "head_version") == "3"
    finally:
        await consumer.stop()
        await alerts.stop()
        lkg.close()


def test_fresh_sidecar_with_broker_down_serves_last_known_good(tmp_path: Path, redis_url: str) -> None:
    prefix = f"test:{uuid.uuid4().hex}"
    with start_tansu(tmp_path / "tansu") as broker:
        bootstrap = broker.bootstrap
        asyncio.run(ensure_topics(bootstrap, [CONFIG]))
        asyncio.run(publish_records(bootstrap, [encode_change(c) for c in good_history()]))
        first_holder = ConfigHolder()
        first = ConfigConsumer(bootstrap, first_holder, KEYS, GUARDRAILS, RedisLkgStore(redis_url, prefix), None, "a")
        first.start_in_thread()
        wait(lambda: first.stats().lkg_saves >= 1 and first.applied_version == 3, 20, "v3 saved as LKG")
        first.stop_thread()
    assert not broker.alive()

    holder = ConfigHolder()
    fresh = ConfigConsumer(bootstrap, holder, KEYS, GUARDRAILS, RedisLkgStore(redis_url, prefix), None, "b")
    t = time.perf_counter()
    fresh.start_in_thread()
    started_s = time.perf_counter() - t
    try:
        assert started_s < 2.0
        assert same_serving(holder.snapshot(), first_holder.snapshot())  # serving from the first request on
        with Requests(holder) as requests:
            time.sleep(1.5)
        assert requests.ok > 100 and not requests.failures and requests.versions == {3}
        stats = fresh.stats()
        assert stats.applied_version == 0 and stats.served_version == 3 and not stats.caught_up
        assert stats.errors + stats.reconnects > 0  # it keeps trying the broker in the background
    finally:
        fresh.stop_thread()


def test_broker_stopped_mid_run_kafka(fresh_kafka: ApacheKafkaBroker, redis_url: str) -> None:
    """Apache Kafka keeps its log across the restart, so this is the real catch-up proof."""
    bootstrap = fresh_kafka.bootstrap
    asyncio.run(ensure_topics(bootstrap, [CONFIG, ALERTS]))
    asyncio.run(publish_records(bootstrap, [encode_change(c) for c in good_history()]))
    holder = ConfigHolder()
    lkg = RedisLkgStore(redis_url, f"test:{uuid.uuid4().hex}")
    alerts = KafkaAlertSink(bootstrap, "sc-k")
    alerts.start_in_thread()
    consumer = ConfigConsumer(bootstrap, holder, KEYS, GUARDRAILS, lkg, alerts.emit, "sc-k")
    consumer.start_in_thread()
    try:
        wait(lambda: consumer.caught_up.is_set() and consumer.applied_version == 3, 30, "v3")
        served = holder.snapshot()
        with Requests(holder) as requests:
            fresh_kafka.stop()
            down_ok = requests.ok
            time.sleep(3.0)
            assert requests.ok > down_ok and not requests.failures
            assert holder.snapshot() is served
            fresh_kafka.start()
            asyncio.run(
                append_change(bootstrap, draft("allocation", author="ops", reason="end", allocation=None), KEYS)
            )
            wait(lambda: consumer.applied_version == 4, 40, "catch-up to v4 after the restart")
            # the request thread may not have run since the swap on a loaded box
            wait(lambda: 4 in requests.versions, 10, "a request served v4")
        assert not requests.failures and requests.versions == {3, 4}
        snap = holder.snapshot()
        assert snap is not None and snap.version == 4 and snap.allocation is None
        wait(lambda: consumer.stats().lkg_saves >= 2, 10, "v4 saved as LKG")
        saved = lkg.load()
        assert saved is not None and decode_lkg(saved, KEYS, GUARDRAILS).version == 4
        assert consumer.stats().refused == 0
    finally:
        consumer.stop_thread()
        alerts.close()
        lkg.close()


@contextmanager
def tansu_at(tmp_path: Path, port: int | None = None) -> Iterator[str]:
    with start_tansu(tmp_path, port=port) as broker:
        yield broker.bootstrap


def test_broker_restarted_empty_tansu_refolds_without_regressing(tmp_path: Path) -> None:
    """tansu keeps everything in memory: after a restart the config topic is empty.

    This is the embedded broker's limitation, not a feature (and it answers a
    fetch past the end with an empty batch rather than OFFSET_OUT_OF_RANGE).
    The test re-publishes a *shorter* history first, so the consumer finds its
    last folded record gone, folds again from offset 0
    while still serving v3 (never regressing to v1), raises a stale-config
    alert, and moves on once the republished history passes v3.
    """
    alerts: list[Alert] = []
    holder = ConfigHolder()
    history = [*good_history(), next_good()]
    with tansu_at(tmp_path / "a") as bootstrap:
        port = int(bootstrap.rsplit(":", 1)[1])
        asyncio.run(ensure_topics(bootstrap, [CONFIG]))
        asyncio.run(publish_records(bootstrap, [encode_change(c) for c in history[:3]]))
        consumer = ConfigConsumer(
            bootstrap, holder, KEYS, GUARDRAILS, None, alerts.append, "sc-t", verify_interval_s=0.3
        )
        consumer.start_in_thread()
        wait(lambda: consumer.applied_version == 3, 20, "v3")
    served = holder.snapshot()
    try:
        with Requests(holder) as requests:
            time.sleep(1.0)
            with tansu_at(tmp_path / "b", port) as bootstrap:
                asyncio.run(ensure_topics(bootstrap, [CONFIG]))
                asyncio.run(publish_records(bootstrap, [encode_change(history[0])]))
                wait(lambda: consumer.stats().resets >= 1, 30, "the refold from offset 0")
                wait(lambda: consumer.caught_up.is_set() and consumer.applied_version == 1, 20, "refold to v1")
                assert holder.snapshot() is served
                asyncio.run(publish_records(bootstrap, [encode_change(c) for c in history[1:]]))
                wait(lambda: consumer.applied_version == 4, 20, "v4")
                wait(lambda: 4 in requests.versions, 10, "a request served v4")
        assert not requests.failures and requests.versions == {3, 4}
        assert alerts and {a.kind for a in alerts} == {"stale_config"}
    finally:
        consumer.stop_thread()
