"""DRAKES: reward fine-tuning of a masked diffusion model by backpropagation through sampling
(docs/algorithms.md#drakes).

    max_theta  E_{x_{0:T} ~ P^theta}[ r(x_0) ] - alpha * KL(P^theta(x_{0:T}) || P^pre(x_{0:T}))

The loss of a micro-batch of B sequences, normalised by the step-global sequence count N:

    L = (1 / N) * sum_b ( -r(x_0^b) + alpha_k * KL^b )

where x_0^b is drawn inside the loss by `rlft.diffusion.relaxed.relaxed_sample`: T - K hard
steps without gradient, the last K relaxed with Gumbel-softmax (temperature tau), and a
straight-through one-hot into the fine-tuning oracle r (loaded in each learner, frozen). The KL
to the pretrained model (the PEFT method's reference: a frozen copy under full fine-tuning) is
`masked_kl` (the principled form) or `repo` (the reference code's form). alpha_k ramps linearly
from 0 over `alpha_warmup_steps` optimizer steps. A batch is only the seeds of the draws (the
"sampling" source): each micro-batch seeds its sampler with its first row's seed.

The generator and reward roles evaluate: generators sample with the published weights, reward
actors score with the held-out evaluation oracle (the sampling source's evaluation, rlft.sources.sampling).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Literal

import torch
from pydantic import Field

from rlft.algorithms.base import AlgorithmSpec, RowContext, StepCounts
from rlft.schema import Section


class DrakesConfig(Section):
    name: Literal["drakes"] = "drakes"
    steps: int = Field(32, ge=1, description="Reverse steps T of each training sample (the paper: 128).")
    truncate_steps: int = Field(8, ge=0, description="Last K steps relaxed and backpropagated (the paper: 50 of 128).")
    tau: float = Field(1.0, gt=0, description="Gumbel-softmax temperature of the relaxed steps.")
    copy_flag_temp: float | None = Field(
        None, gt=0, description="Soft copy flag sigmoid(c / temp) in the relaxed steps (None: c itself).")
    alpha: float = Field(0.001, ge=0, description="Weight of the KL to the pretrained model.")
    alpha_warmup_steps: int = Field(0, ge=0, description="Optimizer steps over which alpha ramps up from 0.")
    kl_mode: Literal["masked_kl", "repo"] = Field(
        "masked_kl", description="masked_kl: the principled per-step KL over masked positions; repo: the "
        "reference code's form (reproduces published numbers).")
    truncate_kl: bool = Field(False, description="KL over the last K steps only (default: every step).")
    oracle: str = Field("ft", description='Fine-tuning oracle in the learners: "ft", "eval" or an oracle folder.')


@lru_cache(maxsize=4)
def _oracle(name: str, device: str):
    """The fine-tuning oracle of this process, frozen (loaded once per learner)."""
    from reward_models.dna_oracle import load_oracle

    return load_oracle(name).to(device).eval().requires_grad_(False)


def alpha_at(cfg: DrakesConfig, step: int) -> float:
    if cfg.alpha_warmup_steps and step < cfg.alpha_warmup_steps:
        return cfg.alpha * step / cfg.alpha_warmup_steps
    return cfg.alpha


def drakes_loss(rewards: torch.Tensor, kl: torch.Tensor, alpha: float, num_sequences: float) -> torch.Tensor:
    """(1/N) sum_b (-r_b + alpha KL_b): minus the KL-regularised reward, step-global mean."""
    return (-rewards + alpha * kl).sum() / num_sequences


def micro_batch_loss(model, batch: dict[str, torch.Tensor], cfg: DrakesConfig,
                     counts: StepCounts) -> tuple[torch.Tensor, dict[str, float]]:
    from rlft.diffusion.model import subs_log_probs
    from rlft.diffusion.relaxed import relaxed_sample
    from rlft.diffusion.schedule import LogLinearSchedule

    seeds = batch["seeds"]
    device = seeds.device
    alpha = alpha_at(cfg, counts.step)
    generator = torch.Generator(device=device).manual_seed(int(seeds[0]))
    kl_mode = cfg.kl_mode if alpha > 0 else "none"
    drawn = relaxed_sample(
        lambda x: subs_log_probs(model(x), x), lambda x: subs_log_probs(model.reference(x), x),
        batch=seeds.shape[0], steps=cfg.steps, truncate_steps=cfg.truncate_steps, tau=cfg.tau,
        schedule=LogLinearSchedule(), generator=generator, kl_mode=kl_mode, copy_flag_temp=cfg.copy_flag_temp,
        length=model.config.length, truncate_kl=cfg.truncate_kl, device=device)
    rewards = _oracle(cfg.oracle, str(device)).reward(drawn.onehot)
    loss = drakes_loss(rewards, drawn.kl, alpha, counts.num_sequences)
    return loss, {"reward_sum": float(rewards.detach().sum()), "kl_sum": float(drawn.kl.detach().sum()),
                  "sequences": float(seeds.shape[0]), "alpha": alpha}


def build_rows(items: list[dict], ctx: RowContext) -> tuple[list[dict], dict[str, float]]:
    return list(items), {}


def pad(rows: list[dict], pad_id) -> dict[str, torch.Tensor]:
    return {"seeds": torch.tensor([row["seed"] for row in rows], dtype=torch.long)}


def count_sequences(batch: dict[str, torch.Tensor]) -> tuple[float, float]:
    return float(batch["seeds"].shape[0]), float(batch["seeds"].shape[0])


def log_metrics(sums: dict[str, float], steps: int) -> dict[str, float]:
    n = max(sums["sequences"], 1.0)
    return {"train/oracle_reward": sums["reward_sum"] / n, "train/kl": sums["kl_sum"] / n}


def needs_reference(run_cfg) -> bool:
    return run_cfg.algorithm.alpha > 0


def validate(run_cfg) -> None:
    cfg = run_cfg.algorithm
    if cfg.truncate_steps > cfg.steps:
        raise ValueError(f"algorithm.truncate_steps={cfg.truncate_steps} exceeds algorithm.steps={cfg.steps}")
    if run_cfg.runtime.roles.generator != "diffusion":
        raise ValueError(f"algorithm drakes evaluates with diffusion generators; set runtime.roles.generator=diffusion "
                         f"(got {run_cfg.runtime.roles.generator!r})")
    if run_cfg.sync.weights != "merged":
        raise ValueError("algorithm drakes ships whole weights to the diffusion generators: set sync.weights=merged")


SPEC = AlgorithmSpec(
    name="drakes",
    config_cls=DrakesConfig,
    source="sampling",
    micro_batch_loss=micro_batch_loss,
    build_rows=build_rows,
    pad=pad,
    roles=("generator", "reward"),
    count_tokens=count_sequences,
    needs_reference=needs_reference,
    validate=validate,
    log_metrics=log_metrics,
    summary="DRAKES: reward backpropagation through Gumbel-softmax sampling of a masked diffusion model",
)
