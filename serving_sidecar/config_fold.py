"""The fold behind the sidecar's config consumer: what to do with each `rectune.config` record, no I/O.

What lives here: `ConfigFold`, the base of `serving_sidecar.config_consumer.ConfigConsumer`,
which holds the folded `ServingState` and the position in the topic and
decides, record by record, what happens: apply it with
`schemas.config_log.apply` and swap the next `Snapshot` into the holder
(never regressing what is served, breaker-opened arms carried over by
`carried_open_arms`), or refuse it with a `RefusedRecord` and a critical
`config_refused` alert; when the fold restarts from offset 0 (`_reset`) and
whether a record read back is still the one folded; and when a topic head
behind the served version is worth one `stale_config` alert.  Also the
counters' record, `ConsumerStats`.

Who calls it: `ConfigConsumer` (the aiokafka loop, the Redis last-known-good
and the hosting threads) feeds it records and reads its state; the tests call
`apply_record` directly.  It imports no Kafka, Redis or event-loop code: the
holder, the alert sink and the clock are injected, so the fold is the same
whichever way records arrive.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Literal

from schemas.alerts import Alert, AlertKind, Detail
from schemas.config import ConfigError
from schemas.config_log import ConfigChange, Keyring, ServingState, apply, decode_change
from schemas.errors import SignatureError
from schemas.guardrails import Guardrails
from schemas.topics import CONFIG
from serving_sidecar.holder import ConfigHolder, Snapshot

__all__ = ["ConfigFold", "ConsumerStats", "RefusedRecord", "carried_open_arms"]

log = logging.getLogger(__name__)

_MAX_MESSAGE: Final = 4000
_KEEP_REFUSALS: Final = 100


@dataclass(frozen=True, slots=True)
class RefusedRecord:
    """One config-topic record the consumer refused, and why (kept for inspection, newest last)."""

    offset: int
    version: int | None
    author: str | None
    field: str
    rule: str
    error: str


@dataclass(frozen=True, slots=True)
class ConsumerStats:
    """Counters of a config consumer (read from any thread)."""

    records: int
    accepted: int
    refused: int
    applied_version: int
    served_version: int | None
    next_offset: int
    errors: int
    reconnects: int
    resets: int
    lkg_saves: int
    lkg_failures: int
    caught_up: bool


def carried_open_arms(old: Snapshot, new: Snapshot) -> frozenset[str]:
    """Breaker-opened arms of `old` that stay open in `new`.

    An arm stays open while it is the same arm of the same experiment serving
    the same config version; a new experiment, or an arm re-pointed at another
    config, starts closed (the breaker judges it afresh).
    """
    if old.allocation is None or new.allocation is None:
        return frozenset()
    if old.allocation.experiment_id != new.allocation.experiment_id:
        return frozenset()
    return frozenset(
        arm
        for arm in old.open_arms
        if arm in new.arms and arm in old.arms and new.arms[arm].config_version == old.arms[arm].config_version
    )


class ConfigFold:
    """The fold of `rectune.config` records into `holder` (see the module docstring).

    `keyring` verifies signatures; `guardrails` are enforced again on apply;
    `alert_sink` (may be None) receives refusal and staleness alerts and must
    not block; `source_id` names this replica in alerts; `topic` is only named
    in log lines; `clock` stamps alerts.
    """

    def __init__(
        self,
        holder: ConfigHolder,
        keyring: Keyring,
        guardrails: Guardrails | None = None,
        alert_sink: Callable[[Alert], None] | None = None,
        source_id: str = "sidecar",
        *,
        topic: str = CONFIG.name,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.topic = topic
        self.source_id = source_id
        self._holder = holder
        self._keyring = keyring
        self._guardrails = guardrails
        self._alerts = alert_sink
        self._clock = clock
        self._state = ServingState()
        self._next_offset = 0
        self._last_value: bytes | None = None  # value of the record at _next_offset - 1
        self._alert_from_offset = 0
        self._stale_alerted: tuple[int, int] | None = None
        self.caught_up = threading.Event()
        self.refusals: deque[RefusedRecord] = deque(maxlen=_KEEP_REFUSALS)
        self._records = 0
        self._accepted = 0
        self._refused = 0
        self._resets = 0

    # -- observation (any thread) ------------------------------------------------------

    @property
    def state(self) -> ServingState:
        """The folded state (it may trail the served snapshot while catching up after an LKG restore)."""
        return self._state

    @property
    def applied_version(self) -> int:
        """Version of the last accepted change in this consumer's fold."""
        return self._state.version

    # -- the fold (pure apart from the holder and alerts) ------------------------------------

    def _fold_next(self, offset: int, value: bytes | None) -> None:
        """Fold the record at `offset` unless it was folded already, and move the position past it."""
        if offset < self._next_offset:
            return  # already folded (re-delivery after a reconnect or a verification)
        self.apply_record(offset, value)
        self._next_offset = offset + 1
        self._last_value = value

    def apply_record(self, offset: int, value: bytes | None) -> bool:
        """Apply one config-topic record; True if accepted.  Called by the loop, and by tests directly."""
        self._records += 1
        change: ConfigChange | None = None
        try:
            if value is None:
                msg = "$"
                raise ConfigError(msg, "a config record must have a value", hint="see schemas/config_log.py")
            change = decode_change(value)
            new = apply(self._state, change, self._keyring, self._guardrails)
        except (ConfigError, SignatureError) as err:
            self._on_refused(offset, change, err.field, err.rule, err)
            return False
        except Exception as err:  # a hostile record must never stop the fold
            self._on_refused(offset, change, "$", f"could not be applied ({type(err).__name__}: {err})", err)
            return False
        self._state = new
        self._accepted += 1
        self._serve(new)
        return True

    def _serve(self, state: ServingState) -> None:
        fresh = Snapshot.from_state(state)

        def build(current: Snapshot) -> Snapshot:
            if current.version > state.version:
                return current  # catching up behind last-known-good: never regress serving
            return fresh.with_open_arms(carried_open_arms(current, fresh))

        if self._holder.update(build) is None:
            self._holder.swap(fresh)

    def _on_refused(self, offset: int, change: ConfigChange | None, field: str, rule: str, err: BaseException) -> None:
        self._refused += 1
        version = change.version if change is not None else None
        author = change.author if change is not None else None
        self.refusals.append(RefusedRecord(offset, version, author, field, rule, type(err).__name__))
        if offset < self._alert_from_offset:
            # Already alerted by whoever saved the last-known-good we started from.
            log.info("config record at offset %d (version %s) refused again on replay: %s", offset, version, err)
            return
        log.error("config record at offset %d (version %s) refused: %s", offset, version, err)
        details = [
            Detail("version", "" if version is None else str(version)),
            Detail("offset", str(offset)),
            Detail("field", field),
            Detail("rule", rule),
            Detail("error", type(err).__name__),
            Detail("head_version", str(self._state.version)),
        ]
        if author is not None:
            details.append(Detail("author", author))
        what = f"version {version}" if version is not None else f"record at offset {offset}"
        self._alert("config_refused", "critical", f"config change {what} refused: {field}: {rule}", version, details)

    def _alert(
        self,
        kind: AlertKind,
        severity: Literal["warning", "critical"],
        message: str,
        version: int | None,
        details: list[Detail],
    ) -> None:
        if self._alerts is None:
            return
        alert = Alert(
            schema_version=1,
            kind=kind,
            severity=severity,
            source=self.source_id,
            message=message[:_MAX_MESSAGE],
            at_ms=int(self._clock() * 1000),
            config_version=version,
            details=tuple(details),
        )
        try:
            self._alerts(alert)
        except Exception:  # alerting must never stop the fold
            log.exception("could not hand an alert to the alert sink")

    # -- restarting the fold, staleness ----------------------------------------------------

    def _reset(self, why: str) -> None:
        log.warning("config topic %s: %s; folding again from offset 0 (serving is kept)", self.topic, why)
        self._state = ServingState()
        self._next_offset = 0
        self._last_value = None
        self._resets += 1
        self.caught_up.clear()

    def _differs_from_folded(self, offset: int, value: bytes | None) -> bool:
        """True if the record read back at next_offset - 1 is not the one this fold applied last."""
        return bool(offset != self._next_offset - 1 or value != self._last_value)

    def _check_stale(self) -> None:
        served = self._holder.snapshot()
        if served is None or self._state.version >= served.version:
            return
        pair = (self._state.version, served.version)
        if self._stale_alerted == pair:
            return
        self._stale_alerted = pair
        message = (
            f"config topic head is version {self._state.version}, behind the served version {served.version};"
            " keeping the served config"
        )
        log.warning(message)
        details = [Detail("topic_head", str(self._state.version)), Detail("served_version", str(served.version))]
        self._alert("stale_config", "warning", message, served.version, details)
