"""The critic's clipped value loss (PPO's value clipping, as in the PPO2 baselines and OpenAI's RLHF code).

    L_t = 1/2 * max( (V_t - R_t)^2 , (clip(V_t, V_old_t - eps, V_old_t + eps) - R_t)^2 )

V_t: the value being trained, V_old_t: the value of the same token when the batch was scored (before
this batch's updates), R_t: the return target (rlft.ops.gae). The clipped term keeps a pass over the
batch from moving a value more than eps from V_old in a direction that lowers the loss; taking the max
makes the loss pessimistic, so a clipped value keeps the unclipped gradient when that one is larger.
eps = None: the plain 1/2 (V - R)^2.
"""

from __future__ import annotations

import torch


def clipped_value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor,
                       clip: float | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss per token [B, T], 1.0 where the clipped term is the larger one [B, T]); reduce with a mask."""
    unclipped = (values - returns).square()
    if clip is None:
        return 0.5 * unclipped, torch.zeros_like(unclipped)
    clipped_values = old_values + (values - old_values).clamp(-clip, clip)
    clipped = (clipped_values - returns).square()
    return 0.5 * torch.maximum(unclipped, clipped), (clipped > unclipped).to(values.dtype).detach()
