"""The loop's I/O: the port Protocols and `LoopDriver`, which runs one `AgentLoop.step` exactly once across crashes.

What lives here: the ports the driver composes the pure step with
(`ConfigWriter`, `DecisionSink`, `StateStore`, `MetricsSource`,
`ApprovalSource`; the Skillhub's is `agents.skillhub.SkillStore`), `LoopStep`
(what the driver steps: `agents.loop.AgentLoop`), `LoopDriver`, and the
`Outbox` (a step's intent, `LoopState.outbox`) with `encode_actions` /
`decode_actions`.

Who uses it: the runtime (`agents.runtime`, Kafka/Redis adapters),
`rectune.simloop` and the tests (`agents.memory_ports`) build a `LoopDriver`
and call `tick`.  Every name is re-exported by `agents.loop`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final, Protocol

import msgspec

from agents.loop_plan import registered_versions
from agents.loop_state import Action, AppendConfig, LoopInput, LoopState, PublishAlert, PublishRecord, UpsertSkills
from agents.ope_replay import ReplayRows
from agents.skillhub import SkillStore
from agents.skills import Skill
from schemas.alerts import Alert
from schemas.config import ConfigError
from schemas.config_log import ServingState
from schemas.errors import SignatureError
from schemas.metrics import ArmTotals

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- I/O protocols and the driver


class LoopStep(Protocol):
    """What `LoopDriver` steps: a pure loop over (state, input) (`agents.loop.AgentLoop`)."""

    def initial_state(self) -> LoopState:
        """The state of a loop that never ran."""
        ...

    async def step(self, state: LoopState, inp: LoopInput) -> tuple[LoopState, list[Action]]:
        """Advance the loop by one tick; returns the next state and what to do."""
        ...


class ConfigWriter(Protocol):
    """The config topic: its folded head, and appending one change against it."""

    async def head(self) -> ServingState:
        """The serving state after every change on the topic."""
        ...

    async def append(self, action: AppendConfig, epoch: int) -> int:
        """Append `action` as the next version (signed); returns that version."""
        ...


class DecisionSink(Protocol):
    """`rectune.decisions` and `rectune.alerts`."""

    async def publish(self, record: PublishRecord) -> None:
        """Publish one decision record."""
        ...

    async def alert(self, alert: Alert) -> None:
        """Publish one alert."""
        ...


class StateStore(Protocol):
    """Where `LoopState` lives between steps (conditional on the lease)."""

    async def load(self) -> bytes | None:
        """The saved state bytes, if any."""
        ...

    async def save(self, data: bytes) -> bool:
        """Save; False when this process no longer holds the lease (nothing written)."""
        ...


class MetricsSource(Protocol):
    """Cumulative merged per-arm totals of the surface, pooled and per cohort."""

    async def totals(self) -> Mapping[str, ArmTotals]:
        """arm id → totals."""
        ...

    async def cohort_totals(self) -> Mapping[str, Mapping[str, ArmTotals]]:
        """cohort → arm id → totals; empty when the source keeps no cohort split (Insight then reads pooled only)."""
        ...


class ApprovalSource(Protocol):
    """Experiment ids a human approved (`rectune approve`)."""

    async def approved(self) -> frozenset[str]:
        """The approved ids."""
        ...


class BreakerSource(Protocol):
    """Arm ids the serving sidecar's SLO breaker has cut back to control (`agents.alerts_feed.AlertsFeed`)."""

    async def opened_arms(self) -> frozenset[str]:
        """The opened arm ids."""
        ...


class ReplaySource(Protocol):
    """The sidecars' exploration replays of the surface (`agents.replay_feed.ReplayFeed`)."""

    async def active(self, now_ms: int) -> bool:
        """Whether any sidecar replays this surface lately."""
        ...

    async def rows(self, versions: Iterable[int], logging_version: int) -> Mapping[int, ReplayRows]:
        """Each candidate version's rows from the records `logging_version` logged."""
        ...


