"""The agents' policy file: objective checked against the known metrics, latency budget from the SLO, field errors."""

from __future__ import annotations

import json
from typing import Any

import pytest

from agents.critic import CriticRules
from agents.experiment import ExperimentError
from agents.insight_metrics import METRICS
from agents.online import OnlinePolicy
from agents.runtime_policy import PolicyError, parse_policy


def _parse(doc: dict[str, Any]) -> tuple[OnlinePolicy, Any]:
    return parse_policy(json.dumps(doc).encode(), "home")


def test_an_unknown_objective_is_refused_naming_the_field_and_the_known_metrics() -> None:
    with pytest.raises(PolicyError, match=r"policy\.loop\.objective: must be one of .*ctr.*, got 'nope'"):
        _parse({"loop": {"objective": "nope"}})
    with pytest.raises(PolicyError, match=r"policy\.loop\.objective"):
        _parse({"loop": {"objective": ""}})


def test_the_objective_follows_the_primary_metric_unless_set() -> None:
    primary = {"name": "clicks_per_request", "numerator": "clicks", "denominator": "requests"}
    assert "clicks_per_request" in METRICS
    _, loop = _parse({"online": {"primary": primary}})
    assert loop.objective == "clicks_per_request"
    _, loop = _parse({"online": {"primary": primary}, "loop": {"objective": "ctr"}})
    assert loop.objective == "ctr", "an explicit objective wins"
    _, loop = _parse({})
    assert loop.objective == "ctr", "the default primary is ctr"
    # a primary Insight has no definition for falls back to ctr instead of breaking the loop at its first decision
    odd = {"name": "clicks_per_impression_odd", "numerator": "clicks", "denominator": "impressions"}
    _, loop = _parse({"online": {"primary": odd}})
    assert loop.objective == "ctr"


def test_the_critics_latency_budget_is_the_guardrails_p99_slo() -> None:
    default = CriticRules().latency_budget_ms
    _, loop = _parse({"online": {"guardrails": {"latency_p99_slo_ms": 50}}})
    assert loop.rules.latency_budget_ms == 50.0 != default
    _, loop = _parse({"online": {"guardrails": {"conversion_margin": 0.02}}})
    assert loop.rules.latency_budget_ms == default, "no SLO: the Critic keeps its code default"


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("target_mde", 0.0, "target_mde=0.0: > 0"),
        ("horizon_s", -1.0, "horizon_s=-1.0: > 0"),
        ("max_treatments", 0, "max_treatments=0: >= 1"),
        ("min_read_bucket_fraction", 1.5, "min_read_bucket_fraction=1.5: in [0, 1]"),
        ("max_history", -1, "max_history=-1: >= 0"),
        ("settle_s", -5.0, "settle_s=-5.0: >= 0"),
    ],
)
def test_each_online_rule_names_its_own_field(field: str, value: float, expected: str) -> None:
    with pytest.raises(ExperimentError) as info:
        OnlinePolicy(surface="home", **{field: value})
    assert expected in str(info.value)
    others = {"target_mde", "horizon_s", "max_treatments", "min_read_bucket_fraction", "max_history", "settle_s"}
    assert not [f for f in others - {field} if f"{f}=" in str(info.value)], "only the bad field is named"
    with pytest.raises(PolicyError, match=rf"policy\.online: .*{expected.split(':')[0]}"):
        _parse({"online": {field: value}})


def test_the_randomization_unit_is_read_checked_and_refuses_a_pre_period_it_would_not_use() -> None:
    policy, settings = _parse({"online": {"randomization_unit": "request"}})
    assert policy.randomization_unit == "request" and settings.pre_period_s == 0.0
    assert _parse({})[0].randomization_unit == "user"
    with pytest.raises(PolicyError, match=r"policy\.online\.randomization_unit: .*must be one of 'user', 'request'"):
        _parse({"online": {"randomization_unit": "session"}})
    with pytest.raises(PolicyError, match=r"policy\.loop\.pre_period_s: must be 0 when online\.randomization_unit"):
        _parse({"online": {"randomization_unit": "request"}, "loop": {"pre_period_s": 600}})
    assert _parse({"loop": {"pre_period_s": 600}})[1].pre_period_s == 600.0


def test_the_human_gate_reads_approval_required_in_either_spelling() -> None:
    assert _parse({"online": {"approval": "required"}})[0].approval_required is True
    assert _parse({"online": {"approval": "none"}})[0].approval_required is False
    assert _parse({"online": {"approval_required": True}})[0].approval_required is True
    assert _parse({})[0].approval_required is False
    with pytest.raises(PolicyError, match=r"policy\.online\.approval: must be 'required' or 'none', got 'maybe'"):
        _parse({"online": {"approval": "maybe"}})
    with pytest.raises(PolicyError, match=r"policy\.online\.approval: 'required' contradicts approval_required"):
        _parse({"online": {"approval": "required", "approval_required": False}})


def test_the_off_policy_screen_settings_are_read_and_checked() -> None:
    _, loop = _parse({"loop": {"ope_wait_s": 30, "ope_min_requests": 50}})
    assert (loop.ope_wait_s, loop.ope_min_requests) == (30.0, 50)
    with pytest.raises(PolicyError, match=r"policy\.loop\.ope_wait_s: must be in \[0, 86400\] seconds"):
        _parse({"loop": {"ope_wait_s": -1}})
    with pytest.raises(PolicyError, match=r"policy\.loop\.ope_min_requests: must be >= 1"):
        _parse({"loop": {"ope_min_requests": 0}})
