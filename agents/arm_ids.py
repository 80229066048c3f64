"""The arm-id grammar of an experiment (pure): one place that writes arm ids and reads them back.

The Online agent names an experiment's arms `<experiment>.c` (control) and
`<experiment>.t<N>` (treatment N, from 1; `agents.online_plan`).  The loop's
A/A pre-period serves the same lanes, every arm on the incumbent, as
`<experiment>.pre.c` and `<experiment>.pre.t<N>`
(`agents.loop_baseline.pre_period_allocation`): the metric windows cannot
split earlier traffic by a future arm, so the pre-period arms carry the
CUPED covariates under their own ids.  Any other arm id (the sidecar's
default `control`, a holdout) is not an experiment arm: it serves the
incumbent outside any experiment.

Readers: the loop's baseline (the incumbent's traffic is every
non-experiment arm), the brain's readings (CUPED per experiment), the
offline Actor's lift model (a treatment arm against its own control) and
`bench/arm_trace.py`.  Before this module each parsed the ids with its own
regular expression or substring test.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

_PRE: Final = ".pre"
_GRAMMAR: Final = re.compile(r"^(?P<experiment>.+?)(?P<pre>\.pre)?\.(?:c|t(?P<index>[1-9]\d*))$")


class ArmIdError(ValueError):
    """An experiment id or arm index that cannot form an arm id; the message names the field and the rule."""


@dataclass(frozen=True, slots=True)
class ArmName:
    """A parsed experiment arm id: its experiment, its index (0 control, N treatment N) and its period."""

    experiment: str
    index: int
    pre_period: bool = False

    @property
    def is_control(self) -> bool:
        """Whether this is the experiment's control arm (of the same period)."""
        return self.index == 0

    @property
    def control(self) -> ArmName:
        """The control arm of the same experiment and period: what a treatment arm's lift is read against."""
        return ArmName(self.experiment, 0, self.pre_period)

    @property
    def arm_id(self) -> str:
        """The id this name parses from (`parse_arm_id(name.arm_id) == name`)."""
        role = "c" if self.index == 0 else f"t{self.index}"
        return f"{self.experiment}{_PRE if self.pre_period else ''}.{role}"


def _checked(experiment_id: str) -> str:
    if not experiment_id:
        msg = "experiment_id: must be non-empty"
        raise ArmIdError(msg)
    return experiment_id


def control_arm_id(experiment_id: str) -> str:
    """`<experiment>.c`: the control arm the Online agent plans (`agents.online_plan`)."""
    return ArmName(_checked(experiment_id), 0).arm_id


def treatment_arm_id(experiment_id: str, index: int) -> str:
    """`<experiment>.t<index>`: treatment arm `index` (from 1) the Online agent plans."""
    if index < 1:
        msg = f"index: a treatment arm's index must be >= 1, got {index}"
        raise ArmIdError(msg)
    return ArmName(_checked(experiment_id), index).arm_id


def parse_arm_id(arm_id: str) -> ArmName | None:
    """The experiment arm `arm_id` names, or None when it is not an experiment arm (e.g. `control`)."""
    match = _GRAMMAR.match(arm_id)
    if match is None:
        return None
    index = match["index"]
    return ArmName(match["experiment"], 0 if index is None else int(index), match["pre"] is not None)


def pre_period_id(experiment_id: str, arm_id: str) -> str:
    """The A/A pre-period arm of `experiment_id`'s arm `arm_id` (`<exp>.t1` → `<exp>.pre.t1`).

    Raises `ArmIdError` when `arm_id` is not an arm of that experiment's run
    (a pre-period arm has no pre-period of its own).
    """
    name = parse_arm_id(arm_id)
    if name is None or name.experiment != experiment_id or name.pre_period:
        msg = f"arm_id: {arm_id!r} is not an arm of experiment {experiment_id!r} (`<experiment>.c` or `.t<N>`)"
        raise ArmIdError(msg)
    return ArmName(experiment_id, name.index, pre_period=True).arm_id


def is_experiment_arm(arm_id: str) -> bool:
    """Whether `arm_id` is an experiment's arm (either period) rather than the incumbent's own traffic."""
    return parse_arm_id(arm_id) is not None


def is_pre_period_arm(arm_id: str) -> bool:
    """Whether `arm_id` names an A/A pre-period arm (`<experiment>.pre.c`, `<experiment>.pre.t<N>`)."""
    name = parse_arm_id(arm_id)
    return name is not None and name.pre_period
