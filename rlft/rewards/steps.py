"""Per-step checker: the mean of the task's per-step scores (a denser signal than the answer alone).

For arith the steps are the digit-column lines followed by the answer; tasks without steps give
one score (their answer score). A sequence-level reward; `progress` gives per-step rewards.
"""

from __future__ import annotations

from typing import Literal

from rlft.rewards.base import ComponentConfig, ComponentSpec, ComponentValue
from rlft.types import Rollout


class StepsConfig(ComponentConfig):
    name: Literal["steps"] = "steps"


class StepsReward:
    def __init__(self, cfg: StepsConfig, task):
        self.task = task

    def __call__(self, rollout: Rollout) -> ComponentValue:
        scores = [float(s) for s in self.task.step_scores(rollout.example, rollout.text)]
        return ComponentValue(sum(scores) / len(scores) if scores else 0.0)


SPEC = ComponentSpec("steps", StepsConfig, StepsReward)
