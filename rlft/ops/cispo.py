"""CISPO: clipped importance-sampling-weight policy optimization (docs/algorithms.md#cispo).

MiniMax, *MiniMax-M1: Scaling Test-Time Compute Efficiently with Lightning Attention* (2025),
arXiv 2506.13585, section 3.1. PPO drops the gradient of a token whose ratio leaves the trust region;
CISPO clips the importance weight instead and keeps every token's gradient (a REINFORCE term):

    r_t  = pi_theta(y_t) / pi_old(y_t)
    w_t  = sg( clip(r_t, 1 - eps_low, 1 + eps_high) )          eps_low = None: no lower bound (the paper)
    L_t  = -w_t A_t log pi_theta(y_t)                           dL_t / d log pi_theta(y_t) = -w_t A_t

Shapes [B, T] (or any, elementwise).
"""

from __future__ import annotations

import torch

from rlft.ops.surrogates import ClipRegions


def cispo_weights(logprobs: torch.Tensor, old_logprobs: torch.Tensor, eps_high: float,
                  eps_low: float | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(w, low, high): the detached clipped weight and where the bounds cut it (r < 1 - eps_low, r > 1 + eps_high)."""
    ratio = torch.exp((logprobs - old_logprobs).detach())
    high = ratio > 1.0 + eps_high
    low = ratio < 1.0 - eps_low if eps_low is not None else torch.zeros_like(high)
    w = ratio.clamp(min=None if eps_low is None else 1.0 - eps_low, max=1.0 + eps_high)
    return w, low, high


def cispo_token_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
                     eps_high: float, eps_low: float | None = None) -> tuple[torch.Tensor, ClipRegions]:
    """Per-token L_t = -sg(w_t) A_t log pi_theta(y_t), and the tokens whose weight was clipped."""
    w, low, high = cispo_weights(logprobs, old_logprobs, eps_high, eps_low)
    return -w * advantages * logprobs, ClipRegions(low, high, torch.zeros_like(high))
