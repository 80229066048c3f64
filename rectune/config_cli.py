"""`rectune config …`: inspect, change, roll back and replay the signed config log.

Registered into the main parser by `rectune.cli.build_parser` through
`register_config_commands`.  Every command reads the whole of
`rectune.config` and folds it exactly as the sidecars do
(`rectune.config_log_io.replay`), so what it prints is what they serve:

- `show [--json]`: the head: version, control config, allocation.
- `history [--json]`: every record: version, author, reason, kind, accepted
  or refused (and why), and the diff against the state before it.
- `propose FILE.json --author A --reason R [--activate]`: register a config.
- `allocate --experiment ID --salt S --arm ID=VERSION:SHARE … | --end`.
- `rollback --to-version V`: append a change restoring V's control config
  and allocation (history is never rewritten).
- `replay --until VERSION|ISO-TIMESTAMP [--json]`: rebuild an earlier state.

Signing keys come from the environment only: `RECTUNE_CONFIG_KEYS`
("id:hex,id:hex") and `RECTUNE_CONFIG_KEY_ID`; there is no default key.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec

from rectune.errors import RectuneError
from rectune.settings import Settings
from schemas.config import Allocation, ArmShare, ConfigError, decode_config
from schemas.config_log import ConfigChange, Keyring, ServingState, diff, keyring_from_env
from schemas.events import ms_to_datetime
from schemas.guardrails import Guardrails
from schemas.topics import CONFIG

if TYPE_CHECKING:  # the I/O modules (aiokafka) load only when a config command runs
    from rectune.config_log_io import Entry, History

Handler = Callable[[argparse.Namespace, Settings], int]


def keyring_from_settings(settings: Settings) -> Keyring:
    """The config keyring from RECTUNE_CONFIG_KEYS / RECTUNE_CONFIG_KEY_ID; a clear error when missing or bad."""
    try:
        return keyring_from_env(settings.config_keys, settings.config_key_id)
    except ConfigError as err:  # the message names the variable, the entry and the rule, never the secret
        msg = f"{err.field}: {err.rule}"
        raise RectuneError(msg, hint=err.hint) from err


def _iso(ms: int) -> str:
    return ms_to_datetime(ms).isoformat().replace("+00:00", "Z")


def _builtins(value: Any) -> Any:
    return msgspec.to_builtins(value) if value is not None else None


def state_json(state: ServingState) -> dict[str, Any]:
    """The serving part of a state as JSON-ready data (what `show` and `replay` print)."""
    return {
        "version": state.version,
        "control_version": state.control_version,
        "changed_ms": state.changed_ms,
        "changed_at": _iso(state.changed_ms) if state.changed_ms else None,
        "control": _builtins(state.control),
        "allocation": _builtins(state.allocation),
        "registered_versions": sorted(state.configs),
    }


def _plain(value: Any) -> Any:
    # Through JSON so tuples become lists and `diff` can compare them item by item.
    return msgspec.json.decode(msgspec.json.encode(value)) if value is not None else {}


def _diff(prefix: str, before: Any, after: Any) -> list[str]:
    a, b = _plain(before), _plain(after)
    return [f"{prefix}.{line}" for line in diff(a, b)]


def entry_json(entry: Entry) -> dict[str, Any]:
    """One history row: who, why, what kind, accepted or refused (and why), and the diff it made."""
    change = entry.change
    row: dict[str, Any] = {
        "offset": entry.record.offset,
        "accepted": entry.accepted,
        "refused": f"{entry.error.field}: {entry.error.rule}" if entry.error is not None else None,
    }
    if change is None:
        return {**row, "version": None, "kind": None, "author": None, "reason": None, "diff": []}
    before, after = entry.before, entry.after
    if change.kind == "config":
        lines = (
            ["config: first config"]
            if before.control is None
            else _diff("config", before.control, change.config)  # vs the control it would replace
        )
    else:
        lines = _diff("control", before.control, after.control) + _diff(
            "allocation", before.allocation, after.allocation
        )
    if change.kind == "config" and entry.accepted and change.activate:
        lines.append(f"control_version: {before.control_version} -> {after.control_version}")
    return {
        **row,
        "version": change.version,
        "parent_version": change.parent_version,
        "kind": change.kind,
        "activate": change.activate,
        "restores_version": change.restores_version,
        "author": change.author,
        "reason": change.reason,
        "created_ms": change.created_ms,
        "created_at": _iso(change.created_ms),
        "key_id": change.key_id,
        "control_version_after": after.control_version,
        "diff": lines,
    }


async def _history(settings: Settings, keyring: Keyring) -> History:
    from rectune.admin import ensure_topics
    from rectune.config_log_io import read_log, replay

    await ensure_topics(settings.bootstrap, [CONFIG])
    return replay(await read_log(settings.bootstrap), keyring, Guardrails())


def _print_state(state: ServingState, as_json: bool) -> None:
    data = state_json(state)
    if as_json:
        print(json.dumps(data, indent=2))
        return
    if state.version == 0:
        print("config log is empty: nothing is served yet")
        return
    print(f"version {state.version} (changed {data['changed_at']}), control config version {state.control_version}")
    allocation = state.allocation
    if allocation is None:
        print("allocation: none (everyone is served the control config)")
    else:
        print(
            f"allocation: experiment {allocation.experiment_id!r} salt {allocation.salt!r}, "
            f"randomised per {allocation.unit}"
        )
        for arm in allocation.arms:
            print(f"  arm {arm.arm_id}: config version {arm.config_version}, share {arm.share:g}")
    print("control config:")
    print(json.dumps(data["control"], indent=2))


def _cmd_show(args: argparse.Namespace, settings: Settings) -> int:
    history = asyncio.run(_history(settings, keyring_from_settings(settings)))
    _print_state(history.state, args.json)
    return 0


def _cmd_history(args: argparse.Namespace, settings: Settings) -> int:
    history = asyncio.run(_history(settings, keyring_from_settings(settings)))
    rows = [entry_json(e) for e in history.entries]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for row in rows:
        status = "accepted" if row["accepted"] else f"REFUSED ({row['refused']})"
        if row["version"] is None:
            print(f"offset {row['offset']}: undecodable record, {status}")
            continue
        print(
            f"v{row['version']} (parent {row['parent_version']}) {row['kind']} by {row['author']}"
            f" at {row['created_at']}, offset {row['offset']}: {status}"
        )
        print(f"    reason: {row['reason']}")
        for line in row["diff"]:
            print(f"    {line}")
    return 0


def _parse_until(text: str) -> tuple[int | None, int | None]:
    if text.isdigit():
        return int(text), None
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError as err:
        msg = f"--until: must be a version number or an ISO-8601 timestamp, got {text!r}"
        raise RectuneError(msg, hint="e.g. --until 12 or --until 2026-11-25T10:00:00Z") from err
    if when.tzinfo is None:
        msg = f"--until: the timestamp {text!r} must carry a timezone"
        raise RectuneError(msg, hint="append Z for UTC, e.g. 2026-11-25T10:00:00Z")
    return None, int(when.timestamp() * 1000)


def _cmd_replay(args: argparse.Namespace, settings: Settings) -> int:
    version, at_ms = _parse_until(args.until)
    history = asyncio.run(_history(settings, keyring_from_settings(settings)))
    state = history.until_version(version) if version is not None else history.until_ms(at_ms or 0)
    _print_state(state, args.json)
    return 0


def _append(settings: Settings, change: ConfigChange, as_json: bool) -> History:
    from rectune.config_log_io import append_change

    keyring = keyring_from_settings(settings)
    appended = asyncio.run(append_change(settings.bootstrap, change, keyring, Guardrails()))
    state = appended.history.state
    ours = next(e for e in appended.history.entries if e.record.offset == appended.offset)
    if as_json:
        print(json.dumps({"appended": entry_json(ours), "state": state_json(state)}, indent=2))
    else:
        print(f"appended version {appended.change.version} ({change.kind}) at offset {appended.offset}")
        for line in entry_json(ours)["diff"]:
            print(f"    {line}")
    return appended.history


def _cmd_propose(args: argparse.Namespace, settings: Settings) -> int:
    from rectune.config_log_io import draft

    try:
        raw = Path(args.file).read_bytes()
    except OSError as err:
        msg = f"cannot read the config file {args.file}: {err.strerror}"
        raise RectuneError(msg, hint="pass the path of a CascadeConfig JSON file") from err
    try:
        config = decode_config(raw)
    except ConfigError as err:
        msg = f"{args.file}: {err}"
        raise RectuneError(msg, hint="see schemas/config.py for the fields and bounds") from err
    change = draft("config", author=args.author, reason=args.reason, config=config, activate=args.activate)
    _append(settings, change, args.json)
    return 0


def _parse_arm(text: str) -> ArmShare:
    arm_id, sep, rest = text.partition("=")
    version, sep2, share = rest.partition(":")
    try:
        if not (sep and sep2 and arm_id):
            raise ValueError(text)
        return ArmShare(arm_id, int(version), float(share))
    except ValueError as err:
        msg = f"--arm: must be ID=VERSION:SHARE, got {text!r}"
        raise RectuneError(msg, hint="e.g. --arm control=3:0.9 --arm t1=5:0.1 (control first)") from err


def _cmd_allocate(args: argparse.Namespace, settings: Settings) -> int:
    from rectune.config_log_io import draft

    if args.end:
        if args.arm or args.experiment or args.salt:
            msg = "--end: takes no --experiment, --salt or --arm"
            raise RectuneError(msg)
        allocation = None
    else:
        if not (args.experiment and args.salt and args.arm):
            msg = "allocate: needs --experiment, --salt and at least one --arm (or --end)"
            raise RectuneError(msg, hint="the first --arm is control and must serve the control version")
        arms = tuple(_parse_arm(a) for a in args.arm)
        allocation = Allocation(experiment_id=args.experiment, salt=args.salt, arms=arms)
    change = draft("allocation", author=args.author, reason=args.reason, allocation=allocation)
    _append(settings, change, args.json)
    return 0


def _cmd_rollback(args: argparse.Namespace, settings: Settings) -> int:
    from rectune.config_log_io import draft

    change = draft("rollback", author=args.author, reason=args.reason, restores_version=args.to_version)
    history = _append(settings, change, args.json)
    if history.state.served() != history.until_version(args.to_version).served():
        msg = f"rollback appended, but the fold does not equal version {args.to_version}'s state"
        raise RectuneError(msg, hint="read `rectune config history`: another change may have landed after it")
    return 0


def _writer_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--author", required=True, help="who makes this change (recorded and signed)")
    p.add_argument("--reason", required=True, help="why (recorded and signed)")
    p.add_argument("--json", action="store_true", help="print JSON")


def register_config_commands(sub: Any) -> None:
    """Add `rectune config …` to the main parser's subcommands (called by `rectune.cli.build_parser`)."""
    config = sub.add_parser("config", help="inspect, change, roll back and replay the signed config log")
    csub = config.add_subparsers(dest="config_command", required=True)

    p = csub.add_parser("show", help="the current state: head version, control config, allocation")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(handler=_cmd_show)

    p = csub.add_parser("history", help="every change: author, reason, kind, accepted/refused, diff")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(handler=_cmd_history)

    p = csub.add_parser("propose", help="sign and append a CascadeConfig from a JSON file")
    p.add_argument("file", help="path of the config JSON")
    p.add_argument("--activate", action="store_true", help="make it the control config")
    _writer_args(p)
    p.set_defaults(handler=_cmd_propose)

    p = csub.add_parser("allocate", help="set the experiment allocation (or end it with --end)")
    p.add_argument("--experiment", help="experiment id")
    p.add_argument("--salt", help="assignment salt")
    p.add_argument("--arm", action="append", default=[], help="ID=VERSION:SHARE; the first is control")
    p.add_argument("--end", action="store_true", help="end the experiment: everyone gets control")
    _writer_args(p)
    p.set_defaults(handler=_cmd_allocate)

    p = csub.add_parser("rollback", help="append a change restoring an earlier version's state")
    p.add_argument("--to-version", type=int, required=True, help="the version whose state to restore")
    _writer_args(p)
    p.set_defaults(handler=_cmd_rollback)

    p = csub.add_parser("replay", help="rebuild and print the state at an earlier version or time")
    p.add_argument("--until", required=True, help="VERSION or ISO-8601 timestamp (with timezone)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(handler=_cmd_replay)


if __name__ == "__main__":  # pragma: no cover - use `rectune config …`
    sys.exit("run `rectune config …`")
