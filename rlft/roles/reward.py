"""RewardActor: turns rollouts into rewards with the task's checkers.

The reward of a completion is the task's answer score (1.0 correct, 0.0 wrong for exact-answer
tasks); the per-step scores are returned too, for process rewards and logging.
"""

from __future__ import annotations

from typing import Any

from rlft.data.tasks import Example, build_task


class RewardActor:
    def __init__(self, task_cfg, index: int = 0, kind: str = "answer"):
        self.task_cfg = task_cfg
        self.kind = kind
        self.index = index
        self.task = None

    def setup(self) -> dict[str, Any]:
        self.task = build_task(self.task_cfg)
        return {"index": self.index, "task": self.task.name}

    def score(self, examples: list[Example], completions: list[str]) -> list[dict[str, Any]]:
        if len(examples) != len(completions):
            raise ValueError(f"{len(examples)} examples for {len(completions)} completions")
        results = []
        for example, text in zip(examples, completions):
            answer = float(self.task.score(example, text))
            steps = self.task.step_scores(example, text)
            step_accuracy = sum(steps) / len(steps) if steps else 0.0
            reward = answer if self.kind == "answer" else step_accuracy
            results.append({"reward": reward, "correct": answer >= 1.0, "step_accuracy": step_accuracy})
        return results

    def close(self) -> None:
        self.task = None
