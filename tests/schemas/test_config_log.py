"""The signed config log (pure): signing, keyring, apply rules, and replay determinism.

The determinism property is the heart of "rollback by replay": for every
prefix of a random history of 200 changes (with bad changes mixed in), the
fold equals the state recorded when that prefix was live, and every rollback
restores exactly the state of the version it names.
"""

from __future__ import annotations

import random
from typing import Any

import msgspec
import pytest

from schemas.config import Allocation, ArmShare, CascadeConfig, ConfigError, default_config
from schemas.config_log import (
    ConfigChange,
    Keyring,
    ServingState,
    apply,
    decode_change,
    encode_change,
    fold,
    sign,
    verify,
)
from schemas.errors import SignatureError
from schemas.guardrails import Guardrails

K1 = "11" * 16
K2 = "22" * 16
KEYS = Keyring.parse(f"k1:{K1}", "k1")
T0 = 1_767_225_600_000


def change(
    version: int,
    kind: str = "config",
    *,
    parent: int | None = None,
    config: CascadeConfig | None = None,
    activate: bool = False,
    allocation: Allocation | None = None,
    restores: int | None = None,
    author: str = "tester",
    keyring: Keyring | None = KEYS,
) -> ConfigChange:
    unsigned = ConfigChange(
        schema_version=1,
        version=version,
        parent_version=version - 1 if parent is None else parent,
        author=author,
        reason=f"change {version}",
        created_ms=T0 + version * 1000,
        kind=kind,  # type: ignore[arg-type]
        config=config if config is not None or kind != "config" else default_config(),
        activate=activate,
        allocation=allocation,
        restores_version=restores,
        key_id="none",
    )
    return sign(unsigned, keyring) if keyring is not None else unsigned


def with_re_rank(config: CascadeConfig, **fields: Any) -> CascadeConfig:
    return msgspec.structs.replace(config, re_rank=msgspec.structs.replace(config.re_rank, **fields))


def allocation(control: int, *treatments: tuple[str, int, float], experiment: str = "e1") -> Allocation:
    arms = [ArmShare(arm, version, share) for arm, version, share in treatments]
    control_share = 1.0 - sum(a.share for a in arms)
    return Allocation(experiment_id=experiment, salt="s", arms=(ArmShare("control", control, control_share), *arms))


# -- signing ------------------------------------------------------------------------


def test_sign_verify_round_trip_and_wire_round_trip() -> None:
    signed = change(1, activate=True)
    assert signed.key_id == "k1" and len(signed.signature) == 64
    verify(signed, KEYS)
    decoded = decode_change(encode_change(signed))
    assert decoded == signed
    verify(decoded, KEYS)


TAMPERS: dict[str, dict[str, Any]] = {
    "version": {"version": 2},
    "parent_version": {"parent_version": 1},
    "author": {"author": "mallory"},
    "reason": {"reason": "innocent"},
    "created_ms": {"created_ms": T0},
    "kind": {"kind": "allocation"},
    "config": {"config": with_re_rank(default_config(), list_size=10)},
    "activate": {"activate": False},
    "allocation": {"allocation": allocation(1)},
    "restores_version": {"restores_version": 1},
}


@pytest.mark.parametrize("field", sorted(TAMPERS))
def test_tampering_any_field_breaks_verification(field: str) -> None:
    signed = change(1, activate=True)
    tampered = msgspec.structs.replace(signed, **TAMPERS[field])
    with pytest.raises(SignatureError) as info:
        verify(tampered, KEYS)
    assert info.value.field == "signature"


def test_swapping_the_key_id_to_another_known_key_breaks_verification() -> None:
    both = Keyring.parse(f"k1:{K1},k2:{K2}", "k1")
    signed = change(1, activate=True, keyring=both)
    with pytest.raises(SignatureError) as info:
        verify(msgspec.structs.replace(signed, key_id="k2"), both)
    assert info.value.field == "signature"


