"""Exploration replay: what each registered candidate would have shown on a sampled control request.

The Critic's off-policy harm check (issue: "an off-policy estimate of harm
from logged propensities where exploration logs exist") needs, per logged
slot, the candidate's probability of the logged item.  Only the sidecar holds
the request's candidate set, so it computes them here, with the very cascade
it serves (`serving_sidecar.cascade`, replay mode), and publishes
`schemas.replay.ReplayRecord`s to `rectune.replay` for the agents.

- `target_probabilities` (pure): the candidate's pre-rank and rank on the
  same candidate set, then its re-rank forced through the logged items: per
  slot, the probability of the logged item given the logged earlier slots.
  An item outside the candidate's re-rank pool has probability 0.
- `ReplayRecorder` (thread-safe, no I/O): samples requests by a hash of the
  request id, holds each sampled request until its attribution window has
  passed so its clicks are joined to its slots, then hands the record to the
  publish callable.  A full buffer drops the newest sample and counts it
  (publishing a record before its clicks are in would bias the rows).

Support, stated plainly: only items the incumbent's own re-rank pool held can
be logged, so a candidate whose pool differs (pre-rank or rank changes) is
credited nothing for items only its pool holds; the estimate is then biased
toward the incumbent's reach.  The Critic's reliability rule guards the
variance (heavy weights), not this bias.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Final

import numpy as np
from numpy.typing import NDArray

from schemas.config import CascadeConfig
from schemas.events import Click
from schemas.replay import SCHEMA_VERSION, ReplayRecord, ReplaySlot, ReplayTarget
from serving_sidecar.candidates import CandidateSet
from serving_sidecar.cascade import pre_rank, rank_stage, re_rank
from serving_sidecar.errors import SidecarError
from serving_sidecar.tracking import TrackingToken

log = logging.getLogger(__name__)
_NO_DRAWS: Final = np.random.default_rng(0)  # replay mode draws nothing; re_rank only needs a generator
_HASH_SPAN: Final = float(1 << 64)


def target_probabilities(candidates: CandidateSet, config: CascadeConfig, shown_rows: NDArray[np.int64]) -> list[float]:
    """Per shown slot, the probability that `config` puts that candidate row there given the earlier shown rows.

    Called by the sidecar for each pending candidate on a sampled request
    (`config` already resolved for the request's surface).  Slots after the
    first impossible one get 0: the candidate cannot follow the logged list
    past it.
    """
    survivors, _ = pre_rank(candidates, config.pre_rank)
    pool, pool_scores = rank_stage(candidates, survivors, config.rank)
    where = {row: index for index, row in enumerate(pool.tolist())}
    forced = np.array([where.get(row, -1) for row in shown_rows.tolist()], dtype=np.int64)
    replayed = re_rank(candidates, pool, pool_scores, config.re_rank, _NO_DRAWS, forced=forced)
    out = [0.0] * len(forced)
    out[: replayed.propensities.size] = replayed.propensities.tolist()
    return out


@dataclass(frozen=True, slots=True)
class ReplaySettings:
    """How the sidecar samples replays; `build()` makes the `ReplayRecorder`.

    `sample_rate` is the share of control requests replayed (0: off);
    `attribution_s` how long a sampled request waits for its clicks;
    `max_pending` bounds the samples held at once.
    """

    sample_rate: float = 0.0
    attribution_s: float = 30.0
    max_pending: int = 5_000

    def __post_init__(self) -> None:
        checks = (
            ("sample_rate", 0.0 <= self.sample_rate <= 1.0, "must lie in [0, 1]"),
            ("attribution_s", 0.0 <= self.attribution_s < float("inf"), "must be >= 0 and finite"),
            ("max_pending", self.max_pending >= 1, "must be >= 1"),
        )
        for name, ok, rule in checks:
            if not ok:
                msg = f"ReplaySettings.{name}: {rule}, got {getattr(self, name)!r}"
                raise SidecarError(msg, hint="replay sampling is configured on SidecarConfig.replay")

    @property
    def enabled(self) -> bool:
        """Whether any request is sampled."""
        return self.sample_rate > 0.0

    def build(self, publish: Callable[[ReplayRecord], None]) -> ReplayRecorder:
        """The recorder that hands finished records to `publish` (the sidecar's replay sink)."""
        return ReplayRecorder(self, publish)


@dataclass(slots=True)
class _Pending:
    token: TrackingToken
    item_ids: tuple[str, ...]
    propensities: tuple[float, ...]
    targets: tuple[ReplayTarget, ...]
    due_s: float
    clicked: list[bool] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class ReplayStats:
    """What the recorder did: sampled, published and dropped (buffer full) records, clicks joined, replays failed."""

    sampled: int
    published: int
    dropped: int
    clicks_joined: int
    failed: int = 0


class ReplayRecorder:
    """Holds sampled requests until their clicks are in, then publishes them (see the module docstring)."""

    def __init__(self, settings: ReplaySettings, publish: Callable[[ReplayRecord], None]) -> None:
        self.settings = settings
        self._publish = publish
        self._lock = threading.Lock()
        self._pending: dict[str, _Pending] = {}  # insertion order = due order (one attribution window)
        self._sampled = self._published = self._dropped = self._joined = self._failed = 0

    def wants(self, request_id: str) -> bool:
        """Whether this request is sampled: a hash of its id below the rate (the same answer on every replica)."""
        if self.settings.sample_rate <= 0.0:
            return False
        digest = hashlib.blake2b(request_id.encode(), digest_size=8).digest()
        return int.from_bytes(digest, "big") / _HASH_SPAN < self.settings.sample_rate

    def record(
        self,
        token: TrackingToken,
        item_ids: Sequence[str],
        propensities: Sequence[float],
        targets: Sequence[tuple[int, Sequence[float]]],
        now_s: float,
    ) -> None:
        """Hold one sampled request: its shown items, their logged propensities, each candidate's probabilities."""
        pending = _Pending(
            token,
            tuple(item_ids),
            tuple(float(p) for p in propensities),
            tuple(ReplayTarget(config_version=v, probabilities=tuple(probs)) for v, probs in targets),
            now_s + self.settings.attribution_s,
            [False] * len(item_ids),
        )
        with self._lock:
            if len(self._pending) >= self.settings.max_pending:
                self._dropped += 1
                return
            self._pending[token.request_id] = pending
            self._sampled += 1

    def failed(self, reason: str) -> None:
        """Count a sampled request whose replay raised (the request itself was served); log the first reason."""
        with self._lock:
            self._failed += 1
            first = self._failed == 1
        if first:
            log.warning("replay failed (the request was served; counted in stats().failed): %s", reason)

    def click(self, click: Click) -> None:
        """Join a click to its sampled request's slot (other clicks pass through untouched)."""
        with self._lock:
            pending = self._pending.get(click.request_id)
            if pending is None:
                return
            for index, item_id in enumerate(pending.item_ids):
                if item_id == click.item_id:  # an item is shown once per list
                    pending.clicked[index] = True
                    self._joined += 1
                    return

    def flush(self, now_s: float, *, everything: bool = False) -> int:
        """Publish the records whose attribution window has passed (all of them on `everything`); return how many.

        Called once a second by the sidecar's timer, and with `everything` on stop.
        """
        with self._lock:
            due: list[_Pending] = []
            for request_id, pending in list(self._pending.items()):
                if not everything and pending.due_s > now_s:
                    break
                due.append(self._pending.pop(request_id))
        for pending in due:
            self._publish(_record(pending))
        with self._lock:
            self._published += len(due)
        return len(due)

    def stats(self) -> ReplayStats:
        """Counters since start (tests, the sidecar's health line)."""
        with self._lock:
            return ReplayStats(self._sampled, self._published, self._dropped, self._joined, self._failed)


def _record(pending: _Pending) -> ReplayRecord:
    token = pending.token
    slots = tuple(
        ReplaySlot(item_id=item_id, position=index, propensity=propensity, clicked=clicked)
        for index, (item_id, propensity, clicked) in enumerate(
            zip(pending.item_ids, pending.propensities, pending.clicked, strict=True)
        )
    )
    return ReplayRecord(
        schema_version=SCHEMA_VERSION,
        request_id=token.request_id,
        surface=token.surface,
        cohort=token.cohort,
        user_id=token.user_id,
        arm_id=token.arm_id,
        config_version=token.config_version,
        event_time_ms=token.event_time_ms,
        slots=slots,
        targets=pending.targets,
    )
