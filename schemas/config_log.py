"""The config topic as a signed, versioned log, and serving state as a pure fold over it.

Every `ConfigChange` carries its version and its parent (the head it was
written against), an author and a reason, and an HMAC-SHA256 signature over
canonical JSON with a key id (so keys can rotate).  `apply` checks the
signature, the version chain, the schema, the cross-field rules and the
guardrails, and returns the next `ServingState`; `fold` does that over a whole
history, refusing (and reporting) bad changes without letting them move the
head.  A rollback is a new change that restores an earlier state: history is
never rewritten, so any past state can be rebuilt by folding a prefix.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Annotated, Any, Final, Literal, NoReturn, TypeVar

import msgspec
import orjson
from msgspec import Meta

from schemas.config import Allocation, CascadeConfig, ConfigError, validate_allocation, validate_config
from schemas.errors import SignatureError, refuse
from schemas.events import EventTimeMs, Id
from schemas.guardrails import Guardrails

_HINT: Final = "see schemas/config_log.py"
MIN_KEY_BYTES: Final = 16
V = TypeVar("V")


def _refuse(field: str, rule: str, *, hint: str = _HINT, cause: BaseException | None = None) -> NoReturn:
    refuse(ConfigError, field, rule, hint=hint, cause=cause)


class ConfigChange(
    msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, tag_field="type", tag="config_change"
):
    """One entry of `rectune.config`.

    kind `config`: registers `config` at this version; `activate` makes it the
    control config (a promotion or a manual change).  kind `allocation`: sets
    the experiment allocation (None ends it: everyone gets control).  kind
    `rollback`: restores the control config and allocation of
    `restores_version`.
    """

    schema_version: Literal[1]
    version: Annotated[int, Meta(ge=1)]
    parent_version: Annotated[int, Meta(ge=0)]
    author: Id
    reason: Annotated[str, Meta(max_length=4000)]
    created_ms: EventTimeMs
    kind: Literal["config", "allocation", "rollback"]
    config: CascadeConfig | None = None
    activate: bool = False
    allocation: Allocation | None = None
    restores_version: int | None = None
    key_id: Id
    signature: str = ""


@dataclass(frozen=True, slots=True)
class Keyring:
    """Signing keys by id, and the id new changes are signed with.

    Built from the environment by the composition root (never from code):
    `RECTUNE_CONFIG_KEYS="k1:<hex>,k2:<hex>"`, `RECTUNE_CONFIG_KEY_ID=k2`.
    """

    keys: Mapping[str, bytes]
    active_key_id: str

    @classmethod
    def parse(cls, spec: str, active_key_id: str) -> Keyring:
        """Parse `id:hexsecret,...`; raises `ConfigError` naming the bad entry."""
        keys: dict[str, bytes] = {}
        for i, entry in enumerate(filter(None, (e.strip() for e in spec.split(",")))):
            key_id, sep, secret = entry.partition(":")
            if not sep or not key_id:
                _refuse(f"keys[{i}]", "must be written as id:hexsecret")
            try:
                raw = bytes.fromhex(secret)
            except ValueError as err:
                _refuse(f"keys[{i}]", "secret must be hexadecimal", cause=err)
            if len(raw) < MIN_KEY_BYTES:
                _refuse(f"keys[{i}]", f"secret must be at least {MIN_KEY_BYTES} bytes")
            keys[key_id] = raw
        if active_key_id not in keys:
            _refuse("active_key_id", f"must name one of the keys {sorted(keys)}")
        return cls(MappingProxyType(keys), active_key_id)


#: The environment variables every process that signs or verifies config changes reads its keyring from.
CONFIG_KEYS_ENV: Final = "RECTUNE_CONFIG_KEYS"
CONFIG_KEY_ID_ENV: Final = "RECTUNE_CONFIG_KEY_ID"


def keyring_from_env(keys: str, key_id: str) -> Keyring:
    """The keyring from the values of `RECTUNE_CONFIG_KEYS` and `RECTUNE_CONFIG_KEY_ID`.

    Called by `rectune config`, the `rectune agents` pre-flight and the agents'
    runtime, so all refuse a missing or bad keyring with the same message:
    a `ConfigError` whose field is the variable (and the bad entry, e.g.
    `RECTUNE_CONFIG_KEYS (keys[1])`) and whose rule never quotes a secret.
    """
    hint = f'export {CONFIG_KEYS_ENV}="id:hex,..." (secrets of >= 16 bytes) and {CONFIG_KEY_ID_ENV}=one of those ids'
    if not keys.strip():
        raise ConfigError(
            CONFIG_KEYS_ENV,
            "must hold at least one signing key id:hexsecret, it is unset or empty "
            "(config changes cannot be signed or verified)",
            hint=hint,
        )
    if not key_id.strip():
        rule = f"must name the key of {CONFIG_KEYS_ENV} that signs new changes, it is unset or empty"
        raise ConfigError(CONFIG_KEY_ID_ENV, rule, hint=hint)
    try:
        return Keyring.parse(keys, key_id.strip())
    except ConfigError as err:
        var = CONFIG_KEYS_ENV if err.field.startswith("keys") else CONFIG_KEY_ID_ENV
        field = f"{var} ({err.field})"
        raise ConfigError(field, err.rule, hint=hint) from err


def canonical_bytes(change: ConfigChange) -> bytes:
    """Canonical JSON of a change without its signature: what is signed."""
    body: dict[str, Any] = msgspec.to_builtins(change)
    body.pop("signature", None)
    return orjson.dumps(body, option=orjson.OPT_SORT_KEYS)


def sign(change: ConfigChange, keyring: Keyring) -> ConfigChange:
    """The change signed with the keyring's active key (its `key_id` is set to match)."""
    unsigned = msgspec.structs.replace(change, key_id=keyring.active_key_id, signature="")
    mac = hmac.new(keyring.keys[keyring.active_key_id], canonical_bytes(unsigned), hashlib.sha256).hexdigest()
    return msgspec.structs.replace(unsigned, signature=mac)


