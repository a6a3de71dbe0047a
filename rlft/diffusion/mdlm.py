"""Masked diffusion (MDLM) math as pure functions: corruption, NELBO, reverse step, sampling
(docs/algorithms.md#mdlm).

Notation: x0 clean ids [B, L] in 0..3, xt the state at time t (MASK = 4 marks a masked position),
alpha_t = 1 - move_chance(t) the probability a position is still clean, s < t the next time.

``model`` below is anything that maps a state (ids [B, L] or soft [B, L, 5]) to raw logits
[B, L, 5] -- an ``MDLM`` or a DeepSpeed engine wrapping one; SUBS is applied here with
``subs_log_probs``, so the engine's own forward (and its ZeRO hooks) is what runs.
All randomness comes from ``generator`` (a ``torch.Generator``; None = torch's global RNG).
"""

from __future__ import annotations

import torch

from rlft.diffusion.model import MDLMConfig, subs_log_probs
from rlft.diffusion.schedule import LogLinearSchedule

MASK = 4
NUM_CLASSES = 5


# ------------------------------------------------------------------------------------- randomness
def uniform(shape, generator: torch.Generator | None, device=None) -> torch.Tensor:
    device = device if device is not None else (generator.device if generator is not None else "cpu")
    return torch.rand(shape, generator=generator, device=device)


def gumbel_noise(shape, generator: torch.Generator | None, device=None) -> torch.Tensor:
    """g = -log(-log u), u ~ U(0, 1); u is kept off 0 and 1 so g is finite."""
    u = uniform(shape, generator, device).clamp(1e-20, 1.0 - 1e-7)
    return -torch.log(-torch.log(u))