def test_unsigned_and_unknown_key_are_refused_naming_the_field() -> None:
    unsigned = msgspec.structs.replace(change(1, activate=True), signature="")
    with pytest.raises(SignatureError) as info:
        verify(unsigned, KEYS)
    assert (info.value.field, info.value.rule) == ("signature", "is required")
    foreign = change(1, activate=True, keyring=Keyring.parse(f"k9:{K2}", "k9"))
    with pytest.raises(SignatureError) as info:
        verify(foreign, KEYS)
    assert info.value.field == "key_id" and "'k9'" in info.value.rule


def test_key_rotation_old_key_verifies_while_kept_in_the_keyring() -> None:
    old = change(1, activate=True)  # signed with k1
    rotated = Keyring.parse(f"k1:{K1},k2:{K2}", "k2")
    new = change(2, config=with_re_rank(default_config(), list_size=10), keyring=rotated)
    assert new.key_id == "k2"
    result = fold([old, new], rotated)
    assert result.state.version == 2 and not result.refused
    retired = Keyring.parse(f"k2:{K2}", "k2")  # k1 dropped: its changes no longer verify
    result = fold([old, new], retired)
    assert result.state.version == 0
    assert [r.error.field for r in result.refused] == ["key_id", "version"]


@pytest.mark.parametrize(
    ("spec", "active", "field", "needle"),
    [
        ("k1", "k1", "keys[0]", "id:hexsecret"),
        (":" + K1, "k1", "keys[0]", "id:hexsecret"),
        ("k1:zz" + K1, "k1", "keys[0]", "hexadecimal"),
        ("k1:abcd", "k1", "keys[0]", "at least 16 bytes"),
        (f"k1:{K1},k2:nothex", "k1", "keys[1]", "hexadecimal"),
        (f"k1:{K1}", "k2", "active_key_id", "['k1']"),
        ("", "k1", "active_key_id", "[]"),
    ],
)
def test_keyring_parse_errors_name_the_entry(spec: str, active: str, field: str, needle: str) -> None:
    with pytest.raises(ConfigError) as info:
        Keyring.parse(spec, active)
    assert info.value.field == field and needle in info.value.rule
    assert K1 not in str(info.value)  # secrets are never echoed


# -- apply rules --------------------------------------------------------------------


def refused(state: ServingState, bad: ConfigChange, guardrails: Guardrails | None = None) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        apply(state, bad, KEYS, guardrails)
    return info.value


def two_configs() -> ServingState:
    state = apply(ServingState(), change(1, activate=True), KEYS)
    return apply(state, change(2, config=with_re_rank(default_config(), list_size=10)), KEYS)


def test_first_config_must_activate_and_nothing_else_comes_first() -> None:
    assert refused(ServingState(), change(1)).field == "activate"
    assert refused(ServingState(), change(1, "allocation", allocation=allocation(1))).field == "kind"
    assert refused(ServingState(), change(1, "rollback", restores=1)).field == "kind"


def test_allocation_arms_must_reference_registered_versions_and_control_first() -> None:
    state = two_configs()
    assert refused(state, change(3, "allocation", allocation=allocation(1, ("t1", 7, 0.5)))).field == (
        "allocation.arms[1].config_version"
    )
    assert refused(state, change(3, "allocation", allocation=allocation(2, ("t1", 1, 0.5)))).field == (
        "allocation.arms[0].config_version"
    )
    bad_shares = Allocation(experiment_id="e", salt="s", arms=(ArmShare("control", 1, 0.9), ArmShare("t1", 2, 0.5)))
    assert refused(state, change(3, "allocation", allocation=bad_shares)).field == "arms[0].share"
    ok = apply(state, change(3, "allocation", allocation=allocation(1, ("t1", 2, 0.5))), KEYS)
    assert ok.allocation is not None and ok.control_version == 1


