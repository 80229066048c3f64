"""The Critic's diversity floor: the least diversity a candidate's lists may have (pure, no I/O).

Lives here: `DiversityFloor`, `guaranteed_categories` and the rule-4 check
`diversity_problems`.  Callers: `agents.critic` (rule 4, `diversity_floor`,
and the figures of a kept verdict); re-exported by `agents.critic`.
"""

from __future__ import annotations

from dataclasses import dataclass

from agents.critic_trust import CriticError
from schemas.config import CascadeConfig


@dataclass(frozen=True, slots=True)
class DiversityFloor:
    """The least diversity a candidate's lists may have (see the module docstring, rule 4)."""

    min_categories_per_list: int = 3
    max_mmr_lambda: float = 0.95

    def __post_init__(self) -> None:
        if self.min_categories_per_list < 1 or not 0.0 <= self.max_mmr_lambda <= 1.0:
            msg = (
                "DiversityFloor: min_categories_per_list >= 1 and max_mmr_lambda in [0, 1] "
                f"(got {self.min_categories_per_list}, {self.max_mmr_lambda})"
            )
            raise CriticError(msg)


def guaranteed_categories(config: CascadeConfig, surface: str = "") -> int:
    """Distinct categories a full list must show: ceil(list_size / max_per_category)."""
    resolved = (config.for_surface(surface) if surface else config).re_rank
    return -(-resolved.list_size // resolved.max_per_category)


def diversity_problems(
    config: CascadeConfig, incumbent: CascadeConfig, floor: DiversityFloor, surface: str
) -> list[str]:
    problems: list[str] = []
    cats, inc_cats = guaranteed_categories(config, surface), guaranteed_categories(incumbent, surface)
    if cats < floor.min_categories_per_list and cats < inc_cats:
        resolved = (config.for_surface(surface) if surface else config).re_rank
        problems.append(
            f"diversity_floor: a full list guarantees {cats} distinct categories "
            f"(ceil(list_size {resolved.list_size} / max_per_category {resolved.max_per_category})) "
            f"< floor {floor.min_categories_per_list} (incumbent {inc_cats})"
        )
    lam = (config.for_surface(surface) if surface else config).re_rank.mmr_lambda
    inc_lam = (incumbent.for_surface(surface) if surface else incumbent).re_rank.mmr_lambda
    if lam > floor.max_mmr_lambda and lam > inc_lam:
        problems.append(
            f"diversity_floor: re_rank.mmr_lambda {lam:g} > {floor.max_mmr_lambda:g} "
            f"(too little novelty; incumbent {inc_lam:g})"
        )
    return problems