def verify(change: ConfigChange, keyring: Keyring) -> None:
    """Raise `SignatureError` unless the change is signed by a known key."""
    key = keyring.keys.get(change.key_id)
    if key is None:
        refuse(
            SignatureError,
            "key_id",
            f"must name a known signing key, got {change.key_id!r}",
            hint="rotate keys by adding the new id before using it",
        )
    if not change.signature:
        refuse(SignatureError, "signature", "is required", hint=_HINT)
    expected = hmac.new(key, canonical_bytes(change), hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected, change.signature):
        refuse(
            SignatureError,
            "signature",
            "does not verify for this key and content",
            hint="the change was altered or signed with another key",
        )


@dataclass(frozen=True, slots=True)
class ServingState:
    """What the sidecar serves, as of config version `version`.

    `timeline[v]` = (control version, allocation) right after version v, so a
    rollback can restore any past state exactly.
    """

    version: int = 0
    control_version: int = 0
    allocation: Allocation | None = None
    configs: Mapping[int, CascadeConfig] = field(default_factory=lambda: MappingProxyType({}))
    timeline: Mapping[int, tuple[int, Allocation | None]] = field(default_factory=lambda: MappingProxyType({}))
    changed_ms: int = 0

    @property
    def control(self) -> CascadeConfig | None:
        """The control config (None before the first activated config)."""
        return self.configs.get(self.control_version)

    def served(self) -> tuple[int, Allocation | None]:
        """(control version, allocation): the part of the state that decides serving."""
        return self.control_version, self.allocation


class VersionView(Mapping[int, V]):
    """A read-only view of an append-only, version-keyed store, up to version `limit`.

    Successive states of a fold share one store, so applying a change costs
    O(1) instead of copying every config and timeline entry (a full replay was
    quadratic in the history's length).  Appending on top of a view that is
    not the store's tip (two changes applied to the same state) copies the
    visible part first, so branches never see each other's entries.
    """

    __slots__ = ("_data", "_limit")

    def __init__(self, data: dict[int, V], limit: int) -> None:
        self._data = data
        self._limit = limit

    def __getitem__(self, key: int) -> V:
        if key > self._limit:
            raise KeyError(key)
        return self._data[key]

    def __iter__(self) -> Iterator[int]:
        return (k for k in self._data if k <= self._limit)

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def __contains__(self, key: object) -> bool:
        return isinstance(key, int) and key <= self._limit and key in self._data

    def extended(self, key: int, value: V | None) -> VersionView[V]:
        """The view up to `key` (> limit) with `value` stored at `key` (None: nothing stored)."""
        data = self._data
        newest = next(reversed(data), None)  # keys are only ever added in increasing order
        if newest is not None and newest > self._limit:
            data = {k: v for k, v in data.items() if k <= self._limit}  # branching: copy what is visible
        if value is not None:
            data[key] = value
        return VersionView(data, key)


def _view(mapping: Mapping[int, V], limit: int) -> VersionView[V]:
    return mapping if isinstance(mapping, VersionView) else VersionView(dict(mapping), limit)


def _next(
    state: ServingState, change: ConfigChange, control: int, allocation: Allocation | None, config: CascadeConfig | None
) -> ServingState:
    configs = _view(state.configs, state.version).extended(change.version, config)
    timeline = _view(state.timeline, state.version).extended(change.version, (control, allocation))
    return ServingState(change.version, control, allocation, configs, timeline, change.created_ms)


