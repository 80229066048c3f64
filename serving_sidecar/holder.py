"""The config holder: one immutable snapshot, swapped atomically.

The ranker's hot path calls `snapshot()` once per request and uses only that
object, so a request can never see half of one config and half of another.
The swap is a single reference assignment (atomic in CPython); readers take no
lock at all, and the one lock here only serialises updaters with each other.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType

from schemas.config import Allocation, CascadeConfig
from schemas.config_log import ServingState
from schemas.replay import MAX_REPLAY_TARGETS


@dataclass(frozen=True, slots=True)
class ArmConfig:
    """What one arm serves: its config version and the config itself."""

    arm_id: str
    config_version: int
    config: CascadeConfig


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Everything a request needs, consistent as of config-topic version `version`.

    `arms` maps every arm of the allocation (control included) to its config;
    `open_arms` are arms the SLO breaker has cut back to control; `pending`
    are the candidates registered since serving last changed and not yet
    given traffic, newest last (what `serving_sidecar.replay` replays).
    """

    version: int
    control: ArmConfig
    allocation: Allocation | None = None
    arms: Mapping[str, ArmConfig] = field(default_factory=lambda: MappingProxyType({}))
    open_arms: frozenset[str] = frozenset()
    pending: tuple[tuple[int, CascadeConfig], ...] = ()

    @classmethod
    def from_state(cls, state: ServingState, open_arms: frozenset[str] = frozenset()) -> Snapshot:
        """Build the snapshot of a folded serving state (state must have a control config)."""
        control_config = state.control
        if control_config is None:
            msg = "state has no control config yet"
            raise ValueError(msg)
        control_arm = state.allocation.arms[0].arm_id if state.allocation else "control"
        control = ArmConfig(control_arm, state.control_version, control_config)
        arms: dict[str, ArmConfig] = {control.arm_id: control}
        if state.allocation is not None:
            for arm in state.allocation.arms[1:]:
                arms[arm.arm_id] = ArmConfig(arm.arm_id, arm.config_version, state.configs[arm.config_version])
        live = frozenset(a for a in open_arms if a in arms)
        return cls(state.version, control, state.allocation, MappingProxyType(arms), live, pending_candidates(state))

    def with_open_arms(self, open_arms: frozenset[str]) -> Snapshot:
        """The same snapshot with a different set of breaker-opened arms."""
        return replace(self, open_arms=frozenset(a for a in open_arms if a in self.arms))


def pending_candidates(state: ServingState, limit: int = MAX_REPLAY_TARGETS) -> tuple[tuple[int, CascadeConfig], ...]:
    """(version, config) of the configs registered after the last change of what is served, at most `limit`, newest.

    Called by `Snapshot.from_state` (on config changes, never per request):
    the agents register a round's candidates, then allocate them, so the
    configs appended since serving last changed are the round waiting for
    traffic.  Walks back over the timeline only as far as that change.
    """
    served = state.timeline.get(state.version)
    if served is None:
        return ()
    found: list[tuple[int, CascadeConfig]] = []
    version = state.version
    while version > 0 and len(found) < limit and state.timeline.get(version) == served:
        config = state.configs.get(version)
        if config is not None and version != state.control_version:
            found.append((version, config))
        version -= 1
    return tuple(reversed(found))


class ConfigHolder:
    """Holds the current `Snapshot`; many readers, occasional writers."""

    def __init__(self, initial: Snapshot | None = None) -> None:
        self._snapshot = initial
        self._write_lock = threading.Lock()
        self._swaps = 0

    def snapshot(self) -> Snapshot | None:
        """The current snapshot (hot path: one attribute read, no lock)."""
        return self._snapshot

    def swap(self, new: Snapshot) -> Snapshot | None:
        """Replace the snapshot; returns the previous one.  Called by the config consumer and the breaker."""
        with self._write_lock:
            old = self._snapshot
            self._snapshot = new
            self._swaps += 1
            return old

    def update(self, change: Callable[[Snapshot], Snapshot]) -> Snapshot | None:
        """Atomically derive a new snapshot from the current one (no lost updates between writers)."""
        with self._write_lock:
            current = self._snapshot
            if current is None:
                return None
            new = change(current)
            self._snapshot = new
            self._swaps += 1
            return new

    @property
    def swaps(self) -> int:
        """How many times the snapshot was replaced."""
        return self._swaps