def gumbel_max(log_weights: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """A sample from softmax(log_weights) over the last axis (Gumbel-max trick)."""
    return (log_weights + gumbel_noise(log_weights.shape, generator, log_weights.device)).argmax(-1)


# ------------------------------------------------------------------------------ forward process
def corrupt(x0: torch.Tensor, t: torch.Tensor, schedule: LogLinearSchedule,
            generator: torch.Generator | None) -> torch.Tensor:
    """q(xt | x0): each position independently becomes MASK with probability move_chance(t).

    t is one time per sequence, shape [B] (or a scalar, shared by all).
    """
    move_chance = torch.as_tensor(schedule.move_chance(t), dtype=torch.float32, device=x0.device)
    if move_chance.ndim == 1:
        move_chance = move_chance[:, None]
    masked = uniform(x0.shape, generator, x0.device) < move_chance
    return torch.where(masked, torch.full_like(x0, MASK), x0)


def sample_times(batch: int, generator: torch.Generator | None, eps_t: float = 1e-3,
                 antithetic: bool = True, device=None) -> torch.Tensor:
    """t ~ U(eps_t, 1) per sequence; antithetic = MDLM's low-discrepancy stratification
    (one uniform offset, then evenly spaced: lowers the variance of the batch NELBO)."""
    u = uniform((batch,), generator, device)
    if antithetic:
        u = (u / batch + torch.arange(batch, device=u.device) / batch) % 1.0
    return (1.0 - eps_t) * u + eps_t


def nelbo(model, x0: torch.Tensor, schedule: LogLinearSchedule, generator: torch.Generator | None,
          antithetic: bool = True, eps_t: float = 1e-3) -> torch.Tensor:
    """Continuous-time MDLM NELBO per sequence [B] (nats), one t and one xt per sequence:

        NELBO(x0) = E_t E_{xt ~ q(.|x0)} [ dsigma(t) / expm1(sigma(t)) * sum_{l: xt^l = MASK} -log p_theta(x0^l | xt) ]

    with t ~ U(eps_t, 1) (the weight is 1/t for the log-linear schedule). The training loss is
    ``nelbo(...).mean() / L`` (per token).
    """
    t = sample_times(x0.shape[0], generator, eps_t, antithetic, x0.device)
    xt = corrupt(x0, t, schedule, generator)
    log_p = subs_log_probs(model(xt), xt, MASK)
    log_p_x0 = log_p.gather(-1, x0.long().unsqueeze(-1)).squeeze(-1)             # [B, L]
    weight = (schedule.dsigma(t) / torch.expm1(schedule.sigma(t))).to(log_p.dtype)  # [B]
    masked = (xt == MASK).to(log_p.dtype)
    return weight * (-log_p_x0 * masked).sum(-1)


# ------------------------------------------------------------------------------ reverse process
def _per_sequence(a, like: torch.Tensor) -> torch.Tensor:
    """alpha as float64 broadcastable against [B, L, C]: a scalar or one value per sequence [B]."""
    a = torch.as_tensor(a, dtype=torch.float64, device=like.device)
    return a.reshape(-1, 1, 1) if a.ndim == 1 else a


def masked_reverse_log_probs(log_p_x0: torch.Tensor, alpha_t, alpha_s) -> torch.Tensor:
    """log q(x_s | x_t = MASK) [B, L, 5], the reverse step t -> s (s < t) at a masked position:

        q(v)    = p_theta(v | x_t) (alpha_s - alpha_t) / (1 - alpha_t)    for tokens v
        q(MASK) = (1 - alpha_s) / (1 - alpha_t)

    Computed in log space so that tokens with p_theta = 0 stay finite (the Gumbel-softmax needs
    finite gradients); log_p_x0 is the SUBS output, whose MASK entry is ~-inf.
    """
    a_t, a_s = _per_sequence(alpha_t, log_p_x0), _per_sequence(alpha_s, log_p_x0)
    log_unmask = (torch.log(a_s - a_t) - torch.log1p(-a_t)).to(log_p_x0.dtype)
    log_stay = (torch.log1p(-a_s) - torch.log1p(-a_t)).to(log_p_x0.dtype)
    log_q = log_p_x0 + log_unmask
    is_mask_class = torch.arange(log_q.shape[-1], device=log_q.device) == MASK
    return torch.where(is_mask_class, log_stay.expand_as(log_q), log_q)


def reverse_step_probs(log_p_x0: torch.Tensor, xt: torch.Tensor, alpha_t, alpha_s) -> torch.Tensor:
    """p(x_s | x_t) [B, L, 5] for a hard state xt [B, L]: masked positions follow
    ``masked_reverse_log_probs``; unmasked positions are copied (one-hot of themselves)."""
    q_masked = masked_reverse_log_probs(log_p_x0, alpha_t, alpha_s).exp()
    q_masked = q_masked / q_masked.sum(-1, keepdim=True)   # exact 1 up to p_theta's own rounding
    copied = torch.nn.functional.one_hot(xt.long(), NUM_CLASSES).to(q_masked.dtype)
    return torch.where((xt == MASK).unsqueeze(-1), q_masked, copied)


def hard_reverse_step(log_p_x0: torch.Tensor, xt: torch.Tensor, alpha_t, alpha_s,
                      generator: torch.Generator | None) -> torch.Tensor:
    """One ancestral step t -> s: masked positions draw from q by Gumbel-max, the rest carry over."""
    proposal = gumbel_max(masked_reverse_log_probs(log_p_x0, alpha_t, alpha_s), generator)
    return torch.where(xt == MASK, proposal, xt)


def timesteps(steps: int, eps_t: float = 1e-5) -> torch.Tensor:
    """The sampler's time grid linspace(1, eps_t, steps + 1) (float64); step i goes t[i] -> t[i+1]."""
    return torch.linspace(1.0, eps_t, steps + 1, dtype=torch.float64)


def model_length(model, length: int | None = None) -> int:
    """The length to sample: `length` if given, else the config of the model (or of a wrapper's .module)."""
    if length is not None:
        return int(length)
    for candidate in (model, getattr(model, "module", None)):
        config = getattr(candidate, "config", None)
        if isinstance(config, MDLMConfig):
            return config.length
    raise ValueError("length not given and the model carries no MDLMConfig")


@torch.no_grad()
def sample(model, num: int, steps: int, schedule: LogLinearSchedule, generator: torch.Generator | None,
           length: int | None = None, batch_size: int | None = None, eps_t: float = 1e-5,
           greedy_final: bool = True, device=None) -> torch.Tensor:
    """Hard ancestral sampling of `num` sequences -> ids [num, L] in 0..3.

    Starts from all-MASK, takes `steps` reverse steps over ``timesteps(steps, eps_t)``, then decodes
    any position still masked from p_theta(x0 | x) (argmax if `greedy_final`, as MDLM's noise
    removal, else a sample). Runs in chunks of `batch_size` (default 256) to bound memory; the
    result for a seed depends on the chunking (the noise is drawn chunk by chunk).
    """
    length = model_length(model, length)
    batch_size = batch_size or min(num, 256)
    device = device if device is not None else _device_of(model, generator)
    chunks = []
    for start in range(0, num, batch_size):
        b = min(batch_size, num - start)
        chunks.append(_sample_chunk(model, b, length, steps, schedule, generator, eps_t, greedy_final, device))
    return torch.cat(chunks) if chunks else torch.empty(0, length, dtype=torch.long, device=device)


def _device_of(model, generator: torch.Generator | None) -> torch.device:
    parameters = getattr(model, "parameters", None)
    if parameters is not None:
        for p in parameters():
            return p.device
    return generator.device if generator is not None else torch.device("cpu")


def _sample_chunk(model, batch, length, steps, schedule, generator, eps_t, greedy_final, device):
    x = torch.full((batch, length), MASK, dtype=torch.long, device=device)
    ts = timesteps(steps, eps_t)
    for i in range(steps):
        if not (x == MASK).any():
            break  # nothing left to unmask: the model would only copy (no time conditioning)
        log_p = subs_log_probs(model(x), x, MASK)
        x = hard_reverse_step(log_p, x, schedule.alpha(ts[i]), schedule.alpha(ts[i + 1]), generator)
    still_masked = x == MASK
    if still_masked.any():
        log_p = subs_log_probs(model(x), x, MASK)[..., :MASK]
        decoded = log_p.argmax(-1) if greedy_final else gumbel_max(log_p, generator)
        x = torch.where(still_masked, decoded, x)
    return x


@torch.no_grad()
def approx_log_likelihood(model, x0: torch.Tensor, steps: int = 128, schedule: LogLinearSchedule | None = None,
                          generator: torch.Generator | None = None, eps_t: float = 1e-5,
                          batch_size: int | None = None) -> torch.Tensor:
    """"App-Log-Lik" [B]: minus the discrete-time NELBO, one Monte Carlo sample (nats)
    (docs/algorithms.md#dna-evaluation-metrics).

    On the sampler's grid t_0 = 1 > ... > t_T = eps_t (T = `steps`), for every step i
    independently draw x_{t_i} ~ q(. | x0) and add

        (alpha(t_{i+1}) - alpha(t_i)) / (1 - alpha(t_i)) * sum_{l: x_{t_i}^l = MASK} log p_theta(x0^l | x_{t_i})

    This is the diffusion term of the T-step ELBO (log p(x0) >= the sum, in expectation); the
    prior term is 0 (x_1 is all-MASK for any x0 up to eps) and the reconstruction term at t_T is
    omitted (a position is still masked at t_T with probability ~eps_t). Higher = more natural;
    a uniform model scores about -L log 4 (-277 for L = 200). Same as DRAKES' ``get_likelihood``
    with ``n_samples=1``.
    """
    schedule = schedule or LogLinearSchedule()
    batch_size = batch_size or x0.shape[0]
    ts = timesteps(steps, eps_t)
    total = torch.zeros(x0.shape[0], dtype=torch.float64, device=x0.device)
    for i in range(steps):
        alpha_t, alpha_s = schedule.alpha(ts[i]), schedule.alpha(ts[i + 1])
        weight = float((alpha_s - alpha_t) / (1.0 - alpha_t))
        for start in range(0, x0.shape[0], batch_size):
            part = x0[start:start + batch_size]
            xt = corrupt(part, ts[i], schedule, generator)
            log_p = subs_log_probs(model(xt), xt, MASK).gather(-1, part.long().unsqueeze(-1)).squeeze(-1)
            total[start:start + batch_size] += weight * (log_p * (xt == MASK)).sum(-1).double()
    return total.to(torch.float32)


def per_token_loss(nelbo_per_sequence: torch.Tensor, length: int) -> torch.Tensor:
    """Training loss: mean NELBO per token (nats); divide by log 2 for bits."""
    return nelbo_per_sequence.mean() / length

