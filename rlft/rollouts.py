"""Rollouts -> training rows for the policy-gradient learner (pure data plumbing).

A row holds prompt + completion token ids, labels (IGNORE_INDEX on the prompt), and per shifted
position (aligned with rlft.ops.logprobs.token_logprobs) the behaviour log-prob and the
advantage of the completion token predicted there, and per row the sampling temperature T: the
behaviour log-probs are of the tempered distribution softmax(logits / T), so the learner scores
the same distribution (rlft.ops.logprobs.tempered). With `algorithm.old_logprobs: learner` the
controller adds `prox_logprobs` (the learners' own log-probs of the row, on the same positions).
"""

from __future__ import annotations

from typing import Any

import torch

from rlft.ops.advantages import process_step_advantages
from rlft.ops.logprobs import IGNORE_INDEX
from rlft.types import Rollout


def token_values_from_steps(segments, step_values: list[float], length: int) -> list[float]:
    """Per completion token, the value of the step (each non-observation segment, in order) that
    holds it; 0 for observation tokens and tokens outside every segment."""
    values = [0.0] * length
    steps = [s for s in segments if s.kind != "observation"]
    for segment, value in zip(steps, step_values):
        values[segment.start:segment.end] = [value] * (segment.end - segment.start)
    return values


def process_token_advantages(rollouts: list[Rollout], scale_by_std: bool = True) -> list[list[float]]:
    """Process advantages per completion token (rlft.ops.advantages.process_step_advantages) from
    the rollouts' step rewards (`Score.segment_rewards`, one per segment; observations excluded)."""
    step_rewards = []
    for r in rollouts:
        if r.scored.segment_rewards is None:
            raise ValueError(
                "a rollout has no step rewards: process advantages need step segments (rollout.step_delimiter) "
                "and a reward component that scores steps (e.g. {name: progress})"
            )
        step_rewards.append([v for s, v in zip(r.segments, r.scored.segment_rewards) if s.kind != "observation"])
    per_step = process_step_advantages(step_rewards, [r.group for r in rollouts], scale_by_std)
    return [token_values_from_steps(r.segments, a, len(r.completion_ids)) for r, a in zip(rollouts, per_step)]


def observation_mask(rollout: Rollout) -> list[bool]:
    """Per completion token: True where an observation segment (what an environment inserted) holds it."""
    mask = [False] * len(rollout.completion_ids)
    for segment in rollout.segments:
        if segment.kind == "observation":
            mask[segment.start:segment.end] = [True] * (segment.end - segment.start)
    return mask


def trained_token_count(rollout: Rollout, max_length: int) -> int:
    """The completion tokens `rollout_row` labels: the completion cut to max_length, less observations."""
    kept = min(len(rollout.completion_ids), max(0, max_length - len(rollout.prompt_ids)))
    return kept - sum(observation_mask(rollout)[:kept])


def rollout_row(rollout: Rollout, advantage: float | list[float], positive: float, max_length: int) -> dict[str, Any]:
    """Training row of one rollout; the completion is cut (never the prompt) to max_length.
    `advantage`: one for every completion token (outcome), or one per completion token.
    Observation tokens are context only: their labels are ignored, so they carry no policy loss
    and no KL, and their advantage is 0."""
    prompt, completion = rollout.prompt_ids, rollout.completion_ids[: max(0, max_length - len(rollout.prompt_ids))]
    if len(rollout.logprobs) < len(completion):
        raise ValueError(f"rollout has {len(rollout.logprobs)} log-probs for {len(completion)} tokens")
    input_ids = prompt + completion
    old_logprobs = [0.0] * (len(input_ids) - 1)
    advantages = [0.0] * (len(input_ids) - 1)
    per_token = advantage if isinstance(advantage, list) else [advantage] * len(completion)
    observed = observation_mask(rollout)[: len(completion)]
    for k, logprob in enumerate(rollout.logprobs[: len(completion)]):
        old_logprobs[len(prompt) + k - 1] = logprob  # position t predicts token t + 1
        advantages[len(prompt) + k - 1] = 0.0 if observed[k] else per_token[k]
    return {
        "input_ids": input_ids,
        "labels": [IGNORE_INDEX] * len(prompt) + [IGNORE_INDEX if o else t for t, o in zip(completion, observed)],
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
    for key in [k for k in ("old_logprobs", "advantages", "prox_logprobs") if k in rows[0]]:
        batch[key] = torch.tensor([r[key] + [0.0] * (width - len(r[key])) for r in rows], dtype=torch.float32)
    batch["positive"] = torch.tensor([r["positive"] for r in rows], dtype=torch.float32)
    batch["temperature"] = torch.tensor([r.get("temperature", 1.0) for r in rows], dtype=torch.float32)
    return batch


def with_logprobs(rows: list[dict[str, Any]], logprobs: torch.Tensor, key: str) -> list[dict[str, Any]]:
    """The rows with `key`: their padded per-position log-probs ([len(rows), W - 1], from a right-padded
    batch of them) cut to each row's own length."""
    return [{**row, key: logprobs[i, : len(row["input_ids"]) - 1].tolist()} for i, row in enumerate(rows)]


def padded_row_values(rows: list[dict[str, Any]], key: str, width: int) -> torch.Tensor:
    """float64 [N, width]: each row's per-position `key` values, right-padded with 0."""
    return torch.tensor([r[key] + [0.0] * (width - len(r[key])) for r in rows], dtype=torch.float64)


def response_mask(rows: list[dict[str, Any]], width: int) -> torch.Tensor:
    """float64 [N, width]: 1.0 on the shifted positions whose next token is labelled (the trained response tokens)."""
    return torch.tensor([[float(t != IGNORE_INDEX) for t in r["labels"][1:]] + [0.0] * (width + 1 - len(r["labels"]))
                         for r in rows], dtype=torch.float64)


def batch_staleness(items: list, trained_version: int) -> int | None:
    """Versions between the one that began the batch's oldest sample and the one that trains it (None:
    items without a version)."""
    versions = [item.version for item in items if hasattr(item, "version")]
    return trained_version - min(versions) if versions else None
