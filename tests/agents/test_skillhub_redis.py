"""Skillhub stores: round trips, indexes, atomic compare-and-set upserts (memory and real Redis); `rectune skills`."""

from __future__ import annotations

import argparse
import asyncio
import json
import uuid
from collections.abc import AsyncIterator

import msgspec
import pytest
import redis.asyncio as aioredis

from agents.insight import Direction, Insight, stage_of
from agents.skillhub import (
    MemorySkillStore,
    RedisSkillStore,
    SkillConflictError,
    SkillStore,
    SkillStoreError,
)
from agents.skills import Skill, update_skills
from rectune.embedded import free_port
from rectune.errors import RectuneError
from rectune.settings import load_settings
from rectune.skills_cli import register_skills_commands


def _insight(
    experiment: str, parameter: str, direction: Direction, cohort: str, *, good: bool = True, at_ms: int = 1
) -> Insight:
    lower, upper = (0.02, 0.08) if good else (-0.08, -0.02)
    return Insight(
        experiment_id=experiment,
        surface="home",
        cohort=cohort,
        arm_id="t1",
        stage=stage_of(parameter),
        parameter=parameter,
        direction=direction,
        before=1.0,
        after=2.0 if direction == "+" else 0.5,
        co_changed=1,
        metric="ctr",
        role="objective",
        control_value=0.05,
        treatment_value=0.0525,
        effect=(lower + upper) / 2,
        lower=lower,
        upper=upper,
        level=0.95,
        significant=True,
        verdict="better" if good else "worse",
        at_ms=at_ms,
    )


def _skills() -> tuple[Skill, ...]:
    skills, _ = update_skills(
        [],
        [
            _insight("e1", "re_rank.mmr_lambda", "-", "new"),
            _insight("e1", "re_rank.freshness_boost", "+", "new"),
            _insight("e2", "rank.objective_weights.conversion", "+", "all"),
            _insight("e3", "pre_rank.candidate_cut", "+", "returning", at_ms=1),
            _insight("e4", "pre_rank.candidate_cut", "+", "returning", good=False, at_ms=2),
        ],
        now_ms=1_767_225_600_000,
    )
    return skills


async def _exercise(store: SkillStore) -> None:
    skills = _skills()
    assert isinstance(store, SkillStore)
    await store.upsert_many(skills)
    assert await store.load_all() == sorted(skills, key=lambda s: s.skill_id)
    first = skills[0]
    assert await store.get(first.skill_id) == first
    assert await store.get("sk-missing") is None
    assert {s.stage for s in await store.list_by(stage="re_rank")} == {"re_rank"}
    assert len(await store.list_by(stage="re_rank", cohort="new")) == 2
    assert [s.cohort for s in await store.list_by(cohort="returning")] == ["returning"]
    assert await store.list_by(stage="rank", cohort="new") == []
    assert len(await store.list_by(surface="home")) == len(skills)
    assert await store.list_by(surface="search") == []
    assert len(await store.list_by(stage="routing", surface="home")) == 1

    # The same record again is a no-op (a retried write); a stale revision is refused, atomically.
    await store.upsert_many(skills)
    updated, _ = update_skills(skills, [_insight("e9", "re_rank.mmr_lambda", "-", "new", at_ms=9)], now_ms=2)
    newer = next(s for s in updated if s.revision == 2)
    await store.upsert_many([newer])
    other = next(s for s in skills if s.skill_id != newer.skill_id)
    bumped_other = msgspec.structs.replace(other, revision=other.revision + 1, confidence=0.99)
    stale = next(s for s in skills if s.skill_id == newer.skill_id)
    with pytest.raises(SkillConflictError) as caught:
        await store.upsert_many([bumped_other, stale])
    assert caught.value.conflicts == {stale.skill_id: (2, 1)}
    assert await store.get(other.skill_id) == other  # nothing of the failed batch was written
    assert await store.get(newer.skill_id) == newer

    # With `expected`, the stored revision must be exactly the one the writer loaded.
    with pytest.raises(SkillConflictError):
        await store.upsert_many([bumped_other], expected={other.skill_id: 0})
    await store.upsert_many([bumped_other], expected={other.skill_id: other.revision})
    assert await store.get(other.skill_id) == bumped_other
    with pytest.raises(ValueError, match="twice"):
        await store.upsert_many([newer, newer])


async def test_memory_store_round_trips_and_guards_revisions() -> None:
    await _exercise(MemorySkillStore())


