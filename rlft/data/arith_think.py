"""Addition with a thinking section, in ThinkDial's reasoning-effort modes (docs/algorithms.md#thinkdial).

The full (high-mode) trace works the columns, then checks the sum by adding again in the other
order, as a careful solver reflects:

    prompt    "<mode prompt>Q: 47+38\n"
    response  "<think>\n7+8=15\n4+3+1=8\nso 85\nwait, let me check 38+47\n8+7=15\n3+4+1=8\nyes, 85 again, all ok\n</think>\nA: 85"

so cutting the thinking (BM-SFT, `rlft.data.thinkdial`) changes its length a lot: about 82
characters of thinking, 92 tokens in all for the tiny model with `<think>` and `</think>` as
single tokens (`model.tiny.word_tokens`), 10 with empty thinking. The answer counts only after the
close tag. Train prompts draw a mode uniformly from `modes` per problem, or are the
budget-mode SFT rows of the problems (`train_data: bm_sft`, or a file of them, `train_file`); the
eval split asks every held-out pair in each of `eval_modes`. The rows also go to a file with

    python -m rlft.data.arith_think --out rows.jsonl

(`--help` for sizes, the share of low-mode rows with empty thinking, and `--policy MODEL_DIR`).
"""

from __future__ import annotations

import argparse
import json
import random
from functools import cached_property
from pathlib import Path
from typing import Callable, Literal

from pydantic import Field, field_validator

from rlft.data.arith import ArithConfig, ArithTask, column_steps, format_step, parse_answer
from rlft.data.jsonl import DataError, read_sft_rows
from rlft.data.tasks import TaskSpec
from rlft.data.thinkdial import (CLOSE_TAG, MODE_PROMPTS, MODES, OPEN_TAG, answer_section, balanced_rows, cut_heads,
                                 model_answers, with_mode)
from rlft.types import Example

Mode = Literal["high", "medium", "low"]


class ArithThinkConfig(ArithConfig):
    name: Literal["arith_think"] = Field("arith_think", description="Task name.")  # type: ignore[assignment]
    modes: list[Mode] = Field(default_factory=lambda: list(MODES), min_length=1,
                              description="Modes of the train prompts (one drawn uniformly per problem).")
    eval_modes: list[Mode] = Field(default_factory=lambda: list(MODES), min_length=1,
                                   description="Every held-out pair is asked in each of these modes.")
    prompts: dict[str, str] = Field(default_factory=lambda: dict(MODE_PROMPTS),
                                    description="Mode prompt put before the question, per mode.")
    train_data: Literal["prompts", "bm_sft"] = Field(
        "prompts", description="prompts: problems with the full trace, one mode drawn per problem (for RL); bm_sft: "
        "each problem once per mode with its budget-mode SFT response (rlft.data.thinkdial, the task's solver).")
    empty_low: float = Field(0.0, ge=0.0, le=1.0, description="bm_sft: share of low-mode rows with empty thinking "
                             "(the tiny model cannot add without working: 7% correct when it was 0.5).")
    train_file: str | None = Field(None, description="BM-SFT JSONL rows (python -m rlft.data.arith_think) used as "
                                   "the train split instead (e.g. with answers written by a model).")

    @field_validator("prompts")
    @classmethod
    def _every_mode(cls, prompts: dict[str, str]) -> dict[str, str]:
        missing = [m for m in MODES if m not in prompts]
        if missing:
            raise ValueError(f"prompts: no prompt for mode(s) {', '.join(missing)}")
        return prompts


def thinking_trace(a: int, b: int) -> str:
    """The full thinking: the columns of a + b, then a check by adding b + a."""
    total = a + b
    forward = [format_step(*step) for step in column_steps(a, b)]
    check = [format_step(*step) for step in column_steps(b, a)]
    return "".join(line + "\n" for line in
                   [*forward, f"so {total}", f"wait, let me check {b}+{a}", *check, f"yes, {total} again, all ok"])


