"""The runtime's loop paths with in-memory ports: exactly-once ticks across crashes, and CUPED on the live path.

The config log here is the real `KafkaConfigWriter` logic (fold, action-id
dedup, confirm, race detection) over a Python list instead of a partition;
crashes are a `BaseException` raised right after an append landed, which
nothing in the driver catches — as if the process had died there.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, cast

import msgspec
import numpy as np
import pytest
from aiokafka import AIOKafkaProducer

from agents.brain import Proposal, ProposalContext
from agents.experiment import GuardrailSpec
from agents.loop import (
    AgentLoop,
    AppendConfig,
    LoopDriver,
    LoopSettings,
    LoopState,
    PublishAlert,
    PublishRecord,
    UpsertSkills,
    decode_actions,
    encode_actions,
    pre_period_arm,
)
from agents.offline_brain import OfflineBrain
from agents.online import OnlineAgent, OnlinePolicy
from agents.runtime import ConfigRaceError, KafkaConfigWriter
from agents.skillhub import MemorySkillStore
from agents.skills import Evidence, Skill, SkillPattern
from agents.stats.simulate import SimulatedExperiment, TrafficModel, simulate_experiment
from schemas.alerts import Alert
from schemas.config import ConfigError, default_config
from schemas.config_log import ConfigChange, Keyring, decode_change, encode_change, sign
from schemas.metrics import FIELD_INDEX, N_FIELDS, N_LATENCY_BINS, ArmTotals, latency_bins

T0 = 1_767_225_600_000
KEYRING = Keyring.parse("k1:" + "ab" * 16, "k1")
MODEL = TrafficModel()
WINDOW_S = MODEL.horizon_seconds / MODEL.looks


class Crash(BaseException):
    """The process dies here (nothing in the driver catches a BaseException)."""


def totals(arm_id: str, clicks: Any, impressions: Any, requests: Any, windows: int) -> ArmTotals:
    sums = np.zeros((N_FIELDS, len(clicks)))
    sums[FIELD_INDEX["requests"]] = requests
    sums[FIELD_INDEX["impressions"]] = impressions
    sums[FIELD_INDEX["clicks"]] = clicks
    sums[FIELD_INDEX["conversions"]] = 0.1 * np.asarray(clicks)
    sums[FIELD_INDEX["revenue"]] = 4.0 * np.asarray(clicks)
    sums[FIELD_INDEX["distinct_categories"]] = 6.0 * np.asarray(requests)
    hist = np.zeros(N_LATENCY_BINS, np.int64)
    hist[int(latency_bins([20.0])[0])] = int(np.sum(requests))
    return ArmTotals("home", arm_id, sums, hist, int(np.sum(impressions)), 0, windows)


def look_totals(exp: SimulatedExperiment, look: int, arm: int, arm_id: str) -> ArmTotals:
    return totals(arm_id, exp.clicks[arm, look], exp.impressions[arm, look], exp.requests[arm, look], look + 1)


# --------------------------------------------------------------------------- in-memory ports


class ListConfigWriter(KafkaConfigWriter):
    """The real writer over a list of record values (offset = index); `before_produce` injects a race."""

    def __init__(self) -> None:
        super().__init__("memory", cast(AIOKafkaProducer, None), KEYRING, clock_ms=lambda: T0)
        seed = ConfigChange(
            schema_version=1,
            version=1,
            parent_version=0,
            author="test",
            reason="seed",
            created_ms=T0,
            kind="config",
            config=default_config(),
            activate=True,
            key_id="k1",
        )
        self.records: list[bytes] = [encode_change(sign(seed, KEYRING))]
        self.before_produce: Callable[[], Awaitable[None]] | None = None
        self.crash_after: int | None = None  # die after this many more appends landed

    async def _read(self, min_end: int = 0) -> list[tuple[int, bytes | None]]:
        return list(enumerate(self.records))

    async def _produce(self, value: bytes) -> int:
        if self.before_produce is not None:
            hook, self.before_produce = self.before_produce, None
            await hook()
        self.records.append(value)
        return len(self.records) - 1

    async def append(self, action: AppendConfig, epoch: int) -> int:
        version = await super().append(action, epoch)
        if self.crash_after is not None:
            self.crash_after -= 1
            if self.crash_after <= 0:
                self.crash_after = None
                raise Crash
        return version

    def changes(self) -> list[ConfigChange]:
        return [decode_change(v) for v in self.records]


class Sink:
    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []
        self.alerts: list[Alert] = []

    async def publish(self, record: PublishRecord) -> None:
        self.records.append(msgspec.json.decode(record.to_json()))

    async def alert(self, alert: Alert) -> None:
        self.alerts.append(alert)

    def kind(self, kind: str) -> list[dict[str, Any]]:
        return [r for r in self.records if r["kind"] == kind]


class Store:
    def __init__(self) -> None:
        self.data: bytes | None = None
        self.held = True

    async def load(self) -> bytes | None:
        return self.data

    async def save(self, data: bytes) -> bool:
        if self.held:
            self.data = data
        return self.held

    def state(self) -> LoopState:
        assert self.data is not None
        return LoopState.from_bytes(self.data)


class Metrics:
    def __init__(self) -> None:
        self.current: dict[str, ArmTotals] = {}

    async def totals(self) -> Mapping[str, ArmTotals]:
        return self.current

    async def cohort_totals(self) -> Mapping[str, Mapping[str, ArmTotals]]:
        return {}


class CountingBrain(OfflineBrain):
    calls = 0

    async def propose(self, context: ProposalContext) -> list[Proposal]:
        CountingBrain.calls += 1
        return await super().propose(context)


def policy() -> OnlinePolicy:
    return OnlinePolicy(
        surface="home",
        stages=(0.5,),
        min_dwell_s=0.0,
        min_stage_requests=0.0,
        horizon_s=MODEL.horizon_seconds,
        target_mde=0.5,
        settle_s=0.0,
        guardrails=GuardrailSpec(latency_p99_slo_ms=200.0),
    )


class World:
    """One surface's ports; `process()` builds a fresh loop + driver over them (a new process)."""

    def __init__(self, *, k: int = 1, pre_period_s: float = 0.0) -> None:
        self.config, self.sink, self.store, self.metrics = ListConfigWriter(), Sink(), Store(), Metrics()
        self.skills = MemorySkillStore()
        self.settings = LoopSettings(
            k=k, max_changes=2, window_s=WINDOW_S, cooldown_s=3600.0, pre_period_s=pre_period_s
        )
        pilot = simulate_experiment(MODEL, [0.0, 0.0], np.random.default_rng(11))
        self.metrics.current = {"base": look_totals(pilot, MODEL.looks - 1, 0, "base")}
        self.driver = self.process(seed=1)

    def process(self, seed: int) -> LoopDriver:
        loop = AgentLoop(CountingBrain(seed=seed), OnlineAgent(policy()), self.settings)
        return LoopDriver(
            loop, config=self.config, sink=self.sink, store=self.store, metrics=self.metrics, skills=self.skills
        )

    async def tick(self, now_ms: int) -> LoopState:
        state, _ = await self.driver.tick(now_ms, epoch=3)
        return state

    def kinds(self) -> list[str]:
        return [c.kind for c in self.config.changes()]