@pytest.fixture
async def redis_store(redis_url: str) -> AsyncIterator[RedisSkillStore]:
    prefix = f"test:skills:{uuid.uuid4().hex[:8]}"
    async with RedisSkillStore(redis_url, prefix) as store:
        yield store
        keys = [k async for k in store._client.scan_iter(match=f"{prefix}:*")]
        if keys:
            await store._client.delete(*keys)


async def test_redis_store_round_trips_and_guards_revisions(redis_store: RedisSkillStore) -> None:
    await _exercise(redis_store)


async def test_redis_layout_is_readable(redis_store: RedisSkillStore, redis_url: str) -> None:
    skills = _skills()
    await redis_store.upsert_many(skills)
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    try:
        s = skills[0]
        fields = await client.hgetall(redis_store.skill_key(s.skill_id))
        assert fields["stage"] == s.stage and fields["cohort"] == s.cohort and fields["status"] == s.status
        assert int(fields["revision"]) == s.revision
        assert msgspec.json.decode(fields["json"], type=Skill) == s
        for index in redis_store.index_keys(s):
            assert await client.sismember(index, s.skill_id)
        assert await client.scard(f"{redis_store.prefix}:idx:all") == len(skills)
        # A corrupt record is reported with its key, not silently dropped.
        await client.hset(redis_store.skill_key(s.skill_id), "json", "{not json")
        with pytest.raises(SkillStoreError, match=s.skill_id):
            await redis_store.load_all()
    finally:
        await client.aclose()


async def test_concurrent_writers_of_one_revision_only_one_wins(redis_url: str) -> None:
    prefix = f"test:skills:{uuid.uuid4().hex[:8]}"
    base = _skills()[0]
    async with RedisSkillStore(redis_url, prefix) as one, RedisSkillStore(redis_url, prefix) as two:
        await one.upsert_many([base])
        a = msgspec.structs.replace(base, revision=2, confidence=0.7)
        b = msgspec.structs.replace(base, revision=2, confidence=0.8)
        results = await asyncio.gather(
            one.upsert_many([a], expected={base.skill_id: 1}),
            two.upsert_many([b], expected={base.skill_id: 1}),
            return_exceptions=True,
        )
        assert sorted(type(r).__name__ for r in results) == ["NoneType", "SkillConflictError"]
        assert (await one.get(base.skill_id)) in (a, b)
        keys = [k async for k in one._client.scan_iter(match=f"{prefix}:*")]
        await one._client.delete(*keys)


# --------------------------------------------------------------------------- rectune skills


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="rectune")
    sub = parser.add_subparsers(dest="command", required=True)
    register_skills_commands(sub)
    return parser.parse_args(argv)


async def test_cli_lists_what_is_stored(
    redis_store: RedisSkillStore, redis_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    skills = _skills()
    await redis_store.upsert_many(skills)
    monkeypatch.setenv("RECTUNE_REDIS_URL", redis_url)
    settings = load_settings()

    # The handler runs its own event loop (as under `rectune`), so it is called off this test's loop.
    args = _parse(["skills", "--json", "--prefix", redis_store.prefix])
    assert await asyncio.to_thread(args.handler, args, settings) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["count"] == len(skills)
    groups = [(g["stage"], g["cohort"]) for g in data["groups"]]
    assert groups == [("rank", "all"), ("re_rank", "new"), ("routing", "returning")]
    rows = {row["skill_id"]: row for g in data["groups"] for row in g["skills"]}
    assert set(rows) == {s.skill_id for s in skills}
    for s in skills:
        row = rows[s.skill_id]
        assert row["confidence"] == s.confidence and row["status"] == s.status
        assert row["evidence_count"] == len(s.evidence)
        assert row["last_validated_ms"] == s.last_validated_ms
        assert row["pattern"]["parameter"] == s.pattern.parameter
    assert rows[next(s.skill_id for s in skills if s.cohort == "returning")]["status"] == "weakened"

    args = _parse(["skills", "--prefix", redis_store.prefix, "--stage", "re_rank"])
    assert await asyncio.to_thread(args.handler, args, settings) == 0
    text = capsys.readouterr().out
    assert "[re_rank / cohort new]" in text and "[rank / cohort all]" not in text
    assert "re_rank.mmr_lambda down" in text and "confidence=" in text and "evidence=1" in text

    args = _parse(["skills", "--prefix", redis_store.prefix + ":empty"])
    assert await asyncio.to_thread(args.handler, args, settings) == 0
    assert "no skills" in capsys.readouterr().out


def test_cli_reports_an_unreachable_redis(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RECTUNE_REDIS_URL", f"redis://127.0.0.1:{free_port()}/0")
    args = _parse(["skills", "--json"])
    with pytest.raises(RectuneError, match="cannot read the Skillhub"):
        args.handler(args, load_settings())
