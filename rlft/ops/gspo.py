"""GSPO: group sequence policy optimization (docs/algorithms.md#gspo-and-gspo-token).

Zheng et al. (Qwen), *Group Sequence Policy Optimization* (2025), arXiv 2507.18071. The importance
ratio and the clip act on whole responses: for response y_i of |y_i| tokens,

    s_i = (pi_theta(y_i | x) / pi_old(y_i | x))^(1/|y_i|) = exp( (1/|y_i|) sum_t (log pi_theta - log pi_old)(y_i,t) )
    L_i = -min( s_i A_i, clip(s_i, 1 - eps_low, 1 + eps_high) A_i )

GSPO-token gives every token its own advantage A_i,t with a ratio of the same value but a per-token
gradient (sg = stop-gradient):

    s_i,t = sg(s_i) pi_theta(y_i,t) / sg(pi_theta(y_i,t))
    L_i,t = -min( s_i,t A_i,t, clip(s_i,t, 1 - eps_low, 1 + eps_high) A_i,t )

With A_i,t = A_i both have the value and the gradient of GSPO.

Both return a per-token loss [B, T] so that rlft's reductions, behaviour weights and step-global
normalisers apply unchanged: GSPO puts L_i on each of response i's tokens, so `seq-mean-token-mean`
gives the paper's (1/B) sum_i L_i (`token-mean` weights each L_i by its length). A sequence is
never split across micro-batches, so micro-batches and ranks still sum to the full-batch loss.
`mask` [B, T] is 1 on the response tokens the sampler produced (the ones |y_i| counts).
"""

from __future__ import annotations

import torch

from rlft.ops.surrogates import ClipRegions, clip_regions


def sequence_log_ratio(logprobs: torch.Tensor, old_logprobs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """log s_i [B] = (1/|y_i|) sum_t m_t (log pi_theta - log pi_old); 0 for a row without tokens."""
    return ((logprobs - old_logprobs) * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)


def sequence_advantages(advantages: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """A_i [B]: the advantage a response's tokens share (their mean; outcome advantages are equal)."""
    return (advantages * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)


def clipped_surrogate(ratio: torch.Tensor, advantages: torch.Tensor, eps_low: float, eps_high: float) -> torch.Tensor:
    """-min(ratio A, clip(ratio, 1 - eps_low, 1 + eps_high) A); constant bounds: no gradient outside them."""
    clipped = ratio.clamp(1.0 - eps_low, 1.0 + eps_high)
    return torch.maximum(-ratio * advantages, -clipped * advantages)


def gspo_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
              eps_low: float, eps_high: float) -> tuple[torch.Tensor, ClipRegions]:
    """GSPO: L_i on each token of response i [B, T] (0 off the mask), and the clipped sequences' tokens."""
    s = torch.exp(sequence_log_ratio(logprobs, old_logprobs, mask))  # [B], differentiable
    a = sequence_advantages(advantages, mask)  # [B]
    loss = clipped_surrogate(s, a, eps_low, eps_high)  # [B]
    low, high = clip_regions(s.detach(), a, eps_low, eps_high)
    on = mask > 0
    regions = ClipRegions(low.unsqueeze(-1) & on, high.unsqueeze(-1) & on, torch.zeros_like(on))
    return loss.unsqueeze(-1) * mask, regions


def gspo_token_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
                    eps_low: float, eps_high: float) -> tuple[torch.Tensor, ClipRegions]:
    """GSPO-token: L_i,t per token [B, T] (0 off the mask) with s_i,t = sg(s_i) pi_theta / sg(pi_theta)."""
    log_s = sequence_log_ratio(logprobs, old_logprobs, mask).detach().unsqueeze(-1)  # [B, 1]
    s = torch.exp(log_s + logprobs - logprobs.detach())  # value s_i on every token, gradient per token
    loss = clipped_surrogate(s, advantages, eps_low, eps_high)
    low, high = clip_regions(s.detach(), advantages, eps_low, eps_high)
    on = mask > 0
    return loss * mask, ClipRegions(low & on, high & on, torch.zeros_like(on))
