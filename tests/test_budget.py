"""ThinkDial budget shaping (docs/algorithms.md#budget-reward) and group-level reward components."""

from __future__ import annotations

import dataclasses

import pytest

from rlft.data.arith import make_example
from rlft.rewards.answer import AnswerConfig, AnswerReward
from rlft.rewards.base import score_rollouts
from rlft.rewards.budget import (
    BudgetConfig,
    BudgetReward,
    act_score,
    answer_section,
    leak_reward,
    length_lambdas,
    length_rewards,
)
from rlft.data.tasks import build_task
from rlft.data.arith import ArithConfig
from rlft.sources.rollouts import split_groups
from rlft.types import Rollout

TASK = build_task(ArithConfig())
CLEAN, LEAKY = "\nA: 85", "\nwait, A: 85"


def _rollout(mode: str | None, think_tokens: int, answer: str = CLEAN, group: int = 0) -> Rollout:
    example = make_example(47, 38)
    if mode is not None:
        example = dataclasses.replace(example, meta={**example.meta, "mode": mode})
    text = "<think>" + "x" * think_tokens + "</think>" + answer
    return Rollout(example, group, [1], [5] * len(text), [-1.0] * len(text), text, 0)


def _scores(rollouts, **budget):
    cfg = BudgetConfig(**budget)
    components = [(AnswerConfig(), AnswerReward(AnswerConfig(), TASK)), (cfg, BudgetReward(cfg, TASK))]
    return score_rollouts(rollouts, components, [TASK.score(r.example, r.text) >= 1 for r in rollouts])


def test_high_mode_reward_is_task_plus_leak():
    rollouts = [_rollout("high", n, answer) for n, answer in ((2, CLEAN), (9, LEAKY), (5, "\nA: 84"))]
    assert [s.reward for s in _scores(rollouts)] == pytest.approx([1 + 0.5, 1 - 0.5, 0 + 0.5])


def test_shortest_correct_gets_half_alpha_longest_minus_half_and_wrong_never_positive():
    for mode, alpha in (("medium", 0.5), ("low", 1.0)):
        rollouts = [_rollout(mode, n, answer) for n, answer in ((2, CLEAN), (6, CLEAN), (10, CLEAN), (1, "\nA: 84"))]
        scores = _scores(rollouts, leak=False)
        budget = [s.components["budget"] for s in scores]
        # lengths 20, 24, 28, 19 tokens: lambda = 0.5 - (len - 19) / 9
        assert budget[:3] == pytest.approx([alpha * (0.5 - 1 / 9), alpha * (0.5 - 5 / 9), alpha * -0.5])
        assert budget[3] == 0.0  # the shortest response is wrong: its positive length reward is dropped
    lam = length_lambdas([3, 5, 9])
    assert lam == pytest.approx([0.5, 0.5 - 2 / 6, -0.5])
    assert length_rewards([3, 5, 9], [False, False, False]) == pytest.approx([0.0, 0.0, -0.5])


def test_length_reward_is_invariant_to_shifting_and_scaling_lengths():
    lengths, correct = [12, 40, 7, 25], [True, False, True, True]
    base = length_rewards(lengths, correct)
    assert length_rewards([n + 100 for n in lengths], correct) == pytest.approx(base)
    assert length_rewards([3.5 * n for n in lengths], correct) == pytest.approx(base)
    assert length_rewards([9, 9, 9], [True, True, False]) == [0.0, 0.0, 0.0]  # degenerate group


def test_leak_detector_reads_only_after_the_first_close_tag():
    keywords = ["wait", "let me think"]
    assert leak_reward("<think>wait, let me think</think>A: 3", keywords) == 0.5
    assert leak_reward("<think>ok</think>Wait. A: 3", keywords) == -0.5
    assert leak_reward("<think>ok</think>A: 3</think> let me think", keywords) == -0.5  # after the *first* tag
    assert leak_reward("<think>never closed, A: 3", keywords) == -0.5
    assert leak_reward("<think>x</think>awaits nothing", keywords) == 0.5  # whole words only
    assert answer_section("<think>a</think>b</think>c") == "b</think>c"


def test_unknown_mode_is_named():
    with pytest.raises(ValueError, match="mode 'turbo' has no alpha"):
        _scores([_rollout("turbo", 3)])


def test_act_score_matches_the_hand_computed_mean():
    # high: A = 0.8/0.8 = 1; medium: 0.5 * 0.76/0.8 + 0.5 * (1 - 50/100); low: 0.5 * 0.72/0.8 + 0.5 * (1 - 25/100)
    accuracy, cost = {"high": 0.8, "medium": 0.76, "low": 0.72}, {"high": 100, "medium": 50, "low": 25}
    expected = (1.0 + (0.475 + 0.25) + (0.45 + 0.375)) / 3
    assert act_score(accuracy, cost, 0.8, 100) == pytest.approx(expected)


def test_group_components_see_whole_groups_across_reward_actors():
    rollouts = [_rollout("low", n, group=g) for g in range(3) for n in (g + 1, g + 5)]
    chunks = split_groups(rollouts, 2)
    assert [len(c) for c in chunks] == [4, 2]
    assert all(len({r.group for r in chunk}) * 2 == len(chunk) for chunk in chunks)
    # scored apart, each group still has its own shortest (+0.5) and longest (-0.5) response
    budget = [s.components["budget"] for chunk in chunks for s in _scores(chunk, leak=False)]
    assert budget == pytest.approx([0.5, -0.5] * 3)
