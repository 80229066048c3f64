"""`rectune agents` as real processes on tansu + Redis: kill -9 and resume, one leader of two, clean SIGTERM.

Also the command's flags: the policy file is validated (field and rule named),
the help documents it (and its example is a valid policy), and `rectune
approve` refuses an experiment that is not held.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import pytest
from aiokafka import AIOKafkaProducer, TopicPartition
from redis import asyncio as aioredis

from agents.experiment import ExperimentState
from agents.lease import lease_key
from agents.loop import LoopState
from agents.runtime import parse_policy
from agents.state_store import state_key
from rectune.admin import ensure_topics
from rectune.agents_cli import _AGENTS_HELP
from rectune.cli import main
from rectune.config_log_io import append_change, draft, read_log, replay
from rectune.embedded import ManagedProcess, spawn
from rectune.kafka_read import read_to_end
from rectune.processes import settings_env
from schemas.config import default_config
from schemas.config_log import Keyring
from schemas.metrics import BUCKET_FIELDS, FIELD_INDEX, N_FIELDS, MetricWindow, sparse_window_arrays
from schemas.topics import ALERTS, CONFIG, DECISIONS, METRICS

KEYS = "k1:" + "ef" * 16
KEYRING = Keyring.parse(KEYS, "k1")
BUCKETS = 8
POLICY = {
    "online": {
        "stages": [0.1, 0.3, 0.5],
        "min_dwell_s": 0,
        "min_stage_requests": 500,
        "horizon_s": 3600,
        "target_mde": 0.5,
        "settle_s": 0,
        "min_read_requests": 1e12,  # no primary read: the ramp is driven by dwell and requests only
        "srm_min_expected_requests": 1e12,  # the publisher does not follow the ramp's shares
    },
    "loop": {"k": 1, "cooldown_s": 3600},
}


def window(surface: str, arm_id: str, index: int, requests: float) -> bytes:
    """A closed-window partial of `arm_id` (`requests` per bucket, CTR 5%), as the stream worker publishes it."""
    sums = np.zeros((N_FIELDS, BUCKETS))
    sums[FIELD_INDEX["requests"]] = requests
    sums[FIELD_INDEX["impressions"]] = 12.0 * requests
    sums[FIELD_INDEX["clicks"]] = 0.6 * requests + np.arange(BUCKETS)
    ids, packed, bins, counts = sparse_window_arrays(sums, np.zeros(122, np.int64))
    start = 1_767_225_600_000 + index * 60_000
    return msgspec.json.encode(
        MetricWindow(
            schema_version=1,
            partial_id=f"{arm_id}:{index}",
            source_topic="rectune.events",
            source_partition=0,
            window_start_ms=start,
            window_end_ms=start + 60_000,
            surface=surface,
            arm_id=arm_id,
            cohort="all",
            config_versions=(1,),
            buckets=BUCKETS,
            fields=BUCKET_FIELDS,
            bucket_ids=ids,
            sums=packed,
            latency_bins=bins,
            latency_counts=counts,
            item_events=int(13.6 * requests * BUCKETS),
        )
    )


async def wait_for(
    pred: Callable[[], Awaitable[bool]], what: str, procs: list[ManagedProcess], timeout_s: float = 40.0
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if await pred():
            return
        await asyncio.sleep(0.2)
    tails = "\n".join(p.log_tail(3000) for p in procs)
    msg = f"timed out waiting for {what}\n{tails}"
    raise AssertionError(msg)


class Surface:
    """A seeded config log, a baseline window, Redis, and `rectune agents` processes for one surface."""

    def __init__(self, bootstrap: str, redis_url: str, tmp: Path) -> None:
        self.bootstrap, self.redis_url, self.tmp = bootstrap, redis_url, tmp
        self.surface = f"s{uuid.uuid4().hex[:6]}"
        self.policy = tmp / "policy.json"
        self.policy.write_text(json.dumps(POLICY))
        self.redis = aioredis.from_url(redis_url)
        self.producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
        self.procs: list[ManagedProcess] = []
        self.popens: dict[str, subprocess.Popen[bytes]] = {}
        self.windows = 0

    async def seed(self) -> None:
        await ensure_topics(self.bootstrap, [CONFIG, DECISIONS, ALERTS, METRICS])
        seed = draft("config", author="test", reason="seed", config=default_config(), activate=True)
        await append_change(self.bootstrap, seed, KEYRING)
        await self.producer.start()
        await self.producer.send_and_wait(METRICS.name, window(self.surface, "base", 0, 500.0), partition=0)

    def start(self, owner: str, *, lease_ttl_s: float = 2.0) -> ManagedProcess:
        env = {
            **os.environ,
            **settings_env(bootstrap=self.bootstrap, redis_url=self.redis_url, config_keys=KEYS, config_key_id="k1"),
            "PYTHONUNBUFFERED": "1",
        }
        argv = [sys.executable, "-m", "rectune.cli", "agents", "--surface", self.surface, "--owner", owner]
        argv += ["--policy", str(self.policy), "--tick-s", "0.2", "--lease-ttl-s", str(lease_ttl_s)]
        log_path = self.tmp / f"agents-{owner}.log"
        popen = spawn(argv, what="rectune agents", log_path=log_path, cwd=Path.cwd(), env=env)
        proc = ManagedProcess(popen, log_path)
        self.procs.append(proc)
        self.popens[owner] = popen
        return proc

    async def state(self) -> LoopState | None:
        raw = await self.redis.get(state_key(self.surface))
        return None if raw is None else LoopState.from_bytes(raw)

    async def experiment(self) -> ExperimentState | None:
        state = await self.state()
        return None if state is None or state.outbox is not None else state.experiment_state()

    async def at_stage(self, stage: int) -> bool:
        exp = await self.experiment()
        return exp is not None and exp.status == "running" and exp.stage == stage

    async def snapshot_taken(self, stage: int) -> bool:
        exp = await self.experiment()
        return exp is not None and exp.stage == stage and exp.snapshot is not None

    async def leader(self) -> str:
        raw = await self.redis.get(lease_key(self.surface))
        return "" if raw is None else raw.decode().split(":")[0]

    async def publish(self, exp: ExperimentState) -> None:
        """One more window per arm: 800 more requests in each arm (the stage minimum is 500)."""
        self.windows += 1
        for arm_id in exp.plan.arm_ids:
            await self.producer.send_and_wait(METRICS.name, window(self.surface, arm_id, self.windows, 100.0))

    async def records(self) -> list[dict[str, Any]]:
        got = await read_to_end(self.bootstrap, [TopicPartition(DECISIONS.name, 0)], settle_ms=200)
        out = [msgspec.json.decode(r.value) for r in got if r.value is not None]
        return [r for r in out if r.get("surface") == self.surface]

    async def close(self) -> None:
        for proc in self.procs:
            proc.kill()
        await self.producer.stop()
        await self.redis.aclose()


async def test_killed_with_sigkill_mid_experiment_resumes_without_repeating(
    tansu_broker: str, redis_url: str, tmp_path: Path
) -> None:
    s = Surface(tansu_broker, redis_url, tmp_path)
    try:
        await s.seed()
        a = s.start("a")
        await wait_for(lambda: s.at_stage(0), "stage 1 to run", s.procs)
        exp0 = await s.experiment()
        assert exp0 is not None
        await s.publish(exp0)
        await wait_for(lambda: s.at_stage(1), "the ramp to stage 2", s.procs)
        # the leader's first tick at stage 2 takes the SRM snapshot (settle_s is 0); a loaded machine can take
        # over a second to get there, and b would then take it instead, changing the state this test compares
        await wait_for(lambda: s.snapshot_taken(1), "the SRM snapshot of stage 2", s.procs)
        await asyncio.sleep(0.5)  # a few idle ticks of the leader at stage 2
        a.kill()  # SIGKILL
        killed_raw = await s.redis.get(state_key(s.surface))
        killed = LoopState.from_bytes(killed_raw)
        exp1 = killed.experiment_state()
        assert exp1 is not None and exp1.stage == 1 and killed.outbox is None
        epoch_a = {r["epoch"] for r in await s.records()}
        assert len(epoch_a) == 1

        b = s.start("b")
        await wait_for(lambda: _equals(s.leader(), "b"), "b to take the lease after its TTL", s.procs)
        await asyncio.sleep(1.0)  # b ticks on the stored state with no new traffic: nothing changes
        assert await s.redis.get(state_key(s.surface)) == killed_raw, "b resumed the exact stored state"
        await s.publish(exp0)
        await wait_for(lambda: s.at_stage(2), "b to ramp to stage 3", s.procs)
        assert b.alive()

        exp2 = await s.experiment()
        assert exp2 is not None and (await s.state()).cycle == killed.cycle == 1  # type: ignore[union-attr]
        assert (exp2.experiment_id, exp2.plan, exp2.started_ms) == (exp1.experiment_id, exp1.plan, exp1.started_ms)
        assert exp2.seq == exp1.seq + 1, "one ramp decision after the restart, nothing repeated"
        treatment = exp2.plan.arm_ids.index(exp2.plan.treatments[0].arm_id)
        assert exp1.stage_start_requests[treatment] == 800.0
        assert exp2.stage_start_requests[treatment] == 1600.0, "b counts on from a's totals"

        records = await s.records()
        assert len([r for r in records if r["kind"] == "proposal"]) == 1, "one proposal round"
        moves = [
            (r["payload"]["kind"], r["payload"]["stage"], r["epoch"]) for r in records if r["kind"] == "allocation"
        ]
        (ea,) = epoch_a
        eb = records[-1]["epoch"]
        assert eb > ea
        assert moves == [("allocate", 0, ea), ("ramp", 1, ea), ("ramp", 2, eb)]
        history = replay(await read_log(tansu_broker), KEYRING)
        assert all(e.accepted for e in history.entries)
        changes = [e.change for e in history.entries if e.change is not None]
        assert [c.kind for c in changes] == ["config", "config", "allocation", "allocation", "allocation"]
        shares = [c.allocation.arms[1].share for c in changes if c.allocation is not None]
        assert shares == [0.1, 0.3, 0.5], "one allocation per stage"
        assert "decision " in b.log_tail() and f"{s.surface} epoch={eb}" in b.log_tail()
    finally:
        await s.close()


async def _equals(value: Awaitable[str], expected: str) -> bool:
    return await value == expected


async def test_two_processes_one_leader_and_sigterm_hands_over_at_once(
    tansu_broker: str, redis_url: str, tmp_path: Path
) -> None:
    s = Surface(tansu_broker, redis_url, tmp_path)
    try:
        await s.seed()
        procs = {"a": s.start("a", lease_ttl_s=30.0), "b": s.start("b", lease_ttl_s=30.0)}
        await wait_for(lambda: s.at_stage(0), "stage 1 to run", s.procs)
        await asyncio.sleep(1.0)
        leader = await s.leader()
        standby = ({"a", "b"} - {leader}).pop()
        records = await s.records()
        assert len({r["epoch"] for r in records}) == 1, "one active loop wrote every record"
        lines = [ln for ln in procs[leader].log_tail(200_000).splitlines() if " decision " in ln]
        assert len(lines) == len(records), "one log line per decision record"
        assert not [ln for ln in procs[standby].log_tail(200_000).splitlines() if " decision " in ln]

        procs[leader].stop(timeout_s=20.0)  # SIGTERM
        assert s.popens[leader].returncode == 0, procs[leader].log_tail()
        assert "stopped (lease released)" in procs[leader].log_tail()
        released = time.monotonic()
        await wait_for(lambda: _equals(s.leader(), standby), "the standby to take over", s.procs, timeout_s=10.0)
        assert time.monotonic() - released < 10.0, "released, not expired (the TTL is 30 s)"
        exp = await s.experiment()
        assert exp is not None
        await s.publish(exp)
        await wait_for(lambda: s.at_stage(1), "the standby to continue the experiment", s.procs)
        after = await s.experiment()
        assert after is not None and after.experiment_id == exp.experiment_id
        epochs = [r["epoch"] for r in await s.records()]
        assert len(set(epochs)) == 2 and epochs == sorted(epochs)

        procs[standby].stop(timeout_s=20.0)
        assert s.popens[standby].returncode == 0
        assert await s.redis.get(lease_key(s.surface)) is None
    finally:
        await s.close()


# --------------------------------------------------------------------------- flags


def test_a_bad_policy_file_is_refused_with_the_field_and_the_rule(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"online": {"stages": [0.5, 0.1]}}))
    assert main(["agents", "--policy", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "--policy (RECTUNE_AGENTS_POLICY)" in err and "stages=(0.5, 0.1)" in err and "strictly increasing" in err
    bad.write_text(json.dumps({"loop": {"k": 1, "cooldwn_s": 5}}))
    assert main(["agents", "--policy", str(bad)]) == 2
    assert "policy.loop.cooldwn_s: unknown field" in capsys.readouterr().err
    bad.write_text(json.dumps({"online": {"alpha": 0.05, "final_alpha": 0.06}}))
    assert main(["agents", "--policy", str(bad)]) == 2
    assert "final_alpha=0.06: in [0, alpha=0.05)" in capsys.readouterr().err
    assert main(["agents", "--policy", str(tmp_path / "missing.json")]) == 2
    assert "cannot read" in capsys.readouterr().err
    assert main(["agents", "--tick-s", "5", "--lease-ttl-s", "5"]) == 2
    assert "--lease-ttl-s (RECTUNE_AGENTS_LEASE_TTL_S): must be > the tick" in capsys.readouterr().err


def test_help_documents_the_flags_and_its_policy_example_is_valid(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["agents", "--help"])
    text = capsys.readouterr().out
    for flag in ("--surface", "--brain", "--policy", "--tick-s", "--lease-ttl-s", "--owner", "SIGTERM"):
        assert flag in text
    example = _AGENTS_HELP.split("e.g.\n", 1)[1].split('\n"online" takes', 1)[0]
    policy, loop = parse_policy(example.encode(), "home")
    assert policy.stages == (0.05, 0.5) and loop.k == 3


def test_approve_refuses_an_experiment_that_is_not_held(
    redis_url: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RECTUNE_REDIS_URL", redis_url)
    assert main(["approve", "exp-nothing-held"]) == 2
    assert "must be held for approval" in capsys.readouterr().err


# --------------------------------------------------------------------------- refused before any I/O


@pytest.fixture
def no_runtime(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if `rectune agents` gets as far as building the runtime (the refusals must come first)."""

    def refuse(*_args: object, **_kwargs: object) -> None:
        pytest.fail("the agents runtime was built: the refusal came too late")

    monkeypatch.setattr("rectune.agents_cli.AgentRuntime", refuse)


