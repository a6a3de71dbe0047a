"""Rollouts -> training rows for the policy-gradient learner (pure data plumbing).

A row holds prompt + completion token ids, labels (IGNORE_INDEX on the prompt), and per shifted
position (aligned with rlft.ops.logprobs.token_logprobs) the behaviour log-prob and the
advantage of the completion token predicted there, and per row the sampling temperature T: the
behaviour log-probs are of the tempered distribution softmax(logits / T), so the learner scores
the same distribution (rlft.algorithms.gppo.tempered).
"""

from __future__ import annotations

from typing import Any

import torch

from rlft.ops.logprobs import IGNORE_INDEX
from rlft.types import Rollout


def rollout_row(rollout: Rollout, advantage: float, positive: float, max_length: int) -> dict[str, Any]:
    """Training row of one rollout; the completion is cut (never the prompt) to max_length."""
    prompt, completion = rollout.prompt_ids, rollout.completion_ids[: max(0, max_length - len(rollout.prompt_ids))]
    if len(rollout.logprobs) < len(completion):
        raise ValueError(f"rollout has {len(rollout.logprobs)} log-probs for {len(completion)} tokens")
    input_ids = prompt + completion
    old_logprobs = [0.0] * (len(input_ids) - 1)
    advantages = [0.0] * (len(input_ids) - 1)
    for k, logprob in enumerate(rollout.logprobs[: len(completion)]):
        old_logprobs[len(prompt) + k - 1] = logprob  # position t predicts token t + 1
        advantages[len(prompt) + k - 1] = advantage
    return {
        "input_ids": input_ids,
        "labels": [IGNORE_INDEX] * len(prompt) + completion,
        "old_logprobs": old_logprobs,
        "advantages": advantages,
        "positive": positive,
        "temperature": rollout.temperature,
    }


def filler_row(like: dict[str, Any]) -> dict[str, Any]:
    """A row that carries no loss (all labels ignored): keeps micro-batch counts fixed."""
    n = len(like["input_ids"])
    return {"input_ids": like["input_ids"], "labels": [IGNORE_INDEX] * n, "old_logprobs": [0.0] * (n - 1),
            "advantages": [0.0] * (n - 1), "positive": 0.0, "temperature": like.get("temperature", 1.0)}


def pad_rollout_rows(rows: list[dict[str, Any]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad rollout rows; float fields are padded with 0 and live on shifted positions."""
    from rlft.data.collate import pad_rows

    batch = pad_rows(rows, pad_id)
    width = batch["input_ids"].shape[1] - 1
    for key in ("old_logprobs", "advantages"):
        batch[key] = torch.tensor([r[key] + [0.0] * (width - len(r[key])) for r in rows], dtype=torch.float32)
    batch["positive"] = torch.tensor([r["positive"] for r in rows], dtype=torch.float32)
    batch["temperature"] = torch.tensor([r.get("temperature", 1.0) for r in rows], dtype=torch.float32)
    return batch
