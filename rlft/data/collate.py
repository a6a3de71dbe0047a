"""Tokenise examples into training rows and pad rows into batches.

A row is {"input_ids": prompt + response + EOS, "labels": IGNORE_INDEX on the prompt}. The
prompt is wrapped in the tokenizer's chat template when configured (or when it has one).
"""

from __future__ import annotations

from typing import Sequence

import torch

from rlft.ops.logprobs import IGNORE_INDEX


def pad_token_id(tokenizer) -> int:
    """The id rows are padded with: the tokenizer's pad token, else its EOS (many causal LMs have no pad token)."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def uses_chat_template(tokenizer, mode: str) -> bool:
    has_template = bool(getattr(tokenizer, "chat_template", None))
    if mode == "always" and not has_template:
        raise ValueError("data.chat_template=always, but the tokenizer has no chat template")
    return mode == "always" or (mode == "auto" and has_template)


def encode_prompt(tokenizer, prompt: str, chat: bool) -> list[int]:
    if chat:
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
        )
        return tokenizer(text, add_special_tokens=False)["input_ids"]
    return tokenizer(prompt, add_special_tokens=True)["input_ids"]


def encode_sft(tokenizer, prompt: str, response: str, max_length: int, chat: bool) -> dict[str, list[int]]:
    """Prompt tokens carry no loss; the response is truncated (never the prompt) to max_length."""
    prompt_ids = encode_prompt(tokenizer, prompt, chat)
    response_ids = tokenizer(response, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    if len(prompt_ids) >= max_length:
        raise ValueError(
            f"prompt of {len(prompt_ids)} tokens does not fit train.max_length={max_length}: {prompt[:60]!r}"
        )
    response_ids = response_ids[: max_length - len(prompt_ids)]
    return {
        "input_ids": prompt_ids + response_ids,
        "labels": [IGNORE_INDEX] * len(prompt_ids) + response_ids,
    }


def pad_rows(rows: Sequence[dict[str, list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad rows into tensors; padding gets attention 0 and label IGNORE_INDEX."""
    width = max(len(r["input_ids"]) for r in rows)
    batch: dict[str, list[list[int]]] = {"input_ids": [], "attention_mask": [], "labels": []}
    for row in rows:  # extra per-row fields are padded by their owners (e.g. rlft.rollouts)
        pad = width - len(row["input_ids"])
        batch["input_ids"].append(row["input_ids"] + [pad_id] * pad)
        batch["attention_mask"].append([1] * len(row["input_ids"]) + [0] * pad)
        batch["labels"].append(row["labels"] + [IGNORE_INDEX] * pad)
    return {k: torch.tensor(v, dtype=torch.long) for k, v in batch.items()}


def shard_micro_batches(rows: list, ranks: int, micro_batch_size: int) -> list[list[list]]:
    """Split a step's rows into ranks x micro-batches (contiguous blocks, in order).

    Rank r gets rows [r*n/ranks, (r+1)*n/ranks); one rank processing every shard in sequence
    sees exactly the same micro-batches as several ranks processing one shard each.
    """
    per_rank = len(rows) // ranks
    if per_rank * ranks != len(rows) or per_rank % micro_batch_size:
        raise ValueError(
            f"{len(rows)} rows do not split into {ranks} ranks x micro-batches of {micro_batch_size}"
        )
    return [
        [rows[start : start + micro_batch_size] for start in range(r * per_rank, (r + 1) * per_rank, micro_batch_size)]
        for r in range(ranks)
    ]
