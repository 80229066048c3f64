"""The in-memory ports (`agents.memory_ports`): the config writer refuses what a sidecar refuses and folds like it."""

from __future__ import annotations

import msgspec
import numpy as np
import pytest

from agents.loop import AppendConfig, PublishRecord
from agents.memory_ports import (
    DEFAULT_EPOCH_MS,
    MemoryApprovals,
    MemoryConfigWriter,
    MemoryMetrics,
    MemorySink,
    MemoryStateStore,
)
from schemas.alerts import Alert
from schemas.config import Allocation, ArmShare, CascadeConfig, ConfigError, default_config
from schemas.config_log import ConfigChange, Keyring, decode_change, encode_change, fold, sign
from schemas.errors import SchemaError
from schemas.guardrails import Guardrails
from schemas.metrics import FIELD_INDEX, N_FIELDS, N_LATENCY_BINS, ArmTotals
from serving_sidecar.holder import Snapshot

KEYRING = Keyring.parse("k1:" + "ab" * 16, "k1")
T0 = DEFAULT_EPOCH_MS


def _with(config: CascadeConfig, **re_rank: object) -> CascadeConfig:
    return msgspec.structs.replace(config, re_rank=msgspec.structs.replace(config.re_rank, **re_rank))


def _candidate() -> CascadeConfig:
    return _with(default_config(), mmr_lambda=0.7)


def _alloc(control: int, treatment: int, share: float = 0.5) -> Allocation:
    return Allocation(
        experiment_id="e1",
        salt="s1",
        arms=(ArmShare("e1.c", control, 1.0 - share), ArmShare("e1.t1", treatment, share)),
    )


def _sidecar_fold(changes: list[ConfigChange]) -> tuple[object, int]:
    """What a sidecar ends up serving from the same records (wire bytes → strict decode → apply with guardrails)."""
    result = fold([decode_change(encode_change(c)) for c in changes], KEYRING, Guardrails())
    return result.state.served(), len(result.refused)


async def test_initial_config_is_version_one_and_served() -> None:
    writer = MemoryConfigWriter(KEYRING, initial=default_config())
    head = await writer.head()
    assert (head.version, head.control_version) == (1, 1)
    assert head.control == default_config()
    assert writer.changes[0].created_ms == T0 and writer.changes[0].signature


async def test_full_lifecycle_folds_like_the_sidecar() -> None:
    writer = MemoryConfigWriter(KEYRING, initial=default_config())
    writer.now_ms = T0 + 1_000
    v2 = await writer.append(AppendConfig(kind="config", reason="register", config=_candidate()), epoch=3)
    v3 = await writer.append(AppendConfig(kind="allocation", reason="launch", allocation=_alloc(1, v2)), epoch=3)
    writer.now_ms = T0 + 500  # the clock may lag: created_ms never goes backwards along the log
    v4 = await writer.append(AppendConfig(kind="config", reason="promote", config=_candidate(), activate=True), epoch=3)
    v5 = await writer.append(AppendConfig(kind="allocation", reason="end"), epoch=3)
    v6 = await writer.append(AppendConfig(kind="rollback", reason="undo", restores_version=v3), epoch=3)
    assert [v2, v3, v4, v5, v6] == [2, 3, 4, 5, 6]
    head = await writer.head()
    assert head.control_version == 1 and head.allocation == _alloc(1, v2)  # version 3's serving state
    assert [c.created_ms for c in writer.changes] == [T0, T0 + 1_000, T0 + 1_000, T0 + 1_000, T0 + 1_000, T0 + 1_000]
    assert all(c.reason.startswith("[epoch 3]") for c in writer.changes[1:])
    assert writer.replay().served() == head.served()
    served, refused = _sidecar_fold(writer.changes)
    assert served == head.served() and refused == 0
    snapshot = Snapshot.from_state(head)  # the sidecar can serve it: every allocation arm has a config
    assert set(snapshot.arms) == {"e1.c", "e1.t1"}


def _bad_actions(control: int, registered: int) -> list[tuple[AppendConfig, str]]:
    base = default_config()
    return [
        (AppendConfig(kind="config", reason="x", config=_with(base, mmr_lambda=7.0)), "mmr_lambda"),
        (AppendConfig(kind="config", reason="x", config=_with(base, max_per_category=7)), "max_per_category"),
        (
            AppendConfig(
                kind="config",
                reason="x",
                config=msgspec.structs.replace(
                    base, pre_rank=msgspec.structs.replace(base.pre_rank, candidate_cut=100_000)
                ),
            ),
            "candidate_cut",
        ),
        (AppendConfig(kind="config", reason="x", config=_with(base, list_size=150)), "list_size"),
        (AppendConfig(kind="config", reason="x"), "config"),
        (AppendConfig(kind="allocation", reason="x", allocation=_alloc(control, 99)), "config_version"),
        (AppendConfig(kind="allocation", reason="x", allocation=_alloc(registered, control)), "config_version"),
        (
            AppendConfig(
                kind="allocation",
                reason="x",
                allocation=Allocation(
                    experiment_id="e1",
                    salt="s1",
                    arms=(
                        ArmShare("e1.c", control, 0.4),
                        ArmShare("e1.t1", registered, 0.6),
                        ArmShare("e1.t2", registered, 0.0),
                    ),
                ),
            ),
            "share",
        ),
        (AppendConfig(kind="rollback", reason="x", restores_version=42), "restores_version"),
    ]


