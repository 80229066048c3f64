"""`rectune config …` end to end on a real broker, run as a subprocess like an operator would.

propose → allocate → history (diffs) → rollback (a new version restoring
exactly an earlier state: fold equality) → replay --until VERSION|TIMESTAMP.
Also: keys only from the environment (clear errors naming the variable, no
secret echoed), bad changes refused before anything is appended, and
optimistic concurrency (a writer that lost the race is told who won).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import msgspec
import pytest

from rectune.config_log_io import (
    ConfigConflictError,
    confirm,
    draft,
    prepare,
    publish_records,
    read_log,
    replay,
)
from rectune.settings import load_settings
from schemas.config import default_config
from schemas.config_log import Keyring, encode_change
from schemas.guardrails import Guardrails

SECRET = "c0ffee" * 6
KEY_ENV = {"RECTUNE_CONFIG_KEYS": f"old:{'ab' * 16},k1:{SECRET}", "RECTUNE_CONFIG_KEY_ID": "k1"}
KEYS = Keyring.parse(KEY_ENV["RECTUNE_CONFIG_KEYS"], "k1")


def rectune(bootstrap: str, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, "RECTUNE_BOOTSTRAP": bootstrap, "RECTUNE_LOG_LEVEL": "warning"}
    for var in ("RECTUNE_CONFIG_KEYS", "RECTUNE_CONFIG_KEY_ID"):
        full.pop(var, None)
    full.update(KEY_ENV if env is None else env)
    return subprocess.run(
        [sys.executable, "-m", "rectune.cli", "config", *args],
        env=full,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def ok(bootstrap: str, *args: str) -> Any:
    done = rectune(bootstrap, *args)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout) if "--json" in args else done.stdout


def write_config(path: Path, **re_rank: Any) -> Path:
    data = msgspec.to_builtins(default_config())
    data["re_rank"].update(re_rank)
    path.write_text(json.dumps(data))
    return path


def served(state: dict[str, Any]) -> tuple[Any, ...]:
    return state["control_version"], state["control"], state["allocation"]


def test_propose_allocate_history_rollback_replay(tansu_broker: str, tmp_path: Path) -> None:
    base = write_config(tmp_path / "base.json")
    short = write_config(tmp_path / "short.json", list_size=10)
    b = tansu_broker
    ok(b, "propose", str(base), "--activate", "--author", "alice", "--reason", "hand-tuned start")
    ok(b, "propose", str(short), "--author", "bob", "--reason", "shorter lists", "--json")
    experiment = ["allocate", "--experiment", "e1", "--salt", "s1", "--arm"]
    ok(b, *experiment, "control=1:0.9", "--arm", "t1=2:0.1", "--author", "ops", "--reason", "start e1")
    ok(b, *experiment, "control=1:0.5", "--arm", "t1=2:0.5", "--author", "bob", "--reason", "ramp", "--json")
    promoted = ok(b, "propose", str(short), "--activate", "--author", "bob", "--reason", "promote t1", "--json")
    assert promoted["state"]["control_version"] == 5
    # history: who, why, what, and the diff against the state before
    rows = ok(b, "history", "--json")
    assert [(r["version"], r["kind"], r["author"], r["accepted"]) for r in rows] == [
        (1, "config", "alice", True),
        (2, "config", "bob", True),
        (3, "allocation", "ops", True),
        (4, "allocation", "bob", True),
        (5, "config", "bob", True),
    ]
    assert rows[1]["reason"] == "shorter lists"
    assert rows[1]["diff"] == ["config.re_rank.list_size: 12 -> 10"]
    assert "allocation.experiment_id: None -> 'e1'" in rows[2]["diff"]
    assert rows[3]["diff"] == ["allocation.arms[0].share: 0.9 -> 0.5", "allocation.arms[1].share: 0.1 -> 0.5"]
    assert "control_version: 1 -> 5" in rows[4]["diff"]
    text = ok(b, "history")
    assert "v4 (parent 3) allocation by bob" in text and "allocation.arms[1].share: 0.1 -> 0.5" in text

    # rollback to v3: a new version (6) whose served state equals v3's, history intact
    at_v3 = ok(b, "replay", "--until", "3", "--json")
    assert at_v3["version"] == 3 and at_v3["control"]["re_rank"]["list_size"] == 12
    assert at_v3["allocation"]["arms"][1]["share"] == 0.1
    back = ok(b, "rollback", "--to-version", "3", "--author", "carol", "--reason", "t1 hurt revenue", "--json")
    assert back["appended"]["version"] == 6 and back["appended"]["restores_version"] == 3
    shown = ok(b, "show", "--json")
    assert shown["version"] == 6 and served(shown) == served(at_v3)
    history = replay(asyncio.run(read_log(b)), KEYS, Guardrails())
    assert len(history.entries) == 6 and all(e.accepted for e in history.entries)  # never rewritten
    assert history.state.served() == history.until_version(3).served()  # fold equality

    # replay by time: just before v2 was written -> the state at v1
    created_v2 = rows[1]["created_at"]
    at_time = ok(b, "replay", "--until", created_v2, "--json")
    assert at_time["version"] == 2
    before_v2 = ok(b, "replay", "--until", rows[0]["created_at"], "--json")
    assert before_v2["version"] == 1 and before_v2["allocation"] is None
    assert "version 6" in ok(b, "show")


def test_keys_come_only_from_the_environment(tansu_broker: str) -> None:
    missing = rectune(tansu_broker, "show", env={})
    assert missing.returncode == 2 and "RECTUNE_CONFIG_KEYS: must hold at least one signing key" in missing.stderr
    no_id = rectune(tansu_broker, "show", env={"RECTUNE_CONFIG_KEYS": KEY_ENV["RECTUNE_CONFIG_KEYS"]})
    assert no_id.returncode == 2 and "RECTUNE_CONFIG_KEY_ID: must name the key" in no_id.stderr
    bad = rectune(
        tansu_broker, "show", env={"RECTUNE_CONFIG_KEYS": f"k1:{SECRET},k2:xyz", "RECTUNE_CONFIG_KEY_ID": "k1"}
    )
    assert bad.returncode == 2 and "RECTUNE_CONFIG_KEYS (keys[1]): secret must be hexadecimal" in bad.stderr
    assert SECRET not in bad.stderr + bad.stdout
    assert SECRET not in repr(load_settings(KEY_ENV))  # settings never print the keys


def test_bad_changes_are_refused_before_anything_is_appended(tansu_broker: str, tmp_path: Path) -> None:
    b = tansu_broker
    first = rectune(b, "propose", str(write_config(tmp_path / "c.json")), "--author", "a", "--reason", "r")
    assert first.returncode == 2 and "activate" in first.stderr  # the first config must be activated
    ok(b, "propose", str(write_config(tmp_path / "c.json")), "--activate", "--author", "a", "--reason", "r")
    risky = write_config(tmp_path / "risky.json", exploration_rate=0.3)
    refused = rectune(b, "propose", str(risky), "--author", "a", "--reason", "explore more")
    assert refused.returncode == 2 and "re_rank.exploration_rate" in refused.stderr
    who = ["--author", "a", "--reason", "r"]
    unknown = rectune(
        b, "allocate", "--experiment", "e", "--salt", "s", "--arm", "control=1:0.5", "--arm", "t=7:0.5", *who
    )
    assert unknown.returncode == 2 and "allocation.arms[1].config_version" in unknown.stderr
    early = rectune(b, "rollback", "--to-version", "9", "--author", "a", "--reason", "r")
    assert early.returncode == 2 and "restores_version" in early.stderr
    garbled = rectune(b, "allocate", "--arm", "control:1", "--experiment", "e", "--salt", "s", *who)
    assert garbled.returncode == 2 and "ID=VERSION:SHARE" in garbled.stderr
    bad_time = rectune(b, "replay", "--until", "2026-01-01T00:00:00")
    assert bad_time.returncode == 2 and "timezone" in bad_time.stderr
    assert len(asyncio.run(read_log(b))) == 1  # nothing but the one good change was appended


def test_history_shows_refused_records_with_their_reason(tansu_broker: str, tmp_path: Path) -> None:
    b = tansu_broker
    ok(b, "propose", str(write_config(tmp_path / "c.json")), "--activate", "--author", "a", "--reason", "r")
    head = replay(asyncio.run(read_log(b)), KEYS).state
    good = prepare(head, draft("allocation", author="m", reason="x"), KEYS, None, 1_767_225_600_000)
    forged = msgspec.structs.replace(good, author="mallory")
    asyncio.run(publish_records(b, [encode_change(forged), b"garbage"]))
    rows = ok(b, "history", "--json")
    assert [(r["version"], r["accepted"]) for r in rows] == [(1, True), (2, False), (None, False)]
    assert rows[1]["refused"].startswith("signature:") and rows[1]["author"] == "mallory"
    assert rows[2]["refused"].startswith("$:")
    assert ok(b, "show", "--json")["version"] == 1


def test_losing_writer_is_told_who_won(tansu_broker: str) -> None:
    """Two writers read the same head and both sign version 2; the second to land is refused by everyone."""

    async def race() -> None:
        b = tansu_broker
        head = replay(await read_log(b), KEYS).state
        first = draft("config", author="a", reason="r", config=default_config(), activate=True)
        v1 = prepare(head, first, KEYS, None, 1_767_225_600_000)
        await publish_records(b, [encode_change(v1)])
        head = replay(await read_log(b), KEYS).state
        ours = prepare(head, draft("allocation", author="us", reason="mine"), KEYS, None, 1_767_225_700_000)
        theirs = prepare(head, draft("allocation", author="them", reason="theirs"), KEYS, None, 1_767_225_700_001)
        assert ours.version == theirs.version == 2
        (_, our_offset) = await publish_records(b, [encode_change(theirs), encode_change(ours)])
        with pytest.raises(ConfigConflictError) as info:
            await confirm(b, ours, our_offset, KEYS)
        assert "version 2 was written first by 'them' at offset 1" in str(info.value)
        history = replay(await read_log(b), KEYS)
        assert history.state.version == 2 and history.entries[-1].error is not None  # ours stays, refused

    asyncio.run(race())
