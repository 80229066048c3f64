"""The Critic's hard rules in code: what a candidate config must pass before any traffic sees it (pure, no I/O).

`critique(candidates, incumbent, rules, latency_model=..., failures=...)` judges
each candidate in order and returns one `Verdict` per candidate, in the same
order.  The rules, in the order they run (the first that rejects is the
verdict's `rule`; every reason names its rule and the figures):

1. `schema` — the candidate is vetted again (`agents.brain.vet_proposal`:
   known parameters, bounds, cross-field rules, the guardrails, the search
   space, the change count), its `config` must be exactly what its changes make
   of the incumbent, and its `proposal_id` must be the id of its effective
   changes.  A candidate that fails here is judged by nothing else.
2. `trust_region` — every change stays within a step of the incumbent
   (`TrustRegion`): weights (fusion and objective weights) move by at most
   30% of their value (at least 0.05 absolute, so a zero weight can move),
   unit-interval parameters (`mmr_lambda`, `freshness_boost`,
   `near_duplicate_threshold`, `exploration_rate`) by at most 0.15 absolute,
   cuts (`pre_rank.candidate_cut`, `rank.cut`) by at most a factor 2 either way,
   counts (`list_size`, `max_per_category`, ...) by at most max(2, 50%); a
   choice (`rank.combination`) may change unless `TrustRegion.choices` is off.
3. `latency_budget` — the predicted p99 of the candidate (`LatencyModel`, a
   linear model of p99 in candidate cut, rank cut and list size, fitted to
   observed (config, p99) pairs, conservative when there are none) must be
   within `CriticRules.latency_budget_ms`.  A candidate that does no more
   work than the incumbent (no larger cut or list, `no_more_work`) is
   predicted at most the incumbent's measured p99 when the caller passes it
   (`incumbent_p99_ms`): the model's safety margin covers its uncertainty
   about more work, and must not reject a step that keeps or cuts the work
   of a config whose latency was measured within the budget.
4. `diversity_floor` — the guaranteed number of distinct categories in a full
   list, ceil(list_size / max_per_category), must be at least
   `DiversityFloor.min_categories_per_list`, and `mmr_lambda` at most
   `DiversityFloor.max_mmr_lambda` (1 = pure relevance, no novelty at all).  A
   candidate that does not lower a figure below the incumbent's passes that
   figure, so an incumbent below the floor can still be improved step by step.
5. `failure_memory` — no repeat of a recorded failure (`FailureMemory`; the
   matching rule is in its docstring).
6. `near_duplicate` — a candidate closer than `near_duplicate_distance` to the
   incumbent or to an earlier candidate that passed rules 1–5 is dropped (the
   first is kept).  Distance is Euclidean over parameter moves measured in
   trust-region steps (`trust_coordinate`): 1.0 is one full trust step of one
   parameter; a different choice counts 1.0.
7. `ope_harm` — where an off-policy estimate of candidate minus incumbent
   exists (`agents.ope.difference`, keyed by `proposal_id`), a *reliable*
   estimate whose upper bound is below −`harm_threshold` rejects; an
   unreliable one rejects nothing and is recorded in the reasons.
8. `brain` — a brain's verdicts can only reject what the rules kept; a "keep"
   never overrides a rule (it is noted as ignored).

Rules 2–5 are all evaluated for a candidate that passes rule 1, so the
reasons list every hard rule it breaks (the first one is `rule`).

Rule 7 also runs alone, after registration and before allocation, on the
sidecars' exploration replays of each registered candidate (`harm_verdict`,
called by `agents.loop_screen`).

Callers: the runtime's Critic step (before allocation), the offline brain
(`TrustRegion.box` is its search box, `trust_coordinate` its distance), the
tests.  Errors in the rules' own configuration or the latency observations are
`CriticError` (a `ValueError`).

The rules' parts live in sibling modules and are re-exported here, so callers
import everything from `agents.critic`: `agents.critic_trust` (trust region,
`CriticError`), `agents.critic_latency` (latency model),
`agents.critic_diversity` (diversity floor), `agents.critic_failures`
(failure memory).  This module keeps the rules' configuration, the verdicts
and `critique` itself.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, TypeAlias

from agents.brain import (
    MAX_CHANGES_PER_PROPOSAL,
    CritiqueVerdict,
    ParamChange,
    ParamSpec,
    Proposal,
    llm_rejections,
    parameter_specs,
    proposal_id_for,
    vet_proposal,
)
from agents.critic_diversity import DiversityFloor, diversity_problems, guaranteed_categories
from agents.critic_failures import FailedMove, FailureMemory, FailureRecord, _failure_text
from agents.critic_latency import (
    LatencyModel,
    LatencySource,
    bounded_p99,
    latency_features,
    no_more_work,
    within_limit,
)
from agents.critic_trust import (
    CUT_PARAMS,
    CriticError,
    ParamClass,
    TrustRegion,
    _within_trust,
    param_class,
    trust_coordinate,
)
from agents.ope import OffPolicyDifference
from schemas.config import CascadeConfig
from schemas.errors import SchemaError
from schemas.guardrails import Guardrails

__all__ = [
    "CUT_PARAMS",
    "CriticError",
    "CriticRules",
    "DiversityFloor",
    "FailedMove",
    "FailureMemory",
    "FailureRecord",
    "LatencyModel",
    "LatencySource",
    "ParamClass",
    "RuleName",
    "TrustRegion",
    "Verdict",
    "bounded_p99",
    "candidate_distance",
    "critique",
    "diversity_problems",
    "guaranteed_categories",
    "harm_verdict",
    "latency_features",
    "no_more_work",
    "param_class",
    "trust_coordinate",
    "within_limit",
]

RuleName: TypeAlias = Literal[
    "schema",
    "trust_region",
    "latency_budget",
    "diversity_floor",
    "failure_memory",
    "near_duplicate",
    "ope_harm",
    "brain",
]


# --------------------------------------------------------------------------- rules and verdicts


@dataclass(frozen=True, slots=True)
class CriticRules:
    """The Critic's configuration (see the module docstring for what each part does).

    `allowed` (when non-empty) and `max_changes` are the experiment's search
    space and candidate size, checked again by rule 1; `harm_threshold` is the
    tolerated loss in the OPE reward's units (clicks per impression, say).
    """

    guardrails: Guardrails = field(default_factory=Guardrails)
    trust: TrustRegion = field(default_factory=TrustRegion)
    latency_budget_ms: float = 250.0
    diversity: DiversityFloor = field(default_factory=DiversityFloor)
    near_duplicate_distance: float = 0.25
    harm_threshold: float = 0.0
    allowed: tuple[str, ...] = ()
    max_changes: int = MAX_CHANGES_PER_PROPOSAL

    def __post_init__(self) -> None:
        checks = (
            ("latency_budget_ms", self.latency_budget_ms > 0.0 and math.isfinite(self.latency_budget_ms)),
            ("near_duplicate_distance", 0.0 <= self.near_duplicate_distance < math.inf),
            ("harm_threshold", 0.0 <= self.harm_threshold < math.inf),
            ("max_changes", 1 <= self.max_changes <= MAX_CHANGES_PER_PROPOSAL),
        )
        for name, ok in checks:
            if not ok:
                msg = f"CriticRules.{name}: out of range: {getattr(self, name)!r}"
                raise CriticError(msg)


@dataclass(frozen=True, slots=True)
class Verdict:
    """The Critic's judgement of one candidate.

    `rule` is the first rule that rejected it (None when kept); `reasons` name
    every rule that objected, and for a kept candidate the figures it passed
    with.  `predicted_p99_ms` is None only when the candidate failed `schema`;
    `harm` is the off-policy estimate used (or recorded as unreliable), if any.
    """

    proposal_id: str
    kept: bool
    reasons: tuple[str, ...]
    rule: RuleName | None
    predicted_p99_ms: float | None
    harm: OffPolicyDifference | None


@dataclass(slots=True)
class _Judgement:
    proposal: Proposal
    reasons: list[str]
    rule: RuleName | None = None
    predicted: float | None = None
    harm: OffPolicyDifference | None = None
    changes: tuple[ParamChange, ...] = ()

    def reject(self, rule: RuleName, reason: str) -> None:
        if self.rule is None:
            self.rule = rule
        self.reasons.append(reason)

    def verdict(self) -> Verdict:
        return Verdict(
            proposal_id=self.proposal.proposal_id,
            kept=self.rule is None,
            reasons=tuple(self.reasons),
            rule=self.rule,
            predicted_p99_ms=self.predicted,
            harm=self.harm,
        )


def candidate_distance(
    first: CascadeConfig, second: CascadeConfig, incumbent_specs: Sequence[ParamSpec], trust: TrustRegion
) -> float:
    """Euclidean distance between two configs in trust steps around the incumbent (see rule 6)."""
    one = {spec.name: spec.current for spec in parameter_specs(first)}
    two = {spec.name: spec.current for spec in parameter_specs(second)}
    total = 0.0
    for spec in incumbent_specs:
        a, b = one.get(spec.name, spec.current), two.get(spec.name, spec.current)
        if a == b:
            continue
        if spec.kind == "choice":
            total += 1.0
            continue
        gap = trust_coordinate(spec, a, trust) - trust_coordinate(spec, b, trust)
        total += gap * gap
    return math.sqrt(total)


def _schema(judgement: _Judgement, incumbent: CascadeConfig, rules: CriticRules) -> bool:
    proposal = judgement.proposal
    try:
        changes, config = vet_proposal(
            incumbent,
            proposal.changes,
            guardrails=rules.guardrails,
            allowed=rules.allowed,
            max_changes=rules.max_changes,
        )
    except SchemaError as err:
        judgement.reject("schema", f"schema: {err.field}: {err.rule}")
        return False
    if config != proposal.config:
        judgement.reject("schema", "schema: the candidate's config is not what its changes make of the incumbent")
        return False
    expected = proposal_id_for(changes)
    if proposal.proposal_id != expected:
        judgement.reject("schema", f"schema: proposal_id {proposal.proposal_id!r} is not its changes' id {expected!r}")
        return False
    judgement.changes = changes
    return True


def _hard_rules(
    judgement: _Judgement,
    incumbent: CascadeConfig,
    specs: Mapping[str, ParamSpec],
    rules: CriticRules,
    latency_model: LatencyModel,
    failures: FailureMemory,
    surface: str,
    incumbent_p99_ms: float | None,
) -> None:
    # trust region
    widest = (0.0, "")
    for change in judgement.changes:
        spec = specs[change.name]
        ok, text = _within_trust(spec, change.value, rules.trust)
        if not ok:
            judgement.reject("trust_region", text)
        elif spec.kind != "choice":
            used = abs(trust_coordinate(spec, change.value, rules.trust))
            widest = max(widest, (used, change.name))
    # latency budget
    config = judgement.proposal.config
    predicted, bounded = bounded_p99(latency_model, config, incumbent, incumbent_p99_ms, surface)
    candidates, ranked, shown = latency_features(config, surface)
    basis = "no more work than the incumbent, whose measured p99 bounds it" if bounded else latency_model.describe()
    judgement.predicted = predicted
    latency_text = (
        f"predicted p99 {predicted:.1f} ms (candidate_cut {candidates:g}, rank.cut {ranked:g}, list_size {shown:g}; "
        f"{basis})"
    )
    if predicted > rules.latency_budget_ms:
        judgement.reject("latency_budget", f"latency_budget: {latency_text} > budget {rules.latency_budget_ms:g} ms")
    # diversity floor
    for problem in diversity_problems(config, incumbent, rules.diversity, surface):
        judgement.reject("diversity_floor", problem)
    # failure memory
    record = failures.match(incumbent, judgement.changes)
    if record is not None:
        judgement.reject("failure_memory", _failure_text(record))
    if judgement.rule is None:
        if widest[1]:
            judgement.reasons.append(f"trust_region: largest move {widest[0]:.2f} trust steps ({widest[1]})")
        judgement.reasons.append(f"latency_budget: {latency_text} <= budget {rules.latency_budget_ms:g} ms")
        judgement.reasons.append(
            f"diversity_floor: guarantees {guaranteed_categories(config, surface)} categories per list "
            f"(floor {rules.diversity.min_categories_per_list})"
        )


def _ope(judgement: _Judgement, estimate: OffPolicyDifference, harm_threshold: float) -> None:
    judgement.harm = estimate
    figures = (
        f"{estimate.estimator} lift {estimate.value:+.4g} "
        f"[{estimate.lower:+.4g}, {estimate.upper:+.4g}] at {estimate.level:.0%}, n={estimate.rows}"
    )
    if not estimate.reliable:
        judgement.reasons.append(f"ope_harm: not evidence either way, {figures}; {estimate.reason}")
    elif estimate.upper < -harm_threshold:
        judgement.reject("ope_harm", f"ope_harm: {figures}: upper bound below -{harm_threshold:g} (estimated harm)")
    else:
        judgement.reasons.append(f"ope_harm: no harm shown, {figures} (threshold -{harm_threshold:g})")


def harm_verdict(
    proposal: Proposal, estimate: OffPolicyDifference | None, harm_threshold: float, *, missing: str = ""
) -> Verdict:
    """Rule 7 alone, for a candidate that passed rules 1–6 and was registered: the loop's off-policy screen.

    Called by `agents.loop_screen` once the sidecars' exploration replays of
    the registered candidate are in (before it gets any traffic); `missing`
    says why there is no estimate when `estimate` is None, and then the
    candidate is kept.
    """
    judgement = _Judgement(proposal=proposal, reasons=[])
    if estimate is None:
        judgement.reasons.append(f"ope_harm: no estimate, {missing or 'no exploration rows'}")
    else:
        _ope(judgement, estimate, harm_threshold)
    return judgement.verdict()


def critique(
    candidates: Sequence[Proposal],
    incumbent: CascadeConfig,
    rules: CriticRules,
    *,
    latency_model: LatencyModel,
    failures: FailureMemory,
    ope_estimates: Mapping[str, OffPolicyDifference] | None = None,
    brain_verdicts: Iterable[CritiqueVerdict] | None = None,
    surface: str = "",
    incumbent_p99_ms: float | None = None,
) -> list[Verdict]:
    """One `Verdict` per candidate, in order (see the module docstring for the rules and their order).

    `surface` selects the served config (overrides) for latency and diversity.
    `incumbent_p99_ms` is the incumbent's measured p99 when the caller has
    one (rule 3 bounds candidates that do no more work by it).
    `brain_verdicts` can only reject: a "keep" for a rule-rejected candidate
    is noted as ignored, never honoured.
    """
    specs = {spec.name: spec for spec in parameter_specs(incumbent)}
    spec_list = tuple(specs.values())
    judgements = [_Judgement(proposal=p, reasons=[]) for p in candidates]
    # rules 1-5, per candidate
    for judgement in judgements:
        if _schema(judgement, incumbent, rules):
            _hard_rules(judgement, incumbent, specs, rules, latency_model, failures, surface, incumbent_p99_ms)
    # rule 6: near-duplicates of the incumbent or of an earlier survivor
    survivors: list[_Judgement] = []
    for judgement in judgements:
        if judgement.rule is not None:
            continue
        config = judgement.proposal.config
        nearest = candidate_distance(config, incumbent, spec_list, rules.trust)
        if nearest < rules.near_duplicate_distance:
            judgement.reject(
                "near_duplicate",
                f"near_duplicate: {nearest:.3f} trust steps from the incumbent < {rules.near_duplicate_distance:g}",
            )
            continue
        for earlier in survivors:
            distance = candidate_distance(config, earlier.proposal.config, spec_list, rules.trust)
            if distance < rules.near_duplicate_distance:
                judgement.reject(
                    "near_duplicate",
                    f"near_duplicate: {distance:.3f} trust steps from {earlier.proposal.proposal_id} "
                    f"< {rules.near_duplicate_distance:g} (the first is kept)",
                )
                break
        else:
            survivors.append(judgement)
    # rule 7: off-policy harm
    estimates = ope_estimates or {}
    for judgement in survivors:
        estimate = estimates.get(judgement.proposal.proposal_id)
        if estimate is not None:
            _ope(judgement, estimate, rules.harm_threshold)
    # rule 8: a brain may only reject more
    verdicts = list(brain_verdicts or ())
    rejected = llm_rejections(verdicts)
    keeps = {v.proposal_id for v in verdicts if v.verdict == "keep"}
    for judgement in judgements:
        pid = judgement.proposal.proposal_id
        if judgement.rule is None and pid in rejected:
            judgement.reject("brain", f"brain: reject: {rejected[pid]}")
        elif judgement.rule is not None and judgement.rule != "brain" and pid in keeps:
            judgement.reasons.append(f"brain: keep ignored (rejected by rule {judgement.rule})")
    return [judgement.verdict() for judgement in judgements]
