"""DNA design as a task: real DHS sequences to pretrain on, and a cell type to design for.

The sequences are the 47,872 200-bp DHS sequences shipped in `dnadiffusion` (rlft.data.dna).
An `Example` holds one sequence as its response (no prompt: a diffusion model generates
unconditionally) and its cell type as the answer. A designed sequence is "correct" when the
checking oracle (reward_models, the held-out evaluation oracle by default) classifies it as the
target cell type: eval/accuracy is the fraction classified as HepG2 (docs/algorithms.md#dna-evaluation-metrics).
"""

from __future__ import annotations

from functools import cached_property
from typing import Literal

from pydantic import Field

from rlft.data.tasks import TaskSpec
from rlft.schema import Section
from rlft.types import Example


class DnaTaskConfig(Section):
    name: Literal["dna"] = Field("dna", description="Task name.")
    path: str | None = Field(None, description="Sequence file in the dnadiffusion format (None: the shipped one).")
    target: str = Field("HepG2", description="Cell type to design for (one of the file's cell types).")
    train_split: Literal["train", "all"] = Field(
        "train", description="Sequences to pretrain on: the file's train split, or every sequence."
    )
    eval_split: Literal["validation", "test"] = Field("validation", description="Held-out sequences.")
    checker: str = Field(
        "eval", description='Oracle that decides "classified as the target": "eval", "ft" or an oracle folder.'
    )


class DnaTask:
    name = "dna"

    def __init__(self, cfg: DnaTaskConfig):
        self.cfg = cfg

    @cached_property
    def data(self):
        from rlft.data.dna import CELL_TYPES, load_dna

        found = load_dna(self.cfg.path)
        if self.cfg.target not in CELL_TYPES:
            raise ValueError(f"task.target={self.cfg.target!r} is not a cell type of the data; one of {list(CELL_TYPES)}")
        return found

    @cached_property
    def oracle(self):
        from reward_models.dna_oracle import load_oracle

        return load_oracle(self.cfg.checker).eval()

    def split(self, which: str) -> list[Example]:
        if which == "train":
            chosen = self.data if self.cfg.train_split == "all" else self.data.subset(split="training")
        elif which == "eval":
            chosen = self.data.subset(split=self.cfg.eval_split)
        else:
            raise ValueError(f"unknown split {which!r}; expected train or eval")
        return [Example(prompt="", response=seq, answer=cell) for seq, cell in zip(chosen.sequences, chosen.cell_types)]

    def classified_as_target(self, sequences: list[str]) -> list[bool]:
        """Whether the checking oracle's most likely cell type is the target, per sequence."""
        import torch

        from rlft.data.dna import CELL_TYPES, encode, one_hot

        if not sequences:
            return []
        with torch.no_grad():
            logits = self.oracle(one_hot(encode(sequences)))
        return (logits.argmax(-1) == CELL_TYPES.index(self.cfg.target)).tolist()

    def score(self, example: Example, completion: str) -> float:
        return float(self.classified_as_target([completion])[0])

    def step_scores(self, example: Example, completion: str) -> list[float]:
        return [self.score(example, completion)]


def build(cfg: DnaTaskConfig) -> DnaTask:
    return DnaTask(cfg)


SPEC = TaskSpec("dna", DnaTaskConfig, build)
