"""Generalised advantage estimation (Schulman et al., arXiv 1506.02438) over response tokens.

A response is an episode of one action per token: the state before token t is the prompt and the
tokens before it, the critic's value V_t estimates the return from there, and the reward comes at
the end (r_t = 0 except on the response's last token, which gets the sequence reward; the value
after the last token is 0: the episode has ended). Then

    delta_t = r_t + gamma * V_{t+1} - V_t                  (one-step TD error)
    A_t     = delta_t + gamma * lambda * A_{t+1}           (A after the last token: 0)
    R_t     = A_t + V_t                                    (the value target, lambda-return)

lambda = 1 gives A_t = sum_k gamma^k r_{t+k} - V_t (discounted return minus value: unbiased, high
variance); lambda = 0 gives A_t = delta_t (one-step TD: low variance, biased by V).

Tensors are [B, T] on the shifted positions of rlft.ops.logprobs (position t predicts token t + 1),
with a mask that is 1 on the response tokens of each row, a contiguous run; whatever lies off the
mask (prompt, padding) is ignored and gets A = R = 0.
"""

from __future__ import annotations

import torch

from rlft.ops.reinforce_pp import batch_whiten


def terminal_rewards(rewards: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """r_t [B, T]: each row's sequence reward (rewards [B]) on its last masked position, 0 elsewhere."""
    positions = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
    last = torch.where(mask > 0, positions, -1).amax(dim=1, keepdim=True)  # -1: a row with no response token
    return torch.where(positions == last, rewards.to(torch.float64).unsqueeze(1), 0.0) * (mask > 0)


@torch.no_grad()
def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float,
        lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(advantages A_t, returns R_t = A_t + V_t), float64 [B, T], from per-token rewards r_t, values V_t
    and the response mask (all [B, T]); V and A after a row's last masked token are 0."""
    r, v, m = rewards.to(torch.float64), values.to(torch.float64), (mask > 0).to(torch.float64)
    v = v * m
    advantages = torch.zeros_like(v)
    next_value = torch.zeros_like(v[:, 0])
    next_advantage = torch.zeros_like(v[:, 0])
    for t in reversed(range(v.shape[1])):
        delta = r[:, t] + gamma * next_value - v[:, t]
        advantages[:, t] = (delta + gamma * lam * next_advantage) * m[:, t]
        # off the mask (padding after the response) the episode has ended: nothing flows back from there
        next_value, next_advantage = v[:, t], advantages[:, t]
    return advantages, (advantages + v) * m


def whiten(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(x - mean) / std over the masked entries of the whole batch (population std, rlft.ops.reinforce_pp's
    variance floor), 0 off the mask; float64 [B, T]."""
    flat = batch_whiten(values.reshape(-1), (mask > 0).reshape(-1).to(torch.float64))
    return flat.view(values.shape) * (mask > 0)


def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> float:
    """1 - Var(R - V) / Var(R) over the masked tokens: 1 for a perfect critic, 0 for a constant one, below
    0 for one worse than its mean (nan when the returns do not vary)."""
    m = mask > 0
    r, v = returns[m].to(torch.float64), values[m].to(torch.float64)
    if r.numel() == 0:
        return float("nan")
    var = r.var(unbiased=False)
    return float("nan") if var <= 0 else float(1.0 - (r - v).var(unbiased=False) / var)
