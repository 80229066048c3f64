"""A simulated apparel retailer: catalogue, users, click model, latency, and two ways to drive it.

Callers:
- the tuning benchmark and the in-process agent loop: `World.simulate` (per-arm
  `ArmTotals` of a stretch of simulated traffic, in well under a second for
  ~10k requests) and the oracle view `World.expected`;
- the full-loop demo: `draw_user` → `candidates` → the real Sidecar ranks →
  `respond` (clicks and conversions) and `latency_ms` (modelled latency).

How the fast path is fast: a *plan* per (config, week) runs the REAL
`serving_sidecar.cascade.rank` once per user prototype (a few hundred; with
exploration, `simulation.exploration_draws` draws each, on seeded generators
shared by every config: common random numbers) and stores each list's
per-slot click probabilities for a user of multiplier 1, conversion
probabilities and prices.  A request then costs only vectorised Bernoulli
draws: its user's multiplier scales the click probabilities (capped at 1).
`expected` uses the same plans and sums over users exactly (users are
grouped by prototype, sorted by multiplier, so the cap is handled exactly).
Time is simulated: `at_s`/`start_s` are seconds since the world's week 0.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Final

import msgspec
import numpy as np
from numpy.typing import NDArray

from schemas.config import ASSIGNMENT_BUCKETS, Allocation, CascadeConfig
from schemas.events import ShownItem
from schemas.metrics import (
    BUCKET_FIELDS,
    DEFAULT_BUCKETS,
    FIELD_INDEX,
    N_FIELDS,
    N_LATENCY_BINS,
    ArmTotals,
    latency_bins,
    user_bucket,
)
from serving_sidecar.assignment import assignment_bucket, treatment_range
from serving_sidecar.candidates import CandidateSet
from serving_sidecar.cascade import RankedList
from simulator import latency as lat
from simulator.catalogue import WEEK_S, Catalogue
from simulator.plans import Plan, Pools, build_plan, rank_pools, truth
from simulator.population import Tastes, build_prototypes, build_users
from simulator.predictions import SIGNAL_NAMES, WeekState, build_week
from simulator.scenario import Scenario, refuse

__all__ = ["SIGNAL_NAMES", "Expected", "Response", "SimUser", "World"]

_HINT: Final = "see simulator/world.py"
_CACHED_POOLS: Final = 16

F64 = NDArray[np.float64]
I64 = NDArray[np.int64]


@dataclass(frozen=True, slots=True)
class SimUser:
    """One simulated user: id, cohort name, and the latent rows behind them (the demo path's handle)."""

    user_id: str
    cohort: str
    index: int
    prototype: int
    multiplier: float
    new_user: bool


@dataclass(frozen=True, slots=True)
class Response:
    """What a user did with a shown list: clicks (item_id, position) and conversions (item_id, revenue)."""

    clicks: tuple[tuple[str, int], ...]
    conversions: tuple[tuple[str, float], ...]


@dataclass(frozen=True, slots=True)
class Expected:
    """ORACLE VIEW: exact expectations per request of the population at one simulated time.

    Never given to agents.  `north_star` is the scenario's north-star ratio
    (ratio of the expected totals).
    """

    clicks: float
    conversions: float
    revenue: float
    impressions: float
    latency_p99_ms: float
    distinct_categories: float
    near_duplicates: float
    fresh: float
    long_tail: float
    north_star: float
    latency_mean_ms: float
    revenue_sq: float


def _arm_of_bucket(allocation: Allocation) -> I64:
    """Arm index (0 = control) of every assignment bucket under `allocation`'s lane rule."""
    arm_of_bucket = np.zeros(ASSIGNMENT_BUCKETS, dtype=np.int64)
    for i in range(1, len(allocation.arms)):
        lo, hi = treatment_range(allocation, i)
        arm_of_bucket[lo:hi] = i
    return arm_of_bucket


class World:
    """A simulated apparel retailer for one `Scenario` and seed (deterministic in both)."""

    def __init__(self, scenario: Scenario, seed: int = 0) -> None:
        self.scenario = scenario
        self.seed = seed
        self.catalogue = Catalogue(
            scenario.catalogue,
            seed,
            season_start_week=scenario.drift.season_start_week,
            seasonality=scenario.drift.seasonality,
            popularity_noise=scenario.noise.popularity_signal,
        )
        self.prototypes = build_prototypes(scenario, self.catalogue.universe, seed)
        self.users = build_users(scenario, self.prototypes, seed)
        self.tastes = Tastes(scenario, self.prototypes, seed)
        self._week: Callable[[int], WeekState] = lru_cache(maxsize=2)(self._make_week)
        self._plans: OrderedDict[tuple[bytes, int], Plan] = OrderedDict()
        self._pool_cache: OrderedDict[tuple[bytes, int], Pools] = OrderedDict()
        self._salt_buckets: OrderedDict[str, I64] = OrderedDict()
        self._metric_buckets: dict[int, I64] = {}
        self._user_sums = self._user_tables()
        self._nominal_candidates: int | None = None
        self._request_cdf = np.cumsum(self.users.request_p)

    # -- time -------------------------------------------------------------------

    @staticmethod
    def week_of(at_s: float) -> int:
        """The simulated week index of time `at_s` (seconds since week 0; must be >= 0 and finite)."""
        if not math.isfinite(at_s) or at_s < 0:
            msg = f"must be a finite time >= 0 s (seconds since the world's week 0), got {at_s!r}"
            refuse("at_s", msg, hint=_HINT)
        return int(at_s // WEEK_S)

    # -- per-week state and plans ------------------------------------------------------

    def _make_week(self, week: int) -> WeekState:
        return build_week(self.scenario, self.catalogue, self.prototypes, self.tastes, self.seed, week)

    def _pools(self, config: CascadeConfig, week: int) -> Pools:
        key = (msgspec.json.encode((config.pre_rank, config.rank)), week)
        pools = self._pool_cache.get(key)
        if pools is not None:
            self._pool_cache.move_to_end(key)
            return pools
        pools = rank_pools(self._week(week), config)
        self._pool_cache[key] = pools
        while len(self._pool_cache) > _CACHED_POOLS:
            self._pool_cache.popitem(last=False)
        return pools

    def _plan(self, config: CascadeConfig, week: int) -> Plan:
        """The plan of `config` in `week`, cached (LRU of `simulation.cached_plans`)."""
        key = (msgspec.json.encode(config), week)
        plan = self._plans.get(key)
        if plan is not None:
            self._plans.move_to_end(key)
            return plan
        plan = build_plan(
            self.scenario,
            self.prototypes,
            self._week(week),
            self._pools(config, week),
            config,
            seed=self.seed,
            week_index=week,
        )
        self._plans[key] = plan
        while len(self._plans) > self.scenario.simulation.cached_plans:
            self._plans.popitem(last=False)
        return plan

    def _user_tables(self) -> tuple[list[F64], list[F64], list[F64], F64]:
        """Per prototype: multipliers sorted, suffix sums of request probability, prefix sums of p·m."""
        users = self.users
        sorted_m: list[F64] = []
        tail_p: list[F64] = []
        head_pm: list[F64] = []
        mass = np.zeros(len(self.prototypes))
        for p in range(len(self.prototypes)):
            members = np.flatnonzero(users.prototype == p)
            m = users.multiplier[members]
            order = np.argsort(m, kind="stable")
            m, w = m[order], users.request_p[members][order]
            sorted_m.append(m)
            tail_p.append(np.concatenate([np.cumsum(w[::-1])[::-1], [0.0]]))
            head_pm.append(np.concatenate([[0.0], np.cumsum(w * m)]))
            mass[p] = w.sum()
        return sorted_m, tail_p, head_pm, mass

    def _population_click(self, click_p: F64) -> F64:
        """Σ over users u of prototype p of request_p(u)·min(1, m_u·q), for q = click_p[p, ...]."""
        sorted_m, tail_p, head_pm, _ = self._user_sums
        out = np.zeros_like(click_p)
        for p in range(click_p.shape[0]):
            q = click_p[p]
            with np.errstate(divide="ignore"):
                cut = np.searchsorted(sorted_m[p], np.where(q > 0, 1.0 / q, np.inf), side="left")
            out[p] = q * head_pm[p][cut] + tail_p[p][cut]
        return out

    def _buckets_for_salt(self, salt: str) -> I64:
        cached = self._salt_buckets.get(salt)
        if cached is None:
            cached = np.array([assignment_bucket(salt, u) for u in self.users.user_ids], dtype=np.int64)
            self._salt_buckets[salt] = cached
            while len(self._salt_buckets) > 4:
                self._salt_buckets.popitem(last=False)
        return cached

    def _draw_users(self, rng: np.random.Generator, n: int) -> I64:
        """`n` user indices drawn by request probability (heavy users come back often)."""
        out: I64 = np.minimum(np.searchsorted(self._request_cdf, rng.random(n), side="right"), len(self.users) - 1)
        return out

    def arm_indices(self, allocation: Allocation) -> I64:
        """Index into `allocation.arms` of every user's arm, by the sidecar's lane rule (0 = control).

        Same answer as `serving_sidecar.assignment.arm_index_for_bucket(allocation,
        assignment_bucket(salt, user_id))` (what `Router.assign` serves), vectorised over users.
        A per-request allocation has no arm per user: see `request_arms`.
        """
        out: I64 = _arm_of_bucket(allocation)[self._buckets_for_salt(allocation.salt)]
        return out

    @staticmethod
    def request_arms(allocation: Allocation, rng: np.random.Generator, n: int) -> I64:
        """Arms of `n` requests under a per-request allocation (`Allocation.unit` "request").

        The sidecar hashes each request's own id; ids are unique, so each
        request's bucket is uniform and independent of its user: drawn here.
        """
        out: I64 = _arm_of_bucket(allocation)[rng.integers(ASSIGNMENT_BUCKETS, size=n)]
        return out

    def _metric_bucket(self, buckets: int) -> I64:
        cached = self._metric_buckets.get(buckets)
        if cached is None:
            cached = np.array([user_bucket(u, buckets) for u in self.users.user_ids], dtype=np.int64)
            self._metric_buckets[buckets] = cached
        return cached

    # -- the fast path ----------------------------------------------------------------

    def simulate(
        self,
        allocation: Allocation,
        configs: Mapping[int, CascadeConfig],
        *,
        start_s: float,
        duration_s: float,
        rng: np.random.Generator,
        surface: str = "home",
        buckets: int = DEFAULT_BUCKETS,
        window_s: float = 60.0,
    ) -> dict[str, ArmTotals]:
        """Per-arm totals of the requests arriving in [start_s, start_s + duration_s) of simulated time.

        Callers: the tuning benchmark and the in-process agent loop.  Requests
        ~ Poisson(requests_per_s · duration_s), users drawn by activity, each
        routed by the sidecar's lane rule for `allocation` (per user, or per
        request when its unit is "request"; `configs` maps
        config_version -> config), outcomes from the click model; sums in the
        `BUCKET_FIELDS` layout per metric bucket (`crc32(user) mod buckets`),
        latency from the latency model.  `windows` counts the `window_s`
        windows the arm's requests fall in.  Arms without traffic are absent.
        """
        self.week_of(start_s)
        if not math.isfinite(duration_s) or duration_s <= 0:
            refuse("duration_s", f"must be a finite number > 0, got {duration_s!r}", hint=_HINT)
        if buckets < 1:
            refuse("buckets", f"must be >= 1, got {buckets}", hint=_HINT)
        resolved: dict[int, CascadeConfig] = {}
        for i, arm in enumerate(allocation.arms):
            config = configs.get(arm.config_version)
            if config is None:
                rule = f"has no config for config_version {arm.config_version} of allocation.arms[{i}]"
                refuse("configs", rule, hint="pass every arm's config_version")
            resolved[i] = config.for_surface(surface)
        n = int(rng.poisson(self.scenario.requests_per_s * duration_s))
        t = np.sort(start_s + rng.random(n) * duration_s)
        users = self._draw_users(rng, n)
        if allocation.unit == "request":
            arms = self.request_arms(allocation, rng, n)
        else:
            arms = self.arm_indices(allocation)[users]
        weeks = (t // WEEK_S).astype(np.int64)
        metric_bucket = self._metric_bucket(buckets)
        out: dict[str, ArmTotals] = {}
        for i, arm in enumerate(allocation.arms):
            mine = np.flatnonzero(arms == i)
            if mine.size == 0:
                continue
            sums = np.zeros((N_FIELDS, buckets))
            hist = np.zeros(N_LATENCY_BINS, dtype=np.int64)
            events = 0
            for week in np.unique(weeks[mine]).tolist():
                rows = mine[weeks[mine] == week]
                plan = self._plan(resolved[i], int(week))
                events += self._draw(plan, users[rows], metric_bucket, sums, hist, rng)
            windows = int(np.unique((t[mine] // window_s).astype(np.int64)).size)
            out[arm.arm_id] = ArmTotals(surface, arm.arm_id, sums, hist, events, 0, windows)
        return out

    def _draw(self, plan: Plan, users: I64, metric_bucket: I64, sums: F64, hist: I64, rng: np.random.Generator) -> int:
        """Draw outcomes of `users`' requests under `plan`, add them to `sums`/`hist`; returns item events."""
        n = users.size
        protos = self.users.prototype[users]
        draw = rng.integers(plan.rows.shape[1], size=n)
        q = np.minimum(plan.click_p[protos, draw] * self.users.multiplier[users][:, None], 1.0)
        clicks = rng.random(q.shape) < q
        conv = clicks & (rng.random(q.shape) < plan.conversion_p[protos, draw])
        price = plan.price[protos, draw]
        stats = plan.stats[protos, draw]
        latency = lat.sample_ms(self.scenario.latency, plan.latency_median_ms, rng, n)
        per_request = {
            "requests": np.ones(n),
            "impressions": stats[:, 0],
            "clicks": clicks.sum(axis=1).astype(np.float64),
            "conversions": conv.sum(axis=1).astype(np.float64),
            "revenue": np.where(conv, price, 0.0).sum(axis=1),
            "revenue_sq": np.where(conv, price * price, 0.0).sum(axis=1),
            "latency_ms": latency,
            "latency_ms_sq": latency * latency,
            "distinct_categories": stats[:, 1],
            "near_duplicates": stats[:, 2],
            "long_tail": stats[:, 4],
            "fresh": stats[:, 3],
        }
        b = metric_bucket[users]
        width = sums.shape[1]
        for name in BUCKET_FIELDS:
            sums[FIELD_INDEX[name]] += np.bincount(b, weights=per_request[name], minlength=width)
        hist += np.bincount(latency_bins(latency), minlength=N_LATENCY_BINS)
        return int(stats[:, 0].sum() + clicks.sum() + conv.sum())

    # -- the oracle view ----------------------------------------------------------------

    def expected(self, config: CascadeConfig, *, at_s: float, surface: str = "home") -> Expected:
        """ORACLE VIEW (never given to agents): exact per-request expectations of the population at `at_s`.

        Callers: `simulator.oracle`, the tuning benchmark's scoring.  Exact
        over users (their multipliers and activity) and prototypes; averaged
        over the fixed exploration draws when `exploration_rate > 0`.
        Deterministic for (world seed, config, week of `at_s`).
        """
        week = self.week_of(at_s)
        resolved = config.for_surface(surface)
        plan = self._plan(resolved, week)
        mass = self._user_sums[3]
        draws = plan.rows.shape[1]
        clicks = self._population_click(plan.click_p) / draws  # (P, R, L) request-weighted
        conversions = clicks * plan.conversion_p
        totals: dict[str, float] = {
            "requests": 1.0,
            "clicks": float(clicks.sum()),
            "conversions": float(conversions.sum()),
            "revenue": float((conversions * plan.price).sum()),
            "revenue_sq": float((conversions * plan.price**2).sum()),
        }
        stats = np.einsum("p,prk->k", mass, plan.stats) / draws
        for k, name in enumerate(("impressions", "distinct_categories", "near_duplicates", "fresh", "long_tail")):
            totals[name] = float(stats[k])
        spec = self.scenario.latency
        mean = lat.mean_ms(spec, resolved, plan.n_candidates)
        totals["latency_ms"] = mean
        totals["latency_ms_sq"] = mean * mean * float(np.exp(spec.jitter_sigma**2))
        num, den = self.scenario.north_star
        return Expected(
            clicks=totals["clicks"],
            conversions=totals["conversions"],
            revenue=totals["revenue"],
            impressions=totals["impressions"],
            latency_p99_ms=lat.p99_ms(spec, resolved, plan.n_candidates),
            distinct_categories=totals["distinct_categories"],
            near_duplicates=totals["near_duplicates"],
            fresh=totals["fresh"],
            long_tail=totals["long_tail"],
            north_star=totals[num] / totals[den] if totals[den] else float("nan"),
            latency_mean_ms=mean,
            revenue_sq=totals["revenue_sq"],
        )

    # -- the demo path --------------------------------------------------------------------

    def draw_user(self, rng: np.random.Generator) -> SimUser:
        """A user drawn by activity (heavy users come back often); for the demo's request loop."""
        return self.user(int(self._draw_users(rng, 1)[0]))

    def user(self, index: int) -> SimUser:
        """The user at `index` (0 <= index < population.users)."""
        users = self.users
        p = int(users.prototype[index])
        cohort = self.scenario.cohorts[int(self.prototypes.cohort[p])]
        return SimUser(
            user_id=users.user_ids[index],
            cohort=cohort.name,
            index=index,
            prototype=p,
            multiplier=float(users.multiplier[index]),
            new_user=cohort.new_users,
        )

    def candidates(self, user: SimUser, *, at_s: float) -> CandidateSet:
        """The live catalogue at `at_s` with the ranker's (noisy) predictions for `user`."""
        return self._week(self.week_of(at_s)).candidates[user.prototype]

    def respond(
        self,
        user: SimUser,
        shown: Sequence[ShownItem] | RankedList,
        candidates: CandidateSet,
        *,
        at_s: float,
        rng: np.random.Generator,
    ) -> Response:
        """Draw what `user` does with the list `shown` (ranked from `candidates`) at `at_s`.

        Positions are the list order.  Items must be on sale at `at_s`.
        """
        state = self._week(self.week_of(at_s))
        row_of = state.live.row_of
        ids: list[str] = (
            [str(i) for i in candidates.item_ids[shown.indices].tolist()]
            if isinstance(shown, RankedList)
            else [item.item_id for item in shown]
        )
        try:
            rows = np.array([row_of[i] for i in ids], dtype=np.int64)
        except KeyError as err:
            rule = f"item {err.args[0]!r} is not on sale in week {state.live.week}"
            refuse("shown", rule, hint="rank the candidates of the same week", cause=err)
        if rows.size == 0:
            return Response((), ())
        protos = np.array([user.prototype], dtype=np.int64)
        click, conv, price = truth(
            self.scenario, self.prototypes, state, protos, rows[None, :], np.ones((1, rows.size), dtype=np.bool_)
        )
        q = np.minimum(click[0] * user.multiplier, 1.0)
        clicked = rng.random(rows.size) < q
        bought = clicked & (rng.random(rows.size) < conv[0])
        return Response(
            clicks=tuple((ids[k], k) for k in np.flatnonzero(clicked).tolist()),
            conversions=tuple((ids[k], round(float(price[0, k]), 2)) for k in np.flatnonzero(bought).tolist()),
        )

    def latency_ms(self, config: CascadeConfig, rng: np.random.Generator) -> float:
        """One modelled ranker latency for `config` (the fast path's model; the demo may report it)."""
        spec = self.scenario.latency
        return float(lat.sample_ms(spec, lat.median_ms(spec, config, self.nominal_candidates), rng, 1)[0])

    @property
    def nominal_candidates(self) -> int:
        """Size of week 0's live catalogue: the candidate count `latency_ms` assumes (computed once)."""
        if self._nominal_candidates is None:
            self._nominal_candidates = len(self.catalogue.live(0))
        return self._nominal_candidates
