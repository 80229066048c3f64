"""Skillhub notes read as search hints: a direction or a range for one tunable parameter.

What lives here: `SkillHint`, `parse_skill_note` (a note → the hint it gives,
or None) and `_narrow` (a hint applied to a search box).  Who calls it:
`agents.offline_brain.OfflineBrain` (its search box and its summaries) and
`agents.offline_space` (`_dimension` narrows each box).  Re-exported by
`agents.offline_brain`.  Pure: no I/O.

The grammar.  `SkillNote` carries `stage`, `cohort`, `confidence` and a
free-text `pattern`; the only structured meaning taken from `pattern` is a
strict leading form — anything else is ignored:
``<verb> <param> ...`` with verb raise/increase/higher/up or
lower/decrease/reduce/down; ``<param> up|down ...``; ``<param> in [a, b] ...``.
`<param>` is a dotted path or a leaf name (`mmr_lambda`) resolved inside the
note's `stage` (`re_rank` → `re_rank.mmr_lambda`); a path outside the note's
stage or an unknown name is ignored.  A direction with confidence c keeps
the box's side in that direction and shrinks the other side to (1 − c) of
its width (c = 1: only moves in that direction); a range intersects the box
(an empty intersection becomes a direction towards the range).  Trailing
text ("helps cohort X") is kept only to be quoted in rationales.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final, Literal, TypeAlias

from agents.brain import ParamSpec, SkillNote

Move: TypeAlias = Literal["up", "down"]

_UP_WORDS: Final = frozenset({"raise", "increase", "higher", "up"})
_DOWN_WORDS: Final = frozenset({"lower", "decrease", "reduce", "down"})
_VERBS: Final = "|".join(sorted(_UP_WORDS | _DOWN_WORDS))
_PATH: Final = r"(?P<path>[A-Za-z_][A-Za-z0-9_.\-]*)"
_NUM: Final = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?"
_VERB_FIRST: Final = re.compile(rf"^\s*(?P<verb>{_VERBS})\s+{_PATH}(?=$|[\s,;:.])", re.IGNORECASE)
_PATH_FIRST: Final = re.compile(rf"^\s*{_PATH}\s*:?\s+(?P<verb>{_VERBS})(?=$|[\s,;:.])", re.IGNORECASE)
_RANGE: Final = re.compile(rf"^\s*{_PATH}\s*:?\s+in\s*\[\s*(?P<low>{_NUM})\s*,\s*(?P<high>{_NUM})\s*\]", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class SkillHint:
    """What a Skillhub note says about one parameter: a direction, or a range [low, high]."""

    parameter: str
    confidence: float
    note: SkillNote
    direction: Move | None = None
    low: float | None = None
    high: float | None = None

    def describe(self) -> str:
        """E.g. `re_rank.mmr_lambda down (Skillhub re_rank/young, confidence 0.80)`."""
        what = self.direction if self.direction is not None else f"in [{self.low:g}, {self.high:g}]"
        cohort = self.note.cohort or "all"
        return f"{self.parameter} {what} (Skillhub {self.note.stage}/{cohort}, confidence {self.confidence:.2f})"


def _resolve_path(path: str, stage: str, specs: Mapping[str, ParamSpec]) -> str | None:
    path = path.rstrip(".")
    for candidate in (path, f"{stage}.{path}"):
        if candidate in specs:
            return candidate if candidate.split(".", 1)[0] == stage else None
    if "." not in path:
        matches = [name for name in specs if name.startswith(f"{stage}.") and name.rsplit(".", 1)[-1] == path]
        if len(matches) == 1:
            return matches[0]
    return None


def parse_skill_note(note: SkillNote, specs: Mapping[str, ParamSpec]) -> SkillHint | None:
    """The hint a note gives (see the module docstring for the grammar), or None when it gives none."""
    confidence = note.confidence
    if not (isinstance(confidence, int | float) and math.isfinite(confidence)):
        return None
    confidence = min(max(float(confidence), 0.0), 1.0)
    ranged = _RANGE.match(note.pattern)
    if ranged is not None:
        name = _resolve_path(ranged["path"], note.stage, specs)
        low, high = float(ranged["low"]), float(ranged["high"])
        if name is None or specs[name].kind == "choice" or not low <= high:
            return None
        return SkillHint(parameter=name, confidence=confidence, note=note, low=low, high=high)
    matched = _VERB_FIRST.match(note.pattern) or _PATH_FIRST.match(note.pattern)
    if matched is None:
        return None
    name = _resolve_path(matched["path"], note.stage, specs)
    if name is None or specs[name].kind == "choice":
        return None
    direction: Move = "up" if matched["verb"].lower() in _UP_WORDS else "down"
    return SkillHint(parameter=name, confidence=confidence, note=note, direction=direction)


def _narrow(low: float, high: float, current: float, hint: SkillHint) -> tuple[float, float]:
    direction = hint.direction
    if hint.low is not None and hint.high is not None:
        new_low, new_high = max(low, hint.low), min(high, hint.high)
        if new_low <= new_high:
            return new_low, new_high
        direction = "up" if hint.low > high else "down"
    keep = 1.0 - hint.confidence
    if direction == "down" and high > current:
        high = current + keep * (high - current)
    elif direction == "up" and low < current:
        low = current - keep * (current - low)
    return low, high
