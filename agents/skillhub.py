"""The Skillhub's storage: a `SkillStore` Protocol, a Redis adapter and an in-memory one (thin, no logic).

What a skill is and how evidence changes it lives in `agents.skills` (pure);
this module only keeps skills.  Callers: the Skill agent (`load_all`, then
`upsert_many` of what `update_skills` changed), the Actor and Critic
(`list_by` for a surface's stage/cohort), `rectune skills` (`load_all`), and
the tests (the in-memory store stands in for Redis in unit tests).

Redis layout (`prefix` defaults to "rectune:skills"):

- `{prefix}:skill:{skill_id}`: a hash — `json` (the `Skill` as msgspec JSON,
  the record of truth) plus `revision`, `stage`, `surface`, `cohort`,
  `status`, `confidence`, `updated_ms` for people reading Redis directly;
- `{prefix}:idx:all`, `{prefix}:idx:stage:{stage}`, `{prefix}:idx:cohort:{cohort}`,
  `{prefix}:idx:stage:{stage}:cohort:{cohort}`, `{prefix}:idx:surface:{surface}`:
  sets of skill ids.  A skill's stage, surface and cohort are part of its
  id, so an id never moves between index sets.

Writes are atomic: `upsert_many` WATCHes the skill keys, checks revisions,
then writes every hash and index in one MULTI/EXEC, retrying when a watched
key changed underneath.  The revision check is a compare-and-set: without
`expected`, a stored skill is only replaced by a higher revision (or by the
identical record, so a retried write is a no-op); with `expected` (skill id
→ the revision the writer loaded, 0 for absent) the stored revision must be
exactly that.  A failed check raises `SkillConflictError` and writes nothing.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Final, Protocol, runtime_checkable

import msgspec
import redis.asyncio as aioredis
from redis.exceptions import WatchError
from redis.typing import EncodableT, FieldT

from agents.skills import Skill

DEFAULT_PREFIX: Final = "rectune:skills"
_WATCH_RETRIES: Final = 8

_encoder: Final = msgspec.json.Encoder()
_decoder: Final = msgspec.json.Decoder(Skill)


class SkillStoreError(Exception):
    """A stored skill cannot be read (corrupt or from an incompatible build); the message names the key."""


class SkillConflictError(SkillStoreError):
    """An upsert lost a compare-and-set: another writer stored a newer (or different) revision first."""

    def __init__(self, conflicts: Mapping[str, tuple[int, int]], reason: str = "") -> None:
        self.conflicts = dict(conflicts)  # skill id -> (stored revision, offered revision); -1 = unknown
        detail = ", ".join(f"{k} (stored r{s}, offered r{o})" for k, (s, o) in sorted(self.conflicts.items()))
        msg = f"skills changed by another writer: {reason or detail}; reload and re-apply the insights"
        super().__init__(msg)


def encode_skill(skill: Skill) -> bytes:
    """The stored form of a skill (JSON)."""
    return _encoder.encode(skill)


def decode_skill(data: bytes | str, where: str = "skill") -> Skill:
    """Parse a stored skill; `SkillStoreError` naming `where` when it is not one."""
    try:
        return _decoder.decode(data)
    except msgspec.DecodeError as err:  # ValidationError is a DecodeError
        msg = f"{where}: not a valid stored skill ({err})"
        raise SkillStoreError(msg) from err


def _check(
    stored: Mapping[str, tuple[int, bytes] | None],
    offered: Sequence[tuple[Skill, bytes]],
    expected: Mapping[str, int] | None,
) -> None:
    """The compare-and-set rule shared by both stores (see the module docstring)."""
    conflicts: dict[str, tuple[int, int]] = {}
    for skill, payload in offered:
        current = stored.get(skill.skill_id)
        revision = 0 if current is None else current[0]
        if expected is not None:
            ok = revision == expected.get(skill.skill_id, 0)
        else:
            ok = current is None or revision < skill.revision or current[1] == payload
        if not ok:
            conflicts[skill.skill_id] = (revision, skill.revision)
    if conflicts:
        raise SkillConflictError(conflicts)


def _distinct(skills: Iterable[Skill]) -> list[Skill]:
    by_id: dict[str, Skill] = {}
    for skill in skills:
        if skill.skill_id in by_id:
            msg = f"skills: {skill.skill_id} offered twice in one upsert"
            raise ValueError(msg)
        by_id[skill.skill_id] = skill
    return list(by_id.values())


def _matches(skill: Skill, stage: str | None, cohort: str | None, surface: str | None) -> bool:
    return (
        (stage is None or skill.stage == stage)
        and (cohort is None or skill.cohort == cohort)
        and (surface is None or skill.surface == surface)
    )


@runtime_checkable
class SkillStore(Protocol):
    """Where the Skillhub lives.  Results are sorted by skill id."""

    async def load_all(self) -> list[Skill]:
        """Every stored skill."""
        ...

    async def get(self, skill_id: str) -> Skill | None:
        """One skill, or None."""
        ...

    async def list_by(
        self, *, stage: str | None = None, cohort: str | None = None, surface: str | None = None
    ) -> list[Skill]:
        """The skills of a stage and/or cohort and/or surface (None = any)."""
        ...

    async def upsert_many(self, skills: Sequence[Skill], *, expected: Mapping[str, int] | None = None) -> None:
        """Store `skills` atomically (all or none) under the compare-and-set rule."""
        ...


class MemorySkillStore:
    """An in-process `SkillStore` (unit tests, the offline demo).  Stores encoded bytes, like Redis."""

    def __init__(self) -> None:
        self._records: dict[str, tuple[int, bytes]] = {}

    async def load_all(self) -> list[Skill]:
        """Every stored skill."""
        return [decode_skill(self._records[k][1], k) for k in sorted(self._records)]

    async def get(self, skill_id: str) -> Skill | None:
        """One skill, or None."""
        record = self._records.get(skill_id)
        return None if record is None else decode_skill(record[1], skill_id)

    async def list_by(
        self, *, stage: str | None = None, cohort: str | None = None, surface: str | None = None
    ) -> list[Skill]:
        """The skills of a stage and/or cohort and/or surface (None = any)."""
        return [s for s in await self.load_all() if _matches(s, stage, cohort, surface)]

    async def upsert_many(self, skills: Sequence[Skill], *, expected: Mapping[str, int] | None = None) -> None:
        """Store `skills` atomically (all or none) under the compare-and-set rule."""
        offered = [(s, encode_skill(s)) for s in _distinct(skills)]
        _check({s.skill_id: self._records.get(s.skill_id) for s, _ in offered}, offered, expected)
        for skill, payload in offered:
            self._records[skill.skill_id] = (skill.revision, payload)


class RedisSkillStore:
    """The Skillhub in Redis (layout and write rule in the module docstring).

    Owns its client when built from a URL (`aclose` closes it); use as an
    async context manager.  Redis errors (`redis.exceptions.RedisError`)
    propagate: the Skill agent retries on its next decision, the CLI reports.
    """

    def __init__(self, url: str, prefix: str = DEFAULT_PREFIX, *, client: aioredis.Redis | None = None) -> None:
        self.prefix = prefix.rstrip(":")
        self._owned = client is None
        self._client: aioredis.Redis = client if client is not None else aioredis.Redis.from_url(url)

    async def __aenter__(self) -> RedisSkillStore:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the client if this store made it."""
        if self._owned:
            await self._client.aclose()

    # ---- keys

    def skill_key(self, skill_id: str) -> str:
        """The hash holding one skill."""
        return f"{self.prefix}:skill:{skill_id}"

    def index_keys(self, skill: Skill) -> tuple[str, ...]:
        """Every index set a skill belongs to."""
        idx = f"{self.prefix}:idx"
        return (
            f"{idx}:all",
            f"{idx}:stage:{skill.stage}",
            f"{idx}:cohort:{skill.cohort}",
            f"{idx}:stage:{skill.stage}:cohort:{skill.cohort}",
            f"{idx}:surface:{skill.surface}",
        )

    def _query_sets(self, stage: str | None, cohort: str | None, surface: str | None) -> list[str]:
        idx = f"{self.prefix}:idx"
        sets = []
        if stage is not None and cohort is not None:
            sets.append(f"{idx}:stage:{stage}:cohort:{cohort}")
        elif stage is not None:
            sets.append(f"{idx}:stage:{stage}")
        elif cohort is not None:
            sets.append(f"{idx}:cohort:{cohort}")
        if surface is not None:
            sets.append(f"{idx}:surface:{surface}")
        return sets or [f"{idx}:all"]

    # ---- reads

    async def _fetch(self, ids: Iterable[bytes | str]) -> list[Skill]:
        names = sorted(i.decode() if isinstance(i, bytes) else i for i in ids)
        if not names:
            return []
        async with self._client.pipeline(transaction=False) as pipe:
            for name in names:
                pipe.hget(self.skill_key(name), "json")
            raw: list[bytes | None] = await pipe.execute()
        # An id without a hash cannot come from upsert_many (one transaction); tolerated, not invented.
        return [decode_skill(data, self.skill_key(name)) for name, data in zip(names, raw, strict=True) if data]

    async def load_all(self) -> list[Skill]:
        """Every stored skill."""
        return await self._fetch(await self._client.smembers(f"{self.prefix}:idx:all"))

    async def get(self, skill_id: str) -> Skill | None:
        """One skill, or None."""
        data = await self._client.hget(self.skill_key(skill_id), "json")
        return None if data is None else decode_skill(data, self.skill_key(skill_id))

    async def list_by(
        self, *, stage: str | None = None, cohort: str | None = None, surface: str | None = None
    ) -> list[Skill]:
        """The skills of a stage and/or cohort and/or surface (None = any)."""
        sets = self._query_sets(stage, cohort, surface)
        ids = await self._client.sinter(sets) if len(sets) > 1 else await self._client.smembers(sets[0])
        return await self._fetch(ids)

    # ---- writes

    async def upsert_many(self, skills: Sequence[Skill], *, expected: Mapping[str, int] | None = None) -> None:
        """Store `skills` atomically (all or none) under the compare-and-set rule."""
        offered = [(s, encode_skill(s)) for s in _distinct(skills)]
        if not offered:
            return
        keys = [self.skill_key(s.skill_id) for s, _ in offered]
        async with self._client.pipeline(transaction=True) as pipe:
            for _ in range(_WATCH_RETRIES):
                try:
                    await pipe.watch(*keys)
                    stored: dict[str, tuple[int, bytes] | None] = {}
                    for (skill, _), key in zip(offered, keys, strict=True):
                        revision, data = await pipe.hmget(key, ["revision", "json"])
                        stored[skill.skill_id] = None if data is None else (int(revision or 0), _as_bytes(data))
                    _check(stored, offered, expected)
                    pipe.multi()  # type: ignore[no-untyped-call]
                    for (skill, payload), key in zip(offered, keys, strict=True):
                        pipe.hset(key, mapping=_hash_fields(skill, payload))
                        for index in self.index_keys(skill):
                            pipe.sadd(index, skill.skill_id)
                    await pipe.execute()
                    return
                except WatchError:
                    continue
                finally:
                    await pipe.reset()  # type: ignore[no-untyped-call]
        reason = f"{len(offered)} skill(s) kept changing during {_WATCH_RETRIES} attempts"
        raise SkillConflictError({s.skill_id: (-1, s.revision) for s, _ in offered}, reason)


def _as_bytes(data: bytes | str) -> bytes:
    return data if isinstance(data, bytes) else data.encode()


def _hash_fields(skill: Skill, payload: bytes) -> dict[FieldT, EncodableT]:
    return {
        "json": payload,
        "revision": str(skill.revision),
        "stage": skill.stage,
        "surface": skill.surface,
        "cohort": skill.cohort,
        "status": skill.status,
        "confidence": repr(skill.confidence),
        "updated_ms": str(skill.updated_ms),
    }
