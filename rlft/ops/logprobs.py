"""Per-token log-probabilities of causal-LM labels.

Logits at position t predict token t+1, so logits[:, :-1] are scored against labels[:, 1:].
Positions whose label is IGNORE_INDEX (prompt, padding) get log-prob 0 and mask 0.
"""

from __future__ import annotations

import torch

IGNORE_INDEX = -100


def shift_labels(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (targets, mask) aligned with logits[:, :-1]: targets has IGNORE_INDEX replaced by 0."""
    targets = labels[:, 1:]
    mask = (targets != IGNORE_INDEX).to(torch.float32)
    return targets.clamp(min=0), mask


def token_logprobs(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """log pi(y_{t+1} | y_<=t) for every shifted position, in fp32.

    Returns (logprobs [B, T-1], mask [B, T-1]); logprobs are 0 where mask is 0.
    """
    targets, mask = shift_labels(labels)
    logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    picked = logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return picked * mask, mask


def token_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of the next-token distribution at every shifted position ([B, T-1], fp32)."""
    logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    return -(logp.exp() * logp).sum(-1)


def tempered(logits: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """logits / T per row (batch['temperature'] [B], if any): the policy the rollouts were sampled from
    (vLLM returns log-probs of the tempered distribution), so the importance ratio is 1 at version
    parity whatever T is."""
    if "temperature" not in batch:
        return logits
    temperature = batch["temperature"].to(logits.device, logits.dtype)
    return logits / temperature.view(-1, *([1] * (logits.dim() - 1)))
