"""Last-known-good config: what a sidecar served last, persisted so a fresh one can serve at once.

The config consumer saves a `LastKnownGood` after every batch of accepted
changes; a starting sidecar loads it *before* it connects to the broker
(`restore`), so it serves the last accepted config immediately, and also when
the broker is down.  The record holds exactly what the snapshot needs: the
version, the control arm and every treatment arm with their configs, the
allocation, and the config-topic offset it was folded to.  Breaker state is
not saved: a fresh sidecar starts with every arm closed.

The record is signed with the config keyring (HMAC-SHA256 over canonical
JSON, like config changes) and re-validated on load (schema, cross-field rules,
guardrails), so whoever can write to Redis still cannot make a sidecar serve
an unsigned or out-of-bounds config.  `RedisLkgStore.save` is a compare-and-set
on the version (a Lua script): a newer LKG is never overwritten by an older
one, whichever replica writes last.  Redis being down is logged and
tolerated: serving never depends on it.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from dataclasses import dataclass
from types import MappingProxyType
from typing import Annotated, Any, Final, Literal, Protocol

import msgspec
import orjson
import redis
from msgspec import Meta
from redis.backoff import NoBackoff
from redis.retry import Retry

from schemas.config import Allocation, CascadeConfig, ConfigError, validate_allocation, validate_config
from schemas.config_log import Keyring
from schemas.errors import SignatureError, refuse
from schemas.events import EventTimeMs, Id
from schemas.guardrails import Guardrails
from serving_sidecar.holder import ArmConfig, ConfigHolder, Snapshot

log = logging.getLogger(__name__)

_HINT: Final = "see serving_sidecar/lkg.py"


class LkgArm(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One arm of the saved snapshot and the config it serves."""

    arm_id: Id
    config_version: Annotated[int, Meta(ge=1)]
    config: CascadeConfig


class LastKnownGood(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, tag_field="type", tag="lkg"):
    """The serving part of a snapshot at config version `version`, signed.

    `next_offset` is the config-topic offset the fold had reached when it was
    saved: refusals of records before it were already alerted by the writer.
    """

    schema_version: Literal[1]
    version: Annotated[int, Meta(ge=1)]
    next_offset: Annotated[int, Meta(ge=0)]
    saved_ms: EventTimeMs
    source: Id
    control: LkgArm
    allocation: Allocation | None = None
    arms: tuple[LkgArm, ...] = ()
    key_id: Id
    signature: str = ""

    def snapshot(self) -> Snapshot:
        """The `Snapshot` this record describes (no breaker-opened arms)."""
        control = ArmConfig(self.control.arm_id, self.control.config_version, self.control.config)
        arms = {control.arm_id: control}
        for arm in self.arms:
            arms[arm.arm_id] = ArmConfig(arm.arm_id, arm.config_version, arm.config)
        return Snapshot(self.version, control, self.allocation, MappingProxyType(arms))


def _canonical(record: LastKnownGood) -> bytes:
    body: dict[str, Any] = msgspec.to_builtins(record)
    body.pop("signature", None)
    return orjson.dumps(body, option=orjson.OPT_SORT_KEYS)


def make_lkg(snapshot: Snapshot, *, next_offset: int, source: str, saved_ms: int, keyring: Keyring) -> LastKnownGood:
    """The signed LKG record of `snapshot` (called by the config consumer after it accepts changes)."""
    treatments = tuple(
        LkgArm(arm.arm_id, arm.config_version, arm.config)
        for arm_id, arm in snapshot.arms.items()
        if arm_id != snapshot.control.arm_id
    )
    control = snapshot.control
    unsigned = LastKnownGood(
        schema_version=1,
        version=snapshot.version,
        next_offset=next_offset,
        saved_ms=saved_ms,
        source=source,
        control=LkgArm(control.arm_id, control.config_version, control.config),
        allocation=snapshot.allocation,
        arms=treatments,
        key_id=keyring.active_key_id,
    )
    mac = hmac.new(keyring.keys[keyring.active_key_id], _canonical(unsigned), hashlib.sha256).hexdigest()
    return msgspec.structs.replace(unsigned, signature=mac)


_encoder: Final = msgspec.json.Encoder()
_decoder: Final = msgspec.json.Decoder(LastKnownGood)


def encode_lkg(record: LastKnownGood) -> bytes:
    """The stored form of an LKG record (JSON)."""
    return _encoder.encode(record)


