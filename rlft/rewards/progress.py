"""Progress tracker: mid-step rewards from a progress potential over the prefixes of a response.

A tracker maps (example, prefix text) to a progress potential P in [0, 1]: how much of what the
answer needs is already there. For the steps k = 1..K of a segmented rollout (rlft.data.steps;
`rollout.step_delimiter`), with prefix_k the completion up to the end of step k and P_0 the
potential of the empty completion,

    r_k = P(prefix_k) - P(prefix_{k-1})        (potential-based shaping)

so the step rewards telescope to the final progress P(prefix_K) - P_0, and a step that adds no
progress earns exactly 0. The component's value (what the sequence reward sums) is P(prefix_K).
Observation segments (text an environment inserted) earn no reward of their own: the progress
they bring is credited to the step before them, the one that asked for it.

Trackers (`tracker`):
  task_steps   the share of the task's needed intermediate results (its per-step checker,
               `task.step_scores`) that the prefix already states correctly: for arith, the digit
               columns and then the answer.

Rollouts without segments get one value and no step rewards.
"""

from __future__ import annotations

from typing import Callable, Literal

from pydantic import Field

from rlft.rewards.base import ComponentConfig, ComponentSpec, ComponentValue
from rlft.types import Rollout


def task_steps_potential(task) -> Callable:
    """P(prefix) = mean of the task's per-step scores of the prefix (0 for a task without scores)."""

    def potential(example, prefix: str) -> float:
        scores = task.step_scores(example, prefix)
        return sum(scores) / len(scores) if scores else 0.0

    return potential


TRACKERS: dict[str, Callable] = {"task_steps": task_steps_potential}


def potential_differences(potentials: list[float]) -> list[float]:
    """[P_0, P_1, ..., P_K] -> [P_1 - P_0, ..., P_K - P_{K-1}]."""
    return [b - a for a, b in zip(potentials, potentials[1:])]


def step_rewards(potential: Callable, example, segments) -> tuple[list[float], float]:
    """One reward per segment (observations 0, their progress credited to the step before them)
    and the final potential."""
    prefix, potentials = "", [potential(example, "")]
    for segment in segments:
        prefix += segment.text
        potentials.append(potential(example, prefix))
    rewards = potential_differences(potentials)
    for k, segment in enumerate(segments):
        if segment.kind == "observation" and rewards[k]:
            owner = next((j for j in range(k - 1, -1, -1) if segments[j].kind != "observation"), None)
            if owner is not None:
                rewards[owner] += rewards[k]
            rewards[k] = 0.0
    return rewards, potentials[-1]


class ProgressConfig(ComponentConfig):
    name: Literal["progress"] = "progress"
    tracker: Literal["task_steps"] = Field(
        "task_steps", description="Progress potential: task_steps = share of the task's intermediate results stated correctly."
    )


class ProgressReward:
    def __init__(self, cfg: ProgressConfig, task):
        self.potential = TRACKERS[cfg.tracker](task)

    def __call__(self, rollout: Rollout) -> ComponentValue:
        if not rollout.segments:
            return ComponentValue(self.potential(rollout.example, rollout.text))
        rewards, final = step_rewards(self.potential, rollout.example, rollout.segments)
        return ComponentValue(final, rewards)


SPEC = ComponentSpec("progress", ProgressConfig, ProgressReward, scores_segments=True)
