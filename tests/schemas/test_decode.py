"""Strict decoding of `rectune.events` messages: round trips, refusals, field paths.

Pure unit tests of `schemas.decode` / `schemas.encode` (no broker).  The
contract under test (DESIGN.md "Wire format"): every refusal is a
`schemas.errors.DecodeError` naming the offending field path and the rule, one
bad event in an envelope never costs its good neighbours, and nothing else
ever escapes the decoder.
"""

from __future__ import annotations

import json
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas.decode import DecodedMessage, decode_batch, decode_event, decode_message
from schemas.encode import encode_batch, encode_event
from schemas.errors import DecodeError
from schemas.events import Click, Conversion, Event, EventBatch, Impression, ShownItem, item_events
from schemas.limits import (
    MAX_EVENT_TIME_MS,
    MAX_INT64,
    MAX_ITEMS_PER_IMPRESSION,
    MAX_LATENCY_MS,
    MAX_MESSAGE_BYTES,
    MAX_REVENUE,
    MAX_STR_LEN,
    MIN_EVENT_TIME_MS,
)
from simulator.synthetic import TrafficGenerator, TrafficSpec

T0 = 1_700_000_000_000
SMALL = TrafficSpec(users=200, items=400, styles=120, surfaces=("home", "search", "pdp"))
# A JSON literal json.dumps cannot write: parses as a float overflowing to inf.
HUGE = "__HUGE_1e999__"

COMMON_FIELDS = (
    "schema_version",
    "event_id",
    "event_time_ms",
    "request_id",
    "user_id",
    "cohort",
    "surface",
    "arm_id",
    "config_version",
)


def _traffic(seed: int, requests: int) -> list[Event]:
    return list(TrafficGenerator(SMALL, seed=seed).stream(T0, requests, 50.0))


def _impression(seed: int = 1) -> Impression:
    gen = TrafficGenerator(SMALL, seed=seed)
    event = gen.request(T0)[0]
    assert isinstance(event, Impression)
    return event


def _as_json(event: Event) -> dict[str, Any]:
    value = json.loads(encode_event(event))
    assert isinstance(value, dict)
    return value


def _dumps(value: Any) -> bytes:
    text = json.dumps(value, separators=(",", ":"))
    return text.replace(json.dumps(HUGE), "1e999").encode()


def _refusal(payload: bytes | None) -> DecodeError:
    with pytest.raises(DecodeError) as info:
        decode_message(payload)
    err = info.value
    assert err.field
    assert err.rule
    return err


# -- round trips ---------------------------------------------------------------


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), requests=st.integers(1, 40), seq=st.integers(0, MAX_INT64))
def test_envelope_round_trip(seed: int, requests: int, seq: int) -> None:
    events = _traffic(seed, requests)
    payload = encode_batch("sidecar-7", seq, events)

    decoded = decode_message(payload)
    assert decoded == DecodedMessage(tuple(events), (), "sidecar-7", seq)
    assert decode_batch(payload) == EventBatch(schema_version=1, source_id="sidecar-7", seq=seq, events=tuple(events))
    # mix of all three event kinds survived, item counts included
    assert sum(item_events(e) for e in decoded.events) == sum(item_events(e) for e in events)


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), requests=st.integers(1, 10))
def test_bare_event_round_trip(seed: int, requests: int) -> None:
    for event in _traffic(seed, requests):
        payload = encode_event(event)
        assert decode_message(payload) == DecodedMessage((event,), (), None, None)
        assert decode_event(payload) == event
        # the encoding is canonical: decoding and re-encoding gives the same bytes
        assert encode_event(decode_event(payload)) == payload


def test_round_trip_keeps_every_kind_and_optional_field() -> None:
    items = (
        ShownItem(item_id="i1", position=0, category="tops", scores=(0.1, -2.5, 1e12)),
        ShownItem(
            item_id="i2",
            position=999,
            category="bags",
            scores=(0.0, 0.0, -1e12),
            style_id="s1",
            propensity=1.0,
            fresh=True,
            long_tail=True,
        ),
    )
    common: dict[str, Any] = {
        "schema_version": 1,
        "request_id": "r",
        "user_id": "u",
        "cohort": "c",
        "surface": "s",
        "arm_id": "a",
        "config_version": MAX_INT64,
    }
    events: list[Event] = [
        Impression(
            event_id="e1", event_time_ms=MIN_EVENT_TIME_MS, items=items, ranker_latency_ms=MAX_LATENCY_MS, **common
        ),
        Click(event_id="e2", event_time_ms=MAX_EVENT_TIME_MS - 1, item_id="i2", position=999, **common),
        Conversion(event_id="e3", event_time_ms=T0, item_id="i2", revenue=MAX_REVENUE, **common),
        Conversion(event_id="e4", event_time_ms=T0, item_id="i2", revenue=0.0, **common),
    ]
    assert decode_batch(encode_batch("src", 0, events)).events == tuple(events)
    # defaults are omitted on the wire and restored on decode
    wire = _as_json(events[0])
    assert "style_id" not in wire["items"][0]
    assert "fresh" not in wire["items"][0]


