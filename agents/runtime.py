"""The agents process for one surface: lease, metrics feed, loop ticks, and the Kafka/Redis adapters.

`AgentRuntime(settings).run(stop)`: every `tick_s` it acquires or renews the
surface's Redis lease (`agents.lease`); only while it holds the lease does
it poll the metrics feed and run one `LoopDriver.tick` (`agents.loop`) with
the lease epoch (fencing: in every decision record, and the state store
writes only while the lease is ours).  A standby process keeps trying and
takes over, from the stored state, once the leader's lease expires (at once
when the leader stopped cleanly: it releases the lease).

Adapters here (agents may import only `schemas`, so nothing from `rectune`):

- `KafkaConfigWriter` reads `rectune.config` to its end and folds it as every
  sidecar does (`fold_config_log`: signatures, version chain, rules and the
  sidecar's `Guardrails`); `append` signs the next version, checks it
  locally, appends it, waits for the ack and re-reads the log until its own
  offset to confirm the record was *accepted* at that version.  If another
  writer took the version first, ours is refused by every reader (the log
  never forks) and `ConfigRaceError` is raised: the driver keeps the intent
  and retries on the re-folded head at the next tick.  An append whose
  `action_id` is already on the log (a replay after a crash) is not repeated;
- `KafkaSink` publishes to `rectune.decisions` and `rectune.alerts` and logs
  one terse line per record (`decision_line`);
- `RedisApprovals` / `approve` (in `agents.state_store`): approvals bound to
  one held experiment instance.

The policy (`OnlinePolicy` and the loop's `LoopSettings`) comes from a JSON
file (`load_policy`, `rectune agents --policy PATH`), refused with the field
and the rule when invalid.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

import msgspec
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError
from redis import asyncio as aioredis

from agents.brain import Brain
from agents.experiment import ExperimentError
from agents.lease import Lease
from agents.loop import AgentLoop, AppendConfig, LoopDriver, LoopSettings, PublishRecord
from agents.metrics_feed import MetricsFeed
from agents.offline_brain import offline_brain_for
from agents.online import OnlineAgent, OnlinePolicy
from agents.skillhub import RedisSkillStore
from agents.state_store import RedisApprovals, RedisStateStore
from schemas.alerts import Alert, encode_alert
from schemas.config import ConfigError
from schemas.config_log import ConfigChange, Keyring, ServingState, apply, decode_change, encode_change, sign
from schemas.errors import SchemaError, SignatureError
from schemas.guardrails import Guardrails
from schemas.topics import ALERTS, CONFIG, DECISIONS, METRICS, TopicSpec

log = logging.getLogger(__name__)
AUTHOR: Final = "rectune-agents"
_ACTION: Final = re.compile(r"^\[action ([0-9A-Za-z.:_-]{1,64})\] ")
_READ_TIMEOUT_S: Final = 30.0


# --------------------------------------------------------------------------- policy file


class PolicyError(ValueError):
    """A policy file breaks a rule; the message names the field (`policy.online.stages`) and the rule."""


#: `LoopSettings` fields a policy file may set (the Critic's rules and latency model stay in code).
LOOP_FIELDS: Final = (
    "k",
    "max_changes",
    "cooldown_s",
    "window_s",
    "min_baseline_requests",
    "objective",
    "pre_period_s",
)
#: `OnlinePolicy` fields a policy file may set (`surface` comes from the command line).
ONLINE_FIELDS: Final = tuple(f.name for f in dataclasses.fields(OnlinePolicy) if f.name != "surface")


def _section(doc: Mapping[str, Any], name: str, known: Sequence[str]) -> dict[str, Any]:
    section = doc.get(name, {})
    if not isinstance(section, dict):
        msg = f"policy.{name}: must be a JSON object, got {type(section).__name__}"
        raise PolicyError(msg)
    unknown = sorted(set(section) - set(known))
    if unknown:
        msg = f"policy.{name}.{unknown[0]}: unknown field; known: {', '.join(known)}"
        raise PolicyError(msg)
    return section


def _convert(section: str, values: dict[str, Any], kind: type[Any]) -> Any:
    try:
        return msgspec.convert(values, kind)
    except msgspec.ValidationError as err:
        rule, _, path = str(err).partition(" - at `$")
        msg = f"policy.{section}{path.rstrip('`')}: {rule}"
        raise PolicyError(msg) from err
    except ExperimentError as err:
        msg = f"policy.{section}: {err}"
        raise PolicyError(msg) from err


def parse_policy(data: bytes, surface: str, *, window_s: float = 60.0) -> tuple[OnlinePolicy, LoopSettings]:
    """The Online policy and loop settings of a policy document (JSON `{"online": {...}, "loop": {...}}`).

    Called by `rectune agents --policy PATH` (through `load_policy`) and the
    tests.  Every key is optional (defaults of `OnlinePolicy` and
    `LoopSettings`; the loop's `window_s` defaults to the worker's window);
    an unknown key, a wrong type or a value outside its rule raises
    `PolicyError` naming the field and the rule.
    """
    try:
        doc = msgspec.json.decode(data)
    except msgspec.DecodeError as err:
        msg = f"policy: must be a JSON object ({err})"
        raise PolicyError(msg) from err
    if not isinstance(doc, dict):
        msg = 'policy: must be a JSON object like {"online": {...}, "loop": {...}}'
        raise PolicyError(msg)
    unknown = sorted(set(doc) - {"online", "loop"})
    if unknown:
        msg = f"policy.{unknown[0]}: unknown section; known: online, loop"
        raise PolicyError(msg)
    online = _section(doc, "online", ONLINE_FIELDS)
    loop = _section(doc, "loop", LOOP_FIELDS)
    policy: OnlinePolicy = _convert("online", {**online, "surface": surface}, OnlinePolicy)
    settings: LoopSettings = _convert("loop", {"window_s": window_s, **loop}, LoopSettings)
    rules = (
        ("k", settings.k >= 1, ">= 1"),
        ("max_changes", settings.max_changes >= 1, ">= 1"),
        ("cooldown_s", settings.cooldown_s >= 0.0, ">= 0"),
        ("window_s", settings.window_s > 0.0, "> 0"),
        ("min_baseline_requests", settings.min_baseline_requests >= 0.0, ">= 0"),
        ("pre_period_s", 0.0 <= settings.pre_period_s < policy.horizon_s, "in [0, online.horizon_s)"),
        ("objective", bool(settings.objective), "a metric name"),
    )
    for name, ok, rule in rules:
        if not ok:
            msg = f"policy.loop.{name}: must be {rule}, got {getattr(settings, name)!r}"
            raise PolicyError(msg)
    return policy, settings


def load_policy(path: Path, surface: str, *, window_s: float = 60.0) -> tuple[OnlinePolicy, LoopSettings]:
    """`parse_policy` of a file; a missing or unreadable file is a `PolicyError` naming it."""
    try:
        data = path.read_bytes()
    except OSError as err:
        msg = f"policy: cannot read {path} ({err.strerror or err})"
        raise PolicyError(msg) from err
    try:
        return parse_policy(data, surface, window_s=window_s)
    except PolicyError as err:
        msg = f"{path}: {err}"
        raise PolicyError(msg) from err


# --------------------------------------------------------------------------- settings


@dataclass(frozen=True, slots=True)
class RuntimeSettings:
    """What one agents process needs (the CLI builds it from `rectune.settings`, flags and the policy file)."""

    bootstrap: str
    redis_url: str
    surface: str = "home"
    brain: Literal["offline", "gemini"] = "offline"
    tick_s: float = 5.0
    lease_ttl_ms: int = 15_000
    owner: str = ""
    config_keys: str = ""
    config_key_id: str = ""
    policy: OnlinePolicy | None = None
    loop: LoopSettings = field(default_factory=LoopSettings)
    guardrails: Guardrails = field(default_factory=Guardrails)

    def keyring(self) -> Keyring:
        """The signing keyring (settings, else RECTUNE_CONFIG_KEYS / RECTUNE_CONFIG_KEY_ID)."""
        keys = self.config_keys or os.environ.get("RECTUNE_CONFIG_KEYS", "")
        key_id = self.config_key_id or os.environ.get("RECTUNE_CONFIG_KEY_ID", "")
        return Keyring.parse(keys, key_id)


def make_brain(settings: RuntimeSettings) -> Brain:
    """The configured brain: offline by default; Gemini when chosen and GEMINI_API_KEY is set."""
    if settings.brain == "gemini":
        from agents.gemini_brain import gemini_brain_from_env

        return gemini_brain_from_env()
    return offline_brain_for(settings.policy or OnlinePolicy(surface=settings.surface), settings.loop.rules)


async def ensure_topics(bootstrap: str, specs: list[TopicSpec]) -> None:
    """Create the topics that are missing (another process may win the race)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [s for s in specs if s.name not in existing]
        if missing:
            with contextlib.suppress(TopicAlreadyExistsError):
                await admin.create_topics(
                    [NewTopic(s.name, s.partitions, 1, topic_configs=s.configs()) for s in missing]
                )
    finally:
        await admin.close()