# --------------------------------------------------------------------------- exactly-once ticks


async def test_crash_between_appended_configs_resumes_the_same_round() -> None:
    CountingBrain.calls = 0
    w = World(k=2)
    w.config.crash_after = 1  # dies right after the first candidate landed
    with pytest.raises(Crash):
        await w.tick(T0)
    intent = w.store.state()
    assert intent.outbox is not None and intent.phase == "registering" and intent.cycle == 1
    registered = len(intent.candidates)
    assert registered == 2, "the offline brain and the Critic keep both candidates"
    assert w.kinds() == ["config", "config"]

    w.driver = w.process(seed=99)  # restarted: a new brain that would propose something else
    state = await w.tick(T0 + 500)
    assert state.outbox is None and state.phase == "registering"
    assert state.candidates == intent.candidates and state.cycle == 1
    assert w.kinds() == ["config", "config", "config"]  # the second candidate, once; the first not again
    ids = [c.reason.split("]")[0] for c in w.config.changes()[1:]]
    assert len(set(ids)) == 2
    assert CountingBrain.calls == 1, "the replay did not ask the brain again"
    proposals = w.sink.kind("proposal")
    assert len({r["record_id"] for r in proposals}) == 1 and {r["cycle"] for r in proposals} == {1}

    state = await w.tick(T0 + 1000)
    assert state.phase == "running"
    assert w.kinds() == ["config", "config", "config", "allocation"]


