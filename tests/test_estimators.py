"""Advantage estimators of the GPPO family (docs/algorithms.md#advantage-estimators): RLOO,
REINFORCE++, REINFORCE++-baseline; golden values derived by hand, their defining properties, the
config checks. Pure torch, no model."""

from __future__ import annotations

import math

import pytest
import torch
from pydantic import ValidationError

from rlft.algorithms.base import RowContext
from rlft.algorithms.gppo import GPPOConfig, build_rows, outcome_advantages, sequence_advantages, token_advantages
from rlft.algorithms.gppo_advantages import ADVANTAGE_ESTIMATORS
from rlft.ops.advantages import group_relative_advantages
from rlft.ops.reinforce_pp import batch_whiten, reinforce_pp_advantages, reinforce_pp_baseline_advantages
from rlft.ops.rloo import leave_one_out_baselines, rloo_advantages
from rlft.types import Example, Rollout, Score, Segment

F64 = torch.float64

# ---------------------------------------------------------------- RLOO


def test_rloo_golden_values():
    """Group 0, rewards [1, 0, 0, 1] (G = 4): baselines are the mean of the other three,
    b = [1/3, 2/3, 2/3, 1/3], so A = [2/3, -2/3, -2/3, 2/3] (= 4/3 (r - 1/2)).
    Group 1, rewards [3, 1] (G = 2): b = [1, 3], A = [2, -2]."""
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 3.0, 1.0], dtype=F64)
    groups = torch.tensor([0, 0, 0, 0, 1, 1])
    torch.testing.assert_close(leave_one_out_baselines(rewards, groups),
                               torch.tensor([1 / 3, 2 / 3, 2 / 3, 1 / 3, 1.0, 3.0], dtype=F64))
    torch.testing.assert_close(rloo_advantages(rewards, groups),
                               torch.tensor([2 / 3, -2 / 3, -2 / 3, 2 / 3, 2.0, -2.0], dtype=F64))


def test_rloo_baseline_excludes_the_sample_itself():
    """Raising r_0 by 5 leaves b_0 unchanged (A_0 rises by exactly 5) and raises every other
    baseline of its group by 5 / (G - 1); the other group does not move."""
    rewards = torch.tensor([0.2, 0.7, 0.1, 0.9, 0.4, 0.3], dtype=F64)
    groups = torch.tensor([0, 0, 0, 1, 1, 1])
    moved = rewards.clone()
    moved[0] += 5.0
    before, after = leave_one_out_baselines(rewards, groups), leave_one_out_baselines(moved, groups)
    assert after[0] == before[0]
    torch.testing.assert_close(after[1:3] - before[1:3], torch.full((2,), 2.5, dtype=F64))
    assert torch.equal(after[3:], before[3:])
    torch.testing.assert_close(rloo_advantages(moved, groups)[0] - rloo_advantages(rewards, groups)[0],
                               torch.tensor(5.0, dtype=F64))


def test_rloo_equals_rescaled_centred_reward_and_singletons_keep_their_reward():
    """A_i = G/(G-1) (r_i - mean) for random groups of 5; a group of one has baseline 0 (A = r)."""
    gen = torch.Generator().manual_seed(0)
    rewards = torch.rand(10, generator=gen, dtype=F64)
    groups = torch.arange(10) // 5
    centred = rewards - rewards.view(2, 5).mean(-1).repeat_interleave(5)
    torch.testing.assert_close(rloo_advantages(rewards, groups), 5 / 4 * centred)
    assert rloo_advantages(torch.tensor([0.7]), torch.tensor([3])).item() == pytest.approx(0.7)


# ---------------------------------------------------------------- REINFORCE++


def test_reinforce_pp_golden_values():
    """Rewards [1, 0, 0, 1]. One weight each: mu = 1/2, sigma^2 = 1/4, A = [1, -1, -1, 1].
    Token counts [3, 1, 1, 1] (6 tokens): mu = (3 + 1)/6 = 2/3,
    sigma^2 = (3 (1/3)^2 + (2/3)^2 + (2/3)^2 + (1/3)^2)/6 = (12/9)/6 = 2/9, sigma = sqrt(2)/3,
    A = [(1/3)/(sqrt2/3), (-2/3)/(sqrt2/3), ., .] = [1/sqrt2, -sqrt2, -sqrt2, 1/sqrt2]."""
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0], dtype=F64)
    torch.testing.assert_close(reinforce_pp_advantages(rewards, torch.ones(4)),
                               torch.tensor([1.0, -1.0, -1.0, 1.0], dtype=F64))
    r2 = math.sqrt(2.0)
    torch.testing.assert_close(reinforce_pp_advantages(rewards, torch.tensor([3.0, 1.0, 1.0, 1.0])),
                               torch.tensor([1 / r2, -r2, -r2, 1 / r2], dtype=F64))


