"""The rollout/training mismatch: behaviour weights of the decoupled policy gradient (torch only).

Three policies meet in one batch: pi_sampler, whose log-probs the generators returned with the
tokens (another engine, maybe another dtype, maybe a version behind); pi_prox, the same tokens
scored by the learners under the weights they hold before the batch's optimizer passes; and
pi_theta, the policy being trained. The clipped ratio is pi_theta / pi_prox (a trust region around
weights the learner really has) and the behaviour weight corrects for sampling from pi_sampler:

    w_t = pi_prox(y_t) / pi_sampler(y_t)                                   token level
    w_t = exp( (1/|y|) sum_s log w_s )  for every t of the sequence         sequence level (geometric mean)

and is then tamed with a cap C > 1:

    tis (truncated IS)   w <- min(w, C)
    mis (masked IS)      w <- w  if 1/C <= w <= C,  else 0 (the token, or the whole sequence, is dropped)
    none                 w <- 1

w is a constant (no gradient) that multiplies each token's policy-gradient loss. Shapes: [B, T]
for B sequences of T (shifted) positions; `mask` is 1 on the tokens the sampler produced and 0
elsewhere (prompt, padding, environment observations, tokens the sampler never scored).
"""

from __future__ import annotations

import math

import torch

from rlft.ops.kl import kl_k3

CORRECTIONS = ("none", "tis", "mis")
LEVELS = ("token", "sequence")


def behaviour_log_ratio(prox_logprobs: torch.Tensor, sampler_logprobs: torch.Tensor,
                        mask: torch.Tensor) -> torch.Tensor:
    """log w = log pi_prox - log pi_sampler per token [B, T]; 0 off the mask."""
    return torch.where(mask > 0, prox_logprobs - sampler_logprobs, 0.0)


def sequence_log_ratio(log_w: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The log of the geometric mean of each sequence's token weights, on each of its tokens [B, T]:
    (1/|y|) sum_s log w_s, with |y| the sequence's masked tokens (0 for a sequence without any)."""
    per_sequence = (log_w * mask).sum(-1, keepdim=True) / mask.sum(-1, keepdim=True).clamp(min=1.0)  # [B, 1]
    return per_sequence * mask  # [B, T]


def capped_weights(log_w: torch.Tensor, mask: torch.Tensor, correction: str,
                   cap: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(w [B, T], corrected [B, T] bool): the behaviour weights after `correction` with cap C, and the
    tokens it changed (truncated by tis, zeroed by mis). w is 1 off the mask: no correction there."""
    log_cap = math.log(cap)
    on = mask > 0
    # every exp() below takes an argument in [-log C, log C]: no overflow whatever the mismatch
    if correction == "none":
        corrected = torch.zeros_like(on)
        w = torch.ones_like(log_w)
    elif correction == "tis":
        corrected = on & (log_w > log_cap)
        w = torch.exp(log_w.clamp(max=log_cap))  # min(w, C); tokens below C keep their weight
    elif correction == "mis":
        corrected = on & (log_w.abs() > log_cap)  # outside [1/C, C]
        w = torch.where(corrected, 0.0, torch.exp(log_w.clamp(-log_cap, log_cap)))
    else:
        raise ValueError(f"unknown correction {correction!r}; expected one of {CORRECTIONS}")
    return torch.where(on, w, 1.0).detach(), corrected


def behaviour_weights(prox_logprobs: torch.Tensor, sampler_logprobs: torch.Tensor, mask: torch.Tensor,
                      correction: str, level: str, cap: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(w [B, T], corrected [B, T] bool) of the module docstring, detached."""
    log_w = behaviour_log_ratio(prox_logprobs.detach(), sampler_logprobs.detach(), mask)
    if level == "sequence":
        log_w = sequence_log_ratio(log_w, mask)
    elif level != "token":
        raise ValueError(f"unknown correction level {level!r}; expected one of {LEVELS}")
    return capped_weights(log_w, mask, correction, cap)


MISMATCH_KEYS = ("mismatch_tokens", "mismatch_sequences", "mismatch_k3_sum", "mismatch_abs_sum",
                 "mismatch_abs_max", "weight_sum", "corrected_tokens", "corrected_sequences")


@torch.no_grad()
def mismatch_sums(prox_logprobs: torch.Tensor, sampler_logprobs: torch.Tensor, mask: torch.Tensor,
                  w: torch.Tensor, corrected: torch.Tensor) -> torch.Tensor:
    """The mismatch metric sums of one micro-batch, one value per MISMATCH_KEYS entry ([8]).

    k3 = (r - 1) - log r with r = pi_prox / pi_sampler on the sampler's own tokens estimates
    KL(pi_sampler || pi_prox) per token. Sums add across micro-batches and ranks, except
    mismatch_abs_max (a maximum: `*_max` keys are combined by max, rlft.algorithms.base)."""
    delta = behaviour_log_ratio(prox_logprobs, sampler_logprobs, mask)  # [B, T], 0 off the mask
    k3 = torch.where(mask > 0, kl_k3(sampler_logprobs, prox_logprobs), 0.0)  # [B, T]
    sequences = mask.sum(-1) > 0  # [B]: rows with at least one sampled token
    abs_max = delta.abs().max() if delta.numel() else delta.new_zeros(())
    return torch.stack([
        mask.sum(), sequences.sum().to(mask.dtype), k3.sum(), delta.abs().sum(), abs_max,
        (w * mask).sum(), corrected.sum().to(mask.dtype), corrected.any(-1).sum().to(mask.dtype),
    ])


def mismatch_metrics(sums: dict[str, float]) -> dict[str, float]:
    """Summed mismatch sums -> logged `mismatch/...` metrics (empty when the batch had no learner log-probs)."""
    if "mismatch_tokens" not in sums:
        return {}
    tokens, sequences = max(sums["mismatch_tokens"], 1.0), max(sums["mismatch_sequences"], 1.0)
    return {
        "mismatch/k3": sums["mismatch_k3_sum"] / tokens,
        "mismatch/abs_logprob_diff_mean": sums["mismatch_abs_sum"] / tokens,
        "mismatch/abs_logprob_diff_max": sums["mismatch_abs_max"],
        "mismatch/weight_mean": sums["weight_sum"] / tokens,
        "mismatch/corrected_token_frac": sums["corrected_tokens"] / tokens,
        "mismatch/corrected_seq_frac": sums["corrected_sequences"] / sequences,
    }