# --------------------------------------------------------------------------- the config log


class ConfigRaceError(SchemaError):
    """Another writer took our version first: our record is on the log but every reader refuses it."""


@dataclass(frozen=True, slots=True)
class ConfigLogView:
    """The config topic folded as the sidecars fold it, plus what the writer needs to append exactly once.

    `actions`: action id → version of the accepted change carrying it;
    `accepted`: offset → version of every accepted record; `authors`:
    version → author of the change accepted there.
    """

    state: ServingState
    actions: Mapping[str, int]
    accepted: Mapping[int, int]
    authors: Mapping[int, str]


def action_id_of(change: ConfigChange) -> str | None:
    """The loop's action id a change carries at the start of its reason (`[action ID] …`), if any."""
    match = _ACTION.match(change.reason)
    return match.group(1) if match else None


def fold_config_log(
    records: Sequence[tuple[int, bytes | None]], keyring: Keyring, guardrails: Guardrails | None
) -> ConfigLogView:
    """Fold (offset, value) records in offset order; refused records change nothing (pure, as the sidecar)."""
    state = ServingState()
    actions: dict[str, int] = {}
    accepted: dict[int, int] = {}
    authors: dict[int, str] = {}
    for offset, value in records:
        if value is None:
            continue
        try:
            change = decode_change(value)
            state = apply(state, change, keyring, guardrails)
        except (ConfigError, SignatureError):
            continue
        accepted[offset] = state.version
        authors[state.version] = change.author
        action = action_id_of(change)
        if action is not None:
            actions.setdefault(action, state.version)
    return ConfigLogView(state, actions, accepted, authors)


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


