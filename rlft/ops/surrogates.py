"""Per-token clipped surrogates of the policy-gradient family: PPO (clip-higher, dual clip) and GPPO.

delta = pi_theta / pi_old, A the advantage, sg = stop-gradient; each function returns the per-token
loss L = -(.) and the tokens in each clipped region. GPPO keeps PPO's clip *values* but lets the
clipped tokens carry a bounded gradient:

    J_GPPO = 1/sum_j T_j sum_{j,t} min(delta A, clip(delta, b1 (1-eps_l) delta/sg(delta),
                                                           b2 (1+eps_h) delta/sg(delta)) A)

    region                       value                    gradient w.r.t. log pi_theta   (PPO gradient)
    A > 0, delta > 1 + eps_h     -b2 (1 + eps_h) A         -b2 (1 + eps_h) A              (0)
    A < 0, delta < 1 - eps_l     -b1 (1 - eps_l) A         -b1 (1 - eps_l) A              (0)
    otherwise                    -delta A                  -delta A
    A < 0 and loss > -c A        -c A  (dual clip)         0

With b1 = b2 = 1 the forward value equals PPO with clip-higher; only the backward differs
(docs/algorithms.md#gppo). Shapes: every tensor [B, T] (or any shape, elementwise).
"""

from __future__ import annotations

from typing import NamedTuple

import torch


class ClipRegions(NamedTuple):
    """Per-token bool indicators of where the surrogate is not the plain -delta*A."""

    low: torch.Tensor  # A < 0 and delta < 1 - eps_low
    high: torch.Tensor  # A > 0 and delta > 1 + eps_high
    dual: torch.Tensor  # A < 0 and the dual clip -c*A is active


def importance_ratio(logprobs: torch.Tensor, old_logprobs: torch.Tensor) -> torch.Tensor:
    """delta = pi_theta / pi_old = exp(log pi_theta - log pi_old), differentiable in logprobs."""
    return torch.exp(logprobs - old_logprobs)


def clip_regions(delta: torch.Tensor, advantages: torch.Tensor, eps_low: float, eps_high: float) -> tuple:
    """(low, high): the two regions where PPO's min picks the constant bound."""
    low = (advantages < 0) & (delta < 1.0 - eps_low)
    high = (advantages > 0) & (delta > 1.0 + eps_high)
    return low, high


def dual_clip(loss: torch.Tensor, advantages: torch.Tensor, c: float | None) -> tuple:
    """For A < 0 cap the loss at -c*A (a constant: zero gradient there). Returns (loss, dual mask)."""
    if c is None:
        return loss, torch.zeros_like(advantages, dtype=torch.bool)
    cap = -c * advantages
    dual = (advantages < 0) & (loss > cap)
    return torch.where(dual, cap, loss), dual


def gppo_token_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    eps_low: float,
    eps_high: float,
    beta1: float = 1.0,
    beta2: float = 1.0,
    dual_clip_c: float | None = None,
) -> tuple[torch.Tensor, ClipRegions]:
    """Per-token GPPO loss (general beta) and its clip regions; explicit masks, no tensor-bound clamp."""
    log_ratio = logprobs - old_logprobs
    delta = torch.exp(log_ratio)
    low, high = clip_regions(delta, advantages, eps_low, eps_high)
    # delta / sg(delta), written as exp(x - sg(x)) so it never divides by an underflowed 0:
    # value 1, gradient 1 w.r.t. log pi_theta, so the bound keeps its value and gains a gradient.
    unit = torch.exp(log_ratio - log_ratio.detach())
    loss = -delta * advantages
    loss = torch.where(low, -beta1 * (1.0 - eps_low) * unit * advantages, loss)
    loss = torch.where(high, -beta2 * (1.0 + eps_high) * unit * advantages, loss)
    loss, dual = dual_clip(loss, advantages, dual_clip_c)
    return loss, ClipRegions(low, high, dual)


def ppo_token_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    eps_low: float,
    eps_high: float,
    dual_clip_c: float | None = None,
) -> tuple[torch.Tensor, ClipRegions]:
    """Textbook clipped surrogate -min(delta A, clip(delta, 1-eps_l, 1+eps_h) A), plus dual clip."""
    delta = importance_ratio(logprobs, old_logprobs)
    low, high = clip_regions(delta, advantages, eps_low, eps_high)
    clipped = delta.clamp(1.0 - eps_low, 1.0 + eps_high)  # constant bounds: zero gradient outside
    loss = torch.maximum(-delta * advantages, -clipped * advantages)
    loss, dual = dual_clip(loss, advantages, dual_clip_c)
    return loss, ClipRegions(low, high, dual)
