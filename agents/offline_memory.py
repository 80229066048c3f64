"""What the offline brain remembers between calls: arm → config, readings, and which proposals ran (pure).

`OfflineBrain` keeps one `BrainMemory`.  It answers three questions the
brain asks on every propose call:

- *which config did an arm serve?* (`config_of`): arms the loop registered
  (`AgentLoop.step` → `OfflineBrain.register_arm`) and the brain's own
  proposal ids, so readings resolve to configs;
- *what did earlier calls read?* (`recall`): the loop sends at most 64
  readings, so an arm whose experiment ended long ago drops out of them, but
  its read still says what its move did;
- *what must not be proposed again?* (`remembered`): every config an arm
  served, and the brain's own proposals made since the last *news*.  News is
  the first reading of an arm not seen before.  A proposal no arm served (the
  Critic refused it, the power gate cut its arm) would come back unchanged
  when asked again without news; after news the reason may have changed (a
  new latency read, more traffic), so a deterministic candidate such as a
  diagnostic one gets another chance.

Every map is bounded by `size` (oldest first out).  No I/O, no clock.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable
from typing import TypeVar

import msgspec

from agents.brain import MetricReading, ProposalContext
from agents.offline_space import _freeze
from schemas.config import CascadeConfig

_K = TypeVar("_K", bound=Hashable)
_V = TypeVar("_V")


def _put(store: OrderedDict[_K, _V], key: _K, value: _V, size: int) -> None:
    store[key] = value
    store.move_to_end(key)
    while len(store) > size:
        store.popitem(last=False)


class BrainMemory:
    """The offline brain's bounded memory (see the module docstring); one per brain, used under its lock."""

    def __init__(self, size: int) -> None:
        """Empty maps, each holding at most `size` entries."""
        if size < 1:
            msg = f"size: must be >= 1, got {size!r}"
            raise ValueError(msg)
        self._size = size
        self._arms: OrderedDict[str, CascadeConfig] = OrderedDict()
        self._served: OrderedDict[bytes, None] = OrderedDict()
        self._unserved: set[bytes] = set()  # own proposals no arm served, made since the last news
        self._read_arms: OrderedDict[str, None] = OrderedDict()
        self._readings: OrderedDict[tuple[str, str, str], MetricReading] = OrderedDict()

    def served(self, arm: str, config: CascadeConfig) -> None:
        """An arm serves `config` (the loop said so): resolve its readings, never propose `config` again."""
        _put(self._arms, arm, config, self._size)
        key = _freeze(config)
        self._unserved.discard(key)
        _put(self._served, key, None, self._size)

    def proposed(self, proposal_id: str, config: CascadeConfig) -> None:
        """The brain proposed `config`: resolve readings of `proposal_id`; no repeat until news."""
        _put(self._arms, proposal_id, config, self._size)
        key = _freeze(config)
        if key not in self._served:
            self._unserved.add(key)

    def config_of(self, arm: str) -> CascadeConfig | None:
        """The config `arm` served or a proposal id stands for, None when unknown."""
        return self._arms.get(arm)

    def remembered(self) -> set[bytes]:
        """Frozen configs not to propose: every served one, and own proposals made since the last news."""
        return set(self._served) | self._unserved

    def recall(self, context: ProposalContext) -> ProposalContext:
        """`context` with the readings of earlier calls it no longer carries prepended (the last reading wins)."""
        for reading in context.metrics:
            _put(self._readings, (reading.arm, reading.name, reading.cohort), reading, self._size)
            if reading.arm not in self._read_arms:  # news: held-back proposals may be proposed again
                self._unserved.clear()
            _put(self._read_arms, reading.arm, None, self._size)
        shown = {(r.arm, r.name, r.cohort) for r in context.metrics}
        older = tuple(r for key, r in self._readings.items() if key not in shown)
        return msgspec.structs.replace(context, metrics=older + context.metrics) if older else context