def decision_line(record: Mapping[str, Any]) -> str:
    """One terse line for a decision record (what `rectune agents` logs to stderr per record)."""
    payload = record.get("payload")
    body = payload if isinstance(payload, dict) else {}
    what = str(body.get("kind") or record.get("kind", "?"))
    reasons = body.get("reasons")
    first = str(reasons[0]) if isinstance(reasons, list) and reasons else ""
    if record.get("kind") == "proposal":
        first = f"{len(body.get('proposals') or [])} proposal(s), {len(body.get('dropped') or [])} dropped"
    elif record.get("kind") == "critique":
        kept = [v.get("proposal_id") for v in body.get("verdicts") or [] if isinstance(v, dict) and v.get("kept")]
        first = f"kept {len(kept)}"
    text = " ".join(first.split())
    return (
        f"{record.get('surface', '?')} epoch={record.get('epoch', '?')} cycle={record.get('cycle', '?')} "
        f"{record.get('kind', '?')}/{what} {record.get('experiment_id', '')}" + (f": {text[:160]}" if text else "")
    )


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


# --------------------------------------------------------------------------- the process


class AgentRuntime:
    """One agents process for one surface (see the module docstring)."""

    def __init__(self, settings: RuntimeSettings, brain: Brain | None = None) -> None:
        """Build nothing that does I/O until `run`."""
        self.settings = settings
        self.brain = brain if brain is not None else make_brain(settings)
        self.lease: Lease | None = None
        self.ticks = 0
        self.last_error = ""

    async def run(self, stop: asyncio.Event) -> None:
        """Run until `stop` is set; releases the lease on the way out (a standby takes over at once)."""
        s = self.settings
        keyring = s.keyring()
        await ensure_topics(s.bootstrap, [CONFIG, DECISIONS, ALERTS, METRICS])
        client = aioredis.from_url(s.redis_url)
        lease = self.lease = Lease(client, s.surface, s.owner, ttl_ms=s.lease_ttl_ms)
        producer = AIOKafkaProducer(bootstrap_servers=s.bootstrap, acks="all")
        feed = MetricsFeed(s.bootstrap, s.surface)
        skills = RedisSkillStore(s.redis_url, client=client)
        policy = s.policy or OnlinePolicy(surface=s.surface)
        store = RedisStateStore(client, lease)
        writer = KafkaConfigWriter(s.bootstrap, producer, keyring, guardrails=s.guardrails)
        driver = LoopDriver(
            AgentLoop(self.brain, OnlineAgent(policy), s.loop),
            config=writer,
            sink=KafkaSink(producer),
            store=store,
            metrics=feed,
            skills=skills,
            approvals=RedisApprovals(client, store),
        )
        await producer.start()
        await feed.start()
        leading = False
        try:
            while not stop.is_set():
                held = await lease.acquire()
                if held != leading:
                    leading = held
                    log.info(
                        "%s %s the lease of %s (epoch %d)",
                        lease.owner,
                        "holds" if held else "lost",
                        s.surface,
                        lease.epoch,
                    )
                if held:
                    await feed.poll(timeout_ms=50)
                    try:
                        await driver.tick(int(time.time() * 1000), lease.epoch)
                        self.ticks += 1
                    except Exception as err:  # one bad tick must not kill the loop: its intent (if any) is kept
                        self.last_error = f"{type(err).__name__}: {err}"
                        log.exception("agents tick failed")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), s.tick_s)
        finally:
            await lease.release()
            await writer.close()
            await feed.stop()
            await producer.stop()
            await client.aclose()
            log.info("agents %s stopped (lease released)", s.surface)


def decode_record(data: bytes) -> dict[str, object]:
    """A `rectune.decisions` agent record as a dict (tests, tools)."""
    out: dict[str, object] = msgspec.json.decode(data)
    return out
