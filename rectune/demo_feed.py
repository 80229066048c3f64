"""What the demo reads during a run: metrics, decisions, alerts and config changes, captured for view and report.

`Capture.take(topic, value, now_s)` is pure bookkeeping (unit-testable): a
metric partial goes into the `WindowBook` (the live window lines and the
summary) and the partial store (the report); an agent record, an alert or
a config change is kept and turned into a one-liner for the terminal.  The
config log is folded with the run's keyring exactly as the sidecars fold
it, so a refused change is shown as refused and never counted.
`read_topics` is the thin aiokafka loop that feeds it; undecodable records
are listed in `Capture.bad` instead of stopping the demo.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping
from typing import Any, Final

import msgspec
from aiokafka import AIOKafkaConsumer, TopicPartition

from rectune.demo_view import ArmLabels, describe_alert, describe_change, describe_record
from rectune.progress import WindowBook
from rectune.report import ConfigPoint
from schemas.alerts import Alert, decode_alert
from schemas.config import ConfigError
from schemas.config_log import Keyring, ServingState, apply, decode_change
from schemas.errors import SignatureError
from schemas.metrics import MetricWindow
from schemas.topics import ALERTS, CONFIG, DECISIONS, METRICS

TOPICS: Final = (METRICS, DECISIONS, ALERTS, CONFIG)
_metric_decoder: Final = msgspec.json.Decoder(MetricWindow)


class Capture:
    """Everything read during the run, plus the one-liners still to print (`drain_lines`)."""

    def __init__(self, book: WindowBook, keyring: Keyring, labels: ArmLabels, *, started_ms: int) -> None:
        """Empty capture; `started_ms` anchors the `M:SS` offsets of the printed lines."""
        self.book, self.keyring, self.labels, self.started_ms = book, keyring, labels, started_ms
        self.partials: dict[str, MetricWindow] = {}
        self.decisions: list[dict[str, Any]] = []
        self.alerts: list[Alert] = []
        self.config: list[ConfigPoint] = []
        self.refused_changes: list[str] = []
        self.state = ServingState()
        self.bad: list[str] = []
        self.recent: deque[str] = deque(maxlen=6)
        self._lines: list[str] = []
        self._seen_records: set[str] = set()

    def _offset(self, at_ms: int) -> str:
        seconds = max(0, (at_ms - self.started_ms) // 1000)
        return f"{seconds // 60}:{seconds % 60:02d}"

    def _line(self, at_ms: int, text: str, *, recent: bool = True) -> None:
        line = f"{self._offset(at_ms)}  {text}"
        self._lines.append(line)
        if recent:
            self.recent.append(line)

    def take(self, topic: str, value: bytes | None, now_s: float, where: str = "") -> None:
        """One record of one of the four topics (`where` = topic[partition]@offset, for the bad list)."""
        if value is None:
            return
        try:
            if topic == METRICS.name:
                window = _metric_decoder.decode(value)
                self.partials[window.partial_id] = window
                self.book.add(window, now_s)
            elif topic == DECISIONS.name:
                self._decision(msgspec.json.decode(value))
            elif topic == ALERTS.name:
                alert = decode_alert(value)
                self.alerts.append(alert)
                self._line(alert.at_ms, describe_alert(alert, self.labels))
            elif topic == CONFIG.name:
                self._change(value)
        except (msgspec.DecodeError, msgspec.ValidationError, ValueError) as err:
            self.bad.append(f"{where or topic}: {err}")

    def _decision(self, record: Any) -> None:
        if not isinstance(record, dict):
            msg = "decision record: must be a JSON object"
            raise ValueError(msg)
        record_id = str(record.get("record_id", ""))
        if record_id and record_id in self._seen_records:
            return  # republished after a restart: already shown
        self._seen_records.add(record_id)
        self.decisions.append(record)
        line = describe_record(record, self.labels)
        if line is not None:
            self._line(int(record.get("at_ms", 0) or 0), line)

    def _change(self, value: bytes) -> None:
        try:
            change = decode_change(value)
            state = apply(self.state, change, self.keyring)
        except (ConfigError, SignatureError) as err:
            self.refused_changes.append(str(err))
            self._line(self.started_ms, f"config   refused by the fold (as every sidecar refuses it): {err}")
            return
        self.state = state
        self.config.append(ConfigPoint(change, state))
        self._line(change.created_ms, describe_change(change, state, self.labels), recent=False)

    def drain_lines(self) -> list[str]:
        """The one-liners taken since the last call, in arrival order."""
        lines, self._lines = self._lines, []
        return lines

    def counts(self) -> Mapping[str, int]:
        """Experiments started, promotions, rollbacks and halts so far (from the decision records)."""
        out = {"experiments": 0, "promotions": 0, "rollbacks": 0}
        for rec in self.decisions:
            kind = rec.get("payload", {}).get("kind") if isinstance(rec.get("payload"), dict) else None
            if kind == "allocate":
                out["experiments"] += 1
            elif kind == "promote":
                out["promotions"] += 1
            elif kind in ("rollback", "halt"):
                out["rollbacks"] += 1
        return out

    def arm_serving(self) -> dict[str, tuple[int, float]]:
        """arm id → (config version, share) under the current allocation (control alone without one)."""
        allocation = self.state.allocation
        if allocation is None:
            return {"control": (self.state.control_version, 1.0)} if self.state.control_version else {}
        return {a.arm_id: (a.config_version, a.share) for a in allocation.arms}


async def open_consumer(bootstrap: str) -> AIOKafkaConsumer:
    """A consumer assigned to every partition of the four topics, from the beginning (no group)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False)
    await consumer.start()
    tps = [TopicPartition(spec.name, p) for spec in TOPICS for p in range(spec.partitions)]
    consumer.assign(tps)
    await consumer.seek_to_beginning(*tps)
    return consumer


async def read_topics(consumer: AIOKafkaConsumer, capture: Capture, clock_s: Any) -> None:
    """Feed every record of the four topics into `capture` (the demo's reader task; runs until cancelled)."""
    while True:
        batch = await consumer.getmany(timeout_ms=200, max_records=5000)
        now_s = float(clock_s())
        for tp, records in batch.items():
            for record in records:
                capture.take(tp.topic, record.value, now_s, f"{tp.topic}[{tp.partition}]@{record.offset}")


def finite_or_none(x: float) -> float | None:
    """JSON-friendly number (heartbeat)."""
    return round(x, 6) if math.isfinite(x) else None
