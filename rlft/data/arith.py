"""Seeded procedural addition with step-by-step worked traces.

Format (short, because the tiny model reads characters):

    prompt    "Q: 47+38\n"
    response  "7+8=15\n4+3+1=8\nA: 85"

One line per digit column, least significant first: "a+b=s", or "a+b+1=s" when a carry comes
in. A column past the end of the shorter operand uses digit 0 ("7+38" -> "7+8=15", "0+3+1=4").
A carry out of the last column gets no line of its own: it shows up in the answer line.
"""

from __future__ import annotations

import random
import re
from functools import cached_property
from typing import Literal

from pydantic import Field

from rlft.data.tasks import TaskSpec
from rlft.schema import Section
from rlft.types import Example

_ANSWER = re.compile(r"A:\s*(-?\d+)")
_COLUMN_LINE = re.compile(r"(\d+)\+(\d+)(?:\+(\d+))?=(\d+)")


class ArithConfig(Section):
    name: Literal["arith"] = Field("arith", description="Task name.")
    digits: int = Field(2, ge=1, le=18, description="Operands are drawn uniformly from 0..10**digits-1.")
    train_size: int = Field(20000, ge=0, description="Training problems (drawn with replacement).")
    eval_size: int = Field(200, ge=0, description="Distinct held-out (a, b) pairs never seen in train.")
    seed: int = Field(0, description="Seed of the problem sampler.")


def column_digits(a: int, b: int) -> list[tuple[int, int]]:
    """(digit of a, digit of b) per column, least significant first, 0 past the shorter one."""
    width = max(len(str(a)), len(str(b)))
    return [((a // 10**i) % 10, (b // 10**i) % 10) for i in range(width)]


def column_steps(a: int, b: int) -> list[tuple[int, int, int, int]]:
    """(digit a, digit b, carry in, column sum) for every column of a + b."""
    steps, carry = [], 0
    for digit_a, digit_b in column_digits(a, b):
        total = digit_a + digit_b + carry
        steps.append((digit_a, digit_b, carry, total))
        carry = total // 10
    return steps


def format_step(digit_a: int, digit_b: int, carry: int, total: int) -> str:
    return f"{digit_a}+{digit_b}+{carry}={total}" if carry else f"{digit_a}+{digit_b}={total}"


def worked_response(a: int, b: int) -> str:
    lines = [format_step(*step) for step in column_steps(a, b)]
    return "\n".join(lines + [f"A: {a + b}"])


def make_example(a: int, b: int) -> Example:
    return Example(
        prompt=f"Q: {a}+{b}\n", response=worked_response(a, b), answer=str(a + b), meta={"a": a, "b": b}
    )


def parse_answer(completion: str) -> int | None:
    """The integer of the last "A: <int>" in the completion, or None."""
    found = _ANSWER.findall(completion)
    return int(found[-1]) if found else None


def step_lines(completion: str) -> list[str]:
    """Non-blank lines before the first answer line, spaces removed."""
    lines = []
    for line in completion.split("\n"):
        line = line.replace(" ", "")
        if line.startswith("A:"):
            break
        if line:
            lines.append(line)
    return lines


def step_is_correct(line: str, step: tuple[int, int, int, int]) -> bool:
    """The line states this column's digits, its incoming carry (exactly when there is one) and
    their sum. Correct arithmetic on the wrong digits, or a dropped carry, is wrong."""
    match = _COLUMN_LINE.fullmatch(line)
    if match is None:
        return False
    x, y, carry, total = match.groups()
    stated = (int(x), int(y), int(carry) if carry is not None else 0, int(total))
    carry_form_ok = (carry is not None) == (step[2] != 0)
    return carry_form_ok and stated == step


def held_out_keys(num_keys: int, train_size: int, eval_size: int, seed: int) -> tuple[list[int], list[int]]:
    """(train keys, eval keys) out of range(num_keys): eval is drawn first, without replacement; train
    then samples with replacement from the keys eval did not take (train_size may exceed num_keys,
    e.g. 20000 > 10**4 two-digit pairs)."""
    rng = random.Random(seed)
    eval_keys = rng.sample(range(num_keys), eval_size)
    held_out = set(eval_keys)
    train_keys = []
    while len(train_keys) < train_size:
        key = rng.randrange(num_keys)
        if key not in held_out:
            train_keys.append(key)
    return train_keys, eval_keys


class ArithTask:
    """Addition of two seeded random operands; eval pairs are held out of train."""

    name = "arith"

    def __init__(self, cfg: ArithConfig):
        self.cfg = cfg
        self.num_pairs = 10 ** (2 * cfg.digits)
        if cfg.eval_size >= self.num_pairs:
            raise ValueError(
                f"arith: eval_size={cfg.eval_size} must be smaller than the {self.num_pairs} "
                f"possible ({cfg.digits}-digit) operand pairs so that train has pairs left"
            )

    def split(self, which: str) -> list[Example]:
        if which not in self._splits:
            raise ValueError(f"unknown split {which!r}; expected 'train' or 'eval'")
        return list(self._splits[which])

    def score(self, example: Example, completion: str) -> float:
        return 1.0 if parse_answer(completion) == int(example.answer) else 0.0

    def step_scores(self, example: Example, completion: str) -> list[float]:
        """One score per expected column line (matched by position), then one for the answer."""
        expected = column_steps(example.meta["a"], example.meta["b"])
        given = step_lines(completion)
        scores = [
            1.0 if i < len(given) and step_is_correct(given[i], step) else 0.0
            for i, step in enumerate(expected)
        ]
        return scores + [self.score(example, completion)]

    @cached_property
    def _splits(self) -> dict[str, list[Example]]:
        # Pair index k encodes (a, b) = divmod(k, 10**digits).
        base = 10**self.cfg.digits
        train_keys, eval_keys = held_out_keys(self.num_pairs, self.cfg.train_size, self.cfg.eval_size, self.cfg.seed)
        return {
            "train": [make_example(*divmod(k, base)) for k in train_keys],
            "eval": [make_example(*divmod(k, base)) for k in eval_keys],
        }


def build(cfg: ArithConfig) -> ArithTask:
    return ArithTask(cfg)


SPEC = TaskSpec("arith", ArithConfig, build)
