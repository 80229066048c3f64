"""The demo report, pure: hand-made run records in, markdown with the lift and its interval plus PNGs out."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import pytest

from rectune.demo_view import ArmLabels, describe_record, holdout_surface
from rectune.report import ConfigPoint, RunRecords, build_report, final_lift, rounds, series
from rectune.report_writer import run_directory, write_report
from schemas.alerts import Alert
from schemas.config import Allocation, ArmShare, CascadeConfig, default_config
from schemas.config_log import ConfigChange, Keyring, ServingState, apply, sign
from schemas.metrics import BUCKET_FIELDS, FIELD_INDEX, N_FIELDS, N_LATENCY_BINS, MetricWindow, sparse_window_arrays

KEYS = Keyring.parse("k1:" + "3c" * 16, "k1")
T0 = 1_767_225_600_000
WINDOW_MS = 5_000
BUCKETS = 64
EXP = "exp-0123456789ab"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def tuned() -> CascadeConfig:
    base = default_config()
    return msgspec.structs.replace(base, re_rank=msgspec.structs.replace(base.re_rank, mmr_lambda=0.6))


def change(state: ServingState, kind: str, at_ms: int, **kw: Any) -> ConfigPoint:
    unsigned = ConfigChange(
        schema_version=1,
        version=state.version + 1,
        parent_version=state.version,
        author="rectune-agents",
        reason="test",
        created_ms=at_ms,
        kind=kind,  # type: ignore[arg-type]
        key_id="k1",
        **kw,
    )
    signed = sign(unsigned, KEYS)
    return ConfigPoint(signed, apply(state, signed, KEYS))


def config_log(*, promote: bool) -> tuple[ConfigPoint, ...]:
    """v1 default (active); v2 tuned registered; v3 allocation E1 80/20; then v4 promote + v5 end, or v4 end."""
    points = [change(ServingState(), "config", T0, config=default_config(), activate=True)]
    points.append(change(points[-1].state, "config", T0 + 20_000, config=tuned()))
    allocation = Allocation(
        experiment_id=EXP, salt=EXP, arms=(ArmShare(f"{EXP}.c", 1, 0.8), ArmShare(f"{EXP}.t1", 2, 0.2))
    )
    points.append(change(points[-1].state, "allocation", T0 + 21_000, allocation=allocation))
    if promote:
        points.append(change(points[-1].state, "config", T0 + 60_000, config=tuned(), activate=True))
    points.append(change(points[-1].state, "allocation", T0 + 60_000))
    return tuple(points)


def partial(
    rng: np.random.Generator,
    *,
    surface: str,
    arm: str,
    start_ms: int,
    versions: tuple[int, ...],
    requests: float,
    clicks_per_request: float,
    partition: int = 0,
) -> MetricWindow:
    """A partial as the stream worker publishes it: per-bucket sums of users with heterogeneous taste."""
    sums = np.zeros((N_FIELDS, BUCKETS))
    req = rng.poisson(requests / BUCKETS, BUCKETS).astype(float)
    taste = rng.lognormal(0.0, 0.3, BUCKETS)
    sums[FIELD_INDEX["requests"]] = req
    sums[FIELD_INDEX["impressions"]] = 12 * req
    sums[FIELD_INDEX["clicks"]] = rng.poisson(clicks_per_request * taste / math.exp(0.045) * req)
    sums[FIELD_INDEX["conversions"]] = rng.poisson(0.02 * req)
    sums[FIELD_INDEX["revenue"]] = 60.0 * sums[FIELD_INDEX["conversions"]]
    sums[FIELD_INDEX["distinct_categories"]] = 5.0 * req
    sums[FIELD_INDEX["fresh"]] = 1.2 * req
    hist = np.zeros(N_LATENCY_BINS, np.int64)
    hist[50] = int(req.sum())
    ids, packed, bins, counts = sparse_window_arrays(sums, hist)
    return MetricWindow(
        schema_version=1,
        partial_id=f"{surface}/{arm}/{start_ms}/{partition}",
        source_topic="rectune.events",
        source_partition=partition,
        window_start_ms=start_ms,
        window_end_ms=start_ms + WINDOW_MS,
        surface=surface,
        arm_id=arm,
        cohort="returning",
        config_versions=versions,
        buckets=BUCKETS,
        fields=BUCKET_FIELDS,
        bucket_ids=ids,
        sums=packed,
        latency_bins=bins,
        latency_counts=counts,
        item_events=int(13 * req.sum()),
    )


def traffic(
    *, promote: bool, lift: float, seed: int = 3, holdout: bool = True, read_lift: float | None = None
) -> tuple[MetricWindow, ...]:
    """120 s of windows: control until 20 s, E1 (80/20) until 60 s, then control on v4 (promoted) or v1.

    `read_lift` is the treatment arm's lift during E1 (the read it was promoted on; `lift` by default).
    """
    during = lift if read_lift is None else read_lift
    rng = np.random.default_rng(seed)
    base = 0.30
    out = []
    for start in range(T0, T0 + 120_000, WINDOW_MS):
        offset = start - T0
        if holdout:
            out.append(
                partial(
                    rng,
                    surface=holdout_surface("home"),
                    arm="holdout",
                    start_ms=start,
                    versions=(1,),
                    requests=600,
                    clicks_per_request=base,
                )
            )
        if offset < 20_000:
            out.append(
                partial(
                    rng,
                    surface="home",
                    arm="control",
                    start_ms=start,
                    versions=(1,),
                    requests=5400,
                    clicks_per_request=base,
                )
            )
        elif offset < 60_000:
            out.append(
                partial(
                    rng,
                    surface="home",
                    arm=f"{EXP}.c",
                    start_ms=start,
                    versions=(1,),
                    requests=4320,
                    clicks_per_request=base,
                )
            )
            out.append(
                partial(
                    rng,
                    surface="home",
                    arm=f"{EXP}.t1",
                    start_ms=start,
                    versions=(2,),
                    requests=1080,
                    clicks_per_request=base * (1 + during),
                )
            )
        else:
            version = 4 if promote else 1
            rate = base * (1 + lift) if promote else base
            out.append(
                partial(
                    rng,
                    surface="home",
                    arm="control",
                    start_ms=start,
                    versions=(version,),
                    requests=5400,
                    clicks_per_request=rate,
                )
            )
    # Another surface's traffic must be ignored by the report.
    out.append(
        partial(rng, surface="search", arm="control", start_ms=T0, versions=(1,), requests=100, clicks_per_request=0.9)
    )
    return tuple(out)


def decisions() -> tuple[dict[str, Any], ...]:
    def rec(kind: str, exp: str, at_s: float, payload: dict[str, Any]) -> dict[str, Any]:
        return {
            "type": "agent_record",
            "kind": kind,
            "experiment_id": exp,
            "cycle": 1,
            "at_ms": T0 + int(at_s * 1000),
            "payload": payload,
        }

    allocation = {
        "experiment_id": EXP,
        "salt": EXP,
        "arms": [
            {"arm_id": f"{EXP}.c", "config_version": 1, "share": 0.8},
            {"arm_id": f"{EXP}.t1", "config_version": 2, "share": 0.2},
        ],
    }
    return (
        rec(
            "proposal",
            "home-round1",
            19,
            {
                "proposals": [
                    {
                        "proposal_id": "p1",
                        "title": "more diversity",
                        "changes": [{"name": "re_rank.mmr_lambda", "value": 0.6}],
                    },
                    {
                        "proposal_id": "p2",
                        "title": "huge cut",
                        "changes": [{"name": "pre_rank.candidate_cut", "value": 9000}],
                    },
                ],
                "dropped": [],
            },
        ),
        rec(
            "critique",
            "home-round1",
            19,
            {
                "verdicts": [
                    {"proposal_id": "p1", "kept": True, "rule": "", "reasons": []},
                    {"proposal_id": "p2", "kept": False, "rule": "latency", "reasons": ["p99 model over the SLO"]},
                ]
            },
        ),
        rec(
            "allocation",
            EXP,
            21,
            {"kind": "allocate", "stage": 0, "reasons": ["power gate: launch"], "allocation": allocation},
        ),
        rec("interim_read", EXP, 40, {"kind": "interim_read", "reasons": []}),
        rec(
            "decision",
            EXP,
            60,
            {
                "kind": "promote",
                "arm_id": f"{EXP}.t1",
                "config_version": 2,
                "reasons": ["winner: always-valid p 0.001"],
            },
        ),
        rec(
            "insight",
            EXP,
            60,
            {
                "status": "promoted",
                "insights": [{}],
                "summary": "diversity helps",
                "pareto_front": [
                    {"config_id": f"{EXP}.t1", "metrics": {"clicks_per_request": 0.41, "latency_p99": 38.5, "ctr": 1}},
                    {"config_id": f"{EXP}.c", "metrics": {"clicks_per_request": 0.37, "latency_p99": 31.0, "ctr": 1}},
                ],
                "pareto_metrics": ["clicks_per_request", "latency_p99"],
            },
        ),
        rec("skill", EXP, 60, {"changes": [{"kind": "created"}]}),
    )


def records(
    *, promote: bool = True, lift: float = 0.2, holdout: bool = True, read_lift: float | None = None, **kw: Any
) -> RunRecords:
    alert = Alert(
        schema_version=1,
        kind="slo_breach",
        severity="critical",
        source="demo-ranker",
        message="p99 over",
        at_ms=T0 + 30_000,
        surface="home",
        arm_id=f"{EXP}.t1",
    )
    return RunRecords(
        scenario="apparel_core",
        surface="home",
        north_star=("clicks", "requests"),
        latency_slo_ms=60.0,
        started_ms=T0,
        ended_ms=T0 + 125_000,
        window_s=5.0,
        brain="offline",
        partials=traffic(promote=promote, lift=lift, holdout=holdout, read_lift=read_lift),
        decisions=decisions(),
        alerts=(alert,),
        config=config_log(promote=promote),
        traffic={"requests": 100_000, "holdout_requests": 10_000, "item_events": 1_300_000, "holdout_version": 1},
        skills=(
            {
                "stage": "re_rank",
                "cohort": "all",
                "pattern": {"parameter": "re_rank.mmr_lambda", "direction": "down"},
                "confidence": 0.8,
                "status": "active",
            },
        ),
        holdout_share=0.1,
        **kw,
    )


def test_the_lift_of_the_final_incumbent_is_read_against_the_holdout_with_an_interval() -> None:
    lift, why = final_lift(records(promote=True, lift=0.2))
    assert lift is not None, why
    assert (lift.start_version, lift.final_version, lift.same_config) == (1, 4, False)
    # Incumbent side: control on v4 since the promotion (60-120 s, 12 windows), not the winning arm on v2 before it.
    assert (lift.since_ms, lift.windows) == (T0 + 60_000, 12)
    low, high = lift.interval()
    se = lift.north_star.lift_se
    assert 0.0 < low < 0.2 < high, (low, high)
    assert abs(lift.north_star.lift - 0.2) < 4 * se
    assert high - low == pytest.approx(2 * 1.96 * se, rel=0.15)  # log-scale interval, about symmetric here
    assert lift.holdout_requests == pytest.approx(12 * 600, rel=0.1)


def test_the_winning_arms_read_before_its_promotion_does_not_inflate_the_lift() -> None:
    # promoted on a read far above its worth (+200%); it is worth +20%, which is all the headline may say
    # (counting the arm's 8 windows at 20% of traffic would put the lift at about +41%)
    lift, why = final_lift(records(promote=True, lift=0.2, read_lift=2.0))
    assert lift is not None, why
    assert abs(lift.north_star.lift - 0.2) < 3 * lift.north_star.lift_se
    report = build_report(records(promote=True, lift=0.2, read_lift=2.0))
    assert "last became the control (1:00)" in report.markdown


def test_without_a_promotion_the_comparison_is_an_a_a_check() -> None:
    lift, _ = final_lift(records(promote=False, lift=0.2))
    assert lift is not None and lift.same_config and lift.final_version == 1
    low, high = lift.interval()
    assert low < 0.0 < high  # same config on both sides: no lift
    report = build_report(records(promote=False))
    assert "A/A check" in report.markdown


def test_without_holdout_traffic_the_report_says_why_there_is_no_lift() -> None:
    lift, why = final_lift(records(holdout=False))
    assert lift is None and "holdout" in why
    report = build_report(records(holdout=False))
    assert "not available" in report.markdown and "holdout" in report.markdown


def test_report_markdown_names_the_lift_the_rounds_the_timeline_and_the_figures(tmp_path: Path) -> None:
    report = build_report(records())
    md = report.markdown
    assert "North star (clicks/requests) lift, final incumbent v4 vs starting config v1: **+" in md
    assert "[95% CI +" in md and "significant at 5%" in md
    assert "| 1 | 0:19 | 2 | 1 | E1 (exp-0123456789ab) | 1 | promote (promoted) |" in md
    assert "Critic   kept 1 of 2 (refused: latency)" in md
    assert "Online   E1 PROMOTE E1.t1 (config v2)" in md
    assert "ALERT    critical slo_breach E1.t1" in md
    assert "config   v4 config activated: incumbent is now v4" in md
    assert "re_rank.mmr_lambda" in md  # the skill table
    assert "| config (arm) | clicks_per_request | latency_p99 |" in md  # the front, on the metrics it compares
    assert f"| {EXP}.t1 | 0.41 | 38.5 |" in md
    assert "search" not in md.split("## Per-arm totals")[1].split("## Skills")[0]  # other surfaces left out
    for name in ("north_star.png", "configs.png", "latency_p99.png", "diversity_freshness.png", "lift.png"):
        assert f"![{name}]({name})" in md

    directory = run_directory(tmp_path / "runs", T0)
    assert directory.name == "20260101T000000Z"
    written = write_report(report, directory)
    assert {p.name for p in written} == {*report.figures, "report.md"}
    for path in written:
        data = path.read_bytes()
        assert len(data) > 1000, path
        if path.suffix == ".png":
            assert data.startswith(PNG_MAGIC), path
    assert (directory / "report.md").read_text(encoding="utf-8") == md
    assert run_directory(tmp_path / "runs", T0).name == "20260101T000000Z-1"  # a second run that second


def test_series_merge_partitions_and_label_experiment_arms() -> None:
    rng = np.random.default_rng(0)
    a = partial(rng, surface="home", arm=f"{EXP}.t1", start_ms=T0, versions=(2,), requests=640, clicks_per_request=0.3)
    b = partial(
        rng,
        surface="home",
        arm=f"{EXP}.t1",
        start_ms=T0,
        versions=(2,),
        requests=640,
        clicks_per_request=0.3,
        partition=1,
    )
    merged = series(replace(records(), partials=(a, b)), ArmLabels())
    assert list(merged) == ["E1.t1"]
    (point,) = merged["E1.t1"]
    requests = point.sums[FIELD_INDEX["requests"]].sum()
    assert requests == sum(np.asarray(w.sums[FIELD_INDEX["requests"]]).sum() for w in (a, b))


def test_rounds_and_one_liners_survive_records_of_another_shape() -> None:
    (r,) = rounds(decisions())
    assert (r.cycle, r.proposals, r.kept, r.experiment_id, r.treatments) == (1, 2, 1, EXP, 1)
    assert r.outcome == "promote (promoted)" and "winner" in r.reason
    labels = ArmLabels()
    assert describe_record({"kind": "interim_read"}, labels) is None
    for junk in (
        {},
        {"kind": "proposal", "payload": "x"},
        {"kind": "decision", "payload": {"kind": 3}},
        {"kind": "critique", "payload": {"verdicts": [1, None]}},
        {"kind": "skill", "payload": []},
    ):
        assert isinstance(describe_record(junk, labels), str)
    assert rounds([{"cycle": "x"}, {"kind": "proposal"}]) == []


# -- the demo's other pure parts: its agents' policy and what it captures ---------------------------


def test_the_demo_policy_is_accepted_by_the_agents_and_reachable_at_the_demo_rate() -> None:
    from agents.runtime import parse_policy
    from rectune.demo_services import DemoPlan, demo_policy

    plan = DemoPlan()
    doc = demo_policy(plan, duration_s=180.0, slo_ms=50.0, north_star=("clicks", "requests"))
    policy, loop = parse_policy(json.dumps(doc).encode(), "home", window_s=plan.window_s)
    assert policy.primary.numerator == "clicks" and policy.primary.denominator == "requests"
    assert policy.guardrails.latency_p99_slo_ms == 50.0
    assert loop.window_s == plan.window_s
    dwells, minimums = policy.min_dwell_s, policy.min_stage_requests
    assert isinstance(dwells, tuple) and isinstance(minimums, tuple)
    assert 50.0 <= policy.horizon_s <= 90.0 and sum(dwells[:-1]) < policy.horizon_s
    rate = (1 - plan.holdout_share) * plan.requests_per_s
    for stage, dwell, needed in zip(policy.stages, dwells, minimums, strict=True):
        per_arm = rate * stage / policy.max_treatments
        assert needed <= per_arm * dwell, (stage, needed)  # each stage's minimum arrives within its dwell


def test_the_capture_folds_the_config_log_as_a_sidecar_does_and_dedupes_records() -> None:
    from rectune.demo_feed import Capture
    from rectune.progress import WindowBook
    from schemas.config_log import encode_change
    from schemas.topics import ALERTS, CONFIG, DECISIONS, METRICS

    labels = ArmLabels()
    capture = Capture(WindowBook(1, settle_s=0.0, grace_s=0.0), KEYS, labels, started_ms=T0)
    for point in config_log(promote=True):
        capture.take(CONFIG.name, encode_change(point.change), 0.0)
    forged = msgspec.structs.replace(config_log(promote=True)[1].change, version=6, parent_version=5, reason="x")
    capture.take(CONFIG.name, encode_change(forged), 0.0)  # signature no longer matches: refused, not applied
    assert capture.state.version == 5 and capture.state.control_version == 4
    assert len(capture.config) == 5 and len(capture.refused_changes) == 1
    record = dict(decisions()[4], record_id="r-1")
    for _ in range(2):  # a record republished after a restart is shown once
        capture.take(DECISIONS.name, json.dumps(record).encode(), 0.0)
    alert = records().alerts[0]
    capture.take(ALERTS.name, msgspec.json.encode(alert), 0.0)
    window = traffic(promote=True, lift=0.0)[0]
    capture.take(METRICS.name, msgspec.json.encode(window), 0.0)
    capture.take(METRICS.name, b"{not json", 0.0, "rectune.metrics[0]@7")
    lines = capture.drain_lines()
    assert sum("PROMOTE" in line for line in lines) == 1
    assert any("refused by the fold" in line for line in lines)
    assert any(line.startswith("0:30  ALERT    critical slo_breach") for line in lines)
    assert capture.counts() == {"experiments": 0, "promotions": 1, "rollbacks": 0}
    assert list(capture.partials) == [window.partial_id] and capture.book.partials == 1
    assert capture.bad and capture.bad[0].startswith("rectune.metrics[0]@7")
    assert capture.drain_lines() == []
    assert capture.arm_serving() == {"control": (4, 1.0)}