@pytest.mark.parametrize("index", range(9))
async def test_refuses_what_the_sidecar_refuses_and_appends_nothing(index: int) -> None:
    writer = MemoryConfigWriter(KEYRING, initial=default_config())
    registered = await writer.append(AppendConfig(kind="config", reason="ok", config=_candidate()), epoch=0)
    action, field = _bad_actions(1, registered)[index]
    before = (await writer.head(), list(writer.changes))
    with pytest.raises(SchemaError) as caught:
        await writer.append(action, epoch=0)
    assert field in caught.value.field or field in str(caught.value)
    assert (await writer.head(), writer.changes) == before
    # the same change, signed as the next version and put on the wire, is refused by the sidecar's fold too
    body = ConfigChange(
        schema_version=1,
        version=len(writer.changes) + 1,
        parent_version=len(writer.changes),
        author="t",
        reason="x",
        created_ms=T0,
        kind=action.kind,
        config=action.config,
        allocation=action.allocation,
        restores_version=action.restores_version,
        key_id="k1",
    )
    try:
        wire = decode_change(encode_change(sign(body, KEYRING)))
    except ConfigError:
        return  # the sidecar's decoder refuses it before the fold
    _, refused = _sidecar_fold([*writer.changes, wire])
    assert refused == 1


def test_first_config_must_be_activated_and_time_must_be_an_event_time() -> None:
    writer = MemoryConfigWriter(KEYRING)
    with pytest.raises(ConfigError, match="activate"):
        writer.append_change("config", reason="x", config=default_config())
    with pytest.raises(ValueError, match="now_ms"):
        MemoryConfigWriter(KEYRING, now_ms=5)


def test_replay_detects_a_tampered_log() -> None:
    writer = MemoryConfigWriter(KEYRING, initial=default_config())
    writer.append_change("config", reason="ok", config=_candidate())
    writer.changes[1] = msgspec.structs.replace(writer.changes[1], reason="edited later")
    with pytest.raises(ConfigError, match="refused by its own fold"):
        writer.replay()


def _window(arm: str, requests: float, latency_bin: int, buckets: int = 4) -> ArmTotals:
    sums = np.zeros((N_FIELDS, buckets))
    sums[FIELD_INDEX["requests"]] = requests / buckets
    sums[FIELD_INDEX["clicks"]] = requests / (10 * buckets)
    hist = np.zeros(N_LATENCY_BINS, np.int64)
    hist[latency_bin] = int(requests)
    return ArmTotals("home", arm, sums, hist, int(requests) * 12, 0, 1)


async def test_metrics_merge_windows_as_the_feed_does() -> None:
    metrics = MemoryMetrics()
    metrics.add({"control": _window("control", 400.0, 30), "x.t1": _window("x.t1", 0.0, 30)})
    metrics.add({"control": _window("control", 200.0, 31)})
    totals = await metrics.totals()
    assert set(totals) == {"control"}  # an arm with no request is not an arm of the feed
    control = totals["control"]
    assert control.total("requests") == 600.0 and control.total("clicks") == 60.0
    assert control.windows == 2 and control.item_events == 7200
    assert control.latency_hist[30] == 400 and control.latency_hist[31] == 200
    with pytest.raises(ValueError, match="bucket layout"):
        metrics.add({"control": _window("control", 10.0, 30, buckets=8)})
    metrics.set({})
    assert await metrics.totals() == {}


async def test_sink_store_and_approvals_keep_what_they_get() -> None:
    sink = MemorySink()
    await sink.publish(PublishRecord({"kind": "decision", "payload": {"kind": "promote"}}))
    await sink.alert(Alert(schema_version=1, kind="srm", severity="critical", source="t", message="m", at_ms=T0))
    assert sink.kinds("decision") == [{"kind": "decision", "payload": {"kind": "promote"}}]
    assert len(sink.alerts) == 1
    store = MemoryStateStore()
    assert await store.load() is None
    assert await store.save(b"abc") and await store.load() == b"abc" and store.saves == 1
    approvals = MemoryApprovals()
    approvals.approve("exp-1")
    assert await approvals.approved() == frozenset({"exp-1"})


async def test_an_action_already_on_the_log_is_not_appended_again() -> None:
    writer = MemoryConfigWriter(KEYRING, initial=default_config())
    action = AppendConfig(kind="config", reason="register", config=_candidate(), action_id="abc.0")
    first = await writer.append(action, epoch=1)
    again = await writer.append(action, epoch=1)  # a replayed intent after a crash
    assert first == again == 2 and len(writer.changes) == 2
    assert writer.changes[1].reason.startswith("[action abc.0] [epoch 1] register")
    other = await writer.append(AppendConfig(kind="config", reason="r", config=_candidate(), action_id="abc.1"), 1)
    assert other == 3
