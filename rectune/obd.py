"""Open Bandit Dataset logs as events (`rectune ingest obd`).

Each CSV row is one impression of one item at its position, with the row's
propensity as the logging propensity; a click row also yields a `Click`.  The
user id is a hash of the four hashed user features, so one OBD user is one
randomisation unit.  Item categories come from `item_context.csv` beside the
log when it exists.
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from rectune.errors import RectuneError
from schemas.events import Attribution, Click, Event, Impression, ShownItem, datetime_to_ms

_REQUIRED = ("timestamp", "item_id", "position", "click", "propensity_score")


@dataclass(frozen=True, slots=True)
class ObdSummary:
    """What a log holds, computed from the CSV alone (to check ingestion against)."""

    rows: int
    clicks: int

    @property
    def ctr(self) -> float:
        """On-policy click-through rate of the log."""
        return self.clicks / self.rows if self.rows else float("nan")


def _categories(log_path: Path) -> dict[str, str]:
    context = log_path.parent / "item_context.csv"
    if not context.exists():
        return {}
    with context.open(newline="") as handle:
        return {row["item_id"]: row["item_feature_1"][:16] for row in csv.DictReader(handle)}


def read_obd(path: Path, *, arm: str, surface: str = "obd-men", cohort: str = "all") -> Iterator[Event]:
    """Events of one OBD log, in file order.  Raises `RectuneError` naming the bad row and column."""
    if not path.exists():
        msg = f"{path}: no such file"
        raise RectuneError(msg, hint="pass the path of an Open Bandit Dataset CSV such as random/men.csv")
    categories = _categories(path)
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        missing = [c for c in _REQUIRED if c not in (reader.fieldnames or [])]
        if missing:
            msg = f"{path}: column {missing[0]!r} is required"
            raise RectuneError(msg, hint="an OBD log has timestamp,item_id,position,click,propensity_score")
        user_cols = sorted(c for c in (reader.fieldnames or []) if c.startswith("user_feature_"))
        for line, row in enumerate(reader, start=2):
            try:
                when = dt.datetime.fromisoformat(row["timestamp"])
                if when.tzinfo is None:
                    when = when.replace(tzinfo=dt.UTC)
                t_ms = datetime_to_ms(when)
                item = row["item_id"]
                position = int(row["position"])
                clicked = int(row["click"])
                propensity = float(row["propensity_score"])
            except (ValueError, KeyError) as err:
                msg = f"{path}:{line}: malformed row ({err})"
                raise RectuneError(
                    msg, hint="check the timestamp, position, click and propensity_score columns"
                ) from err
            user = hashlib.sha1("|".join(row[c] for c in user_cols).encode(), usedforsecurity=False).hexdigest()[:20]
            request = f"obd-{arm}-{line}"
            common: Attribution = {
                "schema_version": 1,
                "request_id": request,
                "user_id": user,
                "cohort": cohort,
                "surface": surface,
                "arm_id": arm,
                "config_version": 0,
            }
            shown = ShownItem(
                item_id=f"obd{item}",
                position=position,
                category=categories.get(item, "unknown"),
                scores=(0.0, 0.0, 0.0),
                propensity=propensity,
            )
            yield Impression(event_id=request, event_time_ms=t_ms, items=(shown,), ranker_latency_ms=0.0, **common)
            if clicked:
                yield Click(
                    event_id=f"{request}-click", event_time_ms=t_ms, item_id=f"obd{item}", position=position, **common
                )


def summarise_obd(path: Path) -> ObdSummary:
    """Rows and clicks of a log, straight from the CSV (the ground truth for tests)."""
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    return ObdSummary(len(rows), sum(int(r["click"]) for r in rows))
