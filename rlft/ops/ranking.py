"""Learning-to-rank weights of a lambda-weighted pairwise ranking loss (LambdaRank / LiPO-lambda).

A list of N items has graded labels psi (from scores, `score_labels`), gains G (2^psi - 1 or psi)
and, under the current model's ranking, discounts d = 1 / log2(1 + position). Swapping items i and
j changes the list's NDCG by |G_i - G_j| * |d_i - d_j| / IDCG: that is the weight Delta_ij of the
pair in the loss. Everything here is computed without gradient from detached scores; padding
items (valid = False) get label, gain and discount 0. Shapes: [L, N] for L lists of N items.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F



def score_labels(scores: torch.Tensor, valid: torch.Tensor, mode: str, label_max: float = 5.0) -> torch.Tensor:
    """Graded labels psi [L, N] of the scores [L, N] of each list (0 on padding rows)."""
    if mode == "rank":
        lower = (scores.unsqueeze(-2) < scores.unsqueeze(-1)) & valid.unsqueeze(-2)  # [L, i, j]: v_j < v_i
        labels = lower.sum(-1).to(scores.dtype)
    elif mode == "minmax":
        low = torch.where(valid, scores, math.inf).amin(-1, keepdim=True)
        high = torch.where(valid, scores, -math.inf).amax(-1, keepdim=True)
        labels = label_max * (scores - low) / (high - low).clamp(min=1e-12)
    else:
        labels = scores
    return torch.where(valid, labels, 0.0)


def gains(labels: torch.Tensor, kind: str) -> torch.Tensor:
    return torch.exp2(labels) - 1.0 if kind == "exponential" else labels


def discounts(rewards: torch.Tensor, labels: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """d_i = 1 / log2(1 + position of i) in the ranking by reward [L, N], ties broken worse-label-first;
    responses tied in both reward and label share the mean discount of their positions."""
    r_i, r_j = rewards.unsqueeze(-1), rewards.unsqueeze(-2)  # [L, N, 1], [L, 1, N]
    p_i, p_j = labels.unsqueeze(-1), labels.unsqueeze(-2)
    others = valid.unsqueeze(-2)
    ahead = (((r_j > r_i) | ((r_j == r_i) & (p_j < p_i))) & others).sum(-1)  # [L, N] placed before i
    tied = ((r_j == r_i) & (p_j == p_i) & others).sum(-1).clamp(min=1)  # [L, N] including i
    n = rewards.shape[-1]
    positions = torch.arange(1, n + 1, dtype=rewards.dtype, device=rewards.device)
    cumulative = F.pad(torch.cumsum(1.0 / torch.log2(1.0 + positions), 0), (1, 0))  # [N + 1], C[0] = 0
    d = (cumulative[ahead + tied] - cumulative[ahead]) / tied
    return torch.where(valid, d, 0.0)


def ideal_dcg(gain: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """DCG [L] of each list sorted by gain (padding rows last, contributing 0)."""
    ordered = torch.sort(torch.where(valid, gain, -math.inf), dim=-1, descending=True).values
    n = gain.shape[-1]
    positions = torch.arange(1, n + 1, dtype=gain.dtype, device=gain.device)
    return torch.where(torch.isinf(ordered), 0.0, ordered / torch.log2(1.0 + positions)).sum(-1)


def delta_ndcg(rewards: torch.Tensor, labels: torch.Tensor, gain: torch.Tensor, valid: torch.Tensor):
    """(Delta [L, N, N], NDCG of the current ranking [L], IDCG [L]) from detached rewards [L, N]."""
    d = discounts(rewards, labels, valid)
    idcg = ideal_dcg(gain, valid)
    norm = torch.where(idcg > 0, idcg, 1.0).unsqueeze(-1).unsqueeze(-1)
    delta = (gain.unsqueeze(-1) - gain.unsqueeze(-2)).abs() * (d.unsqueeze(-1) - d.unsqueeze(-2)).abs() / norm
    return delta, (gain * d).sum(-1) / norm[..., 0, 0], idcg
