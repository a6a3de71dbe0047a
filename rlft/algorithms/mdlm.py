"""MDLM pretraining of a masked discrete diffusion model: the continuous-time NELBO (docs/algorithms.md#mdlm).

    L = (1 / (B L)) * sum_b E_t E_{x_t ~ q(.|x0_b)} [ 1/t * sum_{l: x_t^l = MASK} -log p_theta(x0_b^l | x_t) ]

normalised by the step-global number of positions, so the sum over micro-batches and ranks is
the mean NELBO per token of the whole step. Trains on dataset rows (the task's sequences); the
noise comes from each rank's torch RNG (seeded by run.seed, saved by exact resume).
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from rlft.algorithms.base import AlgorithmSpec, RowContext, StepCounts
from rlft.schema import Section
from rlft.types import Example


class MDLMTrainConfig(Section):
    name: Literal["mdlm"] = "mdlm"
    antithetic: bool = Field(True, description="Spread the batch's diffusion times evenly over (0, 1] (lower variance).")
    min_time: float = Field(1e-3, gt=0, lt=1, description="Smallest diffusion time drawn.")


def micro_batch_loss(model, batch: dict[str, torch.Tensor], cfg: MDLMTrainConfig,
                     counts: StepCounts) -> tuple[torch.Tensor, dict[str, float]]:
    from rlft.diffusion.mdlm import nelbo
    from rlft.diffusion.schedule import LogLinearSchedule

    per_sequence = nelbo(model, batch["ids"], LogLinearSchedule(), None, antithetic=cfg.antithetic, eps_t=cfg.min_time)
    loss = per_sequence.sum() / counts.num_tokens
    return loss, {"nelbo_sum": float(per_sequence.detach().sum()), "sequences": float(per_sequence.shape[0]),
                  "positions": float(batch["ids"].numel())}


def build_rows(examples: list[Example], ctx: RowContext) -> tuple[list[dict], dict[str, float]]:
    from rlft.data.dna import encode

    ids = encode([ex.response for ex in examples])
    return [{"ids": row} for row in ids], {}


def pad(rows: list[dict], pad_id) -> dict[str, torch.Tensor]:
    return {"ids": torch.stack([row["ids"] for row in rows])}


def count_positions(batch: dict[str, torch.Tensor]) -> tuple[float, float]:
    return float(batch["ids"].numel()), float(batch["ids"].shape[0])


def log_metrics(sums: dict[str, float], steps: int) -> dict[str, float]:
    return {"train/nelbo_per_token": sums["nelbo_sum"] / max(sums["positions"], 1.0)}


SPEC = AlgorithmSpec(
    name="mdlm",
    config_cls=MDLMTrainConfig,
    source="dataset",
    micro_batch_loss=micro_batch_loss,
    build_rows=build_rows,
    pad=pad,
    count_tokens=count_positions,
    log_metrics=log_metrics,
    summary="MDLM NELBO pretraining of a masked discrete diffusion model (sequences of the task)",
)