def test_reinforce_pp_has_batch_mean_zero_and_std_one_not_per_group():
    """Over the batch's tokens (each sequence weighted by its length): mean 0, population std 1.
    Not per group: a group whose rewards are all high keeps positive advantages (GRPO gives it 0)."""
    gen = torch.Generator().manual_seed(1)
    rewards = torch.rand(12, generator=gen, dtype=F64)
    rewards[:4] += 3.0  # group 0: every reward high
    lengths = torch.randint(1, 20, (12,), generator=gen).to(F64)
    a = reinforce_pp_advantages(rewards, lengths)
    mean = (lengths * a).sum() / lengths.sum()
    std = ((lengths * (a - mean) ** 2).sum() / lengths.sum()).sqrt()
    assert abs(mean.item()) < 1e-12 and std.item() == pytest.approx(1.0, abs=1e-12)
    assert (a[:4] > 0).all()
    groups = torch.arange(12) // 4
    assert group_relative_advantages(rewards, group_ids=groups)[:4].sum().abs() < 1e-9


def test_whitening_of_equal_returns_is_zero_and_zero_weights_do_not_count():
    assert torch.equal(batch_whiten(torch.full((4,), 0.5, dtype=F64), torch.ones(4)), torch.zeros(4, dtype=F64))
    # the weight-0 entry (1000) moves neither mean nor std: the others whiten as [1, -1, -1, 1]
    values = torch.tensor([1.0, 0.0, 0.0, 1.0, 1000.0], dtype=F64)
    torch.testing.assert_close(batch_whiten(values, torch.tensor([1.0, 1.0, 1.0, 1.0, 0.0]))[:4],
                               torch.tensor([1.0, -1.0, -1.0, 1.0], dtype=F64))


def test_reinforce_pp_baseline_golden_values():
    """Groups [2, 0] and [3, 3], one weight each. Group means 1 and 3 -> centred [1, -1, 0, 0],
    mu = 0, sigma^2 = 2/4, A = [sqrt2, -sqrt2, 0, 0]. Plain REINFORCE++ on the same rewards: mu = 2,
    centred [0, -2, 1, 1], sigma^2 = 6/4, A = [0, -2, 1, 1] / sqrt(1.5)."""
    rewards = torch.tensor([2.0, 0.0, 3.0, 3.0], dtype=F64)
    groups = torch.tensor([0, 0, 1, 1])
    r2 = math.sqrt(2.0)
    torch.testing.assert_close(reinforce_pp_baseline_advantages(rewards, groups, torch.ones(4)),
                               torch.tensor([r2, -r2, 0.0, 0.0], dtype=F64))
    torch.testing.assert_close(reinforce_pp_advantages(rewards, torch.ones(4)),
                               torch.tensor([0.0, -2.0, 1.0, 1.0], dtype=F64) / math.sqrt(1.5))


def test_reinforce_pp_baseline_removes_the_group_mean_first():
    """Adding a constant to every reward of one group changes nothing (the group mean takes it),
    while plain REINFORCE++ moves."""
    gen = torch.Generator().manual_seed(2)
    rewards = torch.rand(8, generator=gen, dtype=F64)
    groups = torch.arange(8) // 4
    lengths = torch.tensor([3.0, 5.0, 2.0, 7.0, 1.0, 4.0, 4.0, 6.0])
    shifted = rewards + torch.where(groups == 1, 10.0, 0.0).to(F64)
    torch.testing.assert_close(reinforce_pp_baseline_advantages(shifted, groups, lengths),
                               reinforce_pp_baseline_advantages(rewards, groups, lengths))
    assert not torch.allclose(reinforce_pp_advantages(shifted, lengths), reinforce_pp_advantages(rewards, lengths))


# ---------------------------------------------------------------- through GPPO's config


def test_the_default_estimator_is_grpo_unchanged():
    """advantage: grpo (the default) is exactly the GRPO / Dr.GRPO function it always called."""
    gen = torch.Generator().manual_seed(3)
    rewards, groups = torch.rand(16, generator=gen), torch.arange(16) // 4
    assert GPPOConfig().advantage == "grpo"
    for scale in (True, False):
        got = outcome_advantages(rewards, groups, GPPOConfig(scale_by_std=scale))
        assert torch.equal(got, group_relative_advantages(rewards, group_ids=groups, scale_by_std=scale))


