"""Reading and appending `rectune.config` (thin aiokafka adapter) plus the pure per-record replay.

Who calls what: `rectune config …` (rectune/config_cli.py) reads the whole
topic with `read_log`, rebuilds every state with `replay`, and writes with
`append_change`; the agents' Online step and the tests use the same calls.

Writing uses optimistic concurrency.  `append_change` reads the head, turns a
draft into the next change (`version = head + 1`, `parent_version = head`),
signs it, checks locally that the sidecars will accept it (signature, chain,
rules, guardrails) so nothing bad is ever appended, appends it to partition 0,
and then re-reads the topic to confirm that *our record* was the one accepted
at that version.  If another writer appended the same version first, ours is
refused by every reader (the chain rule) and `ConfigConflictError` says who
won; history is never rewritten, so the refused record simply stays in the
log, visible in `rectune config history`.

Reading to the end does not trust ListOffsets alone (the embedded broker can
report less than the high watermark): it reads until the position reached
the reported end and a fetch came back empty (as `streams.kafka_io`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

import msgspec
from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError

from rectune.admin import ensure_topics
from rectune.errors import RectuneError
from rectune.kafka_read import read_to_end
from schemas.config import ConfigError
from schemas.config_log import ConfigChange, Keyring, ServingState, apply, decode_change, encode_change, sign
from schemas.errors import SchemaError, SignatureError
from schemas.guardrails import Guardrails
from schemas.topics import CONFIG

_SETTLE_MS: Final = 300


class ConfigLogError(RectuneError):
    """The config topic could not be read or written (broker unreachable, timeout)."""


class ConfigRefusedError(RectuneError):
    """A change was refused locally before appending; names the field and the rule."""

    def __init__(self, message: str, error: SchemaError, *, hint: str = "") -> None:
        super().__init__(message, hint=hint)
        self.error = error


class ConfigConflictError(RectuneError):
    """Another writer appended the same version first; ours is in the log but refused by every reader."""


@dataclass(frozen=True, slots=True)
class LogRecord:
    """One record of the config topic as read (value may be anything: it is untrusted)."""

    offset: int
    timestamp_ms: int
    value: bytes | None


@dataclass(frozen=True, slots=True)
class Entry:
    """What one record did to the fold: the change (if decodable), accepted or why refused, states around it."""

    record: LogRecord
    change: ConfigChange | None
    error: SchemaError | None
    before: ServingState
    after: ServingState

    @property
    def accepted(self) -> bool:
        """True when the record moved the head."""
        return self.error is None


@dataclass(frozen=True, slots=True)
class History:
    """The fold of a whole config topic, record by record (`replay`)."""

    entries: tuple[Entry, ...]

    @property
    def state(self) -> ServingState:
        """The state after every record (the sidecars' state once caught up)."""
        return self.entries[-1].after if self.entries else ServingState()

    def accepted(self) -> list[Entry]:
        """Entries that moved the head, in version order."""
        return [e for e in self.entries if e.accepted]

    def until_version(self, version: int) -> ServingState:
        """The state right after version `version` (the last accepted change at or before it)."""
        state = ServingState()
        for entry in self.accepted():
            if entry.after.version > version:
                break
            state = entry.after
        return state

    def until_ms(self, at_ms: int) -> ServingState:
        """The state at time `at_ms`: stop before the first accepted change created after it."""
        state = ServingState()
        for entry in self.accepted():
            if entry.change is not None and entry.change.created_ms > at_ms:
                break
            state = entry.after
        return state


def replay(records: Sequence[LogRecord], keyring: Keyring, guardrails: Guardrails | None = None) -> History:
    """Fold records in offset order exactly as the sidecar does, keeping every outcome (pure)."""
    state = ServingState()
    entries: list[Entry] = []
    for record in records:
        change: ConfigChange | None = None
        before = state
        try:
            if record.value is None:
                msg = "$"
                raise ConfigError(msg, "a config record must have a value")
            change = decode_change(record.value)
            state = apply(state, change, keyring, guardrails)
        except (ConfigError, SignatureError) as err:
            entries.append(Entry(record, change, err, before, before))
            continue
        entries.append(Entry(record, change, None, before, state))
    return History(tuple(entries))


async def read_log(
    bootstrap: str, topic: str = CONFIG.name, *, min_end: int = 0, timeout_s: float = 30.0
) -> list[LogRecord]:
    """Every record of the topic's partition 0, in offset order (reads on until at least `min_end`)."""
    try:
        return await asyncio.wait_for(_read_log(bootstrap, topic, min_end), timeout_s)
    except TimeoutError as err:
        msg = f"reading {topic} from {bootstrap} did not finish within {timeout_s:g} s"
        raise ConfigLogError(msg, hint="is the broker up? (RECTUNE_BOOTSTRAP)") from err
    except KafkaError as err:
        msg = f"cannot read {topic} from {bootstrap}: {err}"
        raise ConfigLogError(msg, hint="is the broker up? (RECTUNE_BOOTSTRAP)") from err


async def _read_log(bootstrap: str, topic: str, min_end: int) -> list[LogRecord]:
    tp = TopicPartition(topic, 0)
    records = await read_to_end(bootstrap, [tp], settle_ms=_SETTLE_MS, min_ends={tp: min_end})
    return [LogRecord(r.offset, r.timestamp, r.value) for r in records]


async def publish_records(bootstrap: str, values: Sequence[bytes], topic: str = CONFIG.name) -> list[int]:
    """Append raw record values to partition 0 in order; returns their offsets (tools and tests)."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", request_timeout_ms=15_000)
    try:
        await producer.start()
        offsets = []
        for value in values:
            metadata = await producer.send_and_wait(topic, value, partition=0)
            offsets.append(int(metadata.offset))
        return offsets
    except KafkaError as err:
        msg = f"cannot append to {topic} on {bootstrap}: {err}"
        raise ConfigLogError(msg, hint="is the broker up? (RECTUNE_BOOTSTRAP)") from err
    finally:
        await producer.stop()


def draft(
    kind: str,
    *,
    author: str,
    reason: str,
    config: object | None = None,
    activate: bool = False,
    allocation: object | None = None,
    restores_version: int | None = None,
) -> ConfigChange:
    """An unsigned change of `kind`; `prepare` gives it its version, parent, time and signature.

    Decoded through the schema, so a bad author, reason or config is refused
    here with the field named (as `ConfigRefusedError`).
    """
    body = {
        "type": "config_change",
        "schema_version": 1,
        "version": 1,
        "parent_version": 0,
        "author": author,
        "reason": reason,
        "created_ms": 946_684_800_000,
        "kind": kind,
        "config": msgspec.to_builtins(config) if config is not None else None,
        "activate": activate,
        "allocation": msgspec.to_builtins(allocation) if allocation is not None else None,
        "restores_version": restores_version,
        "key_id": "unsigned",
    }
    try:
        return decode_change(msgspec.json.encode(body))
    except ConfigError as err:
        msg = f"config change refused: {err}"
        raise ConfigRefusedError(msg, err, hint="fix the field named above") from err


def prepare(
    head: ServingState, change: ConfigChange, keyring: Keyring, guardrails: Guardrails | None, now_ms: int
) -> ConfigChange:
    """`change` as the next version after `head`, signed, and checked exactly as the sidecars will check it.

    `created_ms` never goes backwards along the accepted history, so
    `replay --until TIMESTAMP` cuts the history at one point.  Raises
    `ConfigRefusedError` naming the field and rule: nothing is appended then.
    """
    ready = sign(
        msgspec.structs.replace(
            change,
            version=head.version + 1,
            parent_version=head.version,
            created_ms=max(now_ms, head.changed_ms),
        ),
        keyring,
    )
    try:
        apply(head, ready, keyring, guardrails)
    except (ConfigError, SignatureError) as err:
        msg = f"config change refused (nothing appended): {err}"
        raise ConfigRefusedError(msg, err, hint="fix the field named above") from err
    return ready


@dataclass(frozen=True, slots=True)
class Appended:
    """A change that was appended and confirmed as accepted at its offset."""

    change: ConfigChange
    offset: int
    history: History


async def confirm(
    bootstrap: str,
    change: ConfigChange,
    offset: int,
    keyring: Keyring,
    guardrails: Guardrails | None = None,
    topic: str = CONFIG.name,
) -> Appended:
    """Re-read the topic and check that our record at `offset` was accepted; else `ConfigConflictError`."""
    history = replay(await read_log(bootstrap, topic, min_end=offset + 1), keyring, guardrails)
    ours = next((e for e in history.entries if e.record.offset == offset), None)
    if ours is None:
        msg = f"our change (version {change.version}) is not at offset {offset} of {topic}"
        raise ConfigLogError(msg, hint="was the topic recreated meanwhile? read `rectune config history`")
    if ours.accepted:
        return Appended(change, offset, history)
    winner = next((e for e in history.accepted() if e.change is not None and e.change.version == change.version), None)
    who = f"{winner.change.author!r} at offset {winner.record.offset}" if winner and winner.change else "another writer"
    msg = (
        f"conflict: version {change.version} was written first by {who}; our change at offset {offset}"
        f" is refused by every reader ({ours.error})"
    )
    raise ConfigConflictError(msg, hint="read `rectune config history`, then retry against the new head")


async def append_change(
    bootstrap: str,
    change: ConfigChange,
    keyring: Keyring,
    guardrails: Guardrails | None = None,
    *,
    topic: str = CONFIG.name,
    now_ms: int | None = None,
) -> Appended:
    """Append `change` as the next version (read head, prepare, append, confirm); see the module docstring."""
    await ensure_topics(bootstrap, [CONFIG] if topic == CONFIG.name else [])
    history = replay(await read_log(bootstrap, topic), keyring, guardrails)
    now = int(time.time() * 1000) if now_ms is None else now_ms
    ready = prepare(history.state, change, keyring, guardrails, now)
    (offset,) = await publish_records(bootstrap, [encode_change(ready)], topic)
    return await confirm(bootstrap, ready, offset, keyring, guardrails, topic)
