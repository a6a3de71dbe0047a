"""Tasks with checkers, and the registry that builds them from config.

A task turns a config into deterministic train/eval splits of `Example`s and scores completions:
`score` is 1.0 for a correct final answer, `step_scores` gives one score per reasoning step
(for process rewards). Adding a task = a module with a config `Section` whose first field is
`name: Literal["<name>"]`, a task class following `Task`, and one `TaskSpec` line below.

`Example` is defined in `rlft.data.jsonl` (the leaf module, so task modules import it without
a cycle) and re-exported here; import it from either place.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Callable, Literal, Protocol

from pydantic import Field

from rlft.data import arith, arith_think, dna_task, gsm, multihop, rgym, sums
from rlft.data.jsonl import Example, read_sft_rows
from rlft.schema import Section

__all__ = ["Example", "Task", "TaskSpec", "TASKS", "build_task", "JsonlTaskConfig", "JsonlTask"]


class Task(Protocol):
    name: str

    def split(self, which: str) -> list[Example]:
        """"train" or "eval": deterministic given the config seed, and disjoint."""

    def score(self, example: Example, completion: str) -> float:
        """1.0 if the completion's final answer is correct, else 0.0 (reasoning_gym: its own score)."""

    def step_scores(self, example: Example, completion: str) -> list[float]:
        """One score in [0, 1] per reasoning step; tasks without steps return [score]."""


@dataclass(frozen=True)
class TaskSpec:
    """Registration record of one task."""

    name: str
    config_cls: type[Section]
    build: Callable[[Section], Task]


class JsonlTaskConfig(Section):
    name: Literal["jsonl"] = Field("jsonl", description="Task name.")
    path: str = Field(description="JSONL file of {'prompt', 'response', optional 'answer'} rows.")
    eval_fraction: float = Field(
        0.1, ge=0.0, lt=1.0, description="Fraction of rows held out for eval (rounded)."
    )
    seed: int = Field(0, description="Seed of the train/eval shuffle.")


class JsonlTask:
    """SFT rows from a user file; a completion is correct when it equals the reference."""

    name = "jsonl"

    def __init__(self, cfg: JsonlTaskConfig):
        rows = read_sft_rows(cfg.path)
        random.Random(cfg.seed).shuffle(rows)
        cut = len(rows) - round(len(rows) * cfg.eval_fraction)
        self._splits = {"train": rows[:cut], "eval": rows[cut:]}

    def split(self, which: str) -> list[Example]:
        if which not in self._splits:
            raise ValueError(f"unknown split {which!r}; expected 'train' or 'eval'")
        return list(self._splits[which])

    def score(self, example: Example, completion: str) -> float:
        target = example.answer if example.answer is not None else example.response
        return 1.0 if completion.strip() == target.strip() else 0.0

    def step_scores(self, example: Example, completion: str) -> list[float]:
        return [self.score(example, completion)]


TASKS: dict[str, TaskSpec] = {
    spec.name: spec
    for spec in (
        TaskSpec("arith", arith.ArithConfig, arith.build),
        TaskSpec("arith_think", arith_think.ArithThinkConfig, arith_think.build),
        TaskSpec("sums", sums.SumsConfig, sums.build),
        TaskSpec("gsm8k", gsm.Gsm8kConfig, gsm.build),
        TaskSpec("reasoning_gym", rgym.ReasoningGymConfig, rgym.build),
        TaskSpec("jsonl", JsonlTaskConfig, JsonlTask),
        TaskSpec("dna", dna_task.DnaTaskConfig, dna_task.build),
        TaskSpec("multihop", multihop.MultiHopConfig, multihop.build),
    )
}


def build_task(cfg: Section) -> Task:
    """Build the task a config section names (cfg.name is a key of TASKS)."""
    spec = TASKS.get(getattr(cfg, "name", None))
    if spec is None:
        raise ValueError(f"unknown task {getattr(cfg, 'name', None)!r}; known: {', '.join(TASKS)}")
    if not isinstance(cfg, spec.config_cls):
        raise TypeError(
            f"task {spec.name!r} needs a {spec.config_cls.__name__}, got {type(cfg).__name__}"
        )
    return spec.build(cfg)
