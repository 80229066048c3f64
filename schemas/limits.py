"""Hard limits of the wire contract, shared by decoders, producers and tests."""

from __future__ import annotations

from typing import Final

#: Largest accepted Kafka message value (bytes); larger payloads are dead-lettered.
MAX_MESSAGE_BYTES: Final = 1_048_576
#: Most events in one envelope.
MAX_EVENTS_PER_BATCH: Final = 10_000
#: Most shown items in one impression.
MAX_ITEMS_PER_IMPRESSION: Final = 1_000
#: Longest identifier or label string.
MAX_STR_LEN: Final = 256
#: Event times must fall in [2000-01-01, 2100-01-01) UTC, as epoch milliseconds.
MIN_EVENT_TIME_MS: Final = 946_684_800_000
MAX_EVENT_TIME_MS: Final = 4_102_444_800_000
#: Largest accepted ranker latency (ms) and revenue per conversion.
MAX_LATENCY_MS: Final = 600_000.0
MAX_REVENUE: Final = 1e9
#: Largest config version / envelope sequence number (fits a signed 64-bit int).
MAX_INT64: Final = 2**63 - 1