def test_version_chain_skip_and_stale_parent_are_refused() -> None:
    state = two_configs()
    assert refused(state, change(4, "allocation", allocation=None)).field == "version"
    assert refused(state, change(3, "allocation", parent=1, allocation=None)).field == "version"
    assert refused(state, change(2, "allocation", parent=1, allocation=None)).field == "version"


def test_cross_field_rules_and_guardrails_are_enforced_on_apply() -> None:
    state = two_configs()
    too_long = with_re_rank(default_config(), list_size=150)  # > rank.cut 100
    assert refused(state, change(3, config=too_long)).field == "re_rank.list_size"
    explore = with_re_rank(default_config(), exploration_rate=0.3)  # within bounds, breaks the guardrail
    apply(state, change(3, config=explore), KEYS)  # no guardrails: accepted
    assert refused(state, change(3, config=explore), Guardrails()).field == "re_rank.exploration_rate"


def with_cuts(config: CascadeConfig, candidate_cut: int, rank_cut: int) -> CascadeConfig:
    return msgspec.structs.replace(
        config,
        pre_rank=msgspec.structs.replace(config.pre_rank, candidate_cut=candidate_cut),
        rank=msgspec.structs.replace(config.rank, cut=rank_cut),
    )


def test_a_cut_may_move_at_most_the_step_factor_from_the_controls_in_one_change() -> None:
    state = apply(ServingState(), change(1, activate=True), KEYS)  # default: candidate_cut 1000, rank.cut 100
    rails = Guardrails()  # max_cut_step 4
    base = default_config()
    assert (base.pre_rank.candidate_cut, base.rank.cut) == (1_000, 100)
    jump = with_cuts(base, 20_000, 100)  # within the bounds (<= 20,000), 20x the control's
    apply(state, change(2, config=jump), KEYS)  # without guardrails: accepted
    err = refused(state, change(2, config=jump), rails)
    assert err.field == "pre_rank.candidate_cut" and "within 4x of the control's 1000" in err.rule
    assert refused(state, change(2, config=with_cuts(base, 1_000, 20)), rails).field == "rank.cut"  # 5x down
    ok = apply(state, change(2, config=with_cuts(base, 4_000, 400), activate=True), KEYS, rails)  # 4x: allowed
    # 4x again, from the new control
    step2 = apply(ok, change(3, config=with_cuts(base, 16_000, 400), activate=True), KEYS, rails)
    # restoring a config applied before is a rollback, not a step (1,000 is 16x below the control now)
    back = apply(step2, change(4, config=base, activate=True), KEYS, rails)
    assert back.control == base
    with pytest.raises(ConfigError, match="max_cut_step"):
        Guardrails(max_cut_step=0.5)


def test_rollback_restores_the_timeline_exactly() -> None:
    state = two_configs()
    state = apply(state, change(3, "allocation", allocation=allocation(1, ("t1", 2, 0.25))), KEYS)
    state = apply(state, change(4, config=with_re_rank(default_config(), mmr_lambda=0.5), activate=True), KEYS)
    assert state.control_version == 4
    assert refused(state, change(5, "rollback", restores=9)).field == "restores_version"
    back = apply(state, change(5, "rollback", restores=3), KEYS)
    assert back.served() == state.timeline[3] == (1, allocation(1, ("t1", 2, 0.25)))
    assert back.configs == state.configs  # nothing is forgotten
    first = apply(back, change(6, "rollback", restores=1), KEYS)
    assert first.served() == (1, None)


# -- replay determinism ---------------------------------------------------------------


def random_config(rng: random.Random) -> CascadeConfig:
    base = default_config()
    list_size = rng.randint(8, 40)
    rank_cut = rng.randint(list_size, 1_000)
    return CascadeConfig(
        pre_rank=msgspec.structs.replace(base.pre_rank, candidate_cut=rng.randint(rank_cut, 20_000)),
        rank=msgspec.structs.replace(
            base.rank,
            cut=rank_cut,
            combination=rng.choice(["weighted_sum", "weighted_product"]),
            objective_weights=msgspec.structs.replace(base.rank.objective_weights, click=rng.uniform(0.1, 5)),
        ),
        re_rank=msgspec.structs.replace(
            base.re_rank,
            list_size=list_size,
            mmr_lambda=round(rng.uniform(0.3, 1.0), 3),
            max_per_category=rng.randint(1, 6),
            exploration_rate=round(rng.uniform(0.0, 0.1), 3),
        ),
    )


