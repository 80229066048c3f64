"""The runtime's Kafka adapters of the loop's ports: the config writer and the decisions/alerts sink.

- `KafkaConfigWriter` (`agents.loop.ConfigWriter`) reads `rectune.config` to
  its end and folds it as every sidecar does (`fold_config_log` in
  `agents.runtime_records`: signatures, version chain, rules and the
  sidecar's `Guardrails`); `append` signs the next version, checks it
  locally, appends it, waits for the ack and re-reads the log until its own
  offset to confirm the record was *accepted* at that version.  If another
  writer took the version first, ours is refused by every reader (the log
  never forks) and `ConfigRaceError` is raised: the driver keeps the intent
  and retries on the re-folded head at the next tick.  An append whose
  `action_id` is already on the log (a replay after a crash) is not repeated;
- `KafkaSink` (`agents.loop.DecisionSink`) publishes to `rectune.decisions`
  and `rectune.alerts` and logs one terse line per record (`decision_line`).

Who calls it: `agents.runtime.AgentRuntime.run` builds both over its
producer; the tests use the writer (and subclass it over a list, replacing
`_read` / `_produce`).  Every name is re-exported by `agents.runtime`, whose
logger these adapters keep writing to.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Final

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from agents.loop import AppendConfig, PublishRecord
from agents.runtime_records import ConfigLogView, decision_line, fold_config_log
from schemas.alerts import Alert, encode_alert
from schemas.config_log import ConfigChange, Keyring, ServingState, apply, encode_change, sign
from schemas.errors import SchemaError
from schemas.guardrails import Guardrails
from schemas.topics import ALERTS, CONFIG, DECISIONS

log = logging.getLogger(__name__)
AUTHOR: Final = "rectune-agents"
_READ_TIMEOUT_S: Final = 30.0


# --------------------------------------------------------------------------- the config log


class ConfigRaceError(SchemaError):
    """Another writer took our version first: our record is on the log but every reader refuses it."""


class KafkaConfigWriter:
    """`agents.loop.ConfigWriter` over `rectune.config` (see the module docstring)."""

    def __init__(
        self,
        bootstrap: str,
        producer: AIOKafkaProducer,
        keyring: Keyring,
        *,
        author: str = AUTHOR,
        guardrails: Guardrails | None = None,
        clock_ms: Callable[[], int] | None = None,
    ) -> None:
        """Keep the producer (started by the runtime), the keyring and the sidecars' guardrails."""
        self.bootstrap, self.producer, self.keyring, self.author = bootstrap, producer, keyring, author
        self.guardrails = guardrails if guardrails is not None else Guardrails()
        self.clock_ms = clock_ms or (lambda: int(time.time() * 1000))
        self._consumer: AIOKafkaConsumer | None = None
        self._records: list[tuple[int, bytes | None]] = []

    async def _read(self, min_end: int = 0) -> list[tuple[int, bytes | None]]:
        """Every record of partition 0: until the reported end (and `min_end`) AND an empty fetch.

        One consumer for the process's life: each read fetches only what was
        appended since the last one (the records are kept; the log is small).
        """
        tp = TopicPartition(CONFIG.name, 0)
        if self._consumer is None:
            consumer = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, group_id=None, enable_auto_commit=False)
            await consumer.start()
            consumer.assign([tp])
            await consumer.seek_to_beginning(tp)
            self._consumer = consumer
        consumer = self._consumer
        end = max((await consumer.end_offsets([tp]))[tp], min_end)
        while True:  # tansu's ListOffsets may lag: the reported end alone is not the end
            batch = await consumer.getmany(tp, timeout_ms=200, max_records=10_000)
            records = batch.get(tp, [])
            self._records.extend((r.offset, r.value) for r in records)
            if not records and await consumer.position(tp) >= end:
                return list(self._records)

    async def close(self) -> None:
        """Stop the reading consumer (the runtime calls it on the way out)."""
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None

    async def _produce(self, value: bytes) -> int:
        """Append one record to partition 0 and wait for the ack; returns its offset."""
        metadata = await self.producer.send_and_wait(CONFIG.name, value, partition=0)
        return int(metadata.offset)

    async def view(self, min_end: int = 0) -> ConfigLogView:
        """The folded log (reads on until at least offset `min_end`)."""
        records = await asyncio.wait_for(self._read(min_end), _READ_TIMEOUT_S)
        return fold_config_log(records, self.keyring, self.guardrails)

    async def head(self) -> ServingState:
        """The folded serving state (refused records are skipped, as every sidecar does)."""
        return (await self.view()).state

    async def append(self, action: AppendConfig, epoch: int) -> int:
        """Append `action` as head + 1, confirmed; returns its version (see the module docstring).

        Raises `ConfigError`/`SignatureError` when the sidecars would refuse
        it (nothing is appended) and `ConfigRaceError` when another writer
        took the version between our read and our append.
        """
        before = await self.view()
        if action.action_id and action.action_id in before.actions:
            version = before.actions[action.action_id]
            log.info("config action %s already on the log at version %d: not appended again", action.action_id, version)
            return version
        head = before.state
        marker = f"[action {action.action_id}] " if action.action_id else ""
        change = sign(
            ConfigChange(
                schema_version=1,
                version=head.version + 1,
                parent_version=head.version,
                author=self.author,
                reason=f"{marker}[epoch {epoch}] {action.reason}"[:4000],
                created_ms=max(self.clock_ms(), head.changed_ms),
                kind=action.kind,
                config=action.config,
                activate=action.activate,
                allocation=action.allocation,
                restores_version=action.restores_version,
                key_id=self.keyring.active_key_id,
            ),
            self.keyring,
        )
        apply(head, change, self.keyring, self.guardrails)  # raises before anything is appended
        offset = await self._produce(encode_change(change))
        after = await self.view(min_end=offset + 1)
        if after.accepted.get(offset) == change.version:
            return change.version
        winner = after.authors.get(change.version, "another writer")
        rule = (
            f"{change.version} was taken first by {winner!r}; our record at offset {offset} is refused by every "
            f"reader (the log did not fork; head is now {after.state.version})"
        )
        hint = "the intent is kept: the next tick re-folds the log and appends against the new head"
        field_name = "version"
        raise ConfigRaceError(field_name, rule, hint=hint)


# --------------------------------------------------------------------------- decisions and alerts


class KafkaSink:
    """`agents.loop.DecisionSink` over `rectune.decisions` and `rectune.alerts`."""

    def __init__(self, producer: AIOKafkaProducer) -> None:
        """Keep the producer (started by the runtime)."""
        self.producer = producer

    async def publish(self, record: PublishRecord) -> None:
        """One decision record, keyed by surface (and one log line)."""
        key = str(record.record.get("surface", "")).encode()
        await self.producer.send_and_wait(DECISIONS.name, record.to_json(), key=key)
        log.info("decision %s", decision_line(record.record))

    async def alert(self, alert: Alert) -> None:
        """One alert (and one log line)."""
        await self.producer.send_and_wait(ALERTS.name, encode_alert(alert))
        log.warning("alert %s %s %s: %s", alert.kind, alert.surface, alert.arm_id or "", alert.message[:160])