class LoopDriver:
    """One tick of I/O around `AgentLoop.step`: load → read → step → save the intent → execute → save."""

    def __init__(
        self,
        loop: LoopStep,
        *,
        config: ConfigWriter,
        sink: DecisionSink,
        store: StateStore,
        metrics: MetricsSource,
        skills: SkillStore,
        approvals: ApprovalSource | None = None,
        breaker: BreakerSource | None = None,
        replay: ReplaySource | None = None,
    ) -> None:
        """Keep the loop and its ports."""
        self.loop, self.config, self.sink, self.store = loop, config, sink, store
        self.metrics, self.skills, self.approvals, self.breaker = metrics, skills, approvals, breaker
        self.replay = replay

    async def tick(self, now_ms: int, epoch: int = 0) -> tuple[LoopState, list[Action]]:
        """Run one step and execute its actions, exactly once across crashes (called by the runtime every tick).

        The next state is saved first *with its actions* (`LoopState.outbox`,
        the intent: a lease-fenced write, so a deposed leader acts on
        nothing), then the actions run, then the state is saved without them.
        A tick that finds an outbox (the process died in between, or an action
        failed) executes that outbox again instead of stepping: records and
        alerts may repeat (same `record_id`), config appends do not (each
        carries an `action_id` the writer finds on the log).  A config change
        the writer refuses (`ConfigError`, `SignatureError`) abandons the
        intent: the state before it is restored and the error raised, so the
        next tick steps again from there.
        """
        raw = await self.store.load()
        state = LoopState.from_bytes(raw) if raw else self.loop.initial_state()
        if state.outbox is not None:
            box = _outbox_decoder.decode(state.outbox)
            prior = LoopState.from_bytes(box.prior)
            actions = decode_actions(box.actions)
            done = msgspec.structs.replace(state, outbox=None)
            await self._execute(actions, epoch, prior)
            await self.store.save(done.to_bytes())
            return done, actions
        serving = await self.config.head()
        replay_active, replay = await self._replay(state, serving, now_ms)
        inp = LoopInput(
            totals=await self.metrics.totals(),
            cohorts=await self.metrics.cohort_totals(),
            serving=serving,
            now_ms=now_ms,
            skills=await self.skills.load_all(),
            approved=await self.approvals.approved() if self.approvals is not None else frozenset(),
            opened_arms=await self.breaker.opened_arms() if self.breaker is not None else frozenset(),
            epoch=epoch,
            replay=replay,
            replay_active=replay_active,
        )
        new_state, actions = await self.loop.step(state, inp)
        if actions:
            key = hashlib.sha256(new_state.to_bytes() + str(now_ms).encode()).hexdigest()[:16]
            actions = [
                dataclasses.replace(a, action_id=f"{key}.{i}") if isinstance(a, AppendConfig) else a
                for i, a in enumerate(actions)
            ]
            box = Outbox(prior=state.to_bytes(), actions=encode_actions(actions))
            intent = msgspec.structs.replace(new_state, outbox=_outbox_encoder.encode(box))
            if not await self.store.save(intent.to_bytes()):
                log.warning("loop state not saved (lease lost?): the step's %d actions are dropped", len(actions))
                return state, []
            await self._execute(actions, epoch, state)
        if new_state != state or actions:
            await self.store.save(new_state.to_bytes())
        return new_state, actions

    async def _replay(
        self, state: LoopState, serving: ServingState, now_ms: int
    ) -> tuple[bool, Mapping[int, ReplayRows]]:
        """Replay rows only while candidates are registered and unscreened (the only phase that reads them)."""
        if self.replay is None or state.phase != "registering" or state.screened:
            return False, {}
        if not await self.replay.active(now_ms):
            return False, {}
        versions = registered_versions(state, serving).values()  # the round's candidates, as the screen finds them
        return True, await self.replay.rows(versions, serving.control_version)

    async def _execute(self, actions: Sequence[Action], epoch: int, prior: LoopState) -> None:
        for action in actions:
            if isinstance(action, PublishRecord):
                await self.sink.publish(action)
            elif isinstance(action, PublishAlert):
                await self.sink.alert(action.alert)
            elif isinstance(action, AppendConfig):
                try:
                    await self.config.append(action, epoch)
                except (ConfigError, SignatureError):
                    await self.store.save(prior.to_bytes())  # abandon the intent (see `tick`)
                    raise
            else:
                await self.skills.upsert_many(action.skills)


# --------------------------------------------------------------------------- the outbox (a step's intent)


class Outbox(msgspec.Struct, frozen=True, array_like=True):
    """A step's actions while they execute (`LoopState.outbox`), and the state before the step."""

    prior: bytes
    actions: tuple[tuple[str, Any], ...]


_outbox_encoder: Final = msgspec.msgpack.Encoder()
_outbox_decoder: Final = msgspec.msgpack.Decoder(Outbox)


def encode_actions(actions: Sequence[Action]) -> tuple[tuple[str, Any], ...]:
    """Actions as tagged plain data (`decode_actions` inverts it exactly); `LoopDriver` persists them."""
    out: list[tuple[str, Any]] = []
    for a in actions:
        if isinstance(a, PublishRecord):
            out.append(("record", a.record))
        elif isinstance(a, PublishAlert):
            out.append(("alert", msgspec.to_builtins(a.alert)))
        elif isinstance(a, AppendConfig):
            out.append(("config", msgspec.to_builtins(a)))
        else:
            out.append(("skills", [msgspec.to_builtins(s) for s in a.skills]))
    return tuple(out)


def decode_actions(items: Sequence[tuple[str, Any]]) -> list[Action]:
    """The actions `encode_actions` wrote."""
    out: list[Action] = []
    for tag, body in items:
        if tag == "record":
            out.append(PublishRecord(body))
        elif tag == "alert":
            out.append(PublishAlert(msgspec.convert(body, Alert)))
        elif tag == "config":
            out.append(msgspec.convert(body, AppendConfig))
        elif tag == "skills":
            out.append(UpsertSkills(tuple(msgspec.convert(s, Skill) for s in body)))
        else:
            msg = f"outbox: unknown action tag {tag!r} (expected record, alert, config or skills)"
            raise ValueError(msg)
    return out
