"""Log-linear noise schedule of MDLM (docs/algorithms.md#mdlm).

A token is masked at time t in [0, 1] with probability ``move_chance(t) = (1 - eps) t``, so
``alpha(t) = 1 - (1 - eps) t`` (probability it is still clean) and the total noise is
``sigma(t) = -log alpha(t)``. ``eps`` keeps alpha(1) = eps > 0, i.e. sigma finite.

The continuous-time NELBO weight is ``dsigma(t) / expm1(sigma(t))``, which for this schedule is
exactly ``1 / t`` (dsigma = (1-eps)/alpha and expm1(sigma) = (1-alpha)/alpha).
"""

from __future__ import annotations

import torch


def _as_tensor(t) -> torch.Tensor:
    return t if isinstance(t, torch.Tensor) else torch.tensor(t, dtype=torch.float64)


class LogLinearSchedule:
    """move_chance(t) = (1 - eps) t; every method accepts a float or a tensor of times."""

    def __init__(self, eps: float = 1e-3):
        if not 0.0 <= eps < 1.0:
            raise ValueError(f"eps must be in [0, 1), got {eps}")
        self.eps = float(eps)

    def move_chance(self, t) -> torch.Tensor:
        """Probability that a position is [MASK] at time t: 1 - alpha(t)."""
        return (1.0 - self.eps) * _as_tensor(t)

    def alpha(self, t) -> torch.Tensor:
        """Probability that a position is still clean at time t."""
        return 1.0 - self.move_chance(t)

    def sigma(self, t) -> torch.Tensor:
        """Total noise -log alpha(t) (log1p keeps precision near t = 0)."""
        return -torch.log1p(-self.move_chance(t))

    def dsigma(self, t) -> torch.Tensor:
        """Rate d sigma / dt = (1 - eps) / alpha(t)."""
        return (1.0 - self.eps) / self.alpha(t)

    def __repr__(self) -> str:
        return f"LogLinearSchedule(eps={self.eps})"
