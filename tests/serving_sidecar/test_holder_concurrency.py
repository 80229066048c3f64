"""The issue's proof of the atomic swap: many request threads while the config swaps 100 times.

"Under concurrent requests from many threads while configs swap 100 times:
zero failed requests and every request saw exactly one whole config."

101 serving states are folded from signed changes (the real path).  In state
i every tuned number of both configs is derived from i (control:
candidate_cut = 1000 + i, rank.cut = 200 + i, list_size = 10 + i; treatment:
candidate_cut = 5000 + i, rank.cut = 600 + i, list_size = 10 + i) and the
snapshot's version is 3i + 3, so a request that mixed two states would see
fields that disagree about i.  Every seventh state has the treatment arm
opened by the breaker, so the cut-back path is swapped too.  Each request
reads the snapshot once, assigns the user, reads the fields of the config it
is served and records a latency, exactly like the ranker's hot path.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterator

import msgspec
import pytest

from schemas.config import Allocation, ArmShare, CascadeConfig, default_config
from schemas.config_log import ConfigChange, Keyring, ServingState, apply, fold, sign
from serving_sidecar.assignment import Router, assign
from serving_sidecar.holder import ConfigHolder, Snapshot
from serving_sidecar.latency import LatencyMonitor

KEYRING = Keyring.parse("k1:" + "ab" * 16, "k1")
T0_MS = 1_700_000_000_000
SWAPS = 100
READERS = 8
NOW_S = 1_000.0  # one fixed time: nothing ages out, so recorded counts must be exact


def control_config(i: int) -> CascadeConfig:
    base = default_config()
    return msgspec.structs.replace(
        base,
        pre_rank=msgspec.structs.replace(base.pre_rank, candidate_cut=1_000 + i),
        rank=msgspec.structs.replace(base.rank, cut=200 + i),
        re_rank=msgspec.structs.replace(base.re_rank, list_size=10 + i),
    )


def treatment_config(i: int) -> CascadeConfig:
    base = control_config(i)
    return msgspec.structs.replace(
        base,
        pre_rank=msgspec.structs.replace(base.pre_rank, candidate_cut=5_000 + i),
        rank=msgspec.structs.replace(base.rank, cut=600 + i),
    )


def which_state(config: CascadeConfig) -> tuple[str, int]:
    """("control" | "treatment", i) read back from every tuned field; fails on a torn mix."""
    list_i = config.re_rank.list_size - 10
    if config.pre_rank.candidate_cut >= 5_000:
        kind, cut_i, rank_i = "treatment", config.pre_rank.candidate_cut - 5_000, config.rank.cut - 600
    else:
        kind, cut_i, rank_i = "control", config.pre_rank.candidate_cut - 1_000, config.rank.cut - 200
    assert cut_i == rank_i == list_i, f"torn config: {kind} fields say {cut_i}, {rank_i}, {list_i}"
    return kind, cut_i


def signed(version: int, kind: str, **fields: object) -> ConfigChange:
    unsigned = ConfigChange(
        schema_version=1,
        version=version,
        parent_version=version - 1,
        author="swap-test",
        reason=f"state {version}",
        created_ms=T0_MS + version,
        kind=kind,  # type: ignore[arg-type]
        key_id="k1",
        **fields,  # type: ignore[arg-type]
    )
    return sign(unsigned, KEYRING)


def changes_for(i: int) -> Iterator[ConfigChange]:
    """The three changes that lead to state i: activate control i, register treatment i, allocate."""
    v = 3 * i
    yield signed(v + 1, "config", config=control_config(i), activate=True)
    yield signed(v + 2, "config", config=treatment_config(i))
    allocation = Allocation(
        experiment_id="swap-exp",
        salt="swap-salt",
        arms=(ArmShare("control", v + 1, 0.5), ArmShare("treatment", v + 2, 0.5)),
    )
    yield signed(v + 3, "allocation", allocation=allocation)


@pytest.fixture(scope="module")
def snapshots() -> list[Snapshot]:
    """The 101 whole snapshots, state i after changes 1 .. 3i + 3 of one signed log."""
    log = [change for i in range(SWAPS + 1) for change in changes_for(i)]
    states: list[ServingState] = []
    state = ServingState()
    for change in log:
        state = apply(state, change, KEYRING)
        if state.version % 3 == 0:
            states.append(state)
    # The incremental states are exactly what fold gives for each prefix (spot checks) and the whole log.
    for i in (0, 1, 50, SWAPS):
        folded = fold(log, KEYRING, until_version=3 * i + 3)
        assert not folded.refused
        assert folded.state == states[i]
    out = []
    for i, st in enumerate(states):
        opened = frozenset({"treatment"}) if i % 7 == 3 else frozenset()
        out.append(Snapshot.from_state(st, opened))
    return out


def check_whole(i: int, snapshot: Snapshot) -> None:
    """Snapshot i is internally whole (the fixture's own invariant, checked once up front)."""
    assert snapshot.version == 3 * i + 3
    assert snapshot.control.config_version == 3 * i + 1
    assert which_state(snapshot.control.config) == ("control", i)
    assert which_state(snapshot.arms["treatment"].config) == ("treatment", i)


def test_every_request_sees_one_whole_config_while_swapping(snapshots: list[Snapshot]) -> None:
    for i, snapshot in enumerate(snapshots):
        check_whole(i, snapshot)
    holder = ConfigHolder(snapshots[0])
    router = Router()
    monitor = LatencyMonitor(window_s=60.0, slices=6)
    done = threading.Event()
    start = threading.Barrier(READERS + 1)
    failures: list[BaseException] = []
    seen: list[list[tuple[int, str, int, str, int]]] = [[] for _ in range(READERS)]

    def request_loop(reader: int) -> None:
        log = seen[reader]
        n = 0
        start.wait()
        while True:
            finishing = done.is_set()  # one more full pass after the last swap
            try:
                snapshot = holder.snapshot()  # the one read of the request
                assert snapshot is not None
                user = f"user-{reader}-{n % 977}"
                got = router.assign(snapshot, user)
                kind, i = which_state(got.config)
                assert snapshot.version == 3 * i + 3
                served_treatment = got.arm_id == "treatment" and not got.served_control_because_open
                assert kind == ("treatment" if served_treatment else "control")
                assert got.config_version == (3 * i + 2 if kind == "treatment" else 3 * i + 1)
                assert got.served_control_because_open == (
                    got.arm_id == "treatment" and "treatment" in snapshot.open_arms
                )
                monitor.record(got.arm_id, 1.0 + (n % 50), NOW_S)
                log.append((snapshot.version, got.arm_id, got.config_version, kind, i))
            except BaseException as err:
                failures.append(err)
                return
            n += 1
            if finishing:
                return

    readers = [threading.Thread(target=request_loop, args=(r,), name=f"reader-{r}") for r in range(READERS)]
    old_interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)  # switch threads as often as possible: torn reads would show
    try:
        for thread in readers:
            thread.start()
        start.wait()
        for snapshot in snapshots[1:]:
            holder.swap(snapshot)
            time.sleep(0.002)
        done.set()
        for thread in readers:
            thread.join(timeout=60)
    finally:
        sys.setswitchinterval(old_interval)

    assert failures == []
    assert not any(thread.is_alive() for thread in readers)
    assert holder.snapshot() is snapshots[-1]
    assert holder.swaps == SWAPS

    whole = {
        (3 * i + 3, arm, version, kind, i)
        for i, snapshot in enumerate(snapshots)
        for arm, version, kind in (
            ("control", 3 * i + 1, "control"),
            ("treatment", 3 * i + 2, "treatment") if not snapshot.open_arms else ("treatment", 3 * i + 1, "control"),
        )
    }
    total = 0
    versions_seen: set[int] = set()
    for log in seen:
        assert log, "every reader made requests"
        assert set(log) <= whole
        versions = [entry[0] for entry in log]
        assert versions == sorted(versions), "a reader went back to an older config"
        assert versions[-1] == snapshots[-1].version  # the last pass saw the final config
        versions_seen.update(versions)
        total += len(log)
    assert len(versions_seen) > 10, "the readers overlapped with the swaps"
    print(f"{total} requests by {READERS} threads saw {len(versions_seen)} of {SWAPS + 1} configs")
    # Lock-free recording lost no sample: one count per request.
    recorded = sum(monitor.stats(arm, NOW_S).count for arm in ("control", "treatment"))
    assert recorded == total
    # The fast path agreed with the reference on what it served at the end.
    final = snapshots[-1]
    for user in (f"user-0-{k}" for k in range(50)):
        assert router.assign(final, user) == assign(final, user)
