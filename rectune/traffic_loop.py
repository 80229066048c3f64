"""The core of `rectune traffic`: one request served through the sidecar, and the loop that paces them.

What lives here: `serve_request` (one user's request: the world's
candidates, the arm and its config, the reference cascade, the latency, then
the impression, click and conversion events; a holdout user is ranked with
the holdout's frozen config) and `TrafficLoop` (paces requests at the plan's
rate and serves the ones due).

Who calls it: `rectune.traffic.run_traffic` (the process edge) steps a
`TrafficLoop` on the wall clock; the tests step it by hand.  Time comes in as
arguments (the world's simulated time, and `clock_ms`, injected, for event
times), so nothing here reads the wall clock; the one measurement taken is
how long the holdout's ranking took (`time.perf_counter`), which is the
holdout's latency under `--latency measured`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Generic

import numpy as np

from rectune.traffic_plan import HOLDOUT_ARM, Holdout, Latency, Served, TrafficCounts, TrafficPlan
from rectune.traffic_world import ResponseLike, U, WorldLike
from schemas.events import Impression
from serving_sidecar.cascade import rank
from serving_sidecar.sidecar import Sidecar
from serving_sidecar.tracking import TrackingToken

__all__ = ["TrafficLoop", "serve_request"]


def _emit_response(sidecar: Sidecar, token: TrackingToken, response: ResponseLike, now_ms: int) -> tuple[int, int]:
    for item_id, position in response.clicks:
        sidecar.emit(token.click(str(item_id), int(position), now_ms))
    for item_id, revenue in response.conversions:
        sidecar.emit(token.conversion(str(item_id), float(revenue), now_ms))
    return len(response.clicks), len(response.conversions)


def serve_request(
    world: WorldLike[U],
    sidecar: Sidecar,
    user: U,
    *,
    surface: str,
    at_s: float,
    now_ms: int,
    rng: np.random.Generator,
    holdout: Holdout | None = None,
    latency: Latency = "model",
    request_id: str = "",
) -> Served:
    """Serve one request of `user` through the sidecar and emit its events (called by `TrafficLoop.step`).

    `at_s` is the world's simulated time (catalogue, drift).  A holdout user
    is ranked with the holdout's frozen config by the same reference cascade
    and its events are stamped `arm_id="holdout"` on the holdout surface at
    `now_ms`; everyone else goes through `begin` / `rank` / `finish`, and
    their events carry the time the sidecar stamped in `begin`.
    """
    cands = world.candidates(user, at_s=at_s)
    if holdout is not None and holdout.contains(user.user_id):
        config = holdout.config.for_surface(surface)
        token = TrackingToken.for_arm(
            request_id=request_id or f"holdout-{user.user_id}-{now_ms}",
            user_id=user.user_id,
            cohort=user.cohort,
            surface=holdout.surface,
            arm_id=HOLDOUT_ARM,
            config_version=holdout.config_version,
            event_time_ms=now_ms,
        )
        started = time.perf_counter()
        ranked = rank(cands, config, rng)
        spent_ms = (time.perf_counter() - started) * 1000.0
        items = ranked.to_shown_items(cands)
        latency_ms = world.latency_ms(config, rng) if latency == "model" else spent_ms
        impression: Impression = token.impression(items, ranker_latency_ms=latency_ms)
        sidecar.events.emit(impression)
        response = world.respond(user, ranked, cands, at_s=at_s, rng=rng)
        clicks, conversions = _emit_response(sidecar, token, response, now_ms)
        return Served(
            HOLDOUT_ARM, holdout.config_version, len(items) + clicks + conversions, clicks, conversions, now_ms
        )
    request = sidecar.begin(user.user_id, surface=surface, cohort=user.cohort, request_id=request_id or None)
    ranked = sidecar.rank(request, cands, rng)
    model_ms = world.latency_ms(request.config, rng) if latency == "model" else None
    items = ranked.to_shown_items(cands)
    sidecar.finish(request, items, model_ms)
    response = world.respond(user, ranked, cands, at_s=at_s, rng=rng)
    at_ms = request.token.event_time_ms
    clicks, conversions = _emit_response(sidecar, request.token, response, at_ms)
    return Served(
        request.assignment.arm_id,
        request.assignment.config_version,
        len(items) + clicks + conversions,
        clicks,
        conversions,
        at_ms,
    )


# -- the loop -----------------------------------------------------------------------------


class TrafficLoop(Generic[U]):
    """Paces requests at `plan.requests_per_s` and serves the ones due (the core of `rectune traffic`).

    `step(elapsed_s)` serves every request due by `elapsed_s` wall seconds
    since the start (at most a quarter second's worth per call, so a stall
    catches up gradually) and returns how many it served.  The world's clock
    is `elapsed_s * time_scale`; `clock_ms` stamps holdout events (the
    sidecar stamps the others itself).
    """

    def __init__(
        self,
        plan: TrafficPlan,
        world: WorldLike[U],
        sidecar: Sidecar,
        holdout: Holdout | None,
        clock_ms: Callable[[], int],
    ) -> None:
        """Keep the parts; the random stream is seeded from `plan.seed`."""
        self.plan, self.world, self.sidecar, self.holdout = plan, world, sidecar, holdout
        self.clock_ms = clock_ms
        self.rng = np.random.default_rng(plan.seed)
        self.counts = TrafficCounts()
        self._cap = max(1, int(plan.requests_per_s / 4))
        self._ids = 0

    def due(self, elapsed_s: float) -> int:
        """Requests due by `elapsed_s` and not yet served (capped at a quarter second's worth)."""
        return max(0, min(self._cap, int(elapsed_s * self.plan.requests_per_s) - self.counts.requests))

    def step(self, elapsed_s: float) -> int:
        """Serve the requests due by `elapsed_s`; returns how many."""
        due = self.due(elapsed_s)
        at_s = elapsed_s * self.plan.time_scale
        for _ in range(due):
            user = self.world.draw_user(self.rng)
            self._ids += 1
            served = serve_request(
                self.world,
                self.sidecar,
                user,
                surface=self.plan.surface,
                at_s=at_s,
                now_ms=self.clock_ms(),
                rng=self.rng,
                holdout=self.holdout,
                latency=self.plan.latency,
                request_id=f"{self.plan.source_id}-{self.plan.seed}-{self._ids}",
            )
            self.counts.add(served)
        self.counts.sim_s = at_s
        self.counts.wall_s = elapsed_s
        return due