def test_agents_without_signing_keys_names_the_variables_before_any_io(
    no_runtime: None, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("RECTUNE_CONFIG_KEYS", raising=False)
    monkeypatch.delenv("RECTUNE_CONFIG_KEY_ID", raising=False)
    assert main(["agents"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("rectune: error: RECTUNE_CONFIG_KEYS: must hold at least one signing key"), err
    assert "it is unset or empty" in err and "RECTUNE_CONFIG_KEY_ID" in err, err
    assert "hint:" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err

    monkeypatch.setenv("RECTUNE_CONFIG_KEYS", KEYS)
    assert main(["agents"]) == 2
    assert "RECTUNE_CONFIG_KEY_ID: must name the key of RECTUNE_CONFIG_KEYS" in capsys.readouterr().err

    monkeypatch.setenv("RECTUNE_CONFIG_KEY_ID", "k9")
    assert main(["agents"]) == 2
    assert "RECTUNE_CONFIG_KEY_ID (active_key_id): must name one of the keys ['k1']" in capsys.readouterr().err


@pytest.mark.parametrize("key", [None, "", "   "])
def test_agents_with_the_gemini_brain_and_no_api_key_names_the_variable_before_any_io(
    key: str | None, no_runtime: None, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RECTUNE_CONFIG_KEYS", KEYS)
    monkeypatch.setenv("RECTUNE_CONFIG_KEY_ID", "k1")
    if key is None:
        monkeypatch.delenv("GEMINI_API_KEY", raising=False)
    else:
        monkeypatch.setenv("GEMINI_API_KEY", key)
    assert main(["agents", "--brain", "gemini"]) == 2
    err = capsys.readouterr().err
    assert "--brain gemini: needs GEMINI_API_KEY set" in err and "--brain offline" in err, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err


def test_approve_with_redis_down_is_one_clear_error(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    with socket.socket() as probe:  # a port nobody listens on: bound, then closed
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("RECTUNE_REDIS_URL", f"redis://127.0.0.1:{port}/0")
    assert main(["approve", "exp-1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"rectune: error: cannot record the approval of 'exp-1' in redis://127.0.0.1:{port}/0"), err
    assert "hint: is Redis running? set RECTUNE_REDIS_URL" in err and "Traceback" not in err, err
