"""Two-operand arithmetic asked in plain words, for chat models: "What is 47 + 38?".

The tiny model's `arith` task teaches a column-by-column trace and an "A: <n>" answer line; a
pretrained chat model answers in its own words ("To add 47 and 38 ... = 85."), so this task
asks the question as a person would and takes the last integer of the reply as its answer, the
way GSM8K-style evaluations read free-form replies. SmolLM2-135M-Instruct answers 2-digit sums
correctly 13.5% of the time greedily (the default held-out split, float32), which leaves room to learn.

Eval draws distinct operand pairs first; train samples the remaining pairs with replacement,
so no held-out question is ever trained on.
"""

from __future__ import annotations

import re
from functools import cached_property
from typing import Literal

from pydantic import Field

from rlft.data.arith import held_out_keys
from rlft.data.tasks import TaskSpec
from rlft.schema import Section
from rlft.types import Example

_INTEGER = re.compile(r"-?\d+")
_OPERATIONS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}


class SumsConfig(Section):
    name: Literal["sums"] = Field("sums", description="Task name.")
    digits: int = Field(2, ge=1, le=9, description="Operands have exactly this many digits (1: 0..9).")
    operator: Literal["+", "-", "*"] = Field("+", description="The operation asked for.")
    train_size: int = Field(20000, ge=0, description="Training questions (pairs drawn with replacement).")
    eval_size: int = Field(200, ge=0, description="Distinct held-out operand pairs never seen in train.")
    seed: int = Field(0, description="Seed of the question sampler.")


def last_integer(reply: str) -> int | None:
    """The last integer written in the reply (thousands separators dropped), or None."""
    found = _INTEGER.findall(reply.replace(",", ""))
    return int(found[-1]) if found else None


def make_example(a: int, b: int, operator: str) -> Example:
    value = _OPERATIONS[operator](a, b)
    return Example(prompt=f"What is {a} {operator} {b}?", response=f"{a} {operator} {b} = {value}",
                   answer=str(value), meta={"a": a, "b": b})


class SumsTask:
    """Seeded two-operand questions; eval pairs are held out of train."""

    name = "sums"

    def __init__(self, cfg: SumsConfig):
        self.cfg = cfg
        self.low = 0 if cfg.digits == 1 else 10 ** (cfg.digits - 1)
        self.width = 10**cfg.digits - self.low
        if cfg.eval_size >= self.width**2:
            raise ValueError(f"sums: eval_size={cfg.eval_size} must be smaller than the {self.width**2} possible "
                             f"{cfg.digits}-digit operand pairs so that train has pairs left")

    def split(self, which: str) -> list[Example]:
        if which not in self._splits:
            raise ValueError(f"unknown split {which!r}; expected 'train' or 'eval'")
        return list(self._splits[which])

    def score(self, example: Example, completion: str) -> float:
        return 1.0 if last_integer(completion) == int(example.answer) else 0.0

    def step_scores(self, example: Example, completion: str) -> list[float]:
        return [self.score(example, completion)]

    def _example(self, key: int) -> Example:
        a, b = divmod(key, self.width)
        return make_example(self.low + a, self.low + b, self.cfg.operator)

    @cached_property
    def _splits(self) -> dict[str, list[Example]]:
        train_keys, eval_keys = held_out_keys(self.width**2, self.cfg.train_size, self.cfg.eval_size, self.cfg.seed)
        return {"train": [self._example(k) for k in train_keys], "eval": [self._example(k) for k in eval_keys]}


def build(cfg: SumsConfig) -> SumsTask:
    return SumsTask(cfg)


SPEC = TaskSpec("sums", SumsConfig, build)