def test_decode_batch_refuses_bare_event_and_bad_members() -> None:
    event = _impression()
    with pytest.raises(DecodeError) as info:
        decode_batch(encode_event(event))
    assert info.value.field == "type"

    envelope = json.loads(encode_batch("s", 1, [event, event]))
    envelope["events"][1]["user_id"] = 12
    with pytest.raises(DecodeError) as info:
        decode_batch(_dumps(envelope))
    assert info.value.field == "events[1].user_id"


# -- nothing but DecodeError escapes -----------------------------------------

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()  # unbounded: big ints well past int64 are valid JSON
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=12), children, max_size=5),
    max_leaves=25,
)
KNOWN_KEYS = (
    "type",
    *COMMON_FIELDS,
    "items",
    "ranker_latency_ms",
    "item_id",
    "position",
    "revenue",
    "source_id",
    "seq",
    "events",
)
# Objects shaped like events/envelopes (known tag and keys, arbitrary values):
# they get past the tag lookup, so the per-field checks are exercised too.
eventish = st.builds(
    lambda tag, body: {"type": tag, **body},
    st.sampled_from(["impression", "click", "conversion", "batch", "other"]),
    st.dictionaries(st.sampled_from(KNOWN_KEYS) | st.text(max_size=8), json_values, max_size=12),
)


def _assert_only_decode_errors(payload: bytes | None) -> DecodedMessage | None:
    try:
        decoded = decode_message(payload)
    except DecodeError as err:
        assert err.field, payload
        assert err.rule, payload
        return None
    for rejected in decoded.rejected:
        assert isinstance(rejected.error, DecodeError)
        assert rejected.error.field.startswith(f"events[{rejected.index}]")
        assert rejected.error.rule
    return decoded


@settings(max_examples=300, deadline=None)
@given(payload=st.none() | st.binary(max_size=512))
def test_any_bytes_decode_or_raise_decode_error(payload: bytes | None) -> None:
    _assert_only_decode_errors(payload)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(value=json_values | eventish)
def test_any_json_value_decodes_or_raises_decode_error(value: Any) -> None:
    _assert_only_decode_errors(json.dumps(value).encode())


@settings(max_examples=200, deadline=None)
@given(
    field=st.sampled_from([*COMMON_FIELDS, "type", "items", "ranker_latency_ms", "items.0", "items.0.scores"]),
    value=json_values,
    in_envelope=st.booleans(),
)
def test_valid_impression_with_any_value_anywhere(field: str, value: Any, in_envelope: bool) -> None:
    doc = _as_json(_impression())
    parts = field.split(".")
    target: Any = doc
    for part in parts[:-1]:
        target = target[int(part)] if isinstance(target, list) else target[part]
    last = parts[-1]
    if isinstance(target, list):
        target[int(last)] = value
    else:
        target[last] = value
    envelope = {"type": "batch", "schema_version": 1, "source_id": "s", "seq": 0, "events": [doc]}
    payload = _dumps(envelope) if in_envelope else _dumps(doc)
    decoded = _assert_only_decode_errors(payload)
    if decoded is not None and decoded.events:
        # whatever was accepted re-encodes to something that decodes to the same event
        assert decode_event(encode_event(decoded.events[0])) == decoded.events[0]


@pytest.mark.parametrize(
    "payload",
    [
        b"NaN",
        b"Infinity",
        b'{"type":"impression","ranker_latency_ms":NaN}',
        b"",
        b"\xff\xfe",
        b"\x00",
        b'"\\ud800"',
        b"[]",
        b"{}",
        b"null",
        b"1e999",
    ],
)
def test_junk_is_refused_as_decode_error(payload: bytes) -> None:
    _refusal(payload)


@pytest.mark.parametrize(
    "payload",
    [
        b'{"a":' * 1000 + b"1" + b"}" * 1000,
        b'{"type":"batch","schema_version":1,"source_id":"s","seq":1,"events":[' + b"[" * 1000 + b"]" * 1000 + b"]",
    ],
    ids=["nested-objects-6KB", "nested-arrays-in-envelope-2KB"],
)
def test_deeply_nested_json_is_a_decode_error(payload: bytes) -> None:
    assert len(payload) < MAX_MESSAGE_BYTES
    _refusal(payload)