def random_good(rng: random.Random, state: ServingState, t_ms: int) -> ConfigChange:
    v = state.version + 1
    roll = rng.random()
    if state.control_version == 0 or roll < 0.4:
        return change(v, config=random_config(rng), activate=state.control_version == 0 or rng.random() < 0.4)
    if roll < 0.75:
        if rng.random() < 0.25:
            return change(v, "allocation", allocation=None)
        others = [c for c in state.configs if c != state.control_version]
        k = rng.randint(0, min(3, len(others)))
        picks = rng.sample(others, k)
        lane = 1.0 / k if k else 1.0
        arms = [(f"t{i}", ver, round(rng.uniform(0.01, lane), 4)) for i, ver in enumerate(picks, 1)]
        return change(v, "allocation", allocation=allocation(state.control_version, *arms, experiment=f"e{v}"))
    return change(v, "rollback", restores=rng.randint(1, state.version))


def random_bad(rng: random.Random, state: ServingState) -> ConfigChange:
    v = state.version + 1
    good = change(v, config=random_config(rng), activate=True)
    kind = rng.choice(["forged", "unsigned", "foreign", "skip", "stale", "bounds", "guardrail", "rollback"])
    if kind == "forged":
        return msgspec.structs.replace(good, author="mallory")
    if kind == "unsigned":
        return msgspec.structs.replace(good, signature="")
    if kind == "foreign":
        return change(v, config=random_config(rng), activate=True, keyring=Keyring.parse(f"k9:{K2}", "k9"))
    if kind == "skip":
        return change(v + rng.randint(1, 5), config=random_config(rng), activate=True)
    if kind == "stale":
        return change(v, parent=max(0, v - 2), config=random_config(rng), activate=True)
    if kind == "bounds":
        return change(v, config=with_re_rank(default_config(), list_size=101), activate=True)  # > rank.cut
    if kind == "guardrail":
        return change(v, config=with_re_rank(default_config(), mmr_lambda=0.1), activate=True)
    return change(v, "rollback", restores=v + 10)


#: Random histories jump their cuts freely: they test the fold, and the step rule has its own test above.
FREE_STEPS = Guardrails(max_cut_step=1e9)


class History(msgspec.Struct):
    changes: list[ConfigChange]  # everything written, bad ones included
    accepted: list[ConfigChange]  # the valid ones, in order
    live: list[ServingState]  # the state live after each written change
    at_version: dict[int, ServingState]  # the state recorded at each accepted version


def build_history(seed: int, n_good: int) -> History:
    """A random history: n_good valid changes with bad ones (about 15%) mixed in."""
    rng = random.Random(seed)
    guardrails = FREE_STEPS
    state = ServingState()
    changes: list[ConfigChange] = []
    accepted: list[ConfigChange] = []
    live: list[ServingState] = []
    at_version: dict[int, ServingState] = {0: state}
    while state.version < n_good:
        if state.version > 0 and rng.random() < 0.15:
            bad = random_bad(rng, state)
            with pytest.raises((ConfigError, SignatureError)):
                apply(state, bad, KEYS, guardrails)
            changes.append(bad)
        else:
            good = random_good(rng, state, T0)
            state = apply(state, good, KEYS, guardrails)
            changes.append(good)
            accepted.append(good)
            at_version[state.version] = state
        live.append(state)
    return History(changes, accepted, live, at_version)


