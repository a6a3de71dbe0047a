"""Tasks with checkers, and the registry that builds them from config.

A task turns a config into deterministic train/eval splits of `Example`s (rlft.types) and scores
completions: `score` is 1.0 for a correct final answer, `step_scores` gives one score per
reasoning step (for process rewards). Adding a task = a module with a config `Section` whose
first field is `name: Literal["<name>"]`, a task class following `Task`, `SPEC = TaskSpec(...)`,
and one line in `TASKS` below.

`TASKS` is a lazy registry (rlft.registry): a task module is imported only when a config names it.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Callable, Literal, Protocol

from pydantic import Field

from rlft.data.jsonl import read_sft_rows
from rlft.registry import Registry
from rlft.schema import Section
from rlft.types import Example

__all__ = ["Task", "TaskSpec", "TASKS", "build_task", "JsonlTaskConfig", "JsonlTask"]


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


JSONL_SPEC = TaskSpec("jsonl", JsonlTaskConfig, JsonlTask)

TASKS: Registry = Registry("task", {
    "arith": "rlft.data.arith:SPEC",
    "arith_think": "rlft.data.arith_think:SPEC",
    "sums": "rlft.data.sums:SPEC",
    "gsm8k": "rlft.data.gsm:SPEC",
    "reasoning_gym": "rlft.data.rgym:SPEC",
    "jsonl": "rlft.data.tasks:JSONL_SPEC",
    "dna": "rlft.data.dna_task:SPEC",
    "multihop": "rlft.data.multihop:SPEC",
})


def build_task(cfg: Section) -> Task:
    """Build the task a config section names (cfg.name is a name in TASKS)."""
    name = getattr(cfg, "name", None)
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; known: {', '.join(TASKS)}")
    spec = TASKS[name]
    if not isinstance(cfg, spec.config_cls):
        raise TypeError(
            f"task {spec.name!r} needs a {spec.config_cls.__name__}, got {type(cfg).__name__}"
        )
    return spec.build(cfg)