# -- one bad field: refused, and named exactly -----------------------------------

# (path inside the impression, bad value, expected field path relative to the event)
TOP_LEVEL_CASES: list[tuple[str, Any]] = [
    ("event_time_ms", -1),
    ("event_time_ms", MIN_EVENT_TIME_MS - 1),
    ("event_time_ms", MAX_EVENT_TIME_MS),
    ("event_time_ms", 10**30),
    ("event_time_ms", "1700000000000"),
    ("event_time_ms", 1.7e12),
    ("event_time_ms", True),
    ("event_time_ms", None),
    ("config_version", -1),
    ("config_version", MAX_INT64 + 1),
    ("config_version", True),
    ("config_version", "1"),
    ("config_version", 1.0),
    ("schema_version", 2),
    ("schema_version", 0),
    ("schema_version", True),
    ("schema_version", "1"),
    ("type", "bogus"),
    ("type", 5),
    ("ranker_latency_ms", -0.001),
    ("ranker_latency_ms", MAX_LATENCY_MS * 2),
    ("ranker_latency_ms", HUGE),
    ("ranker_latency_ms", 10**400),
    ("ranker_latency_ms", "18.0"),
    ("ranker_latency_ms", True),
    ("ranker_latency_ms", None),
    ("items", []),
    ("items", "i1"),
    ("items", None),
    ("items", {"0": 1}),
] + [
    (name, bad)
    for name in ("event_id", "request_id", "user_id", "cohort", "surface", "arm_id")
    for bad in ("", "x" * (MAX_STR_LEN + 1), 5, None, True, ["u"])
]

ITEM_CASES: list[tuple[str, Any]] = [
    ("position", -1),
    ("position", MAX_ITEMS_PER_IMPRESSION),
    ("position", True),
    ("position", "0"),
    ("position", 0.5),
    ("position", None),
    ("item_id", ""),
    ("item_id", 7),
    ("category", None),
    ("category", "c" * (MAX_STR_LEN + 1)),
    ("style_id", ""),
    ("style_id", 3),
    ("scores", [0.1, 0.2]),
    ("scores", [0.1, 0.2, 0.3, 0.4]),
    ("scores", "0.1,0.2,0.3"),
    ("scores", None),
    ("propensity", 0),
    ("propensity", -0.5),
    ("propensity", 1.5),
    ("propensity", "0.5"),
    ("propensity", True),
    ("propensity", HUGE),
    ("fresh", 1),
    ("fresh", "true"),
    ("fresh", None),
    ("long_tail", 0),
]

SCORE_CASES: list[Any] = [1e13, -1e13, "0.5", True, None, HUGE, 10**400]


def _expected(prefix: str, path: str) -> str:
    return f"{prefix}.{path}" if prefix else path


@st.composite
def mutations(draw: st.DrawFn) -> tuple[dict[str, Any], str]:
    """A valid impression (as JSON) with exactly one field made wrong, and that field's path."""
    doc = _as_json(_impression(draw(st.integers(0, 50))))
    kind = draw(st.sampled_from(["top", "item", "score"]))
    if kind == "top":
        name, bad = draw(st.sampled_from(TOP_LEVEL_CASES))
        doc[name] = bad
        return doc, name
    k = draw(st.integers(0, len(doc["items"]) - 1))
    item = doc["items"][k]
    if kind == "item":
        name, bad = draw(st.sampled_from(ITEM_CASES))
        item[name] = bad
        return doc, f"items[{k}].{name}"
    j = draw(st.integers(0, 2))
    item["scores"][j] = draw(st.sampled_from(SCORE_CASES))
    return doc, f"items[{k}].scores[{j}]"


@settings(max_examples=150, deadline=None)
@given(case=mutations())
def test_bare_event_with_one_bad_field_is_refused_naming_it(case: tuple[dict[str, Any], str]) -> None:
    doc, path = case
    err = _refusal(_dumps(doc))
    assert err.field == path, (err.field, err.rule)


@settings(max_examples=150, deadline=None)
@given(case=mutations(), seed=st.integers(0, 2**16), size=st.integers(1, 6), data=st.data())
def test_bad_event_in_envelope_is_isolated(
    case: tuple[dict[str, Any], str], seed: int, size: int, data: st.DataObject
) -> None:
    doc, path = case
    good = _traffic(seed, size)
    index = data.draw(st.integers(0, len(good)), label="index of the bad event")
    members = [_as_json(e) for e in good]
    members.insert(index, doc)
    envelope = {"type": "batch", "schema_version": 1, "source_id": "src", "seq": 42, "events": members}

    decoded = decode_message(_dumps(envelope))

    assert decoded.events == tuple(good)
    assert decoded.source_id == "src"
    assert decoded.seq == 42
    assert len(decoded.rejected) == 1
    rejected = decoded.rejected[0]
    assert rejected.index == index
    assert rejected.error.field == f"events[{index}].{path}", (rejected.error.field, rejected.error.rule)
    assert rejected.error.rule


