"""Supervised fine-tuning: negative log-likelihood of the response tokens.

    L_SFT = -(1 / N) * sum_{i,t} m_it * log pi_theta(y_it | x_i, y_i,<t)

with N the number of response tokens in the whole optimisation step (token-mean), or the
per-sequence mean averaged over sequences (seq-mean-token-mean), both normalised globally.
Trains on dataset rows (prompt, reference response); needs no generator or reward role.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from rlft.algorithms.base import AlgorithmSpec, PolicyModel, RowContext, StepCounts
from rlft.data.collate import encode_sft
from rlft.ops.logprobs import token_logprobs
from rlft.ops.reductions import aggregate
from rlft.schema import Section
from rlft.types import Example


class SFTConfig(Section):
    name: Literal["sft"] = "sft"
    reduction: Literal["token-mean", "seq-mean-token-mean"] = Field(
        "token-mean", description="How token losses are averaged (normalisers are step-global)."
    )


def sft_loss(
    logprobs: torch.Tensor, mask: torch.Tensor, reduction: str, counts: StepCounts
) -> torch.Tensor:
    """Mean negative log-likelihood of the masked tokens with step-global normalisers."""
    return aggregate(
        -logprobs, mask, reduction, num_tokens=counts.num_tokens, num_sequences=counts.num_sequences
    )


def micro_batch_loss(
    model: PolicyModel, batch: dict[str, torch.Tensor], cfg: SFTConfig, counts: StepCounts
) -> tuple[torch.Tensor, dict[str, float]]:
    logits = model.logits(batch)
    logprobs, mask = token_logprobs(logits, batch["labels"])
    loss = sft_loss(logprobs, mask, cfg.reduction, counts)
    return loss, {"nll_sum": float(-(logprobs * mask).sum().item()), "tokens": float(mask.sum().item())}


def build_rows(examples: list[Example], ctx: RowContext) -> tuple[list[dict], dict[str, float]]:
    """Prompt + reference response rows (the response is cut to train.max_length, never the prompt)."""
    rows = []
    for ex in examples:
        if ex.response is None:
            raise ValueError("this task has no reference responses; SFT needs them")
        rows.append(encode_sft(ctx.tokenizer, ex.prompt, ex.response, ctx.max_length, ctx.chat))
    return rows, {}


def log_metrics(sums: dict[str, float], steps: int) -> dict[str, float]:
    return {"train/nll": sums["nll_sum"] / max(sums["tokens"], 1.0)}


SPEC = AlgorithmSpec(
    summary="supervised fine-tuning on (prompt, response) rows",
    name="sft", config_cls=SFTConfig, source="dataset", micro_batch_loss=micro_batch_loss,
    build_rows=build_rows, log_metrics=log_metrics,
)