def apply(
    state: ServingState, change: ConfigChange, keyring: Keyring, guardrails: Guardrails | None = None
) -> ServingState:
    """The state after `change`, or `ConfigError`/`SignatureError` naming the field and rule.

    Called by the sidecar's config consumer for every record and by the
    `rectune config` tools when they rebuild history.
    """
    verify(change, keyring)
    if change.version != state.version + 1 or change.parent_version != state.version:
        _refuse(
            "version",
            f"must be head + 1 = {state.version + 1} with parent_version {state.version},"
            f" got {change.version} (parent {change.parent_version})",
            hint="re-read the topic and write against its head",
        )
    if change.kind == "config":
        if change.config is None:
            _refuse("config", "is required for kind 'config'")
        config = validate_config(change.config)
        if guardrails is not None:
            guardrails.check(config)
            incumbent = state.control
            if incumbent is not None and config not in state.configs.values():
                guardrails.check_step(config, incumbent)
        if state.control_version == 0 and not change.activate:
            _refuse("activate", "the first config must be activated (there is no control yet)")
        control = change.version if change.activate else state.control_version
        return _next(state, change, control, state.allocation, config)
    if state.control_version == 0:
        _refuse("kind", f"{change.kind!r} needs an active control config first")
    if change.kind == "allocation":
        allocation = change.allocation
        if allocation is not None:
            validate_allocation(allocation)
            if allocation.arms[0].config_version != state.control_version:
                _refuse(
                    "allocation.arms[0].config_version",
                    f"the control arm must serve the control config (version {state.control_version})",
                    hint=_HINT,
                )
            for i, arm in enumerate(allocation.arms):
                if arm.config_version not in state.configs:
                    _refuse(
                        f"allocation.arms[{i}].config_version",
                        f"must be a registered config version, got {arm.config_version}",
                        hint=_HINT,
                    )
        return _next(state, change, state.control_version, allocation, None)
    target = change.restores_version
    if target is None or target not in state.timeline:
        _refuse("restores_version", f"must be an earlier version in the history (1..{state.version})", hint=_HINT)
    control, allocation = state.timeline[target]
    return _next(state, change, control, allocation, None)


@dataclass(frozen=True, slots=True)
class Refusal:
    """A change the fold refused, and why."""

    change: ConfigChange
    error: ConfigError | SignatureError


@dataclass(frozen=True, slots=True)
class FoldResult:
    """A fold's final state and the changes it refused."""

    state: ServingState
    refused: tuple[Refusal, ...]


def fold(
    changes: Iterable[ConfigChange],
    keyring: Keyring,
    guardrails: Guardrails | None = None,
    *,
    until_version: int | None = None,
    until_ms: int | None = None,
) -> FoldResult:
    """Serving state after applying `changes` in order (refused ones are skipped and reported).

    `until_version` / `until_ms` stop before the first accepted change past
    that point: `rectune config replay --until`.
    """
    state = ServingState()
    refused: list[Refusal] = []
    for change in changes:
        try:
            candidate = apply(state, change, keyring, guardrails)
        except (ConfigError, SignatureError) as err:
            refused.append(Refusal(change, err))
            continue
        # Judge the point on accepted changes only: a refused change may carry any version or time.
        if (until_version is not None and candidate.version > until_version) or (
            until_ms is not None and change.created_ms > until_ms
        ):
            break
        state = candidate
    return FoldResult(state, tuple(refused))


_change_decoder: Final = msgspec.json.Decoder(ConfigChange)
_encoder: Final = msgspec.json.Encoder()


def decode_change(data: bytes) -> ConfigChange:
    """Parse a config-topic record; raises `ConfigError` naming the field and rule."""
    try:
        return _change_decoder.decode(data)
    except msgspec.ValidationError as err:
        rule, _, path = str(err).partition(" - at `$")
        _refuse(path.rstrip("`").lstrip(".") or "$", rule, cause=err)
    except (msgspec.DecodeError, RecursionError) as err:
        _refuse("$", f"must be a JSON config change ({err})", cause=err)


def encode_change(change: ConfigChange) -> bytes:
    """A change as a config-topic record value."""
    return _encoder.encode(change)


def diff(before: Any, after: Any, path: str = "") -> list[str]:
    """Human-readable leaf differences between two configs/allocations (for `history`)."""
    a = msgspec.to_builtins(before) if isinstance(before, msgspec.Struct) else before
    b = msgspec.to_builtins(after) if isinstance(after, msgspec.Struct) else after
    if isinstance(a, dict) and isinstance(b, dict):
        out: list[str] = []
        for key in sorted(set(a) | set(b)):
            out += diff(a.get(key), b.get(key), f"{path}.{key}" if path else str(key))
        return out
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [line for i, (x, y) in enumerate(zip(a, b, strict=True)) for line in diff(x, y, f"{path}[{i}]")]
    return [] if a == b else [f"{path or '$'}: {a!r} -> {b!r}"]