def test_several_bad_events_in_one_envelope_are_each_reported() -> None:
    good = _traffic(3, 4)
    members: list[Any] = [_as_json(e) for e in good]
    members[0]["items"][2]["position"] = -3
    members[2]["config_version"] = "v1"
    members.append(17)
    envelope = {"type": "batch", "schema_version": 1, "source_id": "s", "seq": 1, "events": members}

    decoded = decode_message(_dumps(envelope))

    kept = [e for i, e in enumerate(good) if i not in (0, 2)]
    assert decoded.events == tuple(kept)
    assert [(r.index, r.error.field) for r in decoded.rejected] == [
        (0, "events[0].items[2].position"),
        (2, "events[2].config_version"),
        (len(members) - 1, f"events[{len(members) - 1}]"),
    ]


MISSING_OR_UNKNOWN: list[tuple[str, str, str]] = [
    *(("missing", name, name) for name in (*COMMON_FIELDS, "items", "ranker_latency_ms")),
    *(("missing", f"items.{name}", f"items[0].{name}") for name in ("item_id", "position", "category", "scores")),
    ("unknown", "zzz", "zzz"),
    ("unknown", "items.zzz", "items[0].zzz"),
]


def _apply(doc: dict[str, Any], action: str, where: str) -> None:
    target = doc["items"][0] if where.startswith("items.") else doc
    name = where.removeprefix("items.")
    if action == "missing":
        del target[name]
    else:
        target[name] = 1


@pytest.mark.parametrize(("action", "where", "path"), MISSING_OR_UNKNOWN)
def test_missing_or_unknown_field_is_named_by_its_path(action: str, where: str, path: str) -> None:
    doc = _as_json(_impression())
    _apply(doc, action, where)

    err = _refusal(_dumps(doc))
    assert err.field == path, (err.field, err.rule)

    good = _impression(2)
    envelope = {"type": "batch", "schema_version": 1, "source_id": "s", "seq": 1, "events": [_as_json(good), doc]}
    decoded = decode_message(_dumps(envelope))
    assert decoded.events == (good,)
    assert [(r.index, r.error.field) for r in decoded.rejected] == [(1, f"events[1].{path}")]


@pytest.mark.parametrize(("missing", "path"), [("seq", "seq"), ("source_id", "source_id"), ("events", "events")])
def test_envelope_missing_field_is_named(missing: str, path: str) -> None:
    envelope = {"type": "batch", "schema_version": 1, "source_id": "s", "seq": 1, "events": [_as_json(_impression())]}
    del envelope[missing]
    assert _refusal(_dumps(envelope)).field == path


# -- whole-message rules -------------------------------------------------------


def test_payload_at_the_size_limit_is_accepted_and_one_byte_more_refused() -> None:
    event = _impression()
    body = encode_event(event)
    at_limit = body + b" " * (MAX_MESSAGE_BYTES - len(body))  # trailing JSON whitespace
    assert len(at_limit) == MAX_MESSAGE_BYTES
    assert decode_message(at_limit).events == (event,)

    err = _refusal(at_limit + b" ")
    assert err.field == "$"
    assert str(MAX_MESSAGE_BYTES) in err.rule
    assert "bytes" in err.rule


@pytest.mark.parametrize(
    ("payload", "rule"),
    [(None, "a null record (tombstone) is not an event"), (b"", "an empty record is not an event")],
    ids=["tombstone", "empty"],
)
def test_a_record_without_a_value_is_refused_whole_naming_why(payload: bytes | None, rule: str) -> None:
    err = _refusal(payload)
    assert (err.field, err.rule) == ("$", rule)
    assert "tombstone" in err.hint
    assert str(err).startswith(f"$: {rule} (hint: ")


def test_oversize_envelope_of_valid_events_is_refused_whole() -> None:
    events = _traffic(5, 60)
    payload = encode_batch("s", 1, events)
    reps = MAX_MESSAGE_BYTES // len(payload) + 1
    big = encode_batch("s", 1, events * reps)
    assert len(big) > MAX_MESSAGE_BYTES
    err = _refusal(big)
    assert err.field == "$"
    assert f"at most {MAX_MESSAGE_BYTES} bytes" in err.rule


