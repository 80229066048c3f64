"""Synthetic event traffic with DESIGN.md's realistic mix (pure, seeded).

Used by `make demo`, the pipeline benchmark and the tests: impressions of 12
shown items (item, position, category, style, three stage scores,
propensity), clicks on about 5% and conversions on about 0.5% of shown items.
Users differ in click propensity and make several requests each, so
user-level variance is real.  Event time is passed in, never read from a clock.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from schemas.events import Attribution, Click, Conversion, Event, Impression, ShownItem

CATEGORIES = ("dresses", "tops", "knitwear", "trousers", "jeans", "skirts", "outerwear", "shoes", "bags", "accessories")


@dataclass(frozen=True, slots=True)
class TrafficSpec:
    """Shape of the synthetic traffic."""

    arms: tuple[str, ...] = ("control", "treatment")
    surfaces: tuple[str, ...] = ("home",)
    cohorts: tuple[str, ...] = ("new", "returning")
    users: int = 20_000
    items: int = 5_000
    styles: int = 1_500
    list_size: int = 12
    click_rate: float = 0.05
    conversion_rate: float = 0.1  # of clicks: 0.5% of shown items
    arm_ctr_lift: tuple[float, ...] = (1.0, 1.0)
    latency_ms: float = 18.0
    config_version: int = 1


class TrafficGenerator:
    """Deterministic event source: same seed, same events."""

    def __init__(self, spec: TrafficSpec, seed: int = 0) -> None:
        self.spec = spec
        self._rng = random.Random(seed)  # noqa: S311 - simulation, not security
        rng = self._rng
        # Users differ in their click propensity (heterogeneity a per-impression test ignores).
        self._user_taste = [rng.lognormvariate(0.0, 0.6) for _ in range(spec.users)]
        self._item_cat = [rng.randrange(len(CATEGORIES)) for _ in range(spec.items)]
        self._item_style = [rng.randrange(spec.styles) for _ in range(spec.items)]
        self._seq = 0

    def request(self, event_time_ms: int, user: int | None = None) -> list[Event]:
        """One served list and the clicks and conversions it earns."""
        spec = self.spec
        rng = self._rng
        self._seq += 1
        uid = rng.randrange(spec.users) if user is None else user
        arm_index = uid % len(spec.arms)
        arm = spec.arms[arm_index]
        common: Attribution = {
            "schema_version": 1,
            "request_id": f"r{self._seq}",
            "user_id": f"u{uid}",
            "cohort": spec.cohorts[uid % len(spec.cohorts)],
            "surface": spec.surfaces[uid % len(spec.surfaces)],
            "arm_id": arm,
            "config_version": spec.config_version,
        }
        chosen = rng.sample(range(spec.items), spec.list_size)
        items = tuple(
            ShownItem(
                item_id=f"i{item}",
                position=pos,
                category=CATEGORIES[self._item_cat[item]],
                style_id=f"s{self._item_style[item]}",
                scores=(round(rng.random(), 4), round(rng.random(), 4), round(rng.random(), 4)),
                propensity=0.5,
                fresh=item % 7 == 0,
                long_tail=item > spec.items * 0.8,
            )
            for pos, item in enumerate(chosen)
        )
        latency = round(rng.lognormvariate(0.0, 0.35) * spec.latency_ms, 3)
        events: list[Event] = [
            Impression(
                event_id=f"e{self._seq}", event_time_ms=event_time_ms, items=items, ranker_latency_ms=latency, **common
            )
        ]
        lift = spec.arm_ctr_lift[arm_index] if arm_index < len(spec.arm_ctr_lift) else 1.0
        p_click = min(1.0, spec.click_rate * self._user_taste[uid] * lift)
        for item in items:
            if rng.random() < p_click / (1.0 + 0.1 * item.position):
                events.append(
                    Click(
                        event_id=f"c{self._seq}.{item.position}",
                        event_time_ms=event_time_ms + 1,
                        item_id=item.item_id,
                        position=item.position,
                        **common,
                    )
                )
                if rng.random() < spec.conversion_rate:
                    revenue = round(rng.uniform(20.0, 200.0), 2)
                    events.append(
                        Conversion(
                            event_id=f"v{self._seq}.{item.position}",
                            event_time_ms=event_time_ms + 2,
                            item_id=item.item_id,
                            revenue=revenue,
                            **common,
                        )
                    )
        return events

    def stream(self, start_ms: int, requests: int, requests_per_s: float) -> Iterator[Event]:
        """`requests` lists spread evenly from `start_ms` at `requests_per_s` (event time)."""
        step_ms = 1000.0 / requests_per_s
        for i in range(requests):
            yield from self.request(start_ms + int(i * step_ms))


def pack(events: Sequence[Event], item_events_per_message: int) -> list[list[Event]]:
    """Group events into envelopes of about `item_events_per_message` item-level events."""
    out: list[list[Event]] = []
    current: list[Event] = []
    count = 0
    for event in events:
        current.append(event)
        count += len(event.items) if isinstance(event, Impression) else 1
        if count >= item_events_per_message:
            out.append(current)
            current, count = [], 0
    if current:
        out.append(current)
    return out


@dataclass(frozen=True, slots=True)
class ArmTruth:
    """Exact totals of what was produced for one arm (ground truth for tests and benchmarks)."""

    impressions: int
    clicks: int
    conversions: int
    revenue: float


def truth_by_arm(events: Sequence[Event]) -> dict[str, ArmTruth]:
    """Count produced events per arm exactly: what merged metric windows must add up to."""
    counts: dict[str, list[float]] = {}
    for event in events:
        row = counts.setdefault(event.arm_id, [0, 0, 0, 0.0])
        if isinstance(event, Impression):
            row[0] += len(event.items)
        elif isinstance(event, Click):
            row[1] += 1
        elif isinstance(event, Conversion):
            row[2] += 1
            row[3] += event.revenue
    return {arm: ArmTruth(int(r[0]), int(r[1]), int(r[2]), round(r[3], 4)) for arm, r in counts.items()}
