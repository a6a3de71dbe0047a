"""DRAKES: differentiable sampling of a masked diffusion model and its KL term (docs/algorithms.md#drakes).

The sampler runs T = `steps` reverse steps from all-MASK. The first T - K steps are ordinary hard
(Gumbel-max) steps whose states are ids and carry no gradient; the last K = `truncate_steps` steps
are relaxed: the state is a soft one-hot [B, L, 5] and each step is

    proposal = softmax((log q_s + g) / tau),            g ~ Gumbel(0, 1), over A, C, G, T, MASK
    c        = 1 - x_t[MASK]                             (soft copy flag; sigmoid(c / copy_flag_temp) optionally)
    x_s      = c * x_t + (1 - c) * proposal

where q_s is the masked-position reverse distribution (``mdlm.masked_reverse_log_probs``). The final
state drops the MASK channel and goes through straight-through argmax: the reward sees a hard
one-hot and its gradient flows into the relaxation.

KL between the fine-tuned and the pretrained trajectory (both modes summed over steps, per sequence):

* ``masked_kl`` (principled, default): per step t -> s,
      sum_l x_t^l[MASK] * (alpha_s - alpha_t) / (1 - alpha_t) * KL(p_theta(.|x_t)^l || p_pre(.|x_t)^l)
  (x_t^l[MASK] is 1/0 on hard states and the soft masked weight on relaxed ones).
* ``repo`` (reference-code compatible): per step
      1 / move_chance(t) * sum_l sum_{v != MASK} c^l x_t^l[v] (p_v log(p_v / pre_v) - p_v + pre_v)
  where, as in the reference code, positions whose argmax is a token are SUBS-forced to copy
  themselves under both models and so contribute 0; on hard states this makes the whole term 0.
* ``none``: no KL (the reference is never called).

By default the KL covers all T steps; ``truncate_kl=True`` keeps only the last K. Hard-step KL still
depends on theta through p_theta (the states are detached, the model output is not).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from rlft.diffusion.mdlm import MASK, NUM_CLASSES, gumbel_noise, hard_reverse_step, masked_reverse_log_probs, timesteps
from rlft.diffusion.schedule import LogLinearSchedule

KL_MODES = ("masked_kl", "repo", "none")

# state (ids [B, L] or soft [B, L, 5]) -> SUBS log-probs [B, L, 5]
LogProbFn = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class RelaxedSample:
    onehot: torch.Tensor    # [B, L, 4] straight-through one-hot (MASK dropped); grad flows through the relaxation
    kl: torch.Tensor        # [B] KL term per sequence, summed over the steps it covers
    hard: torch.Tensor      # [B, L] argmax ids in 0..3


# ------------------------------------------------------------------------------------ primitives
def gumbel_softmax(logits_or_logprobs: torch.Tensor, tau: float, generator: torch.Generator | None,
                   noise: torch.Tensor | None = None) -> torch.Tensor:
    """softmax((logits + g) / tau) over the last axis, g ~ Gumbel(0, 1); rows sum to 1.

    Pass `noise` to reuse a draw; as tau -> 0 the result tends to one_hot(argmax(logits + g)),
    the Gumbel-max sample with the same g.
    """
    if noise is None:
        noise = gumbel_noise(logits_or_logprobs.shape, generator, logits_or_logprobs.device)
    return torch.softmax((logits_or_logprobs + noise) / tau, dim=-1)


def straight_through(soft: torch.Tensor) -> torch.Tensor:
    """one_hot(argmax(soft)) in the forward pass, d output / d soft = I in the backward pass.

    Written as hard + (soft - soft.detach()): the bracket is exactly 0, so the value is exactly
    one-hot (soft + (hard - soft).detach() can be off by one rounding).
    """
    hard = F.one_hot(soft.argmax(-1), soft.shape[-1]).to(soft.dtype)
    return hard + (soft - soft.detach())


def copy_flag(state: torch.Tensor, copy_flag_temp: float | None = None) -> torch.Tensor:
    """Soft 'already unmasked' flag c = 1 - x_t[MASK] as [B, L, 1]; optionally sigmoid(c / temp).

    With a temperature the carry-over is no longer exact (sigmoid(1/temp) < 1), as in the reference code.
    """
    c = 1.0 - state[..., MASK:MASK + 1]
    return torch.sigmoid(c / copy_flag_temp) if copy_flag_temp is not None else c


def relaxed_reverse_step(log_p_x0: torch.Tensor, state: torch.Tensor, alpha_t, alpha_s, tau: float,
                         generator: torch.Generator | None, copy_flag_temp: float | None = None):
    """One relaxed step t -> s on a soft state [B, L, 5]; returns (x_s, copy flag c)."""
    proposal = gumbel_softmax(masked_reverse_log_probs(log_p_x0, alpha_t, alpha_s), tau, generator)
    c = copy_flag(state, copy_flag_temp)
    return c * state + (1.0 - c) * proposal, c


# ----------------------------------------------------------------------------------- KL per step
def masked_kl_step(log_p: torch.Tensor, log_pre: torch.Tensor, state: torch.Tensor, alpha_t, alpha_s) -> torch.Tensor:
    """sum_l x_t^l[MASK] (alpha_s - alpha_t)/(1 - alpha_t) KL(p^l || pre^l) -> [B] (the principled form)."""
    lp, lq = log_p[..., :MASK], log_pre[..., :MASK]
    kl_per_position = (lp.exp() * (lp - lq)).sum(-1)                      # [B, L]
    unmask_prob = (alpha_s - alpha_t) / (1.0 - alpha_t)
    return float(unmask_prob) * (state[..., MASK] * kl_per_position).sum(-1)


def repo_kl_step(log_p: torch.Tensor, log_pre: torch.Tensor, state: torch.Tensor, c: torch.Tensor,
                 move_chance_t) -> torch.Tensor:
    """1/move_chance(t) sum_l sum_{v<4} c^l x_t^l[v] (p log(p/pre) - p + pre) -> [B] (reference code).

    The reference code SUBS-forces every position whose argmax is a token (p = pre = one-hot
    there), so those positions contribute exactly 0 and are masked out here.
    """
    lp, lq = log_p[..., :MASK], log_pre[..., :MASK]
    p, pre = lp.exp(), lq.exp()
    generalised_kl = p * (lp - lq) - p + pre                               # [B, L, 4], each >= 0
    not_forced = (state.argmax(-1) == MASK).unsqueeze(-1).to(state.dtype)
    weight = c * state[..., :MASK] * not_forced
    return (weight * generalised_kl).sum((-1, -2)) / float(move_chance_t)


# -------------------------------------------------------------------------------------- sampler
def relaxed_sample(policy: LogProbFn, reference: LogProbFn | None, batch: int, steps: int, truncate_steps: int,
                   tau: float, schedule: LogLinearSchedule, generator: torch.Generator | None,
                   kl_mode: str = "masked_kl", copy_flag_temp: float | None = None, length: int = 200,
                   truncate_kl: bool = False, eps_t: float = 1e-5, device=None,
                   checkpoint_hard_kl: bool = True) -> RelaxedSample:
    """DRAKES differentiable sample of `batch` sequences with its KL term (docs/algorithms.md#drakes).

    `policy(x)` / `reference(x)` map a state (ids [B, L] on hard steps, soft [B, L, 5] on relaxed
    ones) to SUBS log-probs [B, L, 5]; the reference is called under no_grad. With
    `truncate_steps` = 0 the sample carries no gradient. `checkpoint_hard_kl` recomputes the policy
    forward of each hard step's KL in the backward pass instead of keeping T activations alive.
    The trajectory for a `generator` seed does not depend on `kl_mode` or `truncate_kl`.
    """
    if kl_mode not in KL_MODES:
        raise ValueError(f"kl_mode must be one of {KL_MODES}, got {kl_mode!r}")
    if not 0 <= truncate_steps <= steps:
        raise ValueError(f"truncate_steps must be in [0, steps={steps}], got {truncate_steps}")
    device = device if device is not None else (generator.device if generator is not None else "cpu")
    first_relaxed = steps - truncate_steps
    ts = timesteps(steps, eps_t)
    x: torch.Tensor = torch.full((batch, length), MASK, dtype=torch.long, device=device)
    kl = torch.zeros(batch, device=device)
    log_p = None
    for i in range(steps):
        t, alpha_t, alpha_s = ts[i], schedule.alpha(ts[i]), schedule.alpha(ts[i + 1])
        kl_here = kl_mode != "none" and not (truncate_kl and i < first_relaxed)
        if i < first_relaxed:
            log_p, step_kl, x_next = _hard_step(policy, reference, x, alpha_t, alpha_s, generator,
                                                kl_mode if kl_here else "none", checkpoint_hard_kl)
        else:
            state = x if x.dtype.is_floating_point else F.one_hot(x, NUM_CLASSES).float()
            log_p, step_kl, x_next = _relaxed_step(policy, reference, state, t, alpha_t, alpha_s, tau, generator,
                                                   kl_mode if kl_here else "none", copy_flag_temp, schedule)
        x = x_next
        if step_kl is not None:
            kl = kl + step_kl
    return _finish(x, log_p, kl)


def _hard_step(policy, reference, x, alpha_t, alpha_s, generator, kl_mode, checkpoint_hard_kl):
    """Gumbel-max step on ids; its KL (masked_kl only: 'repo' is exactly 0 on hard states) keeps grad."""
    if kl_mode != "masked_kl":
        with torch.no_grad():
            log_p = policy(x)
        return log_p, None, hard_reverse_step(log_p, x, alpha_t, alpha_s, generator)
    state = F.one_hot(x, NUM_CLASSES).float()
    with torch.no_grad():
        log_pre = reference(x)

    def kl_of_step(ids):
        log_p = policy(ids)
        return masked_kl_step(log_p, log_pre, state, alpha_t, alpha_s), log_p

    if checkpoint_hard_kl and torch.is_grad_enabled():
        step_kl, log_p = checkpoint(kl_of_step, x, use_reentrant=False)
    else:
        step_kl, log_p = kl_of_step(x)
    log_p = log_p.detach()
    return log_p, step_kl, hard_reverse_step(log_p, x, alpha_t, alpha_s, generator)


def _relaxed_step(policy, reference, state, t, alpha_t, alpha_s, tau, generator, kl_mode, copy_flag_temp, schedule):
    """Gumbel-softmax step on a soft state; everything keeps its graph."""
    log_p = policy(state)
    x_next, c = relaxed_reverse_step(log_p, state, alpha_t, alpha_s, tau, generator, copy_flag_temp)
    if kl_mode == "none":
        return log_p, None, x_next
    with torch.no_grad():
        log_pre = reference(state.detach())
    if kl_mode == "masked_kl":
        step_kl = masked_kl_step(log_p, log_pre, state, alpha_t, alpha_s)
    else:
        step_kl = repo_kl_step(log_p, log_pre, state, c, schedule.move_chance(t))
    return log_p, step_kl, x_next


def _finish(x: torch.Tensor, last_log_p: torch.Tensor | None, kl: torch.Tensor) -> RelaxedSample:
    """Final output: drop MASK; straight-through on a relaxed state, plain one-hot on a hard one."""
    if x.dtype.is_floating_point:
        onehot = straight_through(x[..., :MASK])
        return RelaxedSample(onehot=onehot, kl=kl, hard=onehot.detach().argmax(-1))
    still_masked = x == MASK
    if still_masked.any() and last_log_p is not None:
        # as the hard sampler's final decode: positions still masked take p_theta's argmax
        x = torch.where(still_masked, last_log_p[..., :MASK].argmax(-1), x)
    hard = x.clamp(max=MASK - 1)
    return RelaxedSample(onehot=F.one_hot(hard, MASK).float(), kl=kl, hard=hard)
