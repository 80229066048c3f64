"""Exploration replay (`serving_sidecar.replay`): replayed probabilities, the recorder, pending candidates."""

from __future__ import annotations

from collections import Counter
from types import MappingProxyType

import msgspec
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_cascade import cands, make_config

from schemas.config import Allocation, ArmShare, CascadeConfig, default_config
from schemas.config_log import ServingState
from schemas.replay import ReplayRecord, decode_replay, encode_replay
from serving_sidecar.cascade import rank
from serving_sidecar.errors import SidecarError
from serving_sidecar.holder import Snapshot, pending_candidates
from serving_sidecar.replay import ReplayRecorder, ReplaySettings, target_probabilities
from serving_sidecar.tracking import TrackingToken

T0_MS = 1_764_000_000_000


def token(request_id: str = "r1") -> TrackingToken:
    return TrackingToken.for_arm(
        request_id=request_id,
        user_id="u1",
        cohort="all",
        surface="home",
        arm_id="control",
        config_version=1,
        event_time_ms=T0_MS,
    )


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    eps=st.sampled_from([0.0, 0.02, 0.3]),
    sponsored=st.booleans(),
    cap=st.integers(1, 4),
)
def test_replaying_the_logging_config_gives_back_the_logged_propensities(
    seed: int, eps: float, sponsored: bool, cap: int
) -> None:
    """Forced through its own list, a config's replayed probabilities are exactly what it logged."""
    extra = {"sponsored_quota": 1, "sponsored_positions": (0, 3)} if sponsored else {}
    config = make_config(exploration_rate=eps, max_per_category=cap, **extra)
    c = cands(seed % 7, n=400, sponsored_rate=0.1) if sponsored else cands(seed % 7, n=400)
    ranked = rank(c, config, np.random.default_rng(seed))
    replayed = target_probabilities(c, config, ranked.indices)
    np.testing.assert_allclose(replayed, ranked.propensities, rtol=0, atol=1e-12)


def test_an_item_outside_the_candidates_pool_ends_its_support() -> None:
    c = cands(3, n=400)
    logging = make_config(exploration_rate=0.3, rank_cut=60, list_size=12)
    narrow = make_config(exploration_rate=0.3, rank_cut=12, list_size=12)
    ranked = rank(c, logging, np.random.default_rng(1))
    probs = target_probabilities(c, narrow, ranked.indices)
    assert len(probs) == ranked.indices.size
    # the narrow pool holds the top 12 only: an explored item from further down ends the narrow config's support
    first_zero = probs.index(0.0)
    assert all(p == 0.0 for p in probs[first_zero:])
    assert all(0.0 < p <= 1.0 for p in probs[:first_zero])


def test_prefix_weighted_logs_estimate_another_configs_slot_frequencies() -> None:
    """Importance weights built from replayed probabilities recover the candidate's own behaviour.

    Log 6,000 lists with one config, weight each slot by the product of
    (candidate prob / logged propensity) over the slots up to it, and compare
    the weighted frequency of each item in slots 0 and 1 with the candidate's
    own frequencies over 6,000 lists.  A replay that ignored the prefix or the
    greedy term fails this by far more than the 5-standard-error tolerance.
    """
    c = cands(12, n=60)
    logging = make_config(fusion={"popularity": 1.0}, candidate_cut=60, rank_cut=15, list_size=2, exploration_rate=0.5)
    candidate = make_config(
        fusion={"popularity": 1.0}, candidate_cut=60, rank_cut=15, list_size=2, exploration_rate=0.3, mmr_lambda=0.5
    )
    runs = 6_000
    weighted: list[Counter[int]] = [Counter(), Counter()]
    squares: list[Counter[int]] = [Counter(), Counter()]
    for seed in range(runs):
        ranked = rank(c, logging, np.random.default_rng(seed))
        probs = target_probabilities(c, candidate, ranked.indices)
        weight = 1.0
        for slot, row in enumerate(ranked.indices.tolist()):
            weight *= probs[slot] / float(ranked.propensities[slot])
            weighted[slot][row] += weight
            squares[slot][row] += weight * weight
    own: list[Counter[int]] = [Counter(), Counter()]
    for seed in range(runs):
        for slot, row in enumerate(rank(c, candidate, np.random.default_rng(10_000 + seed)).indices.tolist()):
            own[slot][row] += 1
    checked = 0
    for slot in (0, 1):
        for row in set(own[slot]) | set(weighted[slot]):
            estimate = weighted[slot][row] / runs
            truth = own[slot][row] / runs
            se_estimate = np.sqrt(max(squares[slot][row] / runs - estimate**2, 0.0) / runs)
            se_truth = np.sqrt(truth * (1 - truth) / runs)
            assert abs(estimate - truth) <= 5 * np.hypot(se_estimate, se_truth) + 2 / runs, (slot, row)
            checked += truth > 0.01
    assert checked >= 20