def test_token_advantages_weight_the_batch_by_response_tokens():
    """token_advantages whitens over the label mask's tokens: rows of 3, 1, 1, 1 tokens give the
    token-count golden values above."""
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    adv = token_advantages(torch.tensor([1.0, 0.0, 0.0, 1.0]), torch.zeros(4), mask,
                           GPPOConfig(advantage="reinforce_pp", group_size=4))
    r2 = math.sqrt(2.0)
    torch.testing.assert_close(adv, torch.tensor([[1 / r2] * 3, [-r2, 0, 0], [0, -r2, 0], [0, 0, 1 / r2]]))


def test_dynamic_sampling_drops_groups_before_the_batch_statistics():
    """Group 1 ([1, 1]) is dropped: REINFORCE++-baseline whitens group 0 ([2, 0] -> centred [1, -1])
    alone: A = [1, -1] (mu 0, sigma 1), whatever group 1's lengths."""
    cfg = GPPOConfig(advantage="reinforce_pp_baseline", group_size=2, dynamic_sampling=True)
    out = sequence_advantages(torch.tensor([2.0, 0.0, 1.0, 1.0]), torch.tensor([0, 0, 1, 1]), cfg,
                              torch.tensor([1.0, 1.0, 50.0, 50.0], dtype=F64))
    assert out["keep"].tolist() == [True, True, False, False]
    torch.testing.assert_close(out["advantages"][:2], torch.tensor([1.0, -1.0]))


def _rollout(reward: float, n_tokens: int, observed: int = 0, prompt: int = 2) -> Rollout:
    """A rollout of group 0 whose completion has n_tokens tokens, the last `observed` an observation."""
    segments = [Segment(0, n_tokens - observed, "turn"), Segment(n_tokens - observed, n_tokens, "observation")]
    return Rollout(Example("q", None, "1"), 0, [1] * prompt, list(range(3, 3 + n_tokens)), [-0.5] * n_tokens, "", 0,
                   "stop", segments if observed else [], Score(reward, reward > 0))


def test_build_rows_whiten_over_the_tokens_each_row_trains():
    """max_length 7. Row 0 trains 4 tokens (5, the last an observation), rows 1 and 2 one each, row 3
    one (a 6-token prompt leaves room for 1 of its 9). Weights [4, 1, 1, 1], rewards [1, 0, 0, 1]:
    mu = 5/7, sigma^2 = (4 (2/7)^2 + 2 (5/7)^2 + (2/7)^2) / 7 = (16 + 50 + 4)/343 = 10/49,
    sigma = sqrt(10)/7, A = [2, -5, -5, 2] / sqrt(10), on every trained token of its row."""
    rollouts = [_rollout(1.0, 5, observed=1), _rollout(0.0, 1), _rollout(0.0, 1), _rollout(1.0, 9, prompt=6)]
    rows, _ = build_rows(rollouts, RowContext(None, False, 7, GPPOConfig(advantage="reinforce_pp", group_size=4)))
    assert [sum(label >= 0 for label in row["labels"]) for row in rows] == [4, 1, 1, 1]
    s10 = math.sqrt(10.0)
    for row, want in zip(rows, [2 / s10, -5 / s10, -5 / s10, 2 / s10]):
        trained = [a for a, label in zip(row["advantages"], row["labels"][1:]) if label >= 0]
        assert trained == pytest.approx([want] * len(trained), abs=1e-6)
    assert rows[0]["advantages"][1 + 4] == 0.0  # the observation token


# ---------------------------------------------------------------- config checks


def test_estimator_registry_and_config_errors():
    assert set(ADVANTAGE_ESTIMATORS) == {"grpo", "rloo", "reinforce_pp", "reinforce_pp_baseline"}
    with pytest.raises(ValidationError, match="did you mean 'rloo'"):
        GPPOConfig(advantage="rlo")
    with pytest.raises(ValidationError, match="advantage=rloo needs group_size >= 2"):
        GPPOConfig(advantage="rloo", group_size=1)
    with pytest.raises(ValidationError, match="advantage=reinforce_pp_baseline needs group_size >= 2"):
        GPPOConfig(advantage="reinforce_pp_baseline", group_size=1)
    with pytest.raises(ValidationError, match="advantage=rloo does not read scale_by_std=False"):
        GPPOConfig(advantage="rloo", scale_by_std=False)
    GPPOConfig(advantage="rloo", scale_by_std=False, process_coef=0.5)  # the process advantages read it
    GPPOConfig(advantage="reinforce_pp", group_size=1)  # no group baseline: a group of one is fine
    for key in ("advantage", "clip_mode"):
        assert GPPOConfig.model_fields[key].description
