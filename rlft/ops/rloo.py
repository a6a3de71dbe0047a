"""RLOO: REINFORCE with a leave-one-out baseline (docs/algorithms.md#advantage-estimators).

Kool, van Hoof, Welling, *Buy 4 REINFORCE Samples, Get a Baseline for Free!* (ICLR 2019 workshop);
Ahmadian et al., *Back to Basics: Revisiting REINFORCE Style Optimization for Learning from Human
Feedback in LLMs* (ACL 2024), arXiv 2402.14740.

For the G responses of one prompt with rewards r_1..r_G, each response's baseline is the mean
reward of the OTHER G - 1 responses, so it never depends on the response it scores:

    b_i = 1/(G-1) sum_{j != i} r_j
    A_i = r_i - b_i  =  G/(G-1) (r_i - mean(r))

A group of one has no other response: its baseline is 0 and A = r (as veRL does).
"""

from __future__ import annotations

import torch


def leave_one_out_baselines(rewards: torch.Tensor, group_ids: torch.Tensor) -> torch.Tensor:
    """b_i [N]: the mean reward of the other members of sequence i's group (0 in a group of one)."""
    _, index = torch.unique(group_ids.to(rewards.device), return_inverse=True)
    r = rewards.to(torch.float64)
    groups = int(index.max()) + 1 if index.numel() else 0
    size = torch.zeros(groups, dtype=r.dtype, device=r.device).index_add_(0, index, torch.ones_like(r))
    total = torch.zeros_like(size).index_add_(0, index, r)
    others = size[index] - 1
    return torch.where(others > 0, (total[index] - r) / others.clamp(min=1), torch.zeros_like(r))


def rloo_advantages(rewards: torch.Tensor, group_ids: torch.Tensor) -> torch.Tensor:
    """A_i = r_i - b_i per sequence [N] (float64 inside, returned in the rewards' float dtype)."""
    advantages = rewards.to(torch.float64) - leave_one_out_baselines(rewards, group_ids)
    return advantages.to(rewards.dtype if rewards.is_floating_point() else torch.float32)