async def test_crash_after_the_allocation_before_the_state_save_allocates_once() -> None:
    w = World()
    assert (await w.tick(T0)).phase == "registering"
    w.config.crash_after = 1  # the allocation lands, the process dies before saving "running"
    with pytest.raises(Crash):
        await w.tick(T0 + 1000)
    assert w.store.state().outbox is not None
    w.driver = w.process(seed=1)
    state = await w.tick(T0 + 60_000)  # a later clock: re-planning would make another experiment id
    assert state.phase == "running" and state.outbox is None
    assert w.kinds() == ["config", "config", "allocation"]
    exp = state.experiment_state()
    allocation = w.config.changes()[-1].allocation
    assert exp is not None and allocation is not None and allocation.experiment_id == exp.experiment_id
    assert exp.started_ms == T0 + 1000
    for i in range(3):  # and the loop goes on normally
        await w.tick(T0 + 120_000 + i)
    assert w.kinds() == ["config", "config", "allocation"]


async def test_a_deposed_leader_executes_nothing() -> None:
    w = World()
    w.store.held = False  # the fenced intent write fails: the lease is gone
    state, actions = await w.driver.tick(T0, epoch=3)
    assert actions == [] and state.phase == "idle"
    assert w.kinds() == ["config"] and w.sink.records == []


async def test_a_refused_append_abandons_the_intent_and_restores_the_prior_state() -> None:
    w = World()
    assert (await w.tick(T0)).phase == "registering"
    before = w.store.data

    async def human_moves_the_control() -> None:  # a person activates another config first
        human = ListConfigWriter()
        human.records = w.config.records
        cfg = default_config()
        bumped = msgspec.structs.replace(cfg, rank=msgspec.structs.replace(cfg.rank, cut=cfg.rank.cut - 1))
        await human.append(AppendConfig(kind="config", reason="human", config=bumped, activate=True), 0)

    w.config.before_produce = human_moves_the_control
    with pytest.raises(ConfigRaceError):  # our allocation lost the version: the intent stays
        await w.tick(T0 + 1000)
    assert w.store.state().outbox is not None
    with pytest.raises(ConfigError):  # replayed on the new head: the control moved, the allocation is refused
        await w.tick(T0 + 2000)
    assert w.store.data == before, "the prior state is back: the next tick steps again from it"
    state = await w.tick(T0 + 3000)
    assert state.phase == "idle" and state.outbox is None  # the incumbent moved: start over after a cool-down
    assert [c.kind for c in w.config.changes()] == ["config", "config", "config", "allocation"]
    heads = [c.version for c in w.config.changes()]
    assert heads[-1] == heads[-2], "our refused record carries a taken version: no reader accepts it"


def test_outbox_round_trip_of_every_action_kind() -> None:
    alert = Alert(schema_version=1, kind="srm", severity="critical", source="x", message="m", at_ms=T0, surface="home")
    evidence = Evidence(
        experiment_id="e",
        arm_id="e.t1",
        metric="ctr",
        effect=0.01,
        lower=0.001,
        upper=0.02,
        significant=True,
        verdict="supports",
        weight=1.0,
        before=100,
        after=120,
        at_ms=T0,
    )
    skill = Skill(
        skill_id="s1",
        stage="rank",
        surface="home",
        cohort="all",
        pattern=SkillPattern(parameter="rank.cut", direction="+", lower=100.0, upper=120.0, step=20.0),
        evidence=(evidence,),
        confidence=1.0,
        status="active",
        last_validated_ms=T0,
        support=1.0,
        against=0.0,
    )
    actions = [
        PublishRecord({"type": "agent_record", "payload": {"reasons": ["a", "b"], "x": 1.5}}),
        PublishAlert(alert),
        AppendConfig(kind="config", reason="r", config=default_config(), activate=True, action_id="abc.2"),
        UpsertSkills((skill,)),
    ]
    data = msgspec.msgpack.encode(encode_actions(actions))
    assert decode_actions(msgspec.msgpack.decode(data)) == actions


