"""On-policy distillation's per-token advantage (docs/algorithms.md#on-policy-distillation).

The student pi_S samples y ~ pi_S(. | x); the teacher pi_T scores the same tokens. The per-token
reverse KL, estimated on the student's own samples, is

    k_t = log pi_S(y_t | x, y_<t) - log pi_T(y_t | x, y_<t)      E_{y_t ~ pi_S}[k_t] = KL(pi_S || pi_T)(. | x, y_<t)

and the advantage of token t is its negative, A_t = -coef * k_t: a token the teacher finds likelier
than the student did is pushed up, one it finds unlikely is pushed down. Each token is credited with
its own term only (no sum over the tokens after it, a discount of 0): the teacher already judges
every prefix, which is what makes the signal dense. Minimising E[k] with the policy gradient of
A_t on every token (a REINFORCE estimator: d/dtheta E_{pi_S}[-k] = E[(-k) d log pi_S]) moves the
student toward the teacher in reverse KL, which seeks the teacher's modes rather than covering all
of them (Agarwal et al. 2024, "On-Policy Distillation of Language Models", arXiv 2306.13649; the
per-token, discount-0 form is Thinking Machines' "On-Policy Distillation", 2025).
"""

from __future__ import annotations

import torch


def reverse_kl_tokens(student_logprobs: torch.Tensor, teacher_logprobs: torch.Tensor,
                      mask: torch.Tensor) -> torch.Tensor:
    """k_t = log pi_S - log pi_T per token [N, T], 0 off the mask (the sampled tokens)."""
    return (student_logprobs - teacher_logprobs) * mask


def distillation_advantages(student_logprobs: torch.Tensor, teacher_logprobs: torch.Tensor, mask: torch.Tensor,
                            coef: float = 1.0) -> torch.Tensor:
    """A_t = -coef * (log pi_S - log pi_T) per token [N, T], 0 off the mask."""
    return -coef * reverse_kl_tokens(student_logprobs, teacher_logprobs, mask)