def test_the_recorder_samples_joins_clicks_and_publishes_after_the_window() -> None:
    published: list[ReplayRecord] = []
    recorder = ReplaySettings(sample_rate=0.25, attribution_s=10.0).build(published.append)
    share = sum(recorder.wants(f"req-{i}") for i in range(20_000)) / 20_000
    assert 0.23 < share < 0.27
    assert recorder.wants("req-7") == ReplaySettings(sample_rate=0.25).build(published.append).wants("req-7")
    recorder.record(token("r1"), ["a", "b", "c"], [0.9, 0.5, 1.0], [(7, [0.8, 0.1, 1.0])], now_s=100.0)
    recorder.record(token("r2"), ["d"], [1.0], [], now_s=105.0)
    click = token("r1").click("b", 1, T0_MS + 1)
    recorder.click(click)
    recorder.click(msgspec.structs.replace(click, request_id="elsewhere"))  # not sampled: ignored
    assert recorder.flush(109.0) == 0
    assert recorder.flush(110.0) == 1
    (record,) = published
    assert [s.clicked for s in record.slots] == [False, True, False]
    assert [s.propensity for s in record.slots] == [0.9, 0.5, 1.0]
    assert record.targets[0].config_version == 7 and record.targets[0].probabilities == (0.8, 0.1, 1.0)
    assert decode_replay(encode_replay(record)) == record
    assert recorder.flush(0.0, everything=True) == 1
    stats = recorder.stats()
    assert (stats.sampled, stats.published, stats.dropped, stats.clicks_joined) == (2, 2, 0, 1)


def test_a_full_recorder_drops_and_counts_rather_than_publish_early() -> None:
    published: list[ReplayRecord] = []
    recorder = ReplayRecorder(ReplaySettings(sample_rate=1.0, max_pending=1), published.append)
    recorder.record(token("r1"), ["a"], [1.0], [], now_s=0.0)
    recorder.record(token("r2"), ["b"], [1.0], [], now_s=0.0)
    assert recorder.stats().dropped == 1 and not published


@pytest.mark.parametrize(
    ("field", "value"), [("sample_rate", 1.5), ("sample_rate", -0.1), ("attribution_s", -1.0), ("max_pending", 0)]
)
def test_bad_replay_settings_name_the_field(field: str, value: float) -> None:
    with pytest.raises(SidecarError, match=f"ReplaySettings.{field}"):
        ReplaySettings(**{field: value})  # type: ignore[arg-type]


def test_a_record_whose_targets_do_not_match_its_slots_is_refused() -> None:
    published: list[ReplayRecord] = []
    ok = ReplaySettings(sample_rate=1.0).build(published.append)
    ok.record(token("r1"), ["a", "b"], [1.0, 1.0], [(3, [1.0, 0.0])], now_s=0.0)
    ok.flush(0.0, everything=True)
    raw = msgspec.json.decode(encode_replay(published[0]))
    raw["targets"][0]["probabilities"] = [1.0]
    with pytest.raises(msgspec.ValidationError, match="one value per slot"):
        decode_replay(msgspec.json.encode(raw))
    raw["targets"][0]["probabilities"] = [1.0, 1.5]
    with pytest.raises(msgspec.ValidationError):
        decode_replay(msgspec.json.encode(raw))


def _state(timeline: dict[int, tuple[int, Allocation | None]], configs: dict[int, CascadeConfig]) -> ServingState:
    version = max(timeline)
    return ServingState(
        version=version,
        control_version=timeline[version][0],
        allocation=timeline[version][1],
        configs=MappingProxyType(configs),
        timeline=MappingProxyType(timeline),
    )


def test_pending_candidates_are_the_configs_registered_since_serving_last_changed() -> None:
    base = default_config()
    c2, c3, c5, c6 = (
        msgspec.structs.replace(base, re_rank=msgspec.structs.replace(base.re_rank, mmr_lambda=lam))
        for lam in (0.5, 0.6, 0.7, 0.8)
    )
    control = ArmShare(arm_id="control", config_version=1, share=1.0)
    allocation = Allocation(experiment_id="e1", salt="s", arms=(control,))
    # v1 activates, v2-v3 register a round, v4 allocates it, v5-v6 register the next round
    timeline = {1: (1, None), 2: (1, None), 3: (1, None), 4: (1, allocation), 5: (1, allocation), 6: (1, allocation)}
    configs = {1: base, 2: c2, 3: c3, 5: c5, 6: c6}
    assert pending_candidates(_state({k: v for k, v in timeline.items() if k <= 3}, configs)) == ((2, c2), (3, c3))
    assert pending_candidates(_state({k: v for k, v in timeline.items() if k <= 4}, configs)) == ()
    state = _state(timeline, configs)
    assert pending_candidates(state) == ((5, c5), (6, c6))
    assert pending_candidates(state, limit=1) == ((6, c6),)
    assert Snapshot.from_state(state).pending == ((5, c5), (6, c6))



def test_a_candidate_that_cannot_rank_the_set_never_fails_the_request() -> None:
    """A pending config naming a signal this ranker's candidates lack: the request is served, the replay counted."""
    from schemas.config import PreRank, Signal
    from schemas.config_log import Keyring
    from serving_sidecar.holder import ArmConfig
    from serving_sidecar.sidecar import SidecarConfig

    base = make_config(exploration_rate=0.1)
    odd = msgspec.structs.replace(
        base, pre_rank=PreRank(fusion_weights=(Signal("no_such_signal", 1.0),), candidate_cut=200)
    )
    sidecar = SidecarConfig(
        bootstrap="127.0.0.1:1",  # never started: nothing is sent
        keyring=Keyring.parse("k1:" + "ab" * 16, "k1"),
        source_id="replay-unit",
        replay=ReplaySettings(sample_rate=1.0),
    ).build()
    sidecar.holder.swap(Snapshot(version=2, control=ArmConfig("control", 1, base), pending=((2, odd),)))
    request = sidecar.begin("u1", surface="home", cohort="all")
    ranked = sidecar.rank(request, cands(1, n=400), np.random.default_rng(0))
    assert ranked.indices.size == base.re_rank.list_size
    assert sidecar.replay is not None and sidecar.replay.stats().failed == 1
    assert sidecar.replay.stats().sampled == 0
