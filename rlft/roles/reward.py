"""RewardActor: scores rollouts with the configured reward components (rlft.rewards).

Each component gives a value; the reward is their weighted sum, and the task's answer checker
decides correctness (accuracy metrics) whatever the components are.
"""

from __future__ import annotations

from typing import Any

from rlft.data.tasks import build_task
from rlft.rewards import REWARD_COMPONENTS
from rlft.rewards.base import score_rollouts
from rlft.types import Rollout, Score


class RewardActor:
    def __init__(self, cfg, index: int = 0):
        self.cfg = cfg
        self.index = index
        self.task = None
        self.components = []

    def setup(self) -> dict[str, Any]:
        self.task = build_task(self.cfg.task)
        self.components = [(c, REWARD_COMPONENTS[c.name].build(c, self.task)) for c in self.cfg.reward.components]
        return {"index": self.index, "task": self.task.name, "components": [c.name for c, _ in self.components]}

    def score(self, rollouts: list[Rollout]) -> list[Score]:
        """Scores of rollouts that hold whole groups (rlft.sources.rollouts.score splits by group)."""
        return score_rollouts(rollouts, self.components, [self.task.score(r.example, r.text) >= 1.0 for r in rollouts])

    def memory(self) -> dict[str, float]:
        from rlft.memory import process_memory

        return process_memory()

    def close(self) -> None:
        self.task, self.components = None, []
