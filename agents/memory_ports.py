"""In-memory adapters of the `agents.loop` ports: the config log, decisions, state, metrics and approvals in a process.

Who uses them and why: the in-process simulation (`rectune.simloop`), the
tuning benchmark (`bench/tuning.py`) and the tests run the real `AgentLoop`
and `LoopDriver` without a broker or Redis.  Each class implements one
Protocol of `agents.loop` and keeps everything it was given, so a caller can
inspect what the loop did:

- `MemoryConfigWriter` (`ConfigWriter`): the config topic as a list of signed
  `ConfigChange`s.  `append` signs the action as head + 1 and then does
  exactly what a sidecar does with a record: encode it to the wire, decode it
  strictly (the schema bounds live in the decoder), and `apply` it with the
  guardrails.  A change the sidecar would refuse raises (`ConfigError` or
  `SignatureError`, naming the field and the rule) and nothing is appended;
  `replay()` folds the kept changes again and must give `head()`'s state.
  Time is injected: `created_ms` is the writer's `now_ms` (set by the caller,
  never read from a wall clock), and never goes backwards along the log.  As
  `agents.runtime.KafkaConfigWriter` does, an action's `action_id` is written
  at the start of the reason (`[action ID] `) and an action whose id is
  already on the log is not appended again (its version is returned);
- `MemorySink` (`DecisionSink`): decision records (decoded JSON) and alerts;
- `MemoryStateStore` (`StateStore`): the last saved `LoopState` bytes (always
  holds the "lease");
- `MemoryMetrics` (`MetricsSource`): a mapping arm id → cumulative
  `ArmTotals`, replaced or merged by the caller (`set`, `add`);
- `MemoryApprovals` (`ApprovalSource`): a set of approved experiment ids.

Pure: schemas, msgspec and numpy only.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Final

import msgspec
import numpy as np

from agents.loop import AUTHOR, AppendConfig, PublishRecord
from schemas.alerts import Alert
from schemas.config import CascadeConfig, ConfigError
from schemas.config_log import ConfigChange, Keyring, ServingState, apply, decode_change, encode_change, fold, sign
from schemas.errors import refuse
from schemas.guardrails import Guardrails
from schemas.limits import MIN_EVENT_TIME_MS
from schemas.metrics import ArmTotals

#: 2026-01-01T00:00:00Z: the default start of simulated time (any time >= MIN_EVENT_TIME_MS works).
DEFAULT_EPOCH_MS: Final = 1_767_225_600_000
_MAX_REASON: Final = 4000
_ACTION: Final = re.compile(r"^\[action ([0-9A-Za-z.:_-]{1,64})\] ")  # as agents.runtime writes it


class MemoryConfigWriter:
    """`agents.loop.ConfigWriter` over an in-memory config log, checked as the sidecars check the topic.

    `guardrails` are the sidecar's (`SidecarConfig.guardrails`, default
    `Guardrails()`); pass None only to mirror a sidecar built without them.
    `initial`, when given, is appended and activated as version 1 at `now_ms`
    (the config the world served before any tuning).
    """

    def __init__(
        self,
        keyring: Keyring,
        *,
        initial: CascadeConfig | None = None,
        guardrails: Guardrails | None = None,
        author: str = AUTHOR,
        now_ms: int = DEFAULT_EPOCH_MS,
    ) -> None:
        """Start an empty log (or one holding `initial` as the active version 1)."""
        if now_ms < MIN_EVENT_TIME_MS:
            msg = f"now_ms: must be an event time >= {MIN_EVENT_TIME_MS} ms (2000-01-01), got {now_ms}"
            raise ValueError(msg)
        self.keyring = keyring
        self.guardrails = guardrails if guardrails is not None else Guardrails()
        self.author = author
        self.now_ms = now_ms
        self.changes: list[ConfigChange] = []
        self.actions: dict[str, int] = {}
        self.state = ServingState()
        if initial is not None:
            self.append_change("config", reason="initial config", config=initial, activate=True)

    async def head(self) -> ServingState:
        """The serving state after every change appended so far."""
        return self.state

    async def append(self, action: AppendConfig, epoch: int) -> int:
        """Sign `action` as the next version, check it as a sidecar would, keep it; returns its version.

        An `action_id` already on the log returns that change's version and appends nothing (a replayed intent).
        """
        if action.action_id and action.action_id in self.actions:
            return self.actions[action.action_id]
        marker = f"[action {action.action_id}] " if action.action_id else ""
        return self.append_change(
            action.kind,
            reason=f"{marker}[epoch {epoch}] {action.reason}",
            config=action.config,
            activate=action.activate,
            allocation=action.allocation,
            restores_version=action.restores_version,
        )

    def append_change(self, kind: str, *, reason: str, author: str | None = None, **fields: Any) -> int:
        """Append one change of `kind` with `fields` (config, activate, allocation, restores_version).

        Called by `append` and by callers acting as a person (`rectune config
        propose` in a simulation).  Raises `ConfigError`/`SignatureError` (the
        sidecar's refusal, naming the field and the rule) and appends nothing
        when the change would be refused.
        """
        head = self.state
        body = ConfigChange(
            schema_version=1,
            version=head.version + 1,
            parent_version=head.version,
            author=author or self.author,
            reason=reason[:_MAX_REASON],
            created_ms=max(self.now_ms, head.changed_ms),
            kind=kind,  # type: ignore[arg-type]  # decode_change below refuses an unknown kind
            key_id=self.keyring.active_key_id,
            **fields,
        )
        wire = encode_change(sign(body, self.keyring))
        change = decode_change(wire)  # the strict decoder holds the schema bounds, as on the topic
        self.state = apply(head, change, self.keyring, self.guardrails)
        self.changes.append(change)
        found = _ACTION.match(change.reason)
        if found is not None:
            self.actions.setdefault(found.group(1), change.version)
        return change.version

    def replay(self) -> ServingState:
        """The state folded again from the kept changes (what a fresh sidecar would serve)."""
        result = fold(self.changes, self.keyring, self.guardrails)
        if result.refused:
            first = result.refused[0]
            rule = f"version {first.change.version} is refused by its own fold ({first.error})"
            refuse(ConfigError, "changes", rule, hint="a change was altered after it was appended")
        return result.state


class MemorySink:
    """`agents.loop.DecisionSink` that keeps every decision record (decoded JSON) and alert."""

    def __init__(self) -> None:
        """Nothing published yet."""
        self.records: list[dict[str, Any]] = []
        self.alerts: list[Alert] = []

    async def publish(self, record: PublishRecord) -> None:
        """Keep the record as its JSON would be read back."""
        self.records.append(msgspec.json.decode(record.to_json()))

    async def alert(self, alert: Alert) -> None:
        """Keep the alert."""
        self.alerts.append(alert)

    def kinds(self, kind: str) -> list[dict[str, Any]]:
        """The records of one `kind` (proposal, critique, allocation, interim_read, decision, ...)."""
        return [r for r in self.records if r.get("kind") == kind]


class MemoryStateStore:
    """`agents.loop.StateStore` holding the last saved bytes (this process always holds the lease)."""

    def __init__(self, data: bytes | None = None) -> None:
        """Start with `data` (a restarted loop) or nothing."""
        self.data = data
        self.saves = 0

    async def load(self) -> bytes | None:
        """The saved bytes, if any."""
        return self.data

    async def save(self, data: bytes) -> bool:
        """Keep `data`; always True."""
        self.data = data
        self.saves += 1
        return True


class MemoryMetrics:
    """`agents.loop.MetricsSource` over a mapping arm id → cumulative merged `ArmTotals` of one surface.

    `set` replaces the view (a test that computes cumulative totals itself);
    `add` merges one more window's per-arm totals into it, as the live feed
    merges partials: sums and histograms add, item events add, and `windows`
    counts the windows an arm had traffic in.
    """

    def __init__(self, surface: str = "home") -> None:
        """Empty totals for `surface`."""
        self.surface = surface
        self.current: dict[str, ArmTotals] = {}

    async def totals(self) -> Mapping[str, ArmTotals]:
        """arm id → cumulative totals."""
        return self.current

    async def cohort_totals(self) -> Mapping[str, Mapping[str, ArmTotals]]:
        """No cohort split: this source holds per-arm totals only (Insight reads them pooled)."""
        return {}

    def set(self, totals: Mapping[str, ArmTotals]) -> None:
        """Replace the cumulative totals."""
        self.current = dict(totals)

    def add(self, window: Mapping[str, ArmTotals]) -> None:
        """Merge one window's per-arm totals into the cumulative ones (arms with no request are skipped)."""
        merged = dict(self.current)
        for arm_id, t in window.items():
            if not t.total("requests") > 0.0:
                continue
            old = merged.get(arm_id)
            if old is None:
                merged[arm_id] = ArmTotals(
                    self.surface,
                    arm_id,
                    np.array(t.sums, dtype=np.float64),
                    np.array(t.latency_hist, dtype=np.int64),
                    t.item_events,
                    t.late_item_events,
                    max(t.windows, 1),
                )
                continue
            if old.sums.shape != t.sums.shape:
                msg = f"window[{arm_id}].sums: bucket layout {t.sums.shape} differs from the totals' {old.sums.shape}"
                raise ValueError(msg)
            merged[arm_id] = ArmTotals(
                self.surface,
                arm_id,
                old.sums + t.sums,
                old.latency_hist + np.asarray(t.latency_hist, dtype=np.int64),
                old.item_events + t.item_events,
                old.late_item_events + t.late_item_events,
                old.windows + max(t.windows, 1),
            )
        self.current = merged


class MemoryApprovals:
    """`agents.loop.ApprovalSource` over a set of experiment ids (`approve` adds one)."""

    def __init__(self) -> None:
        """Nothing approved yet."""
        self.ids: set[str] = set()

    def approve(self, experiment_id: str) -> None:
        """A person approves `experiment_id`."""
        self.ids.add(experiment_id)

    async def approved(self) -> frozenset[str]:
        """The approved ids."""
        return frozenset(self.ids)


__all__ = [
    "DEFAULT_EPOCH_MS",
    "MemoryApprovals",
    "MemoryConfigWriter",
    "MemoryMetrics",
    "MemorySink",
    "MemoryStateStore",
]