@pytest.mark.parametrize("seed", [0, 1])
def test_replay_determinism_every_prefix_of_200_random_changes(seed: int) -> None:
    history = build_history(seed, 200)
    changes, live, at_version = history.changes, history.live, history.at_version
    assert at_version[200].version == 200
    kinds = {c.kind for c in changes}
    assert kinds == {"config", "allocation", "rollback"}
    guardrails = FREE_STEPS
    for i in range(len(changes) + 1):
        expected = live[i - 1] if i else ServingState()
        assert fold(changes[:i], KEYS, guardrails).state == expected, f"prefix of {i} changes"
    # The wire form folds the same (what the sidecar actually reads).
    wire = [decode_change(encode_change(c)) for c in changes]
    final = fold(wire, KEYS, guardrails)
    assert final.state == at_version[200]
    assert len(final.refused) == len(changes) - 200
    # Every recorded version is rebuilt exactly from the valid history, by version and by time.
    for v, state in at_version.items():
        assert fold(history.accepted, KEYS, guardrails, until_version=v).state == state
        assert fold(history.accepted, KEYS, guardrails, until_ms=T0 + v * 1000).state == state


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_rollbacks_in_a_random_history_restore_exactly(seed: int) -> None:
    history = build_history(seed, 200)
    at_version = history.at_version
    rollbacks = [c for c in history.accepted if c.kind == "rollback"]
    assert len(rollbacks) >= 10, "the random history should contain rollbacks"
    for rb in rollbacks:
        assert rb.restores_version is not None
        restored = at_version[rb.version]
        assert restored.served() == at_version[rb.restores_version].served()
        # ...and the restored state serves exactly the configs that version served.
        assert restored.control == at_version[rb.restores_version].control


def test_bad_changes_mixed_in_never_move_the_head() -> None:
    rng = random.Random(7)
    state = two_configs()
    for _ in range(100):
        bad = random_bad(rng, state)
        with pytest.raises((ConfigError, SignatureError)):
            apply(state, bad, KEYS, FREE_STEPS)
    result = fold([change(1, activate=True), *[random_bad(rng, ServingState()) for _ in range(20)]], KEYS)
    assert result.state.version == 1 and len(result.refused) == 20


def test_fold_until_ignores_refused_changes_past_the_point() -> None:
    good = [change(1, activate=True), change(2, config=with_re_rank(default_config(), list_size=10))]
    forged_future = change(99, config=default_config(), activate=True)  # refused: version skip
    history = [good[0], forged_future, good[1]]
    assert fold(history, KEYS, until_version=2).state == fold(good, KEYS).state


def test_states_share_history_but_branches_do_not_see_each_other() -> None:
    from schemas.config import default_config as _default
    from schemas.config_log import ConfigChange as _Change
    from schemas.config_log import ServingState as _State
    from schemas.config_log import apply as _apply
    from schemas.config_log import sign as _sign

    keys = Keyring.parse("k:" + "cd" * 16, "k")
    base = _default()

    def signed(version: int, list_size: int) -> _Change:
        config = msgspec.structs.replace(base, re_rank=msgspec.structs.replace(base.re_rank, list_size=list_size))
        change = _Change(
            schema_version=1,
            version=version,
            parent_version=version - 1,
            author="t",
            reason="r",
            created_ms=1_700_000_000_000 + version,
            kind="config",
            config=config,
            activate=True,
            key_id="k",
        )
        return _sign(change, keys)

    one = _apply(_State(), signed(1, 12), keys)
    left = _apply(one, signed(2, 10), keys)
    right = _apply(one, signed(2, 8), keys)  # a second branch from the same state
    left_next = _apply(left, signed(3, 9), keys)
    assert left.control is not None and left.control.re_rank.list_size == 10
    assert right.control is not None and right.control.re_rank.list_size == 8
    assert left_next.configs[2].re_rank.list_size == 10
    assert 3 not in left.configs and 3 not in one.configs and 2 not in one.timeline
    assert sorted(left_next.configs) == [1, 2, 3] and sorted(one.configs) == [1]
