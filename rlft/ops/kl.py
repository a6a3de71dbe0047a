"""Per-token KL estimators (Schulman, "Approximating KL Divergence"), docs/algorithms.md#kl-estimators.

With a ~ pi_theta and r = pi_ref(a) / pi_theta(a), i.e. log r = ref_logprobs - logprobs:

    k1 = -log r                      unbiased for KL(pi_theta || pi_ref), can be negative
    k2 = 1/2 (log r)^2               biased, >= 0, low variance
    k3 = (r - 1) - log r             unbiased, >= 0, low variance

As a *loss*, the gradient of k3 in expectation is the gradient of the forward KL(pi_ref || pi_theta),
and E[grad k1] = 0 (no regularising gradient in expectation).

veRL's `low_var_kl` is k3 clamped to [-10, 10]; `k3(..., clamp=10.0)` reproduces it. Because
k3 >= 0 only the upper bound ever acts, and a clamped token gets zero gradient.
"""

from __future__ import annotations

import torch

KL_ESTIMATORS = ("k1", "k2", "k3")

# Largest log r fed to exp() in fp32 when clamping (exp(80) ~ 5.5e34 is finite).
_MAX_EXP_ARG = 80.0


def kl_k1(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """k1 = -log r = log pi_theta - log pi_ref."""
    return logprobs - ref_logprobs


def kl_k2(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """k2 = 1/2 (log r)^2."""
    return 0.5 * (ref_logprobs - logprobs).square()


def kl_k3(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, clamp: float | None = None) -> torch.Tensor:
    """k3 = (r - 1) - log r, optionally clamped to [-clamp, clamp] (veRL low_var_kl: clamp=10)."""
    log_r = ref_logprobs - logprobs
    if clamp is not None:
        # Outside [-(c+1), c+1] k3 > c already (k3 > -1 - log r, and e^y > 2y for y >= 1), so this
        # pre-clamp changes no value or gradient; it only keeps exp() finite (0 * inf = nan in backward).
        log_r = log_r.clamp(-(clamp + 1.0), min(clamp + 1.0, _MAX_EXP_ARG))
    k3 = torch.exp(log_r) - 1.0 - log_r
    if clamp is not None:
        k3 = k3.clamp(-clamp, clamp)
    return k3


def kl_penalty(
    logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    estimator: str,
    k3_clamp: float | None = None,
) -> torch.Tensor:
    """Per-token KL estimate by name ('k1', 'k2', 'k3'); `k3_clamp` only applies to k3.

    Inputs are per-token log-probs of the sampled tokens ([B, T-1]); the caller masks the result.
    """
    if estimator == "k1":
        return kl_k1(logprobs, ref_logprobs)
    if estimator == "k2":
        return kl_k2(logprobs, ref_logprobs)
    if estimator == "k3":
        return kl_k3(logprobs, ref_logprobs, clamp=k3_clamp)
    raise ValueError(f"unknown KL estimator {estimator!r}; expected one of {KL_ESTIMATORS}")