# --------------------------------------------------------------------------- CUPED on the live path


async def _reads(w: World, sim: SimulatedExperiment, started_ms: int, looks: range) -> dict[int, dict[str, Any]]:
    exp = w.store.state().experiment_state()
    assert exp is not None
    control, treatment = exp.plan.arm_ids
    out: dict[int, dict[str, Any]] = {}
    for look in looks:
        w.metrics.current = {
            **w.metrics.current,
            control: look_totals(sim, look, 0, control),
            treatment: look_totals(sim, look, 1, treatment),
        }
        n = len(w.sink.records)
        state = await w.tick(started_ms + int(sim.look_seconds[look] * 1000))
        for r in w.sink.records[n:]:
            if r["kind"] == "interim_read" and r["payload"]["reads"]:
                out[look] = r["payload"]["reads"][0]
        if state.phase != "running":
            break
    return out


async def test_live_loop_feeds_the_pre_period_and_cuped_shrinks_the_standard_error() -> None:
    # Users keep their click propensity (strongly heterogeneous here), so each arm's buckets persist.
    sim = simulate_experiment(dataclasses.replace(MODEL, ctr_concentration=3.0), [0.0, 0.0], np.random.default_rng(5))

    raw = World()
    await raw.tick(T0)
    assert (await raw.tick(T0 + 1000)).phase == "running"
    raw_reads = await _reads(raw, sim, T0 + 1000, range(4, 56))

    pre_s = 600.0
    w = World(pre_period_s=pre_s)
    await w.tick(T0)
    state = await w.tick(T0 + 1000)
    assert state.phase == "pending_approval" and state.pre_period_until_ms == T0 + 1000 + 600_000
    exp = state.experiment_state()
    assert exp is not None
    aa = w.config.changes()[-1].allocation
    assert aa is not None and aa.salt == exp.plan.salt
    assert [a.arm_id for a in aa.arms] == [pre_period_arm(exp.plan, a) for a in exp.plan.arm_ids]
    assert {a.config_version for a in aa.arms} == {exp.plan.control.config_version}  # A/A: all on the incumbent
    assert [a.share for a in aa.arms] == [0.5, 0.5]  # the final stage's lanes
    hold = w.sink.kind("allocation")[-1]["payload"]
    assert hold["kind"] == "hold_for_approval" and "A/A pre-period" in " ".join(hold["reasons"])

    items = MODEL.items_per_request
    for arm, arm_id in enumerate(exp.plan.arm_ids):  # what the A/A arms' windows merge to: the same users, earlier
        pre = pre_period_arm(exp.plan, arm_id)
        w.metrics.current[pre] = totals(
            pre, sim.pre_clicks[arm], sim.pre_impressions[arm], sim.pre_impressions[arm] / items, 10
        )
    assert (await w.tick(T0 + 1000 + 599_000)).phase == "pending_approval"
    state = await w.tick(T0 + 1000 + 600_000)
    assert state.phase == "running"
    started = T0 + 1000 + 600_000
    launched = w.config.changes()[-1].allocation
    assert launched is not None and [a.arm_id for a in launched.arms] == list(exp.plan.arm_ids)
    cuped_reads = await _reads(w, sim, started, range(4, 56))

    common = sorted(set(raw_reads) & set(cuped_reads))
    assert len(common) >= 20
    ratios = []
    for look in common:
        r, c = raw_reads[look], cuped_reads[look]
        assert not r["cuped"] and c["cuped"] and c["variance_ratio"] < 1.0
        assert c["difference_se"] < r["difference_se"]
        ratios.append(c["difference_se"] / r["difference_se"])
    # The more of each arm's users the experiment has seen, the more their pre-period explains (~0.94 → ~0.70 here).
    assert ratios[-1] < 0.8 and float(np.median(ratios)) < 0.95, ratios
