"""`rectune skills [--json]`: list the Skillhub, grouped by stage and cohort.

Registered into the main parser by `rectune.cli.build_parser` through
`register_skills_commands`.  Reads every skill from Redis
(`RECTUNE_REDIS_URL`, `Settings.redis_url`) through
`agents.skillhub.RedisSkillStore` and prints, per (stage, cohort), each
skill's pattern, confidence, evidence count, status and when it was last
validated.  Filters: `--stage`, `--cohort`, `--surface`, `--status`;
`--prefix` selects another Skillhub key prefix (tests, several deployments
on one Redis).  With `--json` the same groups are printed as one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from collections.abc import Callable
from typing import Any

import msgspec
from redis.exceptions import RedisError

from agents.insight import STAGES
from agents.skill_search import describe
from agents.skillhub import DEFAULT_PREFIX, RedisSkillStore, SkillStoreError
from agents.skills import STATUSES, Skill
from rectune.errors import RectuneError, redis_unavailable
from rectune.settings import Settings
from schemas.events import ms_to_datetime

Handler = Callable[[argparse.Namespace, Settings], int]


def _iso(ms: int) -> str | None:
    return ms_to_datetime(ms).isoformat().replace("+00:00", "Z") if ms > 0 else None


def skill_json(skill: Skill) -> dict[str, Any]:
    """One skill as a JSON-ready row: the record plus `evidence_count`, `last_validated_at` and `summary`."""
    row: dict[str, Any] = msgspec.to_builtins(skill)
    row["evidence_count"] = len(skill.evidence)
    row["last_validated_at"] = _iso(skill.last_validated_ms)
    row["summary"] = describe(skill)
    return row


def group_skills(skills: list[Skill]) -> list[tuple[str, str, list[Skill]]]:
    """(stage, cohort, skills) groups: stages in cascade order, cohorts by name, skills by confidence (desc)."""
    groups: dict[tuple[str, str], list[Skill]] = {}
    for skill in skills:
        groups.setdefault((skill.stage, skill.cohort), []).append(skill)
    order: dict[str, int] = {stage: i for i, stage in enumerate(STAGES)}
    return [
        (stage, cohort, sorted(members, key=lambda s: (s.status == "retired", -s.confidence, s.skill_id)))
        for (stage, cohort), members in sorted(groups.items(), key=lambda kv: (order.get(kv[0][0], 99), kv[0][1]))
    ]


async def _load(settings: Settings, args: argparse.Namespace) -> list[Skill]:
    async with RedisSkillStore(settings.redis_url, args.prefix) as store:
        skills = await store.list_by(stage=args.stage, cohort=args.cohort, surface=args.surface)
    return [s for s in skills if args.status is None or s.status == args.status]


def _cmd_skills(args: argparse.Namespace, settings: Settings) -> int:
    try:
        skills = asyncio.run(_load(settings, args))
    except RedisError as err:
        what = "cannot read the Skillhub from"
        raise redis_unavailable(what, settings.redis_url, err) from err
    except SkillStoreError as err:
        msg = f"the Skillhub holds an unreadable record: {err}"
        raise RectuneError(msg, hint="it was written by an incompatible build; inspect the key named above") from err
    groups = group_skills(skills)
    if args.json:
        data = {
            "prefix": args.prefix,
            "count": len(skills),
            "groups": [
                {"stage": stage, "cohort": cohort, "skills": [skill_json(s) for s in members]}
                for stage, cohort, members in groups
            ],
        }
        print(json.dumps(data, indent=2))
        return 0
    if not skills:
        print(f"no skills in the Skillhub ({args.prefix} at {settings.redis_url})")
        return 0
    for stage, cohort, members in groups:
        print(f"[{stage} / cohort {cohort}]")
        for s in members:
            validated = _iso(s.last_validated_ms) or "never"
            print(
                f"  {s.skill_id}  {s.surface:<10} {s.status:<8} confidence={s.confidence:.2f}"
                f"  evidence={len(s.evidence):<3} last_validated={validated}"
            )
            print(f"      {describe(s)}")
    return 0


def register_skills_commands(sub: Any) -> None:
    """Add `rectune skills` to the main parser's subcommands (called by `rectune.cli.build_parser`)."""
    p = sub.add_parser("skills", help="list the Skillhub: skills by stage and cohort, with confidence and evidence")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--stage", choices=STAGES, default=None, help="only this stage")
    p.add_argument("--cohort", default=None, help="only this cohort")
    p.add_argument("--surface", default=None, help="only this surface")
    p.add_argument("--status", choices=STATUSES, default=None, help="only skills with this status")
    p.add_argument("--prefix", default=DEFAULT_PREFIX, help=f"Skillhub key prefix in Redis (default {DEFAULT_PREFIX})")
    p.set_defaults(handler=_cmd_skills)
