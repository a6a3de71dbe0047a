"""Outcome reward of a retrieval episode: token F1 (or exact match) of its answer with the gold one."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from rlft.retrieval.episode import exact_match, f1
from rlft.rewards.base import ComponentConfig, ComponentSpec, ComponentValue
from rlft.types import Rollout


class AnswerF1Config(ComponentConfig):
    name: Literal["answer_f1"] = "answer_f1"
    metric: Literal["f1", "exact_match"] = Field("f1", description="SQuAD-style token F1 or exact match.")


class AnswerF1:
    def __init__(self, cfg: AnswerF1Config, task):
        self.score = f1 if cfg.metric == "f1" else exact_match

    def __call__(self, rollout: Rollout) -> ComponentValue:
        answer = rollout.info.get("answer")
        gold = rollout.example.answer
        return ComponentValue(self.score(answer, gold) if answer is not None and gold is not None else 0.0)


SPEC = ComponentSpec("answer_f1", AnswerF1Config, AnswerF1)
