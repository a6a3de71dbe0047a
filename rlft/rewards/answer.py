"""The task's answer checker: 1.0 for a correct final answer, else 0.0 (or the task's own score)."""

from __future__ import annotations

from typing import Literal

from rlft.rewards.base import ComponentConfig, ComponentSpec, ComponentValue
from rlft.types import Rollout


class AnswerConfig(ComponentConfig):
    name: Literal["answer"] = "answer"


class AnswerReward:
    def __init__(self, cfg: AnswerConfig, task):
        self.task = task

    def __call__(self, rollout: Rollout) -> ComponentValue:
        return ComponentValue(float(self.task.score(rollout.example, rollout.text)))


SPEC = ComponentSpec("answer", AnswerConfig, AnswerReward)
