"""Loss reductions over masked per-token values (docs/algorithms.md#conventions).

Every reduction takes an explicit normaliser computed for the *whole* optimisation step
(all micro-batches, all data-parallel ranks), so that splitting a step into micro-batches or
ranks and summing the pieces gives exactly the full-batch loss.
"""

from __future__ import annotations

import torch


def masked_sum(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Sum of values where mask is 1."""
    return (values * mask).sum()


def token_mean(values: torch.Tensor, mask: torch.Tensor, num_tokens: float) -> torch.Tensor:
    """sum_{i,t} m_it L_it / N_tokens, with N_tokens the step's global count of valid tokens."""
    return masked_sum(values, mask) / max(float(num_tokens), 1.0)


def seq_mean_token_mean(values: torch.Tensor, mask: torch.Tensor, num_sequences: float) -> torch.Tensor:
    """(1/B) sum_i (sum_t m_it L_it / sum_t m_it), with B the step's global number of sequences."""
    per_seq = (values * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)
    return per_seq.sum() / max(float(num_sequences), 1.0)


def seq_mean_token_sum(values: torch.Tensor, mask: torch.Tensor, num_sequences: float) -> torch.Tensor:
    """(1/B) sum_i sum_t m_it L_it (sequence log-prob style)."""
    return masked_sum(values, mask) / max(float(num_sequences), 1.0)


def seq_mean_token_sum_norm(
    values: torch.Tensor, mask: torch.Tensor, num_sequences: float, max_len: float
) -> torch.Tensor:
    """Dr.GRPO: sum_{i,t} m_it L_it / (B * T_max) with a constant T_max."""
    return masked_sum(values, mask) / (max(float(num_sequences), 1.0) * float(max_len))


REDUCTIONS = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm")


def aggregate(
    values: torch.Tensor,
    mask: torch.Tensor,
    mode: str,
    *,
    num_tokens: float,
    num_sequences: float,
    max_len: float = 1.0,
) -> torch.Tensor:
    """Dispatch on a reduction name; the normalisers are global to the optimisation step."""
    if mode == "token-mean":
        return token_mean(values, mask, num_tokens)
    if mode == "seq-mean-token-mean":
        return seq_mean_token_mean(values, mask, num_sequences)
    if mode == "seq-mean-token-sum":
        return seq_mean_token_sum(values, mask, num_sequences)
    if mode == "seq-mean-token-sum-norm":
        return seq_mean_token_sum_norm(values, mask, num_sequences, max_len)
    raise ValueError(f"unknown reduction {mode!r}; expected one of {REDUCTIONS}")
