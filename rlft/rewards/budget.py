"""ThinkDial budget shaping (docs/algorithms.md#budget-reward): a group-relative length reward
scaled by the prompt's mode, and a leak penalty against reasoning moved out of the thinking section.

For the G responses of one prompt in mode m (`example.meta["mode"]`, "high" when absent), with
len = all response tokens (thinking + answer):

    lambda_i = 0.5 - (len_i - len_min) / (len_max - len_min)        (0 for every i when len_max = len_min)
    R_length_i = lambda_i if response i is correct, else min(0, lambda_i)
    R_leak_i = +b if the text after the first close tag holds none of the transition keywords, else -b

and this component's value is alpha(m) * R_length_i + R_leak_i (alpha: high 0, medium 0.5, low 1),
so with the `answer` component beside it the reward is R_task + alpha(m) R_length + R_leak. A
response that never closes its thinking has no answer section: it gets -b (nothing to answer with).
`leak: false` drops the leak term (the warm-up phase).
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field

from rlft.data.thinkdial import answer_section
from rlft.rewards.base import ComponentConfig, ComponentSpec, ComponentValue
from rlft.types import Rollout

MODE_ALPHA = {"high": 0.0, "medium": 0.5, "low": 1.0}
# Metacognitive markers of reasoning (the paper publishes no list; ours, configurable).
TRANSITION_KEYWORDS = ("wait", "let me think", "let me check", "actually", "alternatively", "however",
                       "hmm", "on second thought", "double-check", "re-check")


def length_lambdas(lengths: list[float]) -> list[float]:
    """0.5 for the shortest response of the group, -0.5 for the longest; 0 for all when they are equal."""
    low, high = min(lengths), max(lengths)
    if high == low:
        return [0.0] * len(lengths)
    return [0.5 - (n - low) / (high - low) for n in lengths]


def length_rewards(lengths: list[float], correct: list[bool]) -> list[float]:
    """Kimi-style group length reward: incorrect responses keep only its negative part."""
    return [lam if ok else min(0.0, lam) for lam, ok in zip(length_lambdas(lengths), correct)]


def has_transition(text: str, keywords) -> bool:
    """Whether any keyword occurs as whole words, case-insensitively."""
    return any(re.search(rf"\b{re.escape(k)}\b", text, re.IGNORECASE) for k in keywords)


def leak_reward(text: str, keywords, bonus: float = 0.5, close_tag: str = "</think>") -> float:
    """+bonus for an answer section free of transition keywords, -bonus otherwise (or without one)."""
    answer = answer_section(text, close_tag)
    return -bonus if answer is None or has_transition(answer, keywords) else bonus


def act_score(accuracy: dict[str, float], cost: dict[str, float], base_accuracy: float, base_cost: float) -> float:
    """ACT (docs/algorithms.md#act-score): mean over modes of beta A_m + (1 - beta) C_m, A_m = acc_m / acc_base,
    C_m = 1 - cost_m / cost_base, beta = 1 for high and 0.5 otherwise."""
    terms = []
    for mode, acc in accuracy.items():
        beta = 1.0 if mode == "high" else 0.5
        terms.append(beta * acc / base_accuracy + (1 - beta) * (1 - cost[mode] / base_cost))
    return sum(terms) / len(terms)


class BudgetConfig(ComponentConfig):
    name: Literal["budget"] = "budget"
    alpha: dict[str, float] = Field(default_factory=lambda: dict(MODE_ALPHA),
                                    description="Length-reward coefficient per mode (ThinkDial: high 0, medium 0.5, low 1).")
    leak: bool = Field(True, description="Add the leak term (+/- leak_bonus); off in the warm-up phase.")
    leak_bonus: float = Field(0.5, ge=0, description="Size of the leak reward/penalty.")
    keywords: list[str] = Field(default_factory=lambda: list(TRANSITION_KEYWORDS),
                                description="Reasoning transition keywords that must not appear after the close tag.")
    close_tag: str = Field("</think>", min_length=1, description="Text that ends the thinking section.")


class BudgetReward:
    per_group = True  # the length reward is relative to the prompt's other responses

    def __init__(self, cfg: BudgetConfig, task):
        self.cfg, self.task = cfg, task

    def __call__(self, group: list[Rollout]) -> list[ComponentValue]:
        cfg = self.cfg
        mode = group[0].example.meta.get("mode", "high")
        if mode not in cfg.alpha:
            raise ValueError(f"budget reward: example mode {mode!r} has no alpha (modes: {', '.join(cfg.alpha)})")
        correct = [self.task.score(r.example, r.text) >= 1.0 for r in group]
        lengths = length_rewards([float(len(r.completion_ids)) for r in group], correct)
        values = []
        for r, length in zip(group, lengths):
            leak = leak_reward(r.text, cfg.keywords, cfg.leak_bonus, cfg.close_tag) if cfg.leak else 0.0
            values.append(ComponentValue(cfg.alpha[mode] * length + leak))
        return values


SPEC = ComponentSpec("budget", BudgetConfig, BudgetReward)
