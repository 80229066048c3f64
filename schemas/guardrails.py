"""Guardrails as code: limits a config must respect whatever proposed it (pure).

The Critic enforces them before any traffic sees a candidate, and the sidecar
enforces them again when it applies a change, so an LLM (or a person) can
never get past them.  Deployments tighten the defaults to their latency budget
and diversity policy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final, NoReturn

from schemas.config import CascadeConfig, ConfigError
from schemas.errors import refuse

_HINT: Final = "guardrails are enforced by the Critic and by the sidecar"


def _refuse(field: str, rule: str, *, hint: str = _HINT) -> NoReturn:
    refuse(ConfigError, field, rule, hint=hint)


@dataclass(frozen=True, slots=True)
class Guardrails:
    """Hard limits on a cascade config.

    `max_candidate_cut` / `max_rank_cut` bound the ranker's work (latency);
    `max_per_category_ceiling` is the diversity floor (no list may be more
    than this many items of one category); `max_exploration_rate` bounds the
    random slots; `min_mmr_lambda` keeps relevance from being traded away.
    `max_cut_step` is the step guardrail on the ranker's work: a new config
    may move each cut at most this factor from the control's (`check_step`;
    the Critic's trust region allows 2×, this is the sidecar's wider net).
    """

    max_candidate_cut: int = 20_000
    max_rank_cut: int = 1_000
    max_per_category_ceiling: int = 6
    max_exploration_rate: float = 0.1
    min_mmr_lambda: float = 0.3
    min_list_size: int = 4
    max_cut_step: float = 4.0

    def __post_init__(self) -> None:
        if not (self.max_cut_step >= 1.0 and math.isfinite(self.max_cut_step)):
            _refuse("max_cut_step", f"must be a finite factor >= 1, got {self.max_cut_step!r}")

    def check(self, config: CascadeConfig) -> None:
        """Raise `ConfigError` naming the first field that breaks a guardrail."""
        for surface, resolved in [
            ("", config),
            *((f"overrides[{o.surface}].", config.for_surface(o.surface)) for o in config.overrides),
        ]:
            rules = [
                (
                    "pre_rank.candidate_cut",
                    resolved.pre_rank.candidate_cut <= self.max_candidate_cut,
                    f"must be <= {self.max_candidate_cut} (latency guardrail)",
                ),
                (
                    "rank.cut",
                    resolved.rank.cut <= self.max_rank_cut,
                    f"must be <= {self.max_rank_cut} (latency guardrail)",
                ),
                (
                    "re_rank.max_per_category",
                    resolved.re_rank.max_per_category <= self.max_per_category_ceiling,
                    f"must be <= {self.max_per_category_ceiling} (diversity floor)",
                ),
                (
                    "re_rank.exploration_rate",
                    resolved.re_rank.exploration_rate <= self.max_exploration_rate,
                    f"must be <= {self.max_exploration_rate:g} (exploration guardrail)",
                ),
                (
                    "re_rank.mmr_lambda",
                    resolved.re_rank.mmr_lambda >= self.min_mmr_lambda,
                    f"must be >= {self.min_mmr_lambda:g} (relevance guardrail)",
                ),
                (
                    "re_rank.list_size",
                    resolved.re_rank.list_size >= self.min_list_size,
                    f"must be >= {self.min_list_size} (list-size guardrail)",
                ),
            ]
            for field, ok, rule in rules:
                if not ok:
                    _refuse(surface + field, rule, hint="guardrails are enforced by the Critic and by the sidecar")

    def check_step(self, config: CascadeConfig, control: CascadeConfig) -> None:
        """Raise `ConfigError` when `config` moves a cut more than `max_cut_step`× from `control`'s.

        Called by `schemas.config_log.apply` for a new config (the sidecar and
        the config writer, on apply): the candidate cuts set the ranker's
        latency, and one unvetted jump (candidate_cut 1,000 → 20,000) can put
        p99 ten times over its SLO on the control arm, which no breaker cuts
        back.  A config equal to one applied before (a rollback) is not a step.
        """
        surfaces = ["", *sorted({o.surface for o in (*config.overrides, *control.overrides)})]
        for surface in surfaces:
            new = config.for_surface(surface) if surface else config
            old = control.for_surface(surface) if surface else control
            prefix = f"overrides[{surface}]." if surface else ""
            for field, after, before in (
                ("pre_rank.candidate_cut", new.pre_rank.candidate_cut, old.pre_rank.candidate_cut),
                ("rank.cut", new.rank.cut, old.rank.cut),
            ):
                if max(after / before, before / after) > self.max_cut_step:
                    _refuse(
                        prefix + field,
                        f"must stay within {self.max_cut_step:g}x of the control's {before} in one change, got {after}"
                        " (step guardrail)",
                        hint="move it in steps, each promoted on its own experiment, or restore an earlier version",
                    )