class ArithThinkTask:
    name = "arith_think"

    def __init__(self, cfg: ArithThinkConfig):
        self.cfg = cfg
        self.arith = ArithTask(cfg)

    def solver_answer(self, example: Example) -> str:
        """The solver's answer section, written after the close tag."""
        return f"A: {example.answer}"

    def make_example(self, plain: Example, mode: str) -> Example:
        a, b = plain.meta["a"], plain.meta["b"]
        return Example(prompt=with_mode(plain.prompt, mode, self.cfg.prompts),
                       response=OPEN_TAG + thinking_trace(a, b) + CLOSE_TAG + f"A: {a + b}",
                       answer=plain.answer, meta={"a": a, "b": b, "mode": mode, "question": plain.prompt})

    def split(self, which: str) -> list[Example]:
        if which not in self._splits:
            raise ValueError(f"unknown split {which!r}; expected 'train' or 'eval'")
        return list(self._splits[which])

    def score(self, example: Example, completion: str) -> float:
        """1.0 when the answer after the first close tag is the sum (nothing counts inside the thinking)."""
        answer = answer_section(completion, CLOSE_TAG.strip())
        return 1.0 if answer is not None and parse_answer(answer) == int(example.answer) else 0.0

    def step_scores(self, example: Example, completion: str) -> list[float]:
        return [self.score(example, completion)]

    @cached_property
    def _splits(self) -> dict[str, list[Example]]:
        if self.cfg.train_file is not None:
            train = self._read_train_file(self.cfg.train_file)
        elif self.cfg.train_data == "bm_sft":
            train = self.bm_sft_rows()
        else:
            rng = random.Random(self.cfg.seed + 1)  # the mode draws, apart from the problem sampler
            train = [self.make_example(ex, rng.choice(self.cfg.modes)) for ex in self.arith.split("train")]
        evaluation = [self.make_example(ex, mode) for ex in self.arith.split("eval") for mode in self.cfg.eval_modes]
        return {"train": train, "eval": evaluation}

    def bm_sft_rows(self, write_answers: Callable[[list[tuple[Example, str, str]]], list[str]] | None = None
                    ) -> list[Example]:
        """Budget-mode SFT examples of the train problems. `write_answers` regenerates the answer
        section of every (example, mode, cut head) of `cut_heads` (default: the solver's)."""
        full = [self.make_example(ex, "high") for ex in self.arith.split("train")]
        heads = cut_heads(full, self.cfg.empty_low, self.cfg.seed)
        answers = (write_answers(heads) if write_answers is not None
                   else [self.solver_answer(ex) for ex, _, _ in heads])
        candidates = [(ex, mode, head + answer) for (ex, mode, head), answer in zip(heads, answers)]
        rows = balanced_rows(candidates, lambda ex, response: self.score(ex, response) >= 1.0, self.cfg.seed,
                             self.cfg.prompts)
        return [Example(r["prompt"], r["response"], r["answer"], r["meta"]) for r in rows]

    def _read_train_file(self, path: str) -> list[Example]:
        rows = read_sft_rows(path)
        for row in rows:
            if row.meta.get("mode") not in MODES or not {"a", "b"} <= set(row.meta):
                raise DataError(f"{row.meta['source']}: 'meta' must hold 'mode' (one of {', '.join(MODES)}), 'a' and 'b'")
            if row.answer is None:
                raise DataError(f"{row.meta['source']}: missing key 'answer'")
        return rows


def build(cfg: ArithThinkConfig) -> ArithThinkTask:
    return ArithThinkTask(cfg)


SPEC = TaskSpec("arith_think", ArithThinkConfig, build)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write budget-mode SFT rows (ThinkDial BM-SFT) of the arith_think task.")
    parser.add_argument("--out", required=True, help="JSONL file to write")
    parser.add_argument("--problems", type=int, default=2000, help="train problems (each gives one row per mode)")
    parser.add_argument("--digits", type=int, default=2, help="operand digits (the task's `digits`)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the task's problems and of the empty-thinking draws")
    parser.add_argument("--empty-low", type=float, default=0.0, help="share of low-mode rows with empty thinking")
    parser.add_argument("--policy", help="HF model folder that writes the answer sections (default: the task's solver)")
    args = parser.parse_args(argv)
    task = ArithThinkTask(ArithThinkConfig(digits=args.digits, train_size=args.problems, seed=args.seed,
                                           empty_low=args.empty_low))
    write_answers = None
    if args.policy is not None:
        def write_answers(heads):
            return model_answers(args.policy, [with_mode(ex.meta["question"], mode) + head for ex, mode, head in heads])
    rows = task.bm_sft_rows(write_answers)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(json.dumps({"prompt": r.prompt, "response": r.response, "answer": r.answer, "meta": r.meta})
                           + "\n" for r in rows))
    counts = {mode: sum(r.meta["mode"] == mode for r in rows) for mode in MODES}
    print(f"wrote {len(rows)} rows to {out} ({3 * args.problems - len(rows)} rejected or balanced away): "
          + ", ".join(f"{mode} {n}" for mode, n in counts.items()))


if __name__ == "__main__":
    main()
