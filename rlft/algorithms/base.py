"""What every algorithm file provides, and what the learner gives it.

An algorithm is one file under rlft/algorithms/ that defines:
  * a config class (a `Section`) whose fields are the algorithm's hyper-parameters,
  * pure tensor functions for its loss (torch only),
  * `SPEC = AlgorithmSpec(...)`, registered in rlft/algorithms/__init__.py.

The learner knows nothing about any algorithm: for each micro-batch it calls
`spec.micro_batch_loss(model, batch, cfg, step)` and backpropagates the returned loss.
Losses must be normalised with the *step-global* counts in `StepCounts`, so that the sum over
micro-batches and ranks equals the loss of the whole step computed at once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Protocol

import torch

from rlft.ops.logprobs import IGNORE_INDEX
from rlft.schema import Section


@dataclass(frozen=True)
class StepCounts:
    """Global counts over every micro-batch on every rank of one optimisation step."""

    num_tokens: float
    num_sequences: float


class PolicyModel(Protocol):
    """What an algorithm may ask of the model under training."""

    def logits(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Policy logits [B, T, V] for batch['input_ids'] / batch['attention_mask'] (with grad)."""

    def reference_logits(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Reference-policy logits (no grad; LoRA: adapters disabled)."""

    def logits_from_embeds(self, embeds: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Policy logits for given input embeddings (with grad)."""

    def input_embeddings(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Input embedding lookup."""


LossFn = Callable[[PolicyModel, dict[str, torch.Tensor], Any, StepCounts], "tuple[torch.Tensor, dict[str, float]]"]


def count_label_tokens(batch: dict[str, torch.Tensor]) -> tuple[float, float]:
    """(valid target tokens after the causal shift, sequences) of a batch with `labels`."""
    labels = batch["labels"]
    return float((labels[:, 1:] != IGNORE_INDEX).sum().item()), float(labels.shape[0])


@dataclass(frozen=True)
class AlgorithmSpec:
    """Registration record of one algorithm."""

    name: str
    config_cls: type[Section]
    data_kind: str  # "sft" (prompt, response rows), "rollouts", "pairs", "lists", ...
    micro_batch_loss: LossFn
    count_tokens: Callable[[dict[str, torch.Tensor]], tuple[float, float]] = count_label_tokens
    needs_reference: bool = False
    # For data_kind "rollouts": rewards [N] (consecutive groups) -> per-sequence "advantages" [N],
    # "positive" [N] and "keep" [N] (False: the sequence's group is dropped, e.g. dynamic sampling).
    sequence_advantages: Callable[[torch.Tensor, Any], dict[str, torch.Tensor]] | None = None
