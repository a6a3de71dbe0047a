"""Group-relative advantages (GRPO / Dr.GRPO), dynamic sampling, KL-in-reward shaping.

GRPO (DeepSeekMath; docs/algorithms.md#group-relative-advantages), for the G responses of one
prompt with rewards r_1..r_G:

    A_i = (r_i - mean(r)) / (std(r) + eps)        std unbiased (G - 1), eps = 1e-6
    A_i =  r_i - mean(r)                          Dr.GRPO (scale_by_std=False)

A group of size 1 has no baseline: following veRL it gets mean 0 and std 1, so its
advantage is r / (1 + eps) (GRPO) or r (Dr.GRPO), not 0.
Outcome supervision gives every response token its sequence's advantage (`broadcast_to_tokens`).

Process supervision (docs/algorithms.md#process-advantages) normalises every step reward r_i^(j)
over all step rewards of the group and gives each token the sum of the normalised rewards of its
step and every later step:

    A_{i,t} = sum_{j >= step(t)} (r_i^(j) - mean(R)) / (std(R) + eps),   R = the group's step rewards
"""

from __future__ import annotations

import torch

from rlft.ops.kl import kl_penalty

GRPO_EPS = 1e-6


def group_ids_from_size(num_sequences: int, group_size: int, device=None) -> torch.Tensor:
    """Group id of each sequence when the batch is laid out as consecutive groups of group_size."""
    if group_size < 1 or num_sequences % group_size:
        raise ValueError(f"{num_sequences} sequences do not split into groups of {group_size}")
    return torch.arange(num_sequences, device=device) // group_size


def _group_ids(rewards: torch.Tensor, group_ids: torch.Tensor | None, group_size: int | None) -> torch.Tensor:
    if (group_ids is None) == (group_size is None):
        raise ValueError("give exactly one of group_ids and group_size")
    if group_ids is None:
        return group_ids_from_size(rewards.shape[0], group_size, rewards.device)
    return group_ids.to(rewards.device)


def group_mean_std(rewards: torch.Tensor, group_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sequence mean and unbiased std of its group ([N] each); size-1 groups: mean 0, std 1."""
    _, index = torch.unique(group_ids, return_inverse=True)
    r = rewards.to(torch.float64)  # float64 so equal rewards give exactly zero deviation
    size = torch.zeros(int(index.max()) + 1, dtype=r.dtype, device=r.device).index_add_(0, index, torch.ones_like(r))
    mean = torch.zeros_like(size).index_add_(0, index, r) / size
    sq_dev = torch.zeros_like(size).index_add_(0, index, (r - mean[index]).square())
    std = (sq_dev / (size - 1).clamp(min=1)).sqrt()
    singleton = size == 1
    mean = torch.where(singleton, torch.zeros_like(mean), mean)
    std = torch.where(singleton, torch.ones_like(std), std)
    return mean[index], std[index]


def group_relative_advantages(
    rewards: torch.Tensor,
    group_ids: torch.Tensor | None = None,
    group_size: int | None = None,
    scale_by_std: bool = True,
    eps: float = GRPO_EPS,
) -> torch.Tensor:
    """Per-sequence advantages [N] from rewards [N]; groups by `group_ids` or consecutive `group_size`.

    scale_by_std=True: GRPO (r - mean) / (std + eps); False: Dr.GRPO r - mean.
    """
    mean, std = group_mean_std(rewards, _group_ids(rewards, group_ids, group_size))
    advantages = rewards.to(torch.float64) - mean
    if scale_by_std:
        advantages = advantages / (std + eps)
    return advantages.to(rewards.dtype if rewards.is_floating_point() else torch.float32)


def broadcast_to_tokens(advantages: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Outcome supervision: every valid token of sequence i gets A_i ([N] -> [N, T]); 0 off-mask."""
    return advantages.unsqueeze(-1).to(mask.dtype) * mask


def process_step_advantages(
    step_rewards: list[list[float]], group_ids: list[int], scale_by_std: bool = True, eps: float = GRPO_EPS
) -> list[list[float]]:
    """Per response, one advantage per step: step rewards normalised over all steps of the group
    (unbiased std; scale_by_std=False: only centred), then summed from each step to the last."""
    flat = torch.tensor([r for rewards in step_rewards for r in rewards], dtype=torch.float64)
    if flat.numel() == 0:
        return [[] for _ in step_rewards]
    flat_groups = torch.tensor([g for g, rewards in zip(group_ids, step_rewards) for _ in rewards])
    mean, std = group_mean_std(flat, flat_groups)
    normalised = (flat - mean) / (std + eps) if scale_by_std else flat - mean
    out, at = [], 0
    for rewards in step_rewards:
        out.append(reverse_cumsum(normalised[at:at + len(rewards)]).tolist())
        at += len(rewards)
    return out


def dynamic_sampling_keep(
    rewards: torch.Tensor, group_ids: torch.Tensor | None = None, group_size: int | None = None
) -> torch.Tensor:
    """DAPO dynamic sampling: bool [N], True for sequences whose group's rewards are not all equal.

    A group with identical rewards has zero advantage everywhere and so no policy gradient.
    """
    _, index = torch.unique(_group_ids(rewards, group_ids, group_size), return_inverse=True)
    groups = int(index.max()) + 1 if index.numel() else 0
    r = rewards.to(torch.float64)
    high = torch.full((groups,), -torch.inf, dtype=r.dtype).scatter_reduce(0, index, r, "amax")
    low = torch.full((groups,), torch.inf, dtype=r.dtype).scatter_reduce(0, index, r, "amin")
    return (high > low)[index]


def reverse_cumsum(values: torch.Tensor) -> torch.Tensor:
    """sum_{s >= t} values[..., s] along the last dimension."""
    return values.flip(-1).cumsum(-1).flip(-1)


def kl_reward_returns(base: torch.Tensor, token_kl: torch.Tensor, mask: torch.Tensor, kl_coef: float) -> torch.Tensor:
    """Per-token returns when every response token s also earns the reward -kl_coef * k_s (gamma = 1):

        G_{i,t} = base_i - kl_coef * sum_{s >= t} m_{i,s} k_{i,s}

    base [N]: each sequence's outcome term (its reward, or an estimator's advantage of it); token_kl
    [N, T]: k_s of each token against the reference (a reward: no gradient). float64 [N, T], 0 off the mask.
    """
    m = mask.to(torch.float64)
    with torch.no_grad():
        return (base.to(torch.float64).unsqueeze(-1) - kl_coef * reverse_cumsum(token_kl.to(torch.float64) * m)) * m


def kl_in_reward_advantages(
    advantages: torch.Tensor,
    logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    mask: torch.Tensor,
    kl_coef: float,
    estimator: str = "k1",
) -> torch.Tensor:
    """InstructGPT-style KL placement ('reward'): token advantages [N, T] minus the KL reward-to-go.

    Each token s earns the extra reward -kl_coef * k_s (k from `kl_penalty`, k1 in InstructGPT),
    computed from the *behaviour* policy's log-probs (a reward, so no gradient). With no critic and
    gamma = 1 the return of token t is the outcome term plus the KL rewards of t and every later
    token, so
        A'_t = A_t - kl_coef * sum_{s >= t} m_s k_s.
    The group baseline is only applied to the outcome reward (A_t comes from
    `group_relative_advantages`); the KL part is left unnormalised, as a per-token reward.
    """
    with torch.no_grad():
        k = kl_penalty(logprobs, ref_logprobs, estimator) * mask
        return (advantages - kl_coef * reverse_cumsum(k)) * mask