def decode_lkg(data: bytes, keyring: Keyring, guardrails: Guardrails | None = None) -> LastKnownGood:
    """Parse, verify and re-validate a stored LKG; raises `ConfigError`/`SignatureError` naming the rule."""
    try:
        record = _decoder.decode(data)
    except msgspec.ValidationError as err:
        rule, _, path = str(err).partition(" - at `$")
        refuse(ConfigError, "lkg." + (path.rstrip("`").lstrip(".") or "$"), rule, hint=_HINT, cause=err)
    except (msgspec.DecodeError, RecursionError) as err:
        refuse(ConfigError, "lkg", f"must be a JSON last-known-good record ({err})", hint=_HINT, cause=err)
    key = keyring.keys.get(record.key_id)
    if key is None:
        refuse(SignatureError, "lkg.key_id", f"must name a known signing key, got {record.key_id!r}", hint=_HINT)
    expected = hmac.new(key, _canonical(record), hashlib.sha256).hexdigest()
    if not record.signature or not hmac.compare_digest(expected, record.signature):
        refuse(SignatureError, "lkg.signature", "does not verify for this key and content", hint=_HINT)
    for arm in (record.control, *record.arms):
        validate_config(arm.config)
        if guardrails is not None:
            guardrails.check(arm.config)
    if record.allocation is not None:
        validate_allocation(record.allocation)
        expected_ids = [a.arm_id for a in record.allocation.arms]
        saved_ids = [record.control.arm_id, *(a.arm_id for a in record.arms)]
        if expected_ids != saved_ids:
            refuse(ConfigError, "lkg.arms", f"must match the allocation's arms {expected_ids}", hint=_HINT)
    elif record.arms:
        refuse(ConfigError, "lkg.arms", "must be empty without an allocation", hint=_HINT)
    return record


#: Outcome of `LkgStore.save`: stored, refused because the store holds the same or a newer
#: version (nothing to do), or the store was unavailable (the caller retries later).
SaveResult = Literal["written", "newer_exists", "failed"]


class LkgStore(Protocol):
    """Where the last-known-good record lives (Redis in production, memory in unit tests).

    Implementations never raise for I/O reasons: `load` returns None and
    `save` returns "failed" when the store is unavailable.
    """

    def load(self) -> bytes | None:
        """The stored record, or None (none saved yet, or the store is unreachable)."""
        ...

    def save(self, version: int, data: bytes) -> SaveResult:
        """Store `data` unless a record of the same or a newer `version` is there."""
        ...


@dataclass
class MemoryLkgStore:
    """An in-process `LkgStore` with the same compare-and-set rule (unit tests, single-process demos)."""

    version: int = 0
    data: bytes | None = None

    def load(self) -> bytes | None:
        return self.data

    def save(self, version: int, data: bytes) -> SaveResult:
        if self.data is not None and self.version >= version:
            return "newer_exists"
        self.version, self.data = version, data
        return "written"


# KEYS[1] = hash key; ARGV[1] = version, ARGV[2] = record.  Written only if newer.
_SAVE_IF_NEWER: Final = """
local current = redis.call('HGET', KEYS[1], 'version')
if current and tonumber(current) >= tonumber(ARGV[1]) then
  return 0
end
redis.call('HSET', KEYS[1], 'version', ARGV[1], 'data', ARGV[2])
return 1
"""


class RedisLkgStore:
    """`LkgStore` in a Redis hash `{key_prefix}:lkg` (fields `version`, `data`).

    Sync redis-py client with short timeouts and no retries: the config
    consumer calls `save` from a worker thread (`asyncio.to_thread`), and a
    starting sidecar calls `load` once.  Replicas of one deployment share the
    key; the version compare-and-set keeps the newest record.
    """

    def __init__(self, url: str, key_prefix: str = "rectune:sidecar", *, timeout_s: float = 1.0) -> None:
        self.key = f"{key_prefix}:lkg"
        self._client = redis.Redis.from_url(
            url,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            retry=Retry(NoBackoff(), 0),
        )
        self._save_script = self._client.register_script(_SAVE_IF_NEWER)

    def load(self) -> bytes | None:
        try:
            raw = self._client.hget(self.key, "data")
        except redis.RedisError as err:
            log.warning("LKG load from Redis failed (%s); starting without last-known-good", err)
            return None
        if raw is None:
            return None
        return raw if isinstance(raw, bytes) else str(raw).encode()

    def save(self, version: int, data: bytes) -> SaveResult:
        try:
            written = self._save_script(keys=[self.key], args=[version, data])
        except redis.RedisError as err:
            log.warning("LKG save of version %d to Redis failed (%s); serving continues, will retry", version, err)
            return "failed"
        return "written" if written else "newer_exists"

    def close(self) -> None:
        """Close the connection pool."""
        self._client.close()


def restore(
    holder: ConfigHolder, store: LkgStore, keyring: Keyring, guardrails: Guardrails | None = None
) -> LastKnownGood | None:
    """Load the LKG and put its snapshot in `holder` unless the holder already serves a newer one.

    Called by the config consumer before it connects (so serving starts at
    once, broker or not).  A missing, unreadable or invalid record is logged
    and ignored; returns the record used, or None.
    """
    data = store.load()
    if data is None:
        return None
    try:
        record = decode_lkg(data, keyring, guardrails)
    except (ConfigError, SignatureError) as err:
        log.error("last-known-good record refused (%s); ignoring it", err)
        return None
    current = holder.snapshot()
    if current is None or current.version < record.version:
        holder.swap(record.snapshot())
    return record