@pytest.mark.parametrize("tag", ["impressions", "IMPRESSION", "", "dead_letter", "metric_window"])
def test_unknown_type_is_refused_naming_type(tag: str) -> None:
    doc = _as_json(_impression())
    doc["type"] = tag
    assert _refusal(_dumps(doc)).field == "type"
    envelope = {"type": tag, "schema_version": 1, "source_id": "s", "seq": 1, "events": [_as_json(_impression())]}
    assert _refusal(_dumps(envelope)).field == "type"


@pytest.mark.parametrize("version", [0, 2, -1, 1.0, "1", None, True])
def test_wrong_schema_version_is_refused_naming_schema_version(version: Any) -> None:
    doc = _as_json(_impression())
    doc["schema_version"] = version
    assert _refusal(_dumps(doc)).field == "schema_version"
    members = [_as_json(_impression())]
    envelope = {"type": "batch", "schema_version": version, "source_id": "s", "seq": 1, "events": members}
    assert _refusal(_dumps(envelope)).field == "schema_version"


def test_duplicate_positions_are_refused_naming_items() -> None:
    event = _impression()
    doc = _as_json(event)
    doc["items"][5]["position"] = doc["items"][2]["position"]
    err = _refusal(_dumps(doc))
    assert err.field == "items"
    assert "distinct" in err.rule

    with pytest.raises(DecodeError) as info:
        decode_event(_dumps(doc))
    assert info.value.field == "items"

    # inside an envelope that is otherwise valid (fast path decodes it whole first)
    other = _impression(9)
    envelope = {"type": "batch", "schema_version": 1, "source_id": "s", "seq": 3, "events": [_as_json(other), doc]}
    decoded = decode_message(_dumps(envelope))
    assert decoded.events == (other,)
    assert [(r.index, r.error.field) for r in decoded.rejected] == [(1, "events[1].items")]


@pytest.mark.parametrize(
    ("where", "path"),
    [
        ("config_version", "config_version"),
        ("event_time_ms", "event_time_ms"),
        ("items.position", "items[0].position"),
    ],
)
def test_bool_is_not_an_int(where: str, path: str) -> None:
    doc = _as_json(_impression())
    if where.startswith("items."):
        doc["items"][0]["position"] = True
    else:
        doc[where] = True
    err = _refusal(_dumps(doc))
    assert err.field == path
    assert "bool" in err.rule


def test_ints_are_accepted_where_floats_are_expected_but_not_the_reverse() -> None:
    doc = _as_json(_impression())
    doc["ranker_latency_ms"] = 18
    doc["items"][0]["scores"] = [1, 0, -1]
    event = decode_event(_dumps(doc))
    assert isinstance(event, Impression)
    assert event.ranker_latency_ms == 18.0
    assert event.items[0].scores == (1.0, 0.0, -1.0)

    doc["event_time_ms"] = float(doc["event_time_ms"])
    assert _refusal(_dumps(doc)).field == "event_time_ms"


def test_bad_envelope_field_rejects_whole_message() -> None:
    members = [_as_json(e) for e in _traffic(1, 3)]
    cases: list[tuple[dict[str, Any], str]] = [
        ({"source_id": ""}, "source_id"),
        ({"seq": -1}, "seq"),
        ({"seq": True}, "seq"),
        ({"events": []}, "events"),
        ({"events": {"0": members[0]}}, "events"),
    ]
    for change, field in cases:
        envelope = {"type": "batch", "schema_version": 1, "source_id": "s", "seq": 1, "events": members, **change}
        assert _refusal(_dumps(envelope)).field == field, change


def test_decode_error_message_carries_field_rule_and_hint() -> None:
    doc = _as_json(_impression())
    doc["items"][3]["position"] = -2
    err = _refusal(_dumps(doc))
    assert err.field == "items[3].position"
    assert ">= 0" in err.rule
    assert str(err).startswith(f"items[3].position: {err.rule}")
    assert err.hint


def test_msgspec_raw_member_can_be_decoded_alone() -> None:
    event = _impression()
    raw = msgspec.Raw(encode_event(event))
    assert decode_event(raw, "events[4]") == event
    doc = _as_json(event)
    doc["cohort"] = 3
    with pytest.raises(DecodeError) as info:
        decode_event(msgspec.Raw(_dumps(doc)), "events[4]")
    assert info.value.field == "events[4].cohort"


def test_huge_literal_helper_writes_an_overflowing_number() -> None:
    # the HUGE cases above are only meaningful if they reach the decoder as a number
    assert _dumps({"x": [HUGE]}) == b'{"x":[1e999]}'
