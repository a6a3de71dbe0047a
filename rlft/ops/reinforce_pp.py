"""REINFORCE++ and REINFORCE++-baseline advantages (docs/algorithms.md#advantage-estimators).

Hu, *REINFORCE++: A Simple and Efficient Approach for Aligning Large Language Models* (2025),
arXiv 2501.03262. No critic and no per-prompt std: the return of every response is normalised
over the whole batch instead of within its group.

    REINFORCE++            A_i = (R_i - mu) / sigma
    REINFORCE++-baseline   A_i = (R'_i - mu') / sigma',   R'_i = R_i - mean of R over i's group

mu and sigma are the mean and (population) std over the batch's response TOKENS: each sequence
counts once per token it trains, as the authors' OpenRLHF and veRL whiten their per-token returns
(`weights` = each sequence's token count; 1 each for a per-sequence whitening). With outcome rewards
and no KL in the reward a response's return is the same on all its tokens, R_i = r_i.

The paper also puts a token-level KL penalty into the reward (R_t = r 1[t = T] - beta KL_t, summed
from t on), so the return differs from token to token. These functions whiten outcome returns (one
per sequence); with `kl_placement: reward` the per-token returns of rlft.ops.advantages.kl_reward_returns
are whitened over the batch's tokens instead (rlft.ops.gae.whiten), from the reward
itself (REINFORCE++) or `reinforce_pp_baseline_base` (the reward less its group's mean).
"""

from __future__ import annotations

import torch

from rlft.ops.advantages import group_mean_std

WHITEN_EPS = 1e-8  # floor of the variance (OpenRLHF's clamp): a batch of equal returns gives 0, not nan


def batch_whiten(values: torch.Tensor, weights: torch.Tensor, eps: float = WHITEN_EPS) -> torch.Tensor:
    """(v - mu) / sigma with mu = sum w v / sum w and sigma^2 = sum w (v - mu)^2 / sum w, float64 [N].
    Zero-weight entries do not move mu or sigma (they are still shifted and scaled)."""
    v, w = values.to(torch.float64), weights.to(torch.float64)
    total = w.sum()
    if total <= 0:
        return torch.zeros_like(v)
    mu = (w * v).sum() / total
    var = (w * (v - mu).square()).sum() / total
    return (v - mu) * var.clamp(min=eps).rsqrt()


def _as_float(advantages: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return advantages.to(like.dtype if like.is_floating_point() else torch.float32)


def reinforce_pp_baseline_base(rewards: torch.Tensor, group_ids: torch.Tensor) -> torch.Tensor:
    """R'_i = R_i - mean of R over i's group, float64 [N]: REINFORCE++-baseline's return before whitening."""
    mean, _ = group_mean_std(rewards, group_ids.to(rewards.device))
    return rewards.to(torch.float64) - mean


def reinforce_pp_advantages(returns: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """REINFORCE++: the returns [N] whitened over the batch (weights [N]: tokens per sequence)."""
    return _as_float(batch_whiten(returns, weights), returns)


def reinforce_pp_baseline_advantages(rewards: torch.Tensor, group_ids: torch.Tensor,
                                     weights: torch.Tensor) -> torch.Tensor:
    """REINFORCE++-baseline: each reward minus its group's mean, then whitened over the batch."""
    return _as_float(batch_whiten(reinforce_pp_baseline_base(rewards, group_ids), weights), rewards)
